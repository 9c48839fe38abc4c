/**
 * Sign in or create an account (local accounts). A server in Clerk mode refuses local
 * sign-in with 403 "sign in with Clerk": the screen says so and explains what it needs.
 */
import { Redirect, router } from 'expo-router';
import React, { useRef, useState } from 'react';
import { KeyboardAvoidingView, Platform, Pressable, ScrollView, StyleSheet, Text, View, type TextInput } from 'react-native';

import { EngineError } from '../src/engine';
import { describe, useSession } from '../src/state/session';
import { Button, Field, Heading, Notice } from '../src/ui/controls';
import { Screen } from '../src/ui/layout';
import { space, useTheme } from '../src/ui/theme';

const USERNAME = /^[a-z0-9_.-]{3,32}$/;

export default function SignInScreen() {
  const t = useTheme();
  const phase = useSession((s) => s.phase);
  const serverUrl = useSession((s) => s.serverUrl);
  const notice = useSession((s) => s.notice);
  const authMode = useSession((s) => s.authMode);
  const signIn = useSession((s) => s.signIn);
  const changeServer = useSession((s) => s.changeServer);
  const [mode, setMode] = useState<'login' | 'register'>('login');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [displayName, setDisplayName] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [clerkRefused, setClerk] = useState(false);
  const clerk = clerkRefused || authMode === 'clerk';
  const [busy, setBusy] = useState(false);
  const passwordRef = useRef<TextInput>(null);

  if (phase === 'ready') return <Redirect href="/chats" />;
  if (phase === 'server') return <Redirect href="/server" />;

  function refusal(): string | null {
    const name = username.trim().toLowerCase();
    if (mode === 'register') {
      if (!USERNAME.test(name)) return 'A username is 3 to 32 of a-z, 0-9, _ . and -.';
      if (password.length < 8) return 'A password has at least 8 characters.';
    } else if (!name || !password) return 'Enter your username and password.';
    return null;
  }

  async function submit() {
    const why = refusal();
    setError(why);
    if (why) return;
    setBusy(true);
    try {
      await signIn(mode, username.trim().toLowerCase(), password, displayName.trim() || undefined);
      router.replace('/chats');
    } catch (e) {
      if (e instanceof EngineError && e.code === 'forbidden' && /clerk/i.test(e.message)) setClerk(true);
      else if (e instanceof EngineError && e.code === 'unauthorized') setError('Wrong username or password.');
      else if (e instanceof EngineError && e.code === 'conflict') setError('That username is taken.');
      else setError(describe(e));
    } finally {
      setBusy(false);
    }
  }

  const register = mode === 'register';
  return (
    <Screen>
      <KeyboardAvoidingView behavior={Platform.OS === 'ios' ? 'padding' : undefined} style={{ flex: 1 }}>
        <ScrollView contentContainerStyle={styles.wrap} keyboardShouldPersistTaps="handled">
          <View style={[styles.card, { backgroundColor: t.surface, borderColor: t.border }]}>
            <Heading text={register ? 'Create your account' : 'Sign in'} />
            <View style={styles.server}>
              <Text style={{ color: t.muted, flexShrink: 1 }} numberOfLines={1}>
                Server: {serverUrl}
              </Text>
              <Pressable
                accessibilityRole="link"
                accessibilityLabel="Change server"
                onPress={() => {
                  void changeServer().then(() => router.replace('/server'));
                }}
              >
                <Text style={{ color: t.primary }}>Change</Text>
              </Pressable>
            </View>
            {notice ? <Notice text={notice} kind="error" /> : null}
            {clerk ? (
              <View accessibilityRole="alert" style={[styles.clerk, { borderColor: t.border }]}>
                <Text style={{ color: t.text, fontWeight: '600' }}>This server signs people in with Clerk</Text>
                <Text style={{ color: t.muted }}>
                  Its accounts live at Clerk, not on the server, so a username and password made here would not
                  work. This version of the app does not include Clerk's sign-in yet; use the app of the
                  organisation that runs this server, or ask its administrator for local accounts
                  (auth.mode = &quot;local&quot;).
                </Text>
              </View>
            ) : null}
            {clerk ? null : (
              <>
                <Field
                  label="Username"
                  value={username}
                  onChangeText={setUsername}
                  autoCapitalize="none"
                  autoCorrect={false}
                  autoComplete="username"
                  returnKeyType="next"
                  onSubmitEditing={() => passwordRef.current?.focus()}
                  testID="username"
                  autoFocus
                />
                {register ? (
                  <Field
                    label="Display name (optional)"
                    value={displayName}
                    onChangeText={setDisplayName}
                    autoComplete="name"
                    testID="display-name"
                  />
                ) : null}
                <Field
                  ref={passwordRef}
                  label="Password"
                  value={password}
                  onChangeText={setPassword}
                  secureTextEntry
                  autoComplete={register ? 'new-password' : 'current-password'}
                  returnKeyType="go"
                  onSubmitEditing={() => void submit()}
                  testID="password"
                />
                {error ? <Notice text={error} kind="error" /> : null}
                <Button
                  title={register ? 'Create account' : 'Sign in'}
                  onPress={() => void submit()}
                  busy={busy}
                  testID="sign-in-submit"
                />
                <Button
                  kind="plain"
                  style={{ marginTop: space.md }}
                  title={register ? 'I have an account: sign in' : 'New here? Create an account'}
                  onPress={() => {
                    setMode(register ? 'login' : 'register');
                    setError(null);
                  }}
                  testID="sign-in-toggle"
                />
              </>
            )}
          </View>
        </ScrollView>
      </KeyboardAvoidingView>
    </Screen>
  );
}

const styles = StyleSheet.create({
  wrap: { flexGrow: 1, alignItems: 'center', justifyContent: 'center', padding: space.lg },
  card: { width: '100%', maxWidth: 420, padding: space.xl, borderRadius: 16, borderWidth: StyleSheet.hairlineWidth },
  server: { flexDirection: 'row', gap: space.sm, marginBottom: space.lg, alignItems: 'center' },
  clerk: { borderWidth: 1, borderRadius: 10, padding: space.md, gap: space.xs, marginBottom: space.md },
});
