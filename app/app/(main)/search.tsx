/**
 * `/search` (`?c=ID`: only that conversation): search messages on the server, by
 * words, by meaning or both; results show the matched words and open the message in
 * its conversation.
 */
import { router, useLocalSearchParams } from 'expo-router';
import React, { useEffect, useState } from 'react';
import { FlatList, Pressable, StyleSheet, Text, View } from 'react-native';

import type { SearchMode, SearchResult } from '../../src/engine';
import { useConversation, useName, useSearch, useTitle } from '../../src/state/queries';
import { describe } from '../../src/state/session';
import { IconButton } from '../../src/ui/ConversationList';
import { Field, Notice } from '../../src/ui/controls';
import { Bar } from '../../src/ui/layout';
import { highlightParts, shortTime } from '../../src/ui/text';
import { font, radius, space, useTheme } from '../../src/ui/theme';

const MODES: { mode: SearchMode; label: string }[] = [
  { mode: 'hybrid', label: 'Best' },
  { mode: 'keyword', label: 'Words' },
  { mode: 'semantic', label: 'Meaning' },
];

export default function SearchScreen() {
  const params = useLocalSearchParams<{ c?: string; q?: string }>();
  const scope = params.c ? String(params.c) : undefined;
  const t = useTheme();
  const [text, setText] = useState(params.q ? String(params.q) : '');
  const [q, setQ] = useState(text);
  const [mode, setMode] = useState<SearchMode>('hybrid');
  const scoped = useConversation(scope ?? '').data;
  const scopeTitle = useTitle(scope ? scoped : null);
  const results = useSearch(q, scope, mode);

  // Search as the person types, once they pause.
  useEffect(() => {
    const timer = setTimeout(() => setQ(text), 300);
    return () => clearTimeout(timer);
  }, [text]);

  const answer = results.data;
  return (
    <View style={{ flex: 1, backgroundColor: t.background }}>
      <Bar
        title="Search"
        subtitle={scope ? `in ${scopeTitle}` : 'all your conversations'}
        left={<IconButton label="Back" text="‹" onPress={() => (router.canGoBack() ? router.back() : router.replace('/chats'))} />}
      />
      <View style={styles.controls}>
        <Field
          label="Search messages"
          value={text}
          onChangeText={setText}
          onSubmitEditing={() => setQ(text)}
          returnKeyType="search"
          placeholder='words, or "a phrase"'
          autoFocus
          testID="search-input"
        />
        <View style={styles.modes} accessibilityRole="radiogroup" accessibilityLabel="Search by">
          {MODES.map((m) => (
            <Pressable
              key={m.mode}
              accessibilityRole="radio"
              aria-checked={mode === m.mode}
              accessibilityLabel={`Search by ${m.label.toLowerCase()}`}
              onPress={() => setMode(m.mode)}
              style={[styles.mode, { borderColor: t.border, backgroundColor: mode === m.mode ? t.primary : 'transparent' }]}
            >
              <Text style={{ color: mode === m.mode ? t.onPrimary : t.text, fontSize: font.small, fontWeight: '600' }}>{m.label}</Text>
            </Pressable>
          ))}
        </View>
        {results.error ? <Notice kind="error" text={describe(results.error)} /> : null}
        {answer?.indexing ? <Notice text="Some messages are still being indexed; results may be incomplete." /> : null}
        {answer?.truncated ? <Notice text="Only your most recently active conversations were searched." /> : null}
        {answer && answer.mode !== mode ? <Notice text={`Searched by ${answer.mode === 'keyword' ? 'words' : answer.mode}: this server cannot search by meaning.`} /> : null}
      </View>
      <FlatList
        data={answer?.results ?? []}
        keyExtractor={(r) => `${r.conversation_id}:${r.message.seq}`}
        renderItem={({ item }) => <Result result={item} showConversation={!scope} />}
        accessibilityRole="list"
        accessibilityLabel="Search results"
        ListEmptyComponent={
          q.trim() && results.isSuccess ? <Text style={{ color: t.muted, padding: space.lg }}>Nothing found.</Text> : null
        }
        testID="search-results"
      />
    </View>
  );
}

function Result({ result, showConversation }: { result: SearchResult; showConversation: boolean }) {
  const t = useTheme();
  const sender = useName(result.message.sender_id);
  const conversation = useConversation(result.conversation_id).data;
  const title = useTitle(conversation);
  const parts = highlightParts(result.snippet, result.highlights);
  return (
    <Pressable
      accessibilityRole="link"
      accessibilityLabel={`${sender}${showConversation ? ` in ${title}` : ''}: ${result.snippet}. Open`}
      onPress={() => router.push({ pathname: '/c/[id]', params: { id: result.conversation_id, seq: String(result.message.seq) } })}
      style={({ pressed }) => [styles.result, { borderBottomColor: t.border, backgroundColor: pressed ? t.surfaceAlt : 'transparent' }]}
      testID={`result-${result.message.seq}`}
    >
      <Text style={{ color: t.muted, fontSize: font.small }}>
        {sender}
        {showConversation && title ? ` · ${title}` : ''} · {shortTime(result.message.created_at)}
      </Text>
      <Text style={{ color: t.text }}>
        {parts.map((p, i) => (
          <Text key={i} style={p.hit ? { backgroundColor: t.highlight, fontWeight: '700' } : undefined}>
            {p.text}
          </Text>
        ))}
      </Text>
    </Pressable>
  );
}

const styles = StyleSheet.create({
  controls: { padding: space.md, maxWidth: 720, width: '100%' },
  modes: { flexDirection: 'row', gap: space.sm },
  mode: { borderWidth: 1, borderRadius: radius.round, paddingHorizontal: space.md, paddingVertical: space.xs },
  result: { paddingHorizontal: space.md, paddingVertical: space.md, borderBottomWidth: StyleSheet.hairlineWidth, gap: 2 },
});
