/**
 * Sign in or create an account. Which form comes from the server's public settings
 * (`GET /v1/settings`): local accounts (without "create an account" when registration
 * is closed), or in Clerk mode Clerk's password sign-in (`state/clerk`). A Clerk server
 * that publishes no key, or an older server without settings that refuses local sign-in
 * with 403, gets a sentence saying what is missing.
 */
import { Redirect, router } from 'expo-router';
import React, { useRef, useState } from 'react';
import { KeyboardAvoidingView, Platform, Pressable, ScrollView, StyleSheet, Text, View, type TextInput } from 'react-native';

import { EngineError } from '../src/engine';
import { useClerkMounted, useClerkPasswordSignIn } from '../src/state/clerk';
import { useServerSettings } from '../src/state/server-settings';
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
  const settings = useServerSettings(serverUrl).data;
  const clerkMounted = useClerkMounted();
  const signIn = useSession((s) => s.signIn);
  const changeServer = useSession((s) => s.changeServer);
  const [mode, setMode] = useState<'login' | 'register'>('login');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [displayName, setDisplayName] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [clerkRefused, setClerk] = useState(false);
  const clerk = clerkRefused || settings?.auth.mode === 'clerk';
  // Unknown (an older server, or not fetched yet): offer it, the server decides.
  const registrationOpen = settings?.auth.registration_open ?? true;
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

  const register = mode === 'register' && registrationOpen;
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
            {clerk && clerkMounted ? <ClerkSignIn /> : null}
            {clerk && !clerkMounted ? (
              <View accessibilityRole="alert" style={[styles.clerk, { borderColor: t.border }]}>
                <Text style={{ color: t.text, fontWeight: '600' }}>This server signs people in with Clerk</Text>
                <Text style={{ color: t.muted }}>
                  Its accounts live at Clerk, not on the server, but the server does not publish its Clerk
                  publishable key, so the app cannot offer Clerk&apos;s sign-in. Ask its administrator to set
                  clerk.publishable_key.
                </Text>
              </View>
            ) : null}
            {clerk ? null : (
              <>
                <NameField
                  label="Username"
                  value={username}
                  onChangeText={setUsername}
                  onNext={() => passwordRef.current?.focus()}
                  testID="username"
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
                <PasswordField
                  ref={passwordRef}
                  value={password}
                  onChangeText={setPassword}
                  autoComplete={register ? 'new-password' : 'current-password'}
                  onGo={() => void submit()}
                  testID="password"
                />
                {error ? <Notice text={error} kind="error" /> : null}
                <Button
                  title={register ? 'Create account' : 'Sign in'}
                  onPress={() => void submit()}
                  busy={busy}
                  testID="sign-in-submit"
                />
                {registrationOpen ? (
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
                ) : (
                  <Text style={{ color: t.muted, marginTop: space.md }} testID="registration-closed">
                    This server does not take new accounts: ask whoever runs it to make one for you.
                  </Text>
                )}
              </>
            )}
          </View>
        </ScrollView>
      </KeyboardAvoidingView>
    </Screen>
  );
}

type FieldProps = { value: string; onChangeText: (text: string) => void; testID: string };

/** The first field of both forms: a name to sign in with, then on to the password. */
function NameField({ label, onNext, ...rest }: FieldProps & { label: string; onNext: () => void }) {
  return (
    <Field
      {...rest}
      label={label}
      autoCapitalize="none"
      autoCorrect={false}
      autoComplete="username"
      returnKeyType="next"
      onSubmitEditing={onNext}
      autoFocus
    />
  );
}

function PasswordField({
  onGo,
  ...rest
}: FieldProps & {
  ref: React.Ref<TextInput>;
  autoComplete: 'new-password' | 'current-password';
  onGo: () => void;
}) {
  return <Field {...rest} label="Password" secureTextEntry returnKeyType="go" onSubmitEditing={onGo} />;
}

/** Clerk mode: an email address or username and a password, checked by Clerk. */
function ClerkSignIn() {
  const { submit, busy } = useClerkPasswordSignIn();
  const [identifier, setIdentifier] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const passwordRef = useRef<TextInput>(null);

  async function go() {
    if (!identifier.trim() || !password) {
      setError('Enter your email address or username, and your password.');
      return;
    }
    setError(null);
    try {
      const result = await submit(identifier.trim(), password);
      if (result.ok) router.replace('/chats');
      else setError(result.message);
    } catch (e) {
      setError(describe(e));
    }
  }

  return (
    <>
      <NameField
        label="Email or username"
        value={identifier}
        onChangeText={setIdentifier}
        onNext={() => passwordRef.current?.focus()}
        testID="clerk-identifier"
      />
      <PasswordField
        ref={passwordRef}
        value={password}
        onChangeText={setPassword}
        autoComplete="current-password"
        onGo={() => void go()}
        testID="clerk-password"
      />
      {error ? <Notice text={error} kind="error" /> : null}
      <Button title="Sign in with Clerk" onPress={() => void go()} busy={busy} testID="clerk-submit" />
    </>
  );
}

const styles = StyleSheet.create({
  wrap: { flexGrow: 1, alignItems: 'center', justifyContent: 'center', padding: space.lg },
  card: { width: '100%', maxWidth: 420, padding: space.xl, borderRadius: 16, borderWidth: StyleSheet.hairlineWidth },
  server: { flexDirection: 'row', gap: space.sm, marginBottom: space.lg, alignItems: 'center' },
  clerk: { borderWidth: 1, borderRadius: 10, padding: space.md, gap: space.xs, marginBottom: space.md },
});
