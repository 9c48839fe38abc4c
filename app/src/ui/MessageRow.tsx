/**
 * One message in a conversation: who and when, the quoted message it replies to, the
 * body with mentions, attachments, "(edited)", reactions, and under my own messages
 * their status (sending, queued, sent, read, "read by 2 of 4", failed). Pressing it
 * (or Enter on the keyboard) selects it and shows its actions.
 */
import React from 'react';
import { Pressable, StyleSheet, Text, View } from 'react-native';

import type { LocalMessage, Receipt } from '../engine';
import { Attachment } from './Attachment';
import { statusText } from './status';
import { mentionParts, shortTime } from './text';
import { font, radius, space, useTheme } from './theme';

export const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '🙏'] as const;

export type MessageActions = {
  select: (key: string | null) => void;
  reply: (m: LocalMessage) => void;
  edit: (m: LocalMessage) => void;
  remove: (m: LocalMessage) => void;
  react: (m: LocalMessage, emoji: string, on: boolean) => void;
  discard: (m: LocalMessage) => void;
  history: (m: LocalMessage) => void;
  jump: (seq: number) => void;
};

type Props = {
  message: LocalMessage;
  meId: string;
  sender: string;
  showSender: boolean;
  quoted: { sender: string; text: string } | null;
  receipt: Receipt | null;
  showStatus: boolean;
  online: boolean;
  selected: boolean;
  highlighted: boolean;
  canDelete: boolean;
  actions: MessageActions;
};

export const MessageRow = React.memo(function MessageRow(props: Props) {
  const { message, meId, sender, showSender, quoted, receipt, showStatus, online, selected, highlighted, canDelete, actions } = props;
  const t = useTheme();
  const mine = message.sender_id === meId;
  const deleted = message.deleted_at !== null;
  const status = mine ? statusText(message, receipt, online) : null;
  const bubble = mine ? t.mine : t.theirs;
  const fg = mine ? t.onMine : t.text;
  const when = shortTime(message.created_at);
  const label = `${mine ? 'You' : sender}, ${when}: ${deleted ? 'message deleted' : message.body || 'attachment'}${
    message.edited_at !== null && !deleted ? ', edited' : ''
  }${status ? `. ${status}` : ''}`;
  const reactions = Object.entries(message.reactions);

  return (
    <View
      style={[styles.wrap, mine ? styles.mineWrap : styles.theirsWrap, highlighted && { backgroundColor: t.highlight }]}
      testID={message.seq !== null ? `message-${message.seq}` : `message-pending-${message.client_id}`}
    >
      {showSender && !mine ? <Text style={[styles.sender, { color: t.muted }]}>{sender}</Text> : null}
      <Pressable
        accessibilityRole="button"
        accessibilityLabel={label}
        accessibilityHint="Shows the actions for this message"
        aria-expanded={selected}
        onPress={() => actions.select(selected ? null : message.key)}
        onLongPress={() => actions.select(message.key)}
        style={(state) => [
          styles.bubble,
          { backgroundColor: deleted ? 'transparent' : bubble, borderColor: deleted ? t.border : bubble },
          message.status === 'failed' && { borderColor: t.danger, borderWidth: 2 },
          (state as { focused?: boolean }).focused && { outlineColor: t.focus, outlineStyle: 'solid', outlineWidth: 2 },
        ]}
      >
        {quoted && message.reply_to !== null ? (
          <Pressable
            accessibilityRole="link"
            accessibilityLabel={`Replying to ${quoted.sender}: ${quoted.text}. Show it`}
            onPress={() => message.reply_to !== null && actions.jump(message.reply_to)}
            style={[styles.quote, { borderLeftColor: mine ? 'rgba(255,255,255,0.6)' : t.primary }]}
          >
            <Text numberOfLines={2} style={{ color: fg, opacity: 0.85, fontSize: font.small }}>
              <Text style={{ fontWeight: '700' }}>{quoted.sender}: </Text>
              {quoted.text}
            </Text>
          </Pressable>
        ) : null}
        {deleted ? (
          <Text style={{ color: t.muted, fontStyle: 'italic' }}>message deleted</Text>
        ) : (
          <>
            {message.body ? (
              <Text style={[styles.body, { color: fg }]} selectable>
                {mentionParts(message.body).map((part, i) =>
                  part.mention ? (
                    <Text key={i} style={{ fontWeight: '700', color: mine ? fg : t.mention }}>
                      {part.text}
                    </Text>
                  ) : (
                    <Text key={i}>{part.text}</Text>
                  ),
                )}
              </Text>
            ) : null}
            {message.attachments.map((id) => (
              <Attachment key={id} mediaId={id} onDark={mine} />
            ))}
          </>
        )}
        <Text style={[styles.meta, { color: fg, opacity: 0.75 }]}>
          {when}
          {message.edited_at !== null && !deleted ? ' · edited' : ''}
          {message.pendingChange ? ' · saving…' : ''}
        </Text>
      </Pressable>
      {reactions.length > 0 ? (
        <View style={[styles.reactions, mine && { justifyContent: 'flex-end' }]}>
          {reactions.map(([emoji, users]) => {
            const reacted = users.includes(meId);
            return (
              <Pressable
                key={emoji}
                accessibilityRole="button"
                accessibilityLabel={`${emoji} ${users.length}${reacted ? ', you reacted; press to remove' : '; press to add yours'}`}
                aria-selected={reacted}
                onPress={() => actions.react(message, emoji, !reacted)}
                style={[styles.chip, { borderColor: reacted ? t.primary : t.border, backgroundColor: t.surface }]}
                testID={`reaction-${message.seq ?? 'pending'}-${emoji}`}
              >
                <Text style={{ color: t.text, fontSize: font.small }}>
                  {emoji} {users.length}
                </Text>
              </Pressable>
            );
          })}
        </View>
      ) : null}
      {status && showStatus ? (
        <Text
          style={[styles.status, { color: message.status === 'failed' ? t.danger : t.muted }]}
          accessibilityLiveRegion="polite"
          testID={`status-${message.seq ?? message.client_id}`}
        >
          {status}
        </Text>
      ) : null}
      {selected ? (
        <Actions message={message} meId={meId} mine={mine} canDelete={canDelete} actions={actions} />
      ) : null}
    </View>
  );
});

function Actions({ message, meId, mine, canDelete, actions }: { message: LocalMessage; meId: string; mine: boolean; canDelete: boolean; actions: MessageActions }) {
  const t = useTheme();
  const [confirming, setConfirming] = React.useState(false);
  const deleted = message.deleted_at !== null;
  const stored = message.seq !== null;
  const item = (title: string, onPress: () => void, danger = false, label = title) => (
    <Pressable
      key={title}
      accessibilityRole="button"
      accessibilityLabel={label}
      onPress={onPress}
      style={[styles.action, { borderColor: t.border, backgroundColor: t.surface }]}
    >
      <Text style={{ color: danger ? t.danger : t.primary, fontSize: font.small, fontWeight: '600' }}>{title}</Text>
    </Pressable>
  );
  return (
    <View style={[styles.actions, mine && { justifyContent: 'flex-end' }]} accessibilityRole="toolbar" accessibilityLabel="Message actions">
      {stored && !deleted
        ? QUICK_REACTIONS.map((emoji) => {
            const on = !(message.reactions[emoji] ?? []).includes(meId);
            return item(emoji, () => actions.react(message, emoji, on), false, `${on ? 'React with' : 'Remove'} ${emoji}`);
          })
        : null}
      {stored && !deleted ? item('Reply', () => actions.reply(message)) : null}
      {stored && !deleted && mine ? item('Edit', () => actions.edit(message)) : null}
      {stored && message.edited_at !== null && !deleted ? item('Earlier versions', () => actions.history(message)) : null}
      {stored && !deleted && canDelete && !confirming ? item('Delete', () => setConfirming(true), true) : null}
      {confirming ? item('Yes, delete it for everyone', () => actions.remove(message), true) : null}
      {confirming ? item('Keep it', () => setConfirming(false)) : null}
      {!stored ? item(message.status === 'failed' ? 'Discard' : 'Cancel sending', () => actions.discard(message), true) : null}
      {item('Close', () => actions.select(null))}
    </View>
  );
}

const styles = StyleSheet.create({
  wrap: { paddingHorizontal: space.md, paddingVertical: 3, maxWidth: '100%' },
  mineWrap: { alignItems: 'flex-end' },
  theirsWrap: { alignItems: 'flex-start' },
  sender: { fontSize: font.small, fontWeight: '600', marginBottom: 2, marginLeft: space.xs },
  bubble: {
    maxWidth: 560,
    borderRadius: radius.lg,
    borderWidth: 1,
    paddingHorizontal: space.md,
    paddingVertical: space.sm,
  },
  body: { fontSize: font.body, lineHeight: 21 },
  meta: { fontSize: 11, marginTop: 2, alignSelf: 'flex-end' },
  quote: { borderLeftWidth: 3, paddingLeft: space.sm, marginBottom: space.xs },
  reactions: { flexDirection: 'row', flexWrap: 'wrap', gap: space.xs, marginTop: 3 },
  chip: { borderWidth: 1, borderRadius: radius.round, paddingHorizontal: space.sm, paddingVertical: 2 },
  status: { fontSize: 11, marginTop: 2 },
  actions: { flexDirection: 'row', flexWrap: 'wrap', gap: space.xs, marginTop: space.xs, maxWidth: 560 },
  action: { borderWidth: 1, borderRadius: radius.round, paddingHorizontal: space.sm, paddingVertical: 4 },
});
