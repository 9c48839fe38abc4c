/**
 * `/new`: start a direct conversation (pick one person), a group (a title and several
 * people), or find and join a channel (or make one).
 */
import { router } from 'expo-router';
import React, { useState } from 'react';
import { Pressable, ScrollView, StyleSheet, Text, View } from 'react-native';

import type { User } from '../../src/engine';
import { useChannels } from '../../src/state/queries';
import { describe, useEngine } from '../../src/state/session';
import { IconButton } from '../../src/ui/ConversationList';
import { Button, Field, Notice } from '../../src/ui/controls';
import { Bar } from '../../src/ui/layout';
import { UserPicker } from '../../src/ui/UserPicker';
import { radius, space, useTheme } from '../../src/ui/theme';

type Tab = 'direct' | 'group' | 'channel';

export default function NewConversation() {
  const t = useTheme();
  const [tab, setTab] = useState<Tab>('direct');
  return (
    <View style={{ flex: 1, backgroundColor: t.background }}>
      <Bar
        title="New conversation"
        left={<IconButton label="Back" text="‹" onPress={() => (router.canGoBack() ? router.back() : router.replace('/chats'))} />}
      />
      <View style={styles.tabs} accessibilityRole="tablist">
        {(['direct', 'group', 'channel'] as const).map((k) => (
          <Pressable
            key={k}
            accessibilityRole="tab"
            aria-selected={tab === k}
            onPress={() => setTab(k)}
            style={[styles.tab, { borderColor: t.border, backgroundColor: tab === k ? t.primary : 'transparent' }]}
            testID={`tab-${k}`}
          >
            <Text style={{ color: tab === k ? t.onPrimary : t.text, fontWeight: '600' }}>
              {k === 'direct' ? 'Direct' : k === 'group' ? 'Group' : 'Channels'}
            </Text>
          </Pressable>
        ))}
      </View>
      <ScrollView contentContainerStyle={styles.body} keyboardShouldPersistTaps="handled">
        {tab === 'direct' ? <Direct /> : tab === 'group' ? <Group /> : <Channels />}
      </ScrollView>
    </View>
  );
}

function Direct() {
  const engine = useEngine();
  const [error, setError] = useState<string | null>(null);
  async function pick(user: User) {
    try {
      const c = await engine.createDirect(user.id);
      router.replace(`/c/${c.id}`);
    } catch (e) {
      setError(describe(e));
    }
  }
  return (
    <View>
      <UserPicker chosen={[]} onPick={(u) => void pick(u)} label="Who do you want to talk to?" />
      {error ? <Notice kind="error" text={error} /> : null}
    </View>
  );
}

function Group() {
  const engine = useEngine();
  const [title, setTitle] = useState('');
  const [chosen, setChosen] = useState<User[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  async function create() {
    if (!title.trim()) {
      setError('Give the group a title.');
      return;
    }
    if (chosen.length === 0) {
      setError('Pick at least one person.');
      return;
    }
    setBusy(true);
    try {
      const c = await engine.createGroup(title.trim(), chosen.map((u) => u.id));
      router.replace(`/c/${c.id}`);
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(false);
    }
  }
  return (
    <View>
      <Field label="Group title" value={title} onChangeText={setTitle} testID="group-title" />
      <UserPicker
        chosen={chosen}
        onPick={(u) => setChosen((c) => (c.some((x) => x.id === u.id) ? c.filter((x) => x.id !== u.id) : [...c, u]))}
        label="Members"
      />
      {chosen.length > 0 ? <Notice text={`With ${chosen.map((u) => u.display_name || u.username).join(', ')}`} /> : null}
      {error ? <Notice kind="error" text={error} /> : null}
      <Button title="Create group" onPress={() => void create()} busy={busy} style={{ marginTop: space.md }} testID="create-group" />
    </View>
  );
}

function Channels() {
  const t = useTheme();
  const engine = useEngine();
  const [q, setQ] = useState('');
  const channels = useChannels(q.trim());
  const [title, setTitle] = useState('');
  const [topic, setTopic] = useState('');
  const [error, setError] = useState<string | null>(null);
  async function join(id: string) {
    try {
      const c = await engine.joinChannel(id);
      router.replace(`/c/${c.id}`);
    } catch (e) {
      setError(describe(e));
    }
  }
  async function create() {
    if (!title.trim()) {
      setError('Give the channel a name.');
      return;
    }
    try {
      const c = await engine.createChannel(title.trim(), topic.trim() || undefined);
      router.replace(`/c/${c.id}`);
    } catch (e) {
      setError(describe(e));
    }
  }
  return (
    <View>
      <Field label="Find a channel" value={q} onChangeText={setQ} autoCapitalize="none" testID="channel-search" />
      {channels.error ? <Notice kind="error" text={describe(channels.error)} /> : null}
      <View accessibilityRole="list">
        {(channels.data ?? []).map((c) => (
          <View key={c.id} style={[styles.channel, { borderBottomColor: t.border }]}>
            <View style={{ flex: 1 }}>
              <Text style={{ color: t.text, fontWeight: '600' }}>#{c.title}</Text>
              <Text style={{ color: t.muted }} numberOfLines={1}>
                {c.member_count ?? c.member_ids.length} members{c.topic ? ` · ${c.topic}` : ''}
              </Text>
            </View>
            <Button small title="Open" label={`Open #${c.title}`} onPress={() => void join(c.id)} testID={`join-${c.title}`} />
          </View>
        ))}
      </View>
      <Text accessibilityRole="header" style={{ color: t.text, fontWeight: '700', marginTop: space.xl, marginBottom: space.sm }}>
        Make a channel
      </Text>
      <Field label="Channel name" value={title} onChangeText={setTitle} testID="channel-title" />
      <Field label="Topic (optional)" value={topic} onChangeText={setTopic} />
      {error ? <Notice kind="error" text={error} /> : null}
      <Button title="Create channel" onPress={() => void create()} testID="create-channel" />
    </View>
  );
}

const styles = StyleSheet.create({
  tabs: { flexDirection: 'row', gap: space.sm, padding: space.md },
  tab: { borderWidth: 1, borderRadius: radius.round, paddingHorizontal: space.lg, paddingVertical: space.xs },
  body: { padding: space.md, maxWidth: 640, width: '100%' },
  channel: { flexDirection: 'row', alignItems: 'center', gap: space.md, paddingVertical: space.sm, borderBottomWidth: StyleSheet.hairlineWidth },
});
