/**
 * The conversation list: each row with its title, the last message, its time, the
 * unread badge and, for a direct conversation, the other person's presence. Shown as
 * the `/chats` screen on phones and beside the open conversation on wide screens.
 */
import { router, usePathname } from 'expo-router';
import React, { useEffect } from 'react';
import { FlatList, Platform, Pressable, StyleSheet, Text, View } from 'react-native';

import type { LocalConversation } from '../engine';
import { useConversations, useName, useTitle } from '../state/queries';
import { useSession } from '../state/session';
import { ConnectionBanner } from './ConnectionBanner';
import { Avatar, Badge, Notice } from './controls';
import { Bar, useWide } from './layout';
import { shortTime } from './text';
import { font, space, useTheme } from './theme';

export function ConversationList() {
  const t = useTheme();
  const { data, isLoading, error } = useConversations();
  const me = useSession((s) => s.me);
  const wide = useWide();
  const unread = (data ?? []).reduce((sum, c) => sum + c.unread_count, 0);
  // The browser tab says how much is unread, as mail and chat apps do.
  useEffect(() => {
    if (Platform.OS === 'web' && typeof document !== 'undefined') {
      document.title = unread > 0 ? `(${unread}) MessageAI` : 'MessageAI';
    }
  }, [unread]);
  return (
    <View style={[styles.pane, { backgroundColor: t.background }]}>
      <Bar
        title="Chats"
        subtitle={me ? `Signed in as ${me.display_name || me.username}` : null}
        right={
          <>
            <IconButton label="Search messages" text="⌕" onPress={() => router.push('/search')} testID="open-search" />
            <IconButton label="New conversation" text="+" onPress={() => router.push('/new')} testID="new-conversation" />
            <IconButton label="Settings" text="⚙" onPress={() => router.push('/settings')} testID="open-settings" />
          </>
        }
      />
      {wide ? null : <ConnectionBanner />}
      {error ? <Notice kind="error" text={String(error)} /> : null}
      <FlatList
        data={data ?? []}
        keyExtractor={(c) => c.id}
        renderItem={({ item }) => <Row conversation={item} />}
        accessibilityRole="list"
        accessibilityLabel="Conversations"
        ListEmptyComponent={
          isLoading ? null : (
            <View style={styles.empty}>
              <Text style={{ color: t.muted, textAlign: 'center' }}>
                No conversations yet. Start one with + above.
              </Text>
            </View>
          )
        }
      />
    </View>
  );
}

export function IconButton({ label, text, onPress, testID, active }: { label: string; text: string; onPress: () => void; testID?: string; active?: boolean }) {
  const t = useTheme();
  return (
    <Pressable
      accessibilityRole="button"
      accessibilityLabel={label}
      onPress={onPress}
      testID={testID}
      style={({ pressed }) => [
        styles.icon,
        text.length > 2 && styles.wordIcon,
        { backgroundColor: active ? t.surfaceAlt : pressed ? t.surfaceAlt : 'transparent' },
      ]}
    >
      <Text style={{ color: t.primary, fontSize: text.length > 2 ? font.body : 20, fontWeight: '600' }} accessible={false}>
        {text}
      </Text>
    </Pressable>
  );
}

function Row({ conversation }: { conversation: LocalConversation }) {
  const t = useTheme();
  const me = useSession((s) => s.me);
  const path = usePathname();
  const other = conversation.kind === 'direct' ? conversation.member_ids.find((id) => id !== me?.id) : undefined;
  const presence = useSession((s) => (other ? s.presence[other] : undefined));
  const lastSender = useName(conversation.last_message?.sender_id);
  const title = useTitle(conversation);
  const wide = useWide();
  const last = conversation.last_message;
  const open = path === `/c/${conversation.id}` || path.startsWith(`/c/${conversation.id}/`);
  let preview = 'No messages yet';
  if (last) {
    const who = last.sender_id === me?.id ? 'You' : lastSender;
    const what = last.deleted_at !== null ? 'message deleted' : last.body || (last.attachments.length ? 'Attachment' : '');
    preview = conversation.kind === 'direct' && last.sender_id !== me?.id ? what : `${who}: ${what}`;
  }
  const unread = conversation.unread_count;
  const label = `${title}${unread ? `, ${unread} unread` : ''}${presence?.status === 'online' ? ', online' : ''}. ${preview}`;
  return (
    <Pressable
      accessibilityRole="link"
      accessibilityLabel={label}
      aria-selected={open}
      // Beside the list (wide screens) the pane shows one conversation: replace it rather
      // than pile screens up; on phones the conversation goes over the list.
      onPress={() => (wide ? router.replace(`/c/${conversation.id}`) : router.push(`/c/${conversation.id}`))}
      testID={`conversation-${conversation.id}`}
      style={({ pressed }) => [styles.row, { backgroundColor: open || pressed ? t.surfaceAlt : 'transparent', borderBottomColor: t.border }]}
    >
      <Avatar name={conversation.kind === 'channel' ? '#' : title} online={other ? presence?.status === 'online' : null} />
      <View style={styles.rowText}>
        <View style={styles.rowTop}>
          <Text numberOfLines={1} style={[styles.title, { color: t.text, fontWeight: unread ? '700' : '600' }]}>
            {title}
          </Text>
          {last ? <Text style={{ color: t.muted, fontSize: font.small }}>{shortTime(last.created_at)}</Text> : null}
        </View>
        <View style={styles.rowTop}>
          <Text numberOfLines={1} style={{ color: unread ? t.text : t.muted, flex: 1, fontSize: font.small + 1 }}>
            {preview}
          </Text>
          {conversation.pending_count > 0 ? (
            <Text style={{ color: t.muted, fontSize: font.small }}>{conversation.pending_count} queued</Text>
          ) : null}
          <Badge count={unread} />
        </View>
      </View>
    </Pressable>
  );
}

const styles = StyleSheet.create({
  pane: { flex: 1 },
  row: {
    flexDirection: 'row',
    gap: space.md,
    paddingHorizontal: space.md,
    paddingVertical: space.md,
    alignItems: 'center',
    borderBottomWidth: StyleSheet.hairlineWidth,
  },
  rowText: { flex: 1, minWidth: 0, gap: 2 },
  rowTop: { flexDirection: 'row', alignItems: 'center', gap: space.sm },
  title: { flex: 1, fontSize: font.body },
  icon: { width: 36, height: 36, borderRadius: 18, alignItems: 'center', justifyContent: 'center' },
  wordIcon: { width: 'auto', paddingHorizontal: space.sm },
  empty: { padding: space.xl },
});
