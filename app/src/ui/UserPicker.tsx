/**
 * Find people by username or display-name prefix (`GET /v1/users?q=`) and pick one or
 * several; used by the new-conversation and members screens.
 */
import React, { useState } from 'react';
import { Pressable, StyleSheet, Text, View } from 'react-native';

import type { User } from '../engine';
import { useUserSearch } from '../state/queries';
import { useSession } from '../state/session';
import { Avatar, Field, Notice } from './controls';
import { space, useTheme } from './theme';

export function UserPicker({
  chosen,
  onPick,
  exclude = [],
  label = 'Find people',
}: {
  chosen: User[];
  onPick: (user: User) => void;
  exclude?: string[];
  label?: string;
}) {
  const t = useTheme();
  const me = useSession((s) => s.me);
  const [q, setQ] = useState('');
  const found = useUserSearch(q.trim().toLowerCase());
  const users = (found.data ?? []).filter((u) => u.id !== me?.id && !u.bot && !exclude.includes(u.id));
  return (
    <View>
      <Field
        label={label}
        value={q}
        onChangeText={setQ}
        placeholder="username or name"
        autoCapitalize="none"
        autoCorrect={false}
        testID="user-search"
      />
      {found.error ? <Notice kind="error" text={String(found.error)} /> : null}
      <View accessibilityRole="list">
        {users.map((u) => {
          const picked = chosen.some((c) => c.id === u.id);
          return (
            <Pressable
              key={u.id}
              accessibilityRole="checkbox"
              accessibilityLabel={`${u.display_name} (@${u.username})`}
              aria-checked={picked}
              onPress={() => onPick(u)}
              style={[styles.row, { backgroundColor: picked ? t.surfaceAlt : 'transparent', borderBottomColor: t.border }]}
              testID={`user-${u.username}`}
            >
              <Avatar name={u.display_name || u.username} size={30} />
              <Text style={{ color: t.text, flex: 1 }}>
                {u.display_name} <Text style={{ color: t.muted }}>@{u.username}</Text>
              </Text>
              {picked ? <Text style={{ color: t.primary }}>✓</Text> : null}
            </Pressable>
          );
        })}
        {q.trim() && found.isSuccess && users.length === 0 ? (
          <Text style={{ color: t.muted, padding: space.sm }}>Nobody found with that name.</Text>
        ) : null}
      </View>
    </View>
  );
}

const styles = StyleSheet.create({
  row: {
    flexDirection: 'row',
    alignItems: 'center',
    gap: space.md,
    paddingVertical: space.sm,
    paddingHorizontal: space.sm,
    borderBottomWidth: StyleSheet.hairlineWidth,
  },
});
