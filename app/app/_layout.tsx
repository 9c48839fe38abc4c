/**
 * The root of the app (expo-router): the query client, Clerk's provider when the server
 * is in Clerk mode (`ClerkRoot`), the theme's background and status bar, and the
 * session's boot (server URL, stored account). Every route renders inside it; `index`
 * sends a person to the first screen they need.
 */
import { QueryClientProvider } from '@tanstack/react-query';
import { Stack } from 'expo-router';
import { StatusBar } from 'expo-status-bar';
import React, { useEffect } from 'react';
import { SafeAreaProvider } from 'react-native-safe-area-context';

import { ClerkRoot } from '../src/state/clerk';
import { registerOfflineShell } from '../src/state/offline';
import { PushRegistration } from '../src/state/push';
import { queryClient } from '../src/state/query';
import { useSession } from '../src/state/session';
import { useTheme } from '../src/ui/theme';

export default function RootLayout() {
  const t = useTheme();
  const boot = useSession((s) => s.boot);
  useEffect(() => {
    void boot();
    registerOfflineShell();
  }, [boot]);
  return (
    <SafeAreaProvider>
      <QueryClientProvider client={queryClient}>
        <StatusBar style={t.scheme === 'dark' ? 'light' : 'dark'} />
        <PushRegistration />
        <ClerkRoot>
          <Stack screenOptions={{ headerShown: false, contentStyle: { backgroundColor: t.background } }} />
        </ClerkRoot>
      </QueryClientProvider>
    </SafeAreaProvider>
  );
}
