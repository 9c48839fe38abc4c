/**
 * Push notifications on phones (expo-notifications): after sign-in, ask permission,
 * get the Expo push token and register it with `POST /v1/push-tokens` (the engine's
 * `registerPushToken`); unregister at sign-out; a tapped notification opens its
 * conversation (the server's `data.conversation_id`). Rendered once by the root layout.
 * The browser build uses `push.web.tsx`, which does nothing.
 */
import Constants from 'expo-constants';
import * as Notifications from 'expo-notifications';
import { router } from 'expo-router';
import { useEffect } from 'react';
import { Platform } from 'react-native';

import { useSession } from './session';

Notifications.setNotificationHandler({
  handleNotification: async () => ({
    shouldShowBanner: true,
    shouldShowList: true,
    shouldPlaySound: false,
    shouldSetBadge: true,
  }),
});

// The token registered for the signed-in account, so sign-out can remove it.
let registered: string | null = null;

async function pushToken(): Promise<string | null> {
  const current = await Notifications.getPermissionsAsync();
  const granted = current.granted || (await Notifications.requestPermissionsAsync()).granted;
  if (!granted) return null;
  if (Platform.OS === 'android') {
    await Notifications.setNotificationChannelAsync('messages', {
      name: 'Messages',
      importance: Notifications.AndroidImportance.HIGH,
    });
  }
  const extra = Constants.expoConfig?.extra as { eas?: { projectId?: string } } | undefined;
  const projectId = extra?.eas?.projectId ?? Constants.easConfig?.projectId;
  const token = await Notifications.getExpoPushTokenAsync(projectId ? { projectId } : undefined);
  return token.data;
}

function openFrom(response: Notifications.NotificationResponse | null): void {
  const data = response?.notification.request.content.data as { conversation_id?: unknown } | undefined;
  if (typeof data?.conversation_id === 'string') {
    router.push(`/c/${encodeURIComponent(data.conversation_id)}`);
  }
}

export function PushRegistration() {
  const phase = useSession((s) => s.phase);
  const engine = useSession((s) => s.engine);

  useEffect(() => {
    if (phase !== 'ready' || engine === null) return;
    let cancelled = false;
    void (async () => {
      try {
        const token = await pushToken();
        if (token === null || cancelled) return;
        await engine.registerPushToken(token, Platform.OS);
        registered = token;
      } catch (error) {
        // Expo Go without a project id, a simulator, or no network: the app works
        // without push; the next sign-in tries again.
        console.warn('push registration failed', error instanceof Error ? error.message : error);
      }
    })();
    const sub = Notifications.addNotificationResponseReceivedListener(openFrom);
    void Notifications.getLastNotificationResponseAsync().then(openFrom);
    return () => {
      cancelled = true;
      sub.remove();
    };
  }, [phase, engine]);

  return null;
}

/** Called by sign-out before the token is revoked. */
export async function unregisterPush(): Promise<void> {
  const engine = useSession.getState().engine;
  if (registered === null || engine === null) return;
  const token = registered;
  registered = null;
  try {
    await engine.unregisterPushToken(token);
  } catch {
    // Offline: the server drops the token when Expo reports it unregistered.
  }
}
