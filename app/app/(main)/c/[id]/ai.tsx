/**
 * `/c/[id]/ai`: the assistant over this conversation (PROTOCOL.md "AI over a
 * conversation"): its switch (off by default) and proactive mode, ask a question
 * (streamed; citations open the cited message), catch me up on what I have not read,
 * the action items (tick them off), and the log of everything sent to the model.
 */
import { useMutation, useQueryClient } from '@tanstack/react-query';
import { router, useLocalSearchParams } from 'expo-router';
import React, { useRef, useState } from 'react';
import { Pressable, ScrollView, StyleSheet, Switch, Text, View } from 'react-native';

import { EngineError, type AiAnswer, type CatchUp } from '../../../../src/engine';
import { useActionItems, useAiLog, useAiSettings, useConversation, useName, useTitle } from '../../../../src/state/queries';
import { keys } from '../../../../src/state/query';
import { describe, useEngine } from '../../../../src/state/session';
import { IconButton } from '../../../../src/ui/ConversationList';
import { Button, Field, Heading, Notice } from '../../../../src/ui/controls';
import { Bar } from '../../../../src/ui/layout';
import { shortTime } from '../../../../src/ui/text';
import { radius, space, useTheme } from '../../../../src/ui/theme';

function aiError(error: unknown): string {
  if (error instanceof EngineError) {
    if (error.code === 'unavailable') return `The assistant is not available: ${error.message}. (The server needs an AI endpoint in its configuration.)`;
    if (error.code === 'forbidden') return `${error.message}. Turn the assistant on for this conversation above.`;
  }
  return describe(error);
}

export default function AiPanel() {
  const { id } = useLocalSearchParams<{ id: string }>();
  const cid = String(id);
  const t = useTheme();
  const engine = useEngine();
  const client = useQueryClient();
  const conversation = useConversation(cid).data;
  const title = useTitle(conversation);
  const settings = useAiSettings(cid);
  const enabled = settings.data?.enabled ?? false;
  const changedBy = useName(settings.data?.changed_by ?? null);
  const items = useActionItems(cid, enabled);
  const log = useAiLog(cid);
  const [question, setQuestion] = useState('');
  const [streaming, setStreaming] = useState('');
  const [answer, setAnswer] = useState<AiAnswer | null>(null);
  const [asking, setAsking] = useState(false);
  const [askError, setAskError] = useState<string | null>(null);
  const [catchUp, setCatchUp] = useState<CatchUp | null>(null);
  const [catching, setCatching] = useState(false);
  const [catchError, setCatchError] = useState<string | null>(null);
  const abort = useRef<AbortController | null>(null);

  const toggle = useMutation({
    mutationFn: (next: { enabled: boolean; proactive?: boolean }) => engine.setAiSettings(cid, next),
    onSuccess: (data) => {
      client.setQueryData(keys.ai(cid), data);
      void client.invalidateQueries({ queryKey: keys.actionItems(cid) });
    },
  });

  const openSeq = (seq: number) => router.navigate({ pathname: '/c/[id]', params: { id: cid, seq: String(seq) } });

  async function ask() {
    const q = question.trim();
    if (!q) return;
    abort.current?.abort();
    const controller = new AbortController();
    abort.current = controller;
    setAsking(true);
    setAskError(null);
    setAnswer(null);
    setStreaming('');
    try {
      const result = await engine.ask(cid, q, { onDelta: (text) => setStreaming((s) => s + text), signal: controller.signal });
      setAnswer(result);
      void client.invalidateQueries({ queryKey: keys.aiLog(cid) });
    } catch (e) {
      if (!controller.signal.aborted) setAskError(aiError(e));
      setStreaming('');
    } finally {
      setAsking(false);
    }
  }

  async function runCatchUp() {
    setCatching(true);
    setCatchError(null);
    try {
      setCatchUp(await engine.catchUp(cid));
      void client.invalidateQueries({ queryKey: keys.aiLog(cid) });
    } catch (e) {
      setCatchError(aiError(e));
    } finally {
      setCatching(false);
    }
  }

  const setItem = useMutation({
    mutationFn: (v: { itemId: string; status: 'open' | 'done' }) => engine.setActionItem(cid, v.itemId, v.status),
    onSuccess: () => void client.invalidateQueries({ queryKey: keys.actionItems(cid) }),
  });

  return (
    <View style={{ flex: 1, backgroundColor: t.background }}>
      <Bar
        title="Assistant"
        subtitle={title}
        left={<IconButton label="Back to the conversation" text="‹" onPress={() => (router.canGoBack() ? router.back() : router.replace(`/c/${cid}`))} />}
      />
      <ScrollView contentContainerStyle={styles.body} keyboardShouldPersistTaps="handled">
        <View style={[styles.card, { borderColor: t.border, backgroundColor: t.surface }]}>
          <View style={styles.switchRow}>
            <View style={{ flex: 1 }}>
              <Text style={{ color: t.text, fontWeight: '700' }}>Assistant in this conversation</Text>
              <Text style={{ color: t.muted }}>
                While it is off, nothing from here is sent to the AI model. It is on or off for every member.
              </Text>
            </View>
            {/* A Switch is a switch already: a role here would make a second one on the web. */}
            <Switch
              value={enabled}
              disabled={settings.isLoading || toggle.isPending}
              onValueChange={(v) => toggle.mutate({ enabled: v })}
              accessibilityLabel="Assistant in this conversation"
              trackColor={{ false: t.border, true: t.primary }}
              thumbColor={t.surface}
              testID="ai-switch"
            />
          </View>
          <View style={styles.switchRow}>
            <View style={{ flex: 1 }}>
              <Text style={{ color: t.text, fontWeight: '600' }}>Suggest meeting times</Text>
              <Text style={{ color: t.muted }}>When members settle on a time, the assistant posts the options to vote on.</Text>
            </View>
            <Switch
              value={settings.data?.proactive ?? false}
              disabled={!enabled || toggle.isPending}
              onValueChange={(v) => toggle.mutate({ enabled, proactive: v })}
              accessibilityLabel="Suggest meeting times"
              trackColor={{ false: t.border, true: t.primary }}
              thumbColor={t.surface}
            />
          </View>
          {settings.data?.changed_at ? (
            <Text style={{ color: t.muted }}>
              Last changed by {changedBy || 'someone'} at {shortTime(settings.data.changed_at)}
            </Text>
          ) : null}
          {settings.error ? <Notice kind="error" text={describe(settings.error)} /> : null}
          {toggle.error ? <Notice kind="error" text={describe(toggle.error)} /> : null}
        </View>

        <View style={styles.section}>
          <Heading level={2} text="Ask about this conversation" />
          <Text style={{ color: t.muted, marginBottom: space.sm }}>Only you see the answer; nothing is posted.</Text>
          <Field
            label="Question"
            value={question}
            onChangeText={setQuestion}
            onSubmitEditing={() => void ask()}
            returnKeyType="send"
            placeholder="When is the release?"
            testID="ai-question"
          />
          <Button title="Ask" onPress={() => void ask()} busy={asking} disabled={!question.trim()} style={{ alignSelf: 'flex-start' }} testID="ai-ask" />
          {askError ? <Notice kind="error" text={askError} /> : null}
          {streaming || answer ? (
            <View style={[styles.answer, { borderColor: t.border }]} accessibilityLiveRegion="polite">
              <Text style={{ color: t.text }} selectable>
                {answer?.answer ?? streaming}
              </Text>
              {answer ? <Citations seqs={answer.citations} open={openSeq} note={answer.cached ? 'from the cache' : null} /> : null}
            </View>
          ) : null}
        </View>

        <View style={styles.section}>
          <Heading level={2} text="Catch me up" />
          <Button title="Summarise what I have not read" kind="plain" onPress={() => void runCatchUp()} busy={catching} style={{ alignSelf: 'flex-start' }} testID="ai-catch-up" />
          {catchError ? <Notice kind="error" text={catchError} /> : null}
          {catchUp ? (
            <View style={[styles.answer, { borderColor: t.border }]}>
              <Text style={{ color: t.text }}>{catchUp.summary ?? 'You have read everything here.'}</Text>
              {catchUp.from_seq !== null ? (
                <Text style={{ color: t.muted }}>
                  Messages #{catchUp.from_seq} to #{catchUp.to_seq}
                </Text>
              ) : null}
              <Citations seqs={catchUp.citations} open={openSeq} note={null} />
            </View>
          ) : null}
        </View>

        <View style={styles.section}>
          <Heading level={2} text="Action items" />
          {!enabled ? <Text style={{ color: t.muted }}>Turn the assistant on to see the action items found here.</Text> : null}
          {items.error ? <Notice kind="error" text={aiError(items.error)} /> : null}
          {enabled && items.data?.length === 0 ? <Text style={{ color: t.muted }}>None found yet.</Text> : null}
          {(items.data ?? []).map((item) => (
            <View key={item.id} style={[styles.item, { borderBottomColor: t.border }]}>
              <Pressable
                accessibilityRole="checkbox"
                aria-checked={item.status === 'done'}
                accessibilityLabel={item.text}
                onPress={() => setItem.mutate({ itemId: item.id, status: item.status === 'done' ? 'open' : 'done' })}
                style={[styles.check, { borderColor: t.primary, backgroundColor: item.status === 'done' ? t.primary : 'transparent' }]}
              >
                {item.status === 'done' ? <Text style={{ color: t.onPrimary }}>✓</Text> : null}
              </Pressable>
              <View style={{ flex: 1 }}>
                <Text style={{ color: t.text, textDecorationLine: item.status === 'done' ? 'line-through' : 'none' }}>{item.text}</Text>
                <ItemMeta ownerId={item.owner_id} due={item.due} />
                <Citations seqs={item.source_seqs} open={openSeq} note={null} />
              </View>
            </View>
          ))}
          {setItem.error ? <Notice kind="error" text={describe(setItem.error)} /> : null}
        </View>

        <View style={styles.section}>
          <Heading level={2} text="What was sent to the model" />
          {log.error ? <Notice kind="error" text={describe(log.error)} /> : null}
          {log.data?.length === 0 ? <Text style={{ color: t.muted }}>Nothing from this conversation has been sent.</Text> : null}
          {(log.data ?? []).map((entry, i) => (
            <LogLine key={i} at={entry.at} userId={entry.user_id} action={entry.action} seqs={entry.seqs} />
          ))}
        </View>
      </ScrollView>
    </View>
  );
}

function Citations({ seqs, open, note }: { seqs: number[]; open: (seq: number) => void; note: string | null }) {
  const t = useTheme();
  if (seqs.length === 0 && !note) return null;
  return (
    <View style={styles.cites}>
      {seqs.map((seq) => (
        <Pressable
          key={seq}
          accessibilityRole="link"
          accessibilityLabel={`Show message ${seq}`}
          onPress={() => open(seq)}
          style={[styles.cite, { borderColor: t.primary }]}
          testID={`cite-${seq}`}
        >
          <Text style={{ color: t.primary }}>#{seq}</Text>
        </Pressable>
      ))}
      {note ? <Text style={{ color: t.muted }}>{note}</Text> : null}
    </View>
  );
}

function ItemMeta({ ownerId, due }: { ownerId: string | null; due: string | null }) {
  const t = useTheme();
  const owner = useName(ownerId);
  if (!ownerId && !due) return null;
  return (
    <Text style={{ color: t.muted }}>
      {ownerId ? owner : ''}
      {ownerId && due ? ' · ' : ''}
      {due ? `due ${due}` : ''}
    </Text>
  );
}

const ACTIONS: Record<string, string> = { ask: 'asked', catch_up: 'caught up', action_items: 'action items', proactive: 'meeting suggestion' };

function LogLine({ at, userId, action, seqs }: { at: number; userId: string | null; action: string; seqs: number[] }) {
  const t = useTheme();
  const who = useName(userId);
  return (
    <Text style={{ color: t.text, paddingVertical: 2 }}>
      <Text style={{ color: t.muted }}>{shortTime(at)} </Text>
      {userId ? who : 'background job'}: {ACTIONS[action] ?? action}, {seqs.length} message{seqs.length === 1 ? '' : 's'}
    </Text>
  );
}

const styles = StyleSheet.create({
  body: { padding: space.md, maxWidth: 720, width: '100%', gap: space.md },
  card: { borderWidth: 1, borderRadius: radius.lg, padding: space.md, gap: space.md },
  switchRow: { flexDirection: 'row', alignItems: 'center', gap: space.md },
  section: { marginTop: space.md },
  answer: { borderWidth: 1, borderRadius: radius.md, padding: space.md, marginTop: space.sm, gap: space.sm },
  cites: { flexDirection: 'row', flexWrap: 'wrap', gap: space.xs, alignItems: 'center' },
  cite: { borderWidth: 1, borderRadius: radius.round, paddingHorizontal: space.sm, paddingVertical: 2 },
  item: { flexDirection: 'row', gap: space.md, paddingVertical: space.sm, borderBottomWidth: StyleSheet.hairlineWidth },
  check: { width: 24, height: 24, borderWidth: 2, borderRadius: 6, alignItems: 'center', justifyContent: 'center' },
});
