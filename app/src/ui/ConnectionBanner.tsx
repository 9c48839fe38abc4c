/**
 * The connection's state in words, under a screen's bar: hidden when online; "Offline:
 * 3 messages wait to be sent · reconnecting in 4 s · Retry now" otherwise.
 */
import React, { useEffect, useState } from 'react';
import { Pressable, StyleSheet, Text, View } from 'react-native';

import { useSession } from '../state/session';
import { font, space, useTheme } from './theme';

export function ConnectionBanner() {
  const t = useTheme();
  const info = useSession((s) => s.connection);
  const deviceOnline = useSession((s) => s.deviceOnline);
  const outbox = useSession((s) => s.outbox);
  const engine = useSession((s) => s.engine);
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (info.state === 'online' && deviceOnline) return;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [info.state, deviceOnline]);
  if (info.state === 'online' && deviceOnline) return null;
  const waiting = outbox > 0 ? ` · ${outbox} waiting to be sent` : '';
  const wait = info.retryAt !== null ? Math.max(0, Math.ceil((info.retryAt - now) / 1000)) : null;
  const what = !deviceOnline
    ? 'This device is offline: messages are kept and sent when it is back'
    : info.state === 'connecting'
      ? wait !== null && wait > 0
        ? `Offline · reconnecting in ${wait} s`
        : 'Connecting…'
      : 'Offline';
  return (
    <View
      accessibilityRole="alert"
      accessibilityLiveRegion="polite"
      style={[styles.banner, { backgroundColor: t.surfaceAlt, borderBottomColor: t.border }]}
      testID="connection-banner"
    >
      <Text style={{ color: t.text, fontSize: font.small, flex: 1 }}>
        {what}
        {waiting}
      </Text>
      <Pressable accessibilityRole="button" accessibilityLabel="Retry now" onPress={() => engine?.reconnectNow()}>
        <Text style={{ color: t.primary, fontSize: font.small, fontWeight: '600' }}>Retry now</Text>
      </Pressable>
    </View>
  );
}

const styles = StyleSheet.create({
  banner: {
    flexDirection: 'row',
    alignItems: 'center',
    gap: space.sm,
    paddingHorizontal: space.md,
    paddingVertical: space.xs,
    borderBottomWidth: StyleSheet.hairlineWidth,
  },
});
