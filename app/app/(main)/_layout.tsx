/**
 * The signed-in part of the app. Sends a person who is not signed in to the first-start
 * screens; on wide screens (the browser, tablets) shows the conversation list beside
 * whatever is open, on phones one screen at a time.
 */
import { Redirect, Stack } from 'expo-router';
import React from 'react';
import { StyleSheet, View } from 'react-native';

import { useSession } from '../../src/state/session';
import { ConnectionBanner } from '../../src/ui/ConnectionBanner';
import { ConversationList } from '../../src/ui/ConversationList';
import { Loading, Screen, useWide } from '../../src/ui/layout';
import { useTheme } from '../../src/ui/theme';

export default function MainLayout() {
  const t = useTheme();
  const phase = useSession((s) => s.phase);
  const wide = useWide();
  if (phase === 'booting') return <Loading />;
  if (phase === 'server') return <Redirect href="/server" />;
  if (phase === 'signin') return <Redirect href="/sign-in" />;
  const stack = <Stack screenOptions={{ headerShown: false, contentStyle: { backgroundColor: t.background } }} />;
  if (!wide) return <Screen>{stack}</Screen>;
  return (
    <Screen>
      <ConnectionBanner />
      <View style={styles.row}>
        <View style={[styles.side, { borderRightColor: t.border }]} role="navigation" aria-label="Conversations">
          <ConversationList />
        </View>
        <View style={styles.main} role="main">
          {stack}
        </View>
      </View>
    </Screen>
  );
}

const styles = StyleSheet.create({
  row: { flex: 1, flexDirection: 'row' },
  side: { width: 340, borderRightWidth: StyleSheet.hairlineWidth },
  main: { flex: 1, minWidth: 0 },
});
