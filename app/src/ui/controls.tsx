/**
 * The basic controls every screen is made of: buttons, text fields, headings, notices.
 * Each carries a role and a label for screen readers (react-native-web turns them into
 * `role` / `aria-label`) and a visible focus ring for keyboard use in the browser.
 */
import React, { forwardRef } from 'react';
import {
  ActivityIndicator,
  Pressable,
  StyleSheet,
  Text,
  TextInput,
  View,
  type PressableProps,
  type StyleProp,
  type TextInputProps,
  type TextStyle,
  type ViewStyle,
} from 'react-native';

import { font, radius, space, useTheme } from './theme';

type ButtonProps = Omit<PressableProps, 'children' | 'style'> & {
  title: string;
  label?: string;
  kind?: 'primary' | 'plain' | 'danger';
  busy?: boolean;
  small?: boolean;
  style?: StyleProp<ViewStyle>;
  testID?: string;
};

export function Button({ title, label, kind = 'primary', busy, small, style, disabled, ...rest }: ButtonProps) {
  const t = useTheme();
  const off = disabled || busy;
  const bg = kind === 'primary' ? t.primary : 'transparent';
  const fg = kind === 'primary' ? t.onPrimary : kind === 'danger' ? t.danger : t.primary;
  return (
    <Pressable
      accessibilityRole="button"
      accessibilityLabel={label ?? title}
      aria-disabled={!!off}
      aria-busy={!!busy}
      disabled={off}
      style={({ pressed, focused }: { pressed: boolean; focused?: boolean }) => [
        styles.button,
        small && styles.small,
        { backgroundColor: bg, borderColor: kind === 'primary' ? bg : t.border, opacity: off ? 0.55 : pressed ? 0.8 : 1 },
        focused && { outlineColor: t.focus, outlineStyle: 'solid', outlineWidth: 2 },
        style,
      ]}
      {...rest}
    >
      {busy ? <ActivityIndicator color={fg} size="small" /> : null}
      <Text style={[styles.buttonText, small && styles.smallText, { color: fg }]}>{title}</Text>
    </Pressable>
  );
}

type FieldProps = TextInputProps & { label: string; error?: string | null };

export const Field = forwardRef<TextInput, FieldProps>(function Field({ label, error, style, ...rest }, ref) {
  const t = useTheme();
  return (
    <View style={styles.field}>
      <Text style={[styles.fieldLabel, { color: t.muted }]}>{label}</Text>
      <TextInput
        ref={ref}
        accessibilityLabel={label}
        placeholderTextColor={t.muted}
        style={[
          styles.input,
          { color: t.text, backgroundColor: t.surface, borderColor: error ? t.danger : t.border },
          style,
        ]}
        {...rest}
      />
      {error ? <Notice text={error} kind="error" /> : null}
    </View>
  );
});

export function Notice({ text, kind = 'info', style }: { text: string; kind?: 'info' | 'error'; style?: StyleProp<TextStyle> }) {
  const t = useTheme();
  return (
    <Text
      accessibilityRole={kind === 'error' ? 'alert' : 'text'}
      accessibilityLiveRegion={kind === 'error' ? 'assertive' : 'polite'}
      style={[styles.notice, { color: kind === 'error' ? t.danger : t.muted }, style]}
    >
      {text}
    </Text>
  );
}

export function Heading({ text, level = 1 }: { text: string; level?: 1 | 2 }) {
  const t = useTheme();
  return (
    <Text
      accessibilityRole="header"
      aria-level={level}
      style={[level === 1 ? styles.h1 : styles.h2, { color: t.text }]}
    >
      {text}
    </Text>
  );
}

/** A round badge with initials and, when known, a presence dot. */
export function Avatar({ name, online, size = 36 }: { name: string; online?: boolean | null; size?: number }) {
  const t = useTheme();
  const initials = name
    .split(/\s+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((w) => w[0]?.toUpperCase() ?? '')
    .join('') || '?';
  return (
    <View style={{ width: size, height: size }} accessible={false}>
      <View style={[styles.avatar, { width: size, height: size, backgroundColor: t.surfaceAlt }]}>
        <Text style={{ color: t.text, fontWeight: '600', fontSize: size * 0.38 }}>{initials}</Text>
      </View>
      {online != null ? (
        <View
          style={[
            styles.dot,
            { backgroundColor: online ? t.online : t.muted, borderColor: t.background },
          ]}
        />
      ) : null}
    </View>
  );
}

export function Badge({ count, label }: { count: number; label?: string }) {
  const t = useTheme();
  if (count <= 0) return null;
  return (
    <View
      accessibilityLabel={label ?? `${count} unread`}
      style={[styles.badge, { backgroundColor: t.primary }]}
    >
      <Text style={{ color: t.onPrimary, fontSize: font.small, fontWeight: '700' }}>{count > 99 ? '99+' : String(count)}</Text>
    </View>
  );
}

const styles = StyleSheet.create({
  button: {
    flexDirection: 'row',
    alignItems: 'center',
    justifyContent: 'center',
    gap: space.sm,
    paddingHorizontal: space.lg,
    paddingVertical: space.md,
    borderRadius: radius.md,
    borderWidth: 1,
  },
  small: { paddingHorizontal: space.md, paddingVertical: space.xs },
  buttonText: { fontSize: font.body, fontWeight: '600' },
  smallText: { fontSize: font.small },
  field: { gap: space.xs, marginBottom: space.md },
  fieldLabel: { fontSize: font.small, fontWeight: '600' },
  input: {
    borderWidth: 1,
    borderRadius: radius.md,
    paddingHorizontal: space.md,
    paddingVertical: space.sm,
    fontSize: font.body,
    minHeight: 40,
  },
  notice: { fontSize: font.small, marginVertical: space.xs },
  h1: { fontSize: font.big, fontWeight: '700', marginBottom: space.md },
  h2: { fontSize: font.title, fontWeight: '600', marginBottom: space.sm },
  avatar: { borderRadius: radius.round, alignItems: 'center', justifyContent: 'center' },
  dot: { position: 'absolute', right: -1, bottom: -1, width: 12, height: 12, borderRadius: 6, borderWidth: 2 },
  badge: { minWidth: 22, height: 22, borderRadius: 11, paddingHorizontal: 6, alignItems: 'center', justifyContent: 'center' },
});
