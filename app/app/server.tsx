/**
 * First start: which server. Asks for its address (in the browser the page's own origin
 * is filled in), checks `/healthz`, and goes on to sign in.
 */
import { Redirect, router } from 'expo-router';
import React, { useState } from 'react';
import { KeyboardAvoidingView, Platform, StyleSheet, Text, View } from 'react-native';

import { defaultServerUrl, describe, useSession } from '../src/state/session';
import { Button, Field, Heading, Notice } from '../src/ui/controls';
import { Screen } from '../src/ui/layout';
import { space, useTheme } from '../src/ui/theme';

export default function ServerScreen() {
  const t = useTheme();
  const phase = useSession((s) => s.phase);
  const saved = useSession((s) => s.serverUrl);
  const notice = useSession((s) => s.notice);
  const chooseServer = useSession((s) => s.chooseServer);
  const [url, setUrl] = useState(saved ?? defaultServerUrl() ?? 'http://');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  if (phase === 'ready') return <Redirect href="/chats" />;

  async function go() {
    setBusy(true);
    setError(null);
    try {
      const probe = await chooseServer(url);
      if (!probe.ok) setError(`No MessageAI server answers at ${probe.url} (${probe.error ?? 'no answer'}).`);
      else router.replace(useSession.getState().phase === 'ready' ? '/chats' : '/sign-in');
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Screen>
      <KeyboardAvoidingView behavior={Platform.OS === 'ios' ? 'padding' : undefined} style={styles.wrap}>
        <View style={[styles.card, { backgroundColor: t.surface, borderColor: t.border }]}>
          <Heading text="Welcome to MessageAI" />
          <Text style={{ color: t.muted, marginBottom: space.lg }}>
            Which server do you chat on? Ask whoever runs it for the address, for example
            http://192.168.1.20:8080.
          </Text>
          {notice ? <Notice text={notice} kind="error" /> : null}
          <Field
            label="Server address"
            value={url}
            onChangeText={setUrl}
            autoCapitalize="none"
            autoCorrect={false}
            keyboardType="url"
            inputMode="url"
            returnKeyType="go"
            onSubmitEditing={() => void go()}
            error={error}
            testID="server-url"
            autoFocus
          />
          <Button title="Continue" onPress={() => void go()} busy={busy} testID="server-continue" />
        </View>
      </KeyboardAvoidingView>
    </Screen>
  );
}

const styles = StyleSheet.create({
  wrap: { flex: 1, alignItems: 'center', justifyContent: 'center', padding: space.lg },
  card: { width: '100%', maxWidth: 420, padding: space.xl, borderRadius: 16, borderWidth: StyleSheet.hairlineWidth },
});
