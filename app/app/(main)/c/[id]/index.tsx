/**
 * `/c/[id]`: one conversation. Messages come from the local store (the engine pages
 * older history into it on demand), newest at the bottom; my sends show at once as
 * "Sending…" and move to "Sent" and "Read" / "Read by 2 of 4" as the server answers.
 * `?seq=N` (from search, citations, a tapped reply) scrolls to that message and marks it.
 * The conversation is marked read while it is on screen (focused, the app in front).
 */
import { router, useIsFocused, useLocalSearchParams } from 'expo-router';
import React, { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { AppState, Platform, Pressable, ScrollView, StyleSheet, Text, View, type LayoutChangeEvent, type NativeScrollEvent, type NativeSyntheticEvent } from 'react-native';

import type { LocalMessage } from '../../../../src/engine';
import { useConversation, useMembers, useMessages, useTitle } from '../../../../src/state/queries';
import { describe, useEngine, useSession } from '../../../../src/state/session';
import { Composer } from '../../../../src/ui/Composer';
import { ConnectionBanner } from '../../../../src/ui/ConnectionBanner';
import { IconButton } from '../../../../src/ui/ConversationList';
import { Notice } from '../../../../src/ui/controls';
import { Bar, Centered, Loading, useWide } from '../../../../src/ui/layout';
import { MessageRow, type MessageActions } from '../../../../src/ui/MessageRow';
import { shortTime } from '../../../../src/ui/text';
import { font, space, useTheme } from '../../../../src/ui/theme';

const PAGE = 50;
// How close to the bottom (px) still counts as "at the bottom": new messages scroll in.
const STICKY_PX = 80;

export default function ConversationScreen() {
  const params = useLocalSearchParams<{ id: string; seq?: string }>();
  const id = String(params.id);
  const t = useTheme();
  const engine = useEngine();
  const wide = useWide();
  const me = useSession((s) => s.me);
  const connection = useSession((s) => (s.deviceOnline ? s.connection.state : 'offline'));
  const typingIds = useSession((s) => s.typing[id]);
  const presence = useSession((s) => s.presence);
  const removed = useSession((s) => s.removed[id]);
  const conversationQuery = useConversation(id);
  const conversation = conversationQuery.data ?? null;
  const members = useMembers(conversation).data ?? [];
  const title = useTitle(conversation);
  const [limit, setLimit] = useState(PAGE);
  const messagesQuery = useMessages(id, limit);
  const messages = useMemo(() => messagesQuery.data ?? [], [messagesQuery.data]);
  const [selected, setSelected] = useState<string | null>(null);
  const [replyTo, setReplyTo] = useState<LocalMessage | null>(null);
  const [editing, setEditing] = useState<LocalMessage | null>(null);
  const [history, setHistory] = useState<{ seq: number; edits: { body: string; edited_at: number }[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const [target, setTarget] = useState<number | null>(params.seq ? Number(params.seq) : null);
  const [highlight, setHighlight] = useState<number | null>(null);
  // Bumped when the jump target's row has been laid out, so the jump can happen.
  const [targetLaidOut, setTargetLaidOut] = useState(0);
  const scroll = useRef<ScrollView>(null);
  const positions = useRef(new Map<number, number>());
  const atBottom = useRef(true);
  const contentHeight = useRef(0);
  const keepFromBottom = useRef<number | null>(null);
  const viewport = useRef(0);
  const scrollY = useRef(0);
  // Newer messages arrived while the person was reading further up.
  const [newBelow, setNewBelow] = useState(false);
  const lastSeen = useRef(0);
  // False while another screen (the assistant, the members) is pushed over this one,
  // which stays mounted beneath: what arrives then is not seen, so not marked read.
  const focused = useIsFocused();

  useEffect(() => {
    engine.openConversation(id);
    return () => engine.closeConversation(id);
  }, [engine, id]);

  useEffect(() => {
    if (params.seq) setTarget(Number(params.seq));
  }, [params.seq]);

  // Reset the per-conversation view state when another conversation opens here.
  useEffect(() => {
    setLimit(PAGE);
    setSelected(null);
    setReplyTo(null);
    setEditing(null);
    setHistory(null);
    positions.current.clear();
    atBottom.current = true;
    lastSeen.current = 0;
    setNewBelow(false);
  }, [id]);

  const names = useMemo(() => {
    const map = new Map<string, string>();
    for (const u of members) map.set(u.id, u.display_name || u.username);
    if (me) map.set(me.id, me.display_name || me.username);
    return map;
  }, [members, me]);
  const nameOf = useCallback((uid: string) => names.get(uid) ?? engine.knownUser(uid)?.display_name ?? uid, [names, engine]);

  // Mark read while the conversation is on screen and the app in front.
  const lastSeq = messages.reduce((max, m) => (m.seq !== null && m.seq > max ? m.seq : max), 0);
  const myCursor = me && conversation ? (conversation.read_cursors[me.id] ?? 0) : 0;
  useEffect(() => {
    if (!conversation || lastSeq <= myCursor || removed || !focused) return;
    const visible = Platform.OS === 'web' ? globalThis.document?.visibilityState !== 'hidden' : AppState.currentState === 'active';
    if (visible) void engine.markRead(id, lastSeq).catch(() => undefined);
  }, [engine, id, lastSeq, myCursor, conversation, removed, focused]);
  useEffect(() => {
    if (Platform.OS !== 'web' || !globalThis.document || !focused) return;
    const onVisible = () => {
      if (document.visibilityState === 'visible' && lastSeq > myCursor) void engine.markRead(id, lastSeq).catch(() => undefined);
    };
    document.addEventListener('visibilitychange', onVisible);
    return () => document.removeEventListener('visibilitychange', onVisible);
  }, [engine, id, lastSeq, myCursor, focused]);

  useEffect(() => {
    if (lastSeq > lastSeen.current && lastSeen.current > 0 && !atBottom.current) setNewBelow(true);
    lastSeen.current = lastSeq;
  }, [lastSeq]);

  const hasBeginning = conversation?.has_beginning ?? false;
  // While the longer page is read from the store the shorter one is still shown: its
  // length says nothing yet about what the store holds beyond it.
  const paging = messagesQuery.isPlaceholderData;
  const moreLocal = paging || messages.length >= limit;
  const canLoadOlder = moreLocal || !hasBeginning;

  const loadOlder = useCallback(async () => {
    if (loadingOlder) return;
    setLoadingOlder(true);
    setError(null);
    keepFromBottom.current = contentHeight.current - scrollY.current;
    try {
      if (!moreLocal && !hasBeginning) await engine.loadOlder(id, PAGE);
      setLimit((l) => l + PAGE);
    } catch (e) {
      keepFromBottom.current = null;
      setError(`Earlier messages could not be loaded: ${describe(e)}`);
    } finally {
      setLoadingOlder(false);
    }
  }, [engine, id, loadingOlder, moreLocal, hasBeginning]);

  // A jump target: page back until it is loaded, then scroll to it and mark it.
  useEffect(() => {
    if (target === null) return;
    const y = positions.current.get(target);
    if (messages.some((m) => m.seq === target) && y !== undefined) {
      // The page just loaded must not pull the view back to where the reading was; and
      // not animated: the first scroll event of an animation, still at the bottom, would
      // count as "at the bottom", and the next content change would scroll back there.
      keepFromBottom.current = null;
      scroll.current?.scrollTo({ y: Math.max(0, y - 80), animated: false });
      atBottom.current = false;
      setHighlight(target);
      setTarget(null);
      const timer = setTimeout(() => setHighlight((h) => (h === target ? null : h)), 4000);
      return () => clearTimeout(timer);
    }
    if (paging) return undefined;
    const oldest = messages.find((m) => m.seq !== null)?.seq ?? null;
    if (oldest !== null && oldest > target && canLoadOlder && !loadingOlder) void loadOlder();
    else if (oldest !== null && oldest > target && !canLoadOlder) {
      setError(`Message #${target} is not in this conversation any more.`);
      setTarget(null);
    }
    return undefined;
  }, [target, messages, paging, canLoadOlder, loadingOlder, loadOlder, targetLaidOut]);

  const jump = useCallback((seq: number) => setTarget(seq), []);

  const actions: MessageActions = useMemo(
    () => ({
      select: setSelected,
      reply: (m) => {
        setEditing(null);
        setReplyTo(m);
        setSelected(null);
      },
      edit: (m) => {
        setReplyTo(null);
        setEditing(m);
        setSelected(null);
      },
      remove: (m) => {
        setSelected(null);
        if (m.seq !== null) void engine.remove(id, m.seq).catch((e: unknown) => setError(describe(e)));
      },
      react: (m, emoji, on) => {
        setSelected(null);
        if (m.seq !== null) void engine.react(id, m.seq, emoji, on).catch((e: unknown) => setError(describe(e)));
      },
      discard: (m) => {
        setSelected(null);
        void engine.discard(id, m.key).catch((e: unknown) => setError(describe(e)));
      },
      history: (m) => {
        setSelected(null);
        if (m.seq === null) return;
        const seq = m.seq;
        void engine
          .edits(id, seq)
          .then((edits) => setHistory({ seq, edits }))
          .catch((e: unknown) => setError(describe(e)));
      },
      jump,
    }),
    [engine, id, jump],
  );

  function onScroll(e: NativeSyntheticEvent<NativeScrollEvent>) {
    const { contentOffset, contentSize, layoutMeasurement } = e.nativeEvent;
    scrollY.current = contentOffset.y;
    viewport.current = layoutMeasurement.height;
    atBottom.current = contentSize.height - contentOffset.y - layoutMeasurement.height < STICKY_PX;
    if (atBottom.current) setNewBelow(false);
    if (contentOffset.y < 40 && canLoadOlder && !loadingOlder && target === null && messages.length >= PAGE) void loadOlder();
  }

  function onContentSize(_w: number, h: number) {
    contentHeight.current = h;
    if (keepFromBottom.current !== null) {
      // Older messages arrived above: keep what the person was reading in place.
      scroll.current?.scrollTo({ y: Math.max(0, h - keepFromBottom.current), animated: false });
      keepFromBottom.current = null;
    } else if (atBottom.current && target === null) {
      scroll.current?.scrollToEnd({ animated: false });
    }
  }

  if (conversationQuery.isLoading) return <Loading />;
  if (!conversation) {
    return (
      <Centered>
        <Text style={{ color: t.muted, textAlign: 'center' }}>
          {removed
            ? `You are no longer a member of this conversation (${removed}).`
            : 'This conversation is not on this device, or you are not one of its members.'}
        </Text>
        <Pressable accessibilityRole="link" onPress={() => router.replace('/chats')}>
          <Text style={{ color: t.primary, marginTop: space.md }}>Back to the chats</Text>
        </Pressable>
      </Centered>
    );
  }

  const other = conversation.kind === 'direct' ? conversation.member_ids.find((m) => m !== me?.id) : undefined;
  const othersTyping = (typingIds ?? []).filter((u) => u !== me?.id);
  let subtitle: string;
  if (othersTyping.length > 0) {
    subtitle = `${othersTyping.map(nameOf).join(', ')} ${othersTyping.length > 1 ? 'are' : 'is'} typing…`;
  } else if (other) {
    const p = presence[other] ?? engine.presence(other);
    subtitle = p.status === 'online' ? 'online' : p.last_seen_at ? `last seen ${shortTime(p.last_seen_at)}` : 'offline';
  } else {
    const online = conversation.member_ids.filter((m) => (presence[m] ?? engine.presence(m)).status === 'online').length;
    subtitle = `${conversation.member_ids.length} members${online ? `, ${online} online` : ''}${conversation.topic ? ` · ${conversation.topic}` : ''}`;
  }

  const meId = me?.id ?? '';
  // The status line goes under my latest message (and any still pending or refused),
  // as chat apps do: one "Read by 2 of 3" says where the others are.
  let latestMine: string | null = null;
  for (const m of messages) if (m.sender_id === meId && m.status === 'sent') latestMine = m.key;
  const bySeq = new Map<number, LocalMessage>();
  for (const m of messages) if (m.seq !== null) bySeq.set(m.seq, m);

  return (
    <View style={[styles.screen, { backgroundColor: t.background }]}>
      <Bar
        title={title}
        subtitle={subtitle}
        left={wide ? null : <IconButton label="Back to chats" text="‹" onPress={() => (router.canGoBack() ? router.back() : router.replace('/chats'))} testID="back" />}
        right={
          <>
            <IconButton label="Search this conversation" text="⌕" onPress={() => router.push({ pathname: '/search', params: { c: id } })} testID="search-here" />
            <IconButton label="Assistant" text="✦" onPress={() => router.push(`/c/${id}/ai`)} testID="open-ai" />
            <IconButton label="Members and settings" text="Info" onPress={() => router.push(`/c/${id}/members`)} testID="open-members" />
          </>
        }
      />
      {wide ? null : <ConnectionBanner />}
      {removed ? <Notice kind="error" text={`You are no longer a member here (${removed}).`} style={{ paddingHorizontal: space.md }} /> : null}
      {error ? (
        <Pressable onPress={() => setError(null)} accessibilityRole="button" accessibilityLabel={`${error}. Dismiss`}>
          <Notice kind="error" text={error} style={{ paddingHorizontal: space.md }} />
        </Pressable>
      ) : null}
      <ScrollView
        ref={scroll}
        style={styles.list}
        contentContainerStyle={styles.listContent}
        onScroll={onScroll}
        scrollEventThrottle={100}
        onContentSizeChange={onContentSize}
        onLayout={(e: LayoutChangeEvent) => {
          viewport.current = e.nativeEvent.layout.height;
        }}
        accessibilityRole="list"
        accessibilityLabel={`Messages in ${title}`}
        keyboardShouldPersistTaps="handled"
        testID="messages"
      >
        {canLoadOlder ? (
          <Pressable accessibilityRole="button" accessibilityLabel="Load earlier messages" onPress={() => void loadOlder()} style={styles.older} testID="load-older">
            <Text style={{ color: t.primary, fontSize: font.small }}>{loadingOlder ? 'Loading…' : 'Load earlier messages'}</Text>
          </Pressable>
        ) : (
          <Text style={[styles.beginning, { color: t.muted }]}>This is the beginning of the conversation.</Text>
        )}
        {messages.map((m, i) => {
          const prev = messages[i - 1];
          const quotedMessage = m.reply_to !== null ? bySeq.get(m.reply_to) : undefined;
          const quoted =
            m.reply_to === null
              ? null
              : quotedMessage
                ? {
                    sender: nameOf(quotedMessage.sender_id),
                    text: quotedMessage.deleted_at !== null ? 'message deleted' : quotedMessage.body || 'attachment',
                  }
                : { sender: 'an earlier message', text: `#${m.reply_to}` };
          const mine = m.sender_id === meId;
          return (
            <View
              key={m.key}
              onLayout={(e: LayoutChangeEvent) => {
                if (m.seq !== null) positions.current.set(m.seq, e.nativeEvent.layout.y);
                if (m.seq !== null && m.seq === target) setTargetLaidOut((n) => n + 1);
              }}
            >
              <MessageRow
                message={m}
                meId={meId}
                sender={nameOf(m.sender_id)}
                showSender={conversation.kind !== 'direct' && prev?.sender_id !== m.sender_id}
                quoted={quoted}
                receipt={mine && m.status === 'sent' ? engine.receipt(conversation, m) : null}
                showStatus={mine && (m.status !== 'sent' || m.key === latestMine || selected === m.key)}
                online={connection === 'online'}
                selected={selected === m.key}
                highlighted={highlight !== null && m.seq === highlight}
                canDelete={mine || engine.knownUser(m.sender_id)?.bot === true}
                actions={actions}
              />
            </View>
          );
        })}
      </ScrollView>
      {newBelow ? (
        <Pressable
          accessibilityRole="button"
          accessibilityLabel="New messages below; show them"
          onPress={() => {
            atBottom.current = true;
            setNewBelow(false);
            scroll.current?.scrollToEnd({ animated: true });
          }}
          style={[styles.newBelow, { backgroundColor: t.primary }]}
          testID="new-below"
        >
          <Text style={{ color: t.onPrimary, fontWeight: '600', fontSize: font.small }}>New messages ↓</Text>
        </Pressable>
      ) : null}
      {history ? (
        <View style={[styles.history, { borderTopColor: t.border, backgroundColor: t.surface }]} accessibilityRole="summary">
          <View style={styles.historyHead}>
            <Text style={{ color: t.text, fontWeight: '600', flex: 1 }}>Earlier versions of #{history.seq}</Text>
            <Pressable accessibilityRole="button" accessibilityLabel="Close earlier versions" onPress={() => setHistory(null)}>
              <Text style={{ color: t.primary }}>Close</Text>
            </Pressable>
          </View>
          {history.edits.length === 0 ? <Text style={{ color: t.muted }}>None kept.</Text> : null}
          {history.edits.map((e, i) => (
            <Text key={i} style={{ color: t.text }}>
              <Text style={{ color: t.muted }}>until {shortTime(e.edited_at)}: </Text>
              {e.body}
            </Text>
          ))}
        </View>
      ) : null}
      <Composer
        conversationId={id}
        members={members}
        meId={meId}
        replyTo={replyTo}
        replyName={replyTo ? nameOf(replyTo.sender_id) : ''}
        editing={editing}
        onDone={() => {
          setReplyTo(null);
          setEditing(null);
          atBottom.current = true;
        }}
        onEditLast={() => {
          const last = [...messages].reverse().find((m) => m.sender_id === meId && m.seq !== null && m.deleted_at === null);
          if (last) {
            setReplyTo(null);
            setEditing(last);
          }
        }}
        disabled={removed ? 'You can no longer send messages here.' : null}
      />
    </View>
  );
}

const styles = StyleSheet.create({
  screen: { flex: 1 },
  list: { flex: 1 },
  listContent: { paddingVertical: space.md },
  older: { alignSelf: 'center', padding: space.sm },
  newBelow: { alignSelf: 'center', borderRadius: 999, paddingHorizontal: space.md, paddingVertical: space.xs, marginVertical: space.xs },
  beginning: { alignSelf: 'center', fontSize: font.small, padding: space.sm },
  history: { borderTopWidth: StyleSheet.hairlineWidth, padding: space.md, gap: space.xs, maxHeight: 200 },
  historyHead: { flexDirection: 'row', alignItems: 'center' },
});
