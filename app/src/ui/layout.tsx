/**
 * Screen frames: `Screen` (the themed, safe-area page with an optional header bar),
 * `Loading`, and `useWide` (the browser and tablets show the list beside a conversation).
 */
import React, { type ReactNode } from 'react';
import { ActivityIndicator, StyleSheet, Text, View, useWindowDimensions, type StyleProp, type ViewStyle } from 'react-native';
import { SafeAreaView } from 'react-native-safe-area-context';

import { font, space, useTheme } from './theme';

export const WIDE_MIN_WIDTH = 860;

export function useWide(): boolean {
  return useWindowDimensions().width >= WIDE_MIN_WIDTH;
}

export function Screen({ children, style }: { children: ReactNode; style?: StyleProp<ViewStyle> }) {
  const t = useTheme();
  return (
    <SafeAreaView style={[styles.screen, { backgroundColor: t.background }, style]} edges={['top', 'bottom', 'left', 'right']}>
      {children}
    </SafeAreaView>
  );
}

/** A header bar: a title (the page's heading for screen readers) and actions on the right. */
export function Bar({ title, subtitle, left, right }: { title: string; subtitle?: string | null; left?: ReactNode; right?: ReactNode }) {
  const t = useTheme();
  return (
    <View style={[styles.bar, { borderBottomColor: t.border, backgroundColor: t.surface }]}>
      {left}
      <View style={styles.barTitle}>
        <Text accessibilityRole="header" numberOfLines={1} style={{ color: t.text, fontSize: font.title, fontWeight: '700' }}>
          {title}
        </Text>
        {subtitle ? (
          <Text numberOfLines={1} style={{ color: t.muted, fontSize: font.small }}>
            {subtitle}
          </Text>
        ) : null}
      </View>
      <View style={styles.barActions}>{right}</View>
    </View>
  );
}

export function Loading({ label = 'Loading' }: { label?: string }) {
  const t = useTheme();
  return (
    <View style={[styles.center, { backgroundColor: t.background }]} accessibilityLabel={label}>
      <ActivityIndicator color={t.primary} />
    </View>
  );
}

export function Centered({ children }: { children: ReactNode }) {
  const t = useTheme();
  return <View style={[styles.center, { backgroundColor: t.background }]}>{children}</View>;
}

const styles = StyleSheet.create({
  screen: { flex: 1 },
  bar: {
    flexDirection: 'row',
    alignItems: 'center',
    gap: space.sm,
    paddingHorizontal: space.md,
    paddingVertical: space.sm,
    borderBottomWidth: StyleSheet.hairlineWidth,
    minHeight: 52,
  },
  barTitle: { flex: 1, minWidth: 0 },
  barActions: { flexDirection: 'row', alignItems: 'center', gap: space.xs },
  center: { flex: 1, alignItems: 'center', justifyContent: 'center', padding: space.xl },
});
