/**
 * TanStack Query hooks over the engine: the local-store reads (conversations, messages,
 * users), re-run when the engine's events invalidate them (see `query.ts`), and the REST
 * reads (channels, search, the AI routes) with short staleness. Called by the screens.
 */
import { useQuery } from '@tanstack/react-query';

import type { LocalConversation, SearchMode, User } from '../engine';
import { keys } from './query';
import { useEngine, useSession } from './session';

export function useConversations() {
  const engine = useEngine();
  return useQuery({ queryKey: keys.conversations, queryFn: () => engine.conversations() });
}

export function useConversation(id: string) {
  const engine = useEngine();
  return useQuery({ queryKey: keys.conversation(id), queryFn: () => engine.conversation(id) });
}

/** The newest `limit` messages held locally (the screen grows `limit` to page back). */
export function useMessages(id: string, limit: number) {
  const engine = useEngine();
  return useQuery({
    queryKey: [...keys.messages(id), limit],
    queryFn: () => engine.messages(id, { limit }),
    // While a longer page loads, keep showing the shorter one (never another conversation's).
    placeholderData: (previous, previousQuery) => (previousQuery?.queryKey[1] === id ? previous : undefined),
  });
}

/** A user: the locally known one at once, then the server's answer. */
export function useUser(id: string | null | undefined) {
  const engine = useEngine();
  return useQuery({
    queryKey: keys.user(id ?? ''),
    queryFn: () => (id ? engine.user(id) : Promise.resolve(null)),
    initialData: id ? (engine.knownUser(id) ?? undefined) : undefined,
    enabled: !!id,
  });
}

/** Members of a conversation as users (those known so far; the rest are fetched). */
export function useMembers(conversation: LocalConversation | null | undefined, max = 500) {
  const engine = useEngine();
  const ids = (conversation?.member_ids ?? []).slice(0, max);
  return useQuery({
    queryKey: [...keys.users, 'members', ...ids],
    queryFn: async () => {
      const users = await Promise.all(ids.map((id) => engine.user(id)));
      return users.filter((u): u is User => u !== null);
    },
    placeholderData: () => ids.map((id) => engine.knownUser(id)).filter((u): u is User => u !== null),
    enabled: ids.length > 0,
  });
}

export function useUserSearch(prefix: string) {
  const engine = useEngine();
  return useQuery({
    queryKey: ['user-search', prefix],
    queryFn: () => engine.searchUsers(prefix),
    enabled: prefix.length > 0,
    staleTime: 10_000,
  });
}

export function useChannels(q: string) {
  const engine = useEngine();
  return useQuery({ queryKey: ['channels', q], queryFn: () => engine.listChannels(q), staleTime: 5_000 });
}

export function useSearch(q: string, conversationId: string | undefined, mode: SearchMode) {
  const engine = useEngine();
  const text = q.trim();
  return useQuery({
    queryKey: ['search', text, conversationId ?? '', mode],
    queryFn: () => engine.search(text, { conversationId, mode }),
    enabled: text.length > 0,
    staleTime: 0,
  });
}

export function useAiSettings(id: string) {
  const engine = useEngine();
  return useQuery({ queryKey: keys.ai(id), queryFn: () => engine.aiSettings(id), staleTime: 0 });
}

// How often an open assistant panel asks for the action items again.
const ACTION_ITEMS_POLL_MS = 5000;

export function useActionItems(id: string, enabled: boolean) {
  const engine = useEngine();
  return useQuery({
    queryKey: keys.actionItems(id),
    queryFn: () => engine.actionItems(id),
    enabled,
    staleTime: 0,
    // Extracted in the background, and no frame announces new ones: ask again while shown.
    refetchInterval: enabled ? ACTION_ITEMS_POLL_MS : false,
  });
}

export function useAiLog(id: string) {
  const engine = useEngine();
  return useQuery({ queryKey: keys.aiLog(id), queryFn: () => engine.aiLog(id), staleTime: 0 });
}

export function useMediaInfo(id: string) {
  const engine = useEngine();
  return useQuery({ queryKey: ['media-info', id], queryFn: () => engine.mediaInfo(id) });
}

export function useMediaSource(id: string, enabled: boolean) {
  const engine = useEngine();
  return useQuery({ queryKey: ['media-src', id], queryFn: () => engine.mediaSource(id), enabled });
}

/** The display name of a user id, from what the engine knows (falls back to the id). */
export function useName(id: string | null | undefined): string {
  const user = useUser(id).data;
  const me = useSession((s) => s.me);
  if (!id) return '';
  if (me?.id === id) return me.display_name || me.username;
  return user?.display_name || user?.username || id;
}

/** A conversation's title as a person reads it: a group's title, or the other member. */
export function titleOf(conversation: LocalConversation, meId: string | undefined, name: (id: string) => string): string {
  if (conversation.kind === 'channel') return `#${conversation.title ?? 'channel'}`;
  if (conversation.title) return conversation.title;
  const others = conversation.member_ids.filter((id) => id !== meId);
  if (others.length === 0) return 'Just you';
  const shown = others.slice(0, 3).map(name).join(', ');
  return others.length > 3 ? `${shown} and ${others.length - 3} more` : shown;
}

/** The title of a conversation, with the names the engine knows (re-rendered as users load). */
export function useTitle(conversation: LocalConversation | null | undefined): string {
  const engine = useEngine();
  const me = useSession((s) => s.me);
  // Only an untitled direct or group conversation is named after its members (the
  // first few suffice); a channel of thousands must not fetch them all for a title.
  const named = conversation && conversation.kind !== 'channel' && !conversation.title;
  useMembers(named ? conversation : null, 6);
  if (!conversation) return '';
  return titleOf(conversation, me?.id, (id) => {
    const user = engine.knownUser(id);
    return user?.display_name || user?.username || id;
  });
}
