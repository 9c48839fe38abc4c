/**
 * `/c/[id]/members`: who is in the conversation (with presence), add people to a group
 * or channel, remove a member (the server decides who may: a member themself, a
 * group's creator), leave; rename a group or channel and set its topic.
 */
import { router, useLocalSearchParams } from 'expo-router';
import React, { useState } from 'react';
import { ScrollView, StyleSheet, Text, View } from 'react-native';

import type { User } from '../../../../src/engine';
import { useConversation, useMembers, useTitle } from '../../../../src/state/queries';
import { describe, useEngine, useSession } from '../../../../src/state/session';
import { IconButton } from '../../../../src/ui/ConversationList';
import { Avatar, Button, Field, Heading, Notice } from '../../../../src/ui/controls';
import { Bar, Loading } from '../../../../src/ui/layout';
import { shortTime } from '../../../../src/ui/text';
import { space, useTheme } from '../../../../src/ui/theme';
import { UserPicker } from '../../../../src/ui/UserPicker';

export default function Members() {
  const { id } = useLocalSearchParams<{ id: string }>();
  const cid = String(id);
  const t = useTheme();
  const engine = useEngine();
  const me = useSession((s) => s.me);
  const presence = useSession((s) => s.presence);
  const conversation = useConversation(cid).data;
  const members = useMembers(conversation).data ?? [];
  const title = useTitle(conversation);
  const [adding, setAdding] = useState<User[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [info, setInfo] = useState<string | null>(null);
  const [newTitle, setNewTitle] = useState<string | null>(null);
  const [newTopic, setNewTopic] = useState<string | null>(null);

  if (!conversation) return <Loading />;
  const multi = conversation.kind !== 'direct';
  const back = () => (router.canGoBack() ? router.back() : router.replace(`/c/${cid}`));

  async function run(what: () => Promise<unknown>, done?: string) {
    setError(null);
    setInfo(null);
    try {
      await what();
      if (done) setInfo(done);
    } catch (e) {
      setError(describe(e));
    }
  }

  return (
    <View style={{ flex: 1, backgroundColor: t.background }}>
      <Bar title={title} subtitle={multi ? `${conversation.member_ids.length} members` : 'Direct conversation'} left={<IconButton label="Back to the conversation" text="‹" onPress={back} />} />
      <ScrollView contentContainerStyle={styles.body} keyboardShouldPersistTaps="handled">
        {error ? <Notice kind="error" text={error} /> : null}
        {info ? <Notice text={info} /> : null}
        {multi ? (
          <View style={styles.section}>
            <Heading level={2} text="About" />
            <Field label={conversation.kind === 'channel' ? 'Channel name' : 'Group title'} value={newTitle ?? conversation.title ?? ''} onChangeText={setNewTitle} />
            <Field label="Topic" value={newTopic ?? conversation.topic ?? ''} onChangeText={setNewTopic} />
            <Button
              small
              title="Save"
              label="Save title and topic"
              disabled={newTitle === null && newTopic === null}
              onPress={() =>
                void run(async () => {
                  const changes: { title?: string; topic?: string } = {};
                  if (newTitle !== null && newTitle.trim() !== (conversation.title ?? '')) changes.title = newTitle.trim();
                  if (newTopic !== null && newTopic.trim() !== (conversation.topic ?? '')) changes.topic = newTopic.trim();
                  if (Object.keys(changes).length) await engine.updateConversation(cid, changes);
                  setNewTitle(null);
                  setNewTopic(null);
                }, 'Saved.')
              }
              style={{ alignSelf: 'flex-start' }}
            />
          </View>
        ) : null}
        <View style={styles.section}>
          <Heading level={2} text="Members" />
          <View accessibilityRole="list">
            {members.map((u) => {
              const p = presence[u.id] ?? engine.presence(u.id);
              const self = u.id === me?.id;
              return (
                <View key={u.id} style={[styles.member, { borderBottomColor: t.border }]} accessibilityLabel={`${u.display_name}, ${p.status}`}>
                  <Avatar name={u.display_name || u.username} online={p.status === 'online'} />
                  <View style={{ flex: 1 }}>
                    <Text style={{ color: t.text, fontWeight: '600' }}>
                      {u.display_name}
                      {self ? ' (you)' : ''}
                    </Text>
                    <Text style={{ color: t.muted }}>
                      @{u.username} · {p.status === 'online' ? 'online' : p.last_seen_at ? `last seen ${shortTime(p.last_seen_at)}` : 'offline'}
                    </Text>
                  </View>
                  {multi && !self ? (
                    <Button
                      small
                      kind="danger"
                      title="Remove"
                      label={`Remove ${u.display_name}`}
                      onPress={() => void run(() => engine.removeMember(cid, u.id), `${u.display_name} was removed.`)}
                    />
                  ) : null}
                </View>
              );
            })}
          </View>
        </View>
        {multi ? (
          <View style={styles.section}>
            <Heading level={2} text="Add people" />
            <UserPicker
              key={conversation.member_ids.length}
              chosen={adding}
              exclude={conversation.member_ids}
              onPick={(u) => setAdding((a) => (a.some((x) => x.id === u.id) ? a.filter((x) => x.id !== u.id) : [...a, u]))}
            />
            <Button
              title={adding.length ? `Add ${adding.length}` : 'Add'}
              disabled={adding.length === 0}
              onPress={() =>
                void run(async () => {
                  await engine.addMembers(cid, adding.map((u) => u.id));
                  setAdding([]);
                }, 'Added.')
              }
              style={{ alignSelf: 'flex-start', marginTop: space.sm }}
              testID="add-members"
            />
          </View>
        ) : null}
        {multi && me ? (
          <View style={styles.section}>
            <Button
              kind="danger"
              title={conversation.kind === 'channel' ? 'Leave channel' : 'Leave group'}
              onPress={() =>
                void run(async () => {
                  await engine.removeMember(cid, me.id);
                  router.replace('/chats');
                })
              }
              style={{ alignSelf: 'flex-start' }}
            />
          </View>
        ) : null}
      </ScrollView>
    </View>
  );
}

const styles = StyleSheet.create({
  body: { padding: space.md, maxWidth: 680, width: '100%' },
  section: { marginBottom: space.xl },
  member: { flexDirection: 'row', alignItems: 'center', gap: space.md, paddingVertical: space.sm, borderBottomWidth: StyleSheet.hairlineWidth },
});
