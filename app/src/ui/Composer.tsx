/**
 * The box under a conversation: type (Enter sends, Shift+Enter a new line on the web),
 * `@name` autocomplete from the members, attach images and files (uploaded at once,
 * sent with the message), reply to or edit a message. Sends typing indicators while
 * the person types (renewed every 3 s, off when they stop, send or leave).
 */
import React, { useEffect, useRef, useState } from 'react';
import {
  Platform,
  Pressable,
  StyleSheet,
  Text,
  TextInput,
  View,
  type NativeSyntheticEvent,
  type TextInputKeyPressEventData,
  type TextInputSelectionChangeEventData,
} from 'react-native';

import { LIMITS, type LocalMessage, type Media, type User } from '../engine';
import { describe, useEngine } from '../state/session';
import { pickFile, pickImage } from './files';
import { completeMention, fileSize, mentionAt, mentionedIds } from './text';
import { font, radius, space, useTheme } from './theme';

const TYPING_RENEW_MS = 3000;
const TYPING_IDLE_MS = 5000;

type Props = {
  conversationId: string;
  members: User[];
  meId: string;
  replyTo: LocalMessage | null;
  replyName: string;
  editing: LocalMessage | null;
  onDone: () => void;
  /** ArrowUp in an empty box edits my latest message, as in Slack and Zulip. */
  onEditLast?: () => void;
  disabled?: string | null;
};

type Pending = { key: string; name: string; media: Media | null; error: string | null };

export function Composer({ conversationId, members, meId, replyTo, replyName, editing, onDone, onEditLast, disabled }: Props) {
  const t = useTheme();
  const engine = useEngine();
  const input = useRef<TextInput>(null);
  const [text, setText] = useState('');
  const [cursor, setCursor] = useState(0);
  const [pick, setPick] = useState(0);
  const [files, setFiles] = useState<Pending[]>([]);
  const [error, setError] = useState<string | null>(null);
  const typingSent = useRef(0);
  const idleTimer = useRef<ReturnType<typeof setTimeout> | null>(null);

  // Editing puts the message's text in the box; leaving edit mode clears it.
  useEffect(() => {
    if (editing) {
      setText(editing.body);
      setCursor(editing.body.length);
    }
    input.current?.focus();
  }, [editing, replyTo]);

  // Leaving the conversation (or switching) ends my typing indicator there.
  useEffect(() => {
    return () => {
      if (idleTimer.current) clearTimeout(idleTimer.current);
      if (typingSent.current) engine.setTyping(conversationId, false);
      typingSent.current = 0;
    };
  }, [engine, conversationId]);

  function stopTyping() {
    if (idleTimer.current) clearTimeout(idleTimer.current);
    idleTimer.current = null;
    if (typingSent.current) engine.setTyping(conversationId, false);
    typingSent.current = 0;
  }

  function changed(value: string) {
    setText(value);
    setError(null);
    if (editing) return;
    if (!value.trim()) {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (now - typingSent.current > TYPING_RENEW_MS) {
      engine.setTyping(conversationId, true);
      typingSent.current = now;
    }
    if (idleTimer.current) clearTimeout(idleTimer.current);
    idleTimer.current = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  const partial = mentionAt(text, cursor);
  const suggestions =
    partial === null
      ? []
      : members
          .filter((m) => m.id !== meId && !m.bot)
          .filter(
            (m) =>
              m.username.startsWith(partial.prefix.toLowerCase()) ||
              m.display_name.toLowerCase().startsWith(partial.prefix.toLowerCase()),
          )
          .slice(0, 6);

  function complete(user: User) {
    if (partial === null) return;
    const next = completeMention(text, partial.start, cursor, user.username);
    setText(next.text);
    setCursor(next.cursor);
    setPick(0);
    input.current?.focus();
  }

  async function attach(kind: 'image' | 'file') {
    setError(null);
    const source = kind === 'image' ? await pickImage() : await pickFile();
    if (source === null) return;
    const key = `${Date.now()}-${Math.random()}`;
    const name = source.filename ?? (kind === 'image' ? 'image' : 'file');
    setFiles((f) => [...f, { key, name, media: null, error: null }]);
    try {
      const media = await engine.upload(source);
      setFiles((f) => f.map((p) => (p.key === key ? { ...p, media } : p)));
    } catch (e) {
      setFiles((f) => f.map((p) => (p.key === key ? { ...p, error: describe(e) } : p)));
    }
  }

  const uploading = files.some((f) => f.media === null && f.error === null);
  const ready = files.filter((f) => f.media !== null).map((f) => (f.media as Media).id);

  async function submit() {
    const body = text.trim();
    if (uploading) {
      setError('Wait for the upload to finish.');
      return;
    }
    if (editing) {
      if (!body) {
        setError('An edited message needs some text; delete it instead.');
        return;
      }
      if (editing.seq !== null && body !== editing.body) {
        try {
          await engine.edit(conversationId, editing.seq, body);
        } catch (e) {
          setError(describe(e));
          return;
        }
      }
      setText('');
      onDone();
      return;
    }
    if (!body && ready.length === 0) return;
    if (body.length > LIMITS.maxBodyChars) {
      setError(`A message is at most ${LIMITS.maxBodyChars} characters; this one has ${body.length}.`);
      return;
    }
    try {
      await engine.send(conversationId, body, {
        replyTo: replyTo?.seq ?? null,
        mentions: mentionedIds(body, members),
        attachments: ready,
      });
    } catch (e) {
      setError(describe(e));
      return;
    }
    stopTyping();
    setText('');
    setCursor(0);
    setFiles([]);
    onDone();
  }

  function keyPress(e: NativeSyntheticEvent<TextInputKeyPressEventData>) {
    if (Platform.OS !== 'web') return;
    const native = e.nativeEvent as TextInputKeyPressEventData & { shiftKey?: boolean; isComposing?: boolean };
    if (suggestions.length > 0) {
      if (native.key === 'ArrowDown' || native.key === 'ArrowUp') {
        e.preventDefault();
        setPick((p) => (p + (native.key === 'ArrowDown' ? 1 : suggestions.length - 1)) % suggestions.length);
        return;
      }
      if (native.key === 'Enter' || native.key === 'Tab') {
        e.preventDefault();
        const user = suggestions[Math.min(pick, suggestions.length - 1)];
        if (user) complete(user);
        return;
      }
    }
    if (native.key === 'ArrowUp' && !text && !editing && onEditLast) {
      e.preventDefault();
      onEditLast();
      return;
    }
    if (native.key === 'Escape' && (editing || replyTo)) {
      e.preventDefault();
      setText('');
      onDone();
      return;
    }
    if (native.key === 'Enter' && !native.shiftKey && !native.isComposing) {
      e.preventDefault();
      void submit();
    }
  }

  if (disabled) {
    return (
      <View style={[styles.wrap, { borderTopColor: t.border, backgroundColor: t.surface }]}>
        <Text style={{ color: t.muted, padding: space.sm }}>{disabled}</Text>
      </View>
    );
  }

  return (
    <View style={[styles.wrap, { borderTopColor: t.border, backgroundColor: t.surface }]}>
      {replyTo || editing ? (
        <View style={styles.context}>
          <Text numberOfLines={1} style={{ color: t.muted, flex: 1, fontSize: font.small }}>
            {editing ? 'Editing your message' : `Replying to ${replyName}: ${replyTo?.body || 'attachment'}`}
          </Text>
          <Pressable
            accessibilityRole="button"
            accessibilityLabel={editing ? 'Cancel editing' : 'Cancel reply'}
            onPress={() => {
              if (editing) setText('');
              onDone();
            }}
          >
            <Text style={{ color: t.primary, fontSize: font.small }}>Cancel</Text>
          </Pressable>
        </View>
      ) : null}
      {suggestions.length > 0 ? (
        <View accessibilityRole="menu" accessibilityLabel="Mention a member" style={[styles.suggest, { borderColor: t.border, backgroundColor: t.background }]}>
          {suggestions.map((u, i) => (
            <Pressable
              key={u.id}
              accessibilityRole="menuitem"
              accessibilityLabel={`Mention ${u.display_name} (@${u.username})`}
              aria-selected={i === pick}
              onPress={() => complete(u)}
              style={[styles.suggestion, i === pick && { backgroundColor: t.surfaceAlt }]}
              testID={`mention-${u.username}`}
            >
              <Text style={{ color: t.text }}>
                {u.display_name} <Text style={{ color: t.muted }}>@{u.username}</Text>
              </Text>
            </Pressable>
          ))}
        </View>
      ) : null}
      {files.length > 0 ? (
        <View style={styles.files}>
          {files.map((f) => (
            <View key={f.key} style={[styles.file, { borderColor: f.error ? t.danger : t.border }]}>
              <Text style={{ color: f.error ? t.danger : t.text, fontSize: font.small }}>
                {f.error ? `${f.name}: ${f.error}` : f.media ? `${f.name} · ${fileSize(f.media.size)}` : `Uploading ${f.name}…`}
              </Text>
              <Pressable
                accessibilityRole="button"
                accessibilityLabel={`Remove ${f.name}`}
                onPress={() => setFiles((all) => all.filter((p) => p.key !== f.key))}
              >
                <Text style={{ color: t.muted }}> ✕</Text>
              </Pressable>
            </View>
          ))}
        </View>
      ) : null}
      {error ? (
        <Text accessibilityRole="alert" style={{ color: t.danger, fontSize: font.small, marginBottom: space.xs }}>
          {error}
        </Text>
      ) : null}
      <View style={styles.row}>
        {!editing ? (
          <>
            <Pressable accessibilityRole="button" accessibilityLabel="Attach an image" onPress={() => void attach('image')} style={styles.tool} testID="attach-image">
              <Text style={{ color: t.primary, fontWeight: '600' }} accessible={false}>Image</Text>
            </Pressable>
            <Pressable accessibilityRole="button" accessibilityLabel="Attach a file" onPress={() => void attach('file')} style={styles.tool} testID="attach-file">
              <Text style={{ color: t.primary, fontWeight: '600' }} accessible={false}>File</Text>
            </Pressable>
          </>
        ) : null}
        <TextInput
          ref={input}
          value={text}
          onChangeText={changed}
          onSelectionChange={(e: NativeSyntheticEvent<TextInputSelectionChangeEventData>) => setCursor(e.nativeEvent.selection.end)}
          onKeyPress={keyPress}
          onBlur={stopTyping}
          placeholder={editing ? 'Edit your message' : 'Message'}
          placeholderTextColor={t.muted}
          accessibilityLabel={editing ? 'Edit your message' : 'Message'}
          accessibilityHint="Enter sends, Shift+Enter starts a new line, @ mentions a member, Up arrow edits your last message"
          multiline
          style={[styles.input, { color: t.text, backgroundColor: t.background, borderColor: t.border }]}
          testID="composer"
        />
        <Pressable
          accessibilityRole="button"
          accessibilityLabel={editing ? 'Save edit' : 'Send'}
          onPress={() => void submit()}
          style={[styles.send, { backgroundColor: t.primary }]}
          testID="send"
        >
          <Text style={{ color: t.onPrimary, fontWeight: '700' }}>{editing ? 'Save' : 'Send'}</Text>
        </Pressable>
      </View>
    </View>
  );
}

const styles = StyleSheet.create({
  wrap: { borderTopWidth: StyleSheet.hairlineWidth, padding: space.sm },
  context: { flexDirection: 'row', alignItems: 'center', gap: space.sm, paddingHorizontal: space.xs, paddingBottom: space.xs },
  row: { flexDirection: 'row', alignItems: 'flex-end', gap: space.xs },
  tool: { paddingHorizontal: 6, height: 40, alignItems: 'center', justifyContent: 'center' },
  input: {
    flex: 1,
    minHeight: 40,
    maxHeight: 160,
    borderWidth: 1,
    borderRadius: radius.md,
    paddingHorizontal: space.md,
    paddingVertical: space.sm,
    fontSize: font.body,
  },
  send: { height: 40, paddingHorizontal: space.lg, borderRadius: radius.md, alignItems: 'center', justifyContent: 'center' },
  suggest: { borderWidth: 1, borderRadius: radius.md, marginBottom: space.xs, overflow: 'hidden' },
  suggestion: { paddingHorizontal: space.md, paddingVertical: space.sm },
  files: { flexDirection: 'row', flexWrap: 'wrap', gap: space.xs, marginBottom: space.xs },
  file: { flexDirection: 'row', alignItems: 'center', borderWidth: 1, borderRadius: radius.sm, paddingHorizontal: space.sm, paddingVertical: 2 },
});
