/**
 * `/settings`: the theme (system, light, dark), my display name and password, which
 * server, and signing out (which erases this account's data on the device).
 */
import { router } from 'expo-router';
import React, { useState } from 'react';
import { Pressable, ScrollView, StyleSheet, Text, View } from 'react-native';

import { unregisterPush } from '../../src/state/push';
import { describe, useEngine, useSession } from '../../src/state/session';
import { useSettings, type ThemeChoice } from '../../src/state/settings';
import { IconButton } from '../../src/ui/ConversationList';
import { Button, Field, Heading, Notice } from '../../src/ui/controls';
import { Bar } from '../../src/ui/layout';
import { radius, space, useTheme } from '../../src/ui/theme';

const THEMES: { value: ThemeChoice; label: string }[] = [
  { value: 'system', label: 'Like the system' },
  { value: 'light', label: 'Light' },
  { value: 'dark', label: 'Dark' },
];

export default function Settings() {
  const t = useTheme();
  const engine = useEngine();
  const me = useSession((s) => s.me);
  const serverUrl = useSession((s) => s.serverUrl);
  const outbox = useSession((s) => s.outbox);
  const setMe = useSession((s) => s.setMe);
  const signOut = useSession((s) => s.signOut);
  const theme = useSettings((s) => s.theme);
  const setTheme = useSettings((s) => s.setTheme);
  const [name, setName] = useState(me?.display_name ?? '');
  const [oldPassword, setOldPassword] = useState('');
  const [newPassword, setNewPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [info, setInfo] = useState<string | null>(null);

  async function run(what: () => Promise<void>, done: string) {
    setError(null);
    setInfo(null);
    try {
      await what();
      setInfo(done);
    } catch (e) {
      setError(describe(e));
    }
  }

  return (
    <View style={{ flex: 1, backgroundColor: t.background }}>
      <Bar title="Settings" left={<IconButton label="Back" text="‹" onPress={() => (router.canGoBack() ? router.back() : router.replace('/chats'))} />} />
      <ScrollView contentContainerStyle={styles.body} keyboardShouldPersistTaps="handled">
        {error ? <Notice kind="error" text={error} /> : null}
        {info ? <Notice text={info} /> : null}
        <View style={styles.section}>
          <Heading level={2} text="Appearance" />
          <View style={styles.choices} accessibilityRole="radiogroup" accessibilityLabel="Theme">
            {THEMES.map((c) => (
              <Pressable
                key={c.value}
                accessibilityRole="radio"
                aria-checked={theme === c.value}
                onPress={() => setTheme(c.value)}
                style={[styles.choice, { borderColor: t.border, backgroundColor: theme === c.value ? t.primary : 'transparent' }]}
                testID={`theme-${c.value}`}
              >
                <Text style={{ color: theme === c.value ? t.onPrimary : t.text, fontWeight: '600' }}>{c.label}</Text>
              </Pressable>
            ))}
          </View>
        </View>
        <View style={styles.section}>
          <Heading level={2} text="Profile" />
          <Text style={{ color: t.muted, marginBottom: space.sm }}>@{me?.username}</Text>
          <Field label="Display name" value={name} onChangeText={setName} testID="display-name" />
          <Button
            small
            title="Save name"
            style={{ alignSelf: 'flex-start' }}
            onPress={() =>
              void run(async () => {
                setMe(await engine.updateProfile({ display_name: name.trim() }));
              }, 'Your name was saved.')
            }
          />
        </View>
        <View style={styles.section}>
          <Heading level={2} text="Password" />
          <Field label="Current password" value={oldPassword} onChangeText={setOldPassword} secureTextEntry autoComplete="current-password" />
          <Field label="New password (at least 8 characters)" value={newPassword} onChangeText={setNewPassword} secureTextEntry autoComplete="new-password" />
          <Button
            small
            title="Change password"
            style={{ alignSelf: 'flex-start' }}
            disabled={!oldPassword || newPassword.length < 8}
            onPress={() =>
              void run(async () => {
                await engine.changePassword(oldPassword, newPassword);
                setOldPassword('');
                setNewPassword('');
              }, 'Password changed; your other devices were signed out.')
            }
          />
        </View>
        <View style={styles.section}>
          <Heading level={2} text="Account" />
          <Text style={{ color: t.muted, marginBottom: space.sm }}>Server: {serverUrl}</Text>
          {outbox > 0 ? (
            <Notice kind="error" text={`${outbox} change${outbox === 1 ? '' : 's'} still wait to be sent; signing out now drops them.`} />
          ) : null}
          <Button
            kind="danger"
            title="Sign out"
            style={{ alignSelf: 'flex-start' }}
            onPress={() =>
              void (async () => {
                await unregisterPush();
                await signOut();
                router.replace('/sign-in');
              })()
            }
            testID="sign-out"
          />
        </View>
      </ScrollView>
    </View>
  );
}

const styles = StyleSheet.create({
  body: { padding: space.md, maxWidth: 640, width: '100%' },
  section: { marginBottom: space.xl },
  choices: { flexDirection: 'row', flexWrap: 'wrap', gap: space.sm },
  choice: { borderWidth: 1, borderRadius: radius.round, paddingHorizontal: space.lg, paddingVertical: space.sm },
});
