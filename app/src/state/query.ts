/**
 * The one TanStack Query client, and the bridge that turns the engine's events into
 * query invalidations (REST and local-store reads re-run when the engine says what
 * changed). Made once by the root layout; `session` calls `bridge` for each engine.
 */
import { QueryClient } from '@tanstack/react-query';

import type { EngineEvent } from '../engine';

export const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      // Local-store reads must run offline too: TanStack's default "online" mode would
      // pause every query while the browser says it is offline.
      networkMode: 'always',
      // The engine tells us when local data changes; REST reads set their own staleTime.
      staleTime: Infinity,
      retry: false,
      refetchOnWindowFocus: false,
    },
    mutations: { networkMode: 'always', retry: false },
  },
});

/** Query keys, in one place so the invalidations below match the hooks in `queries`. */
export const keys = {
  conversations: ['conversations'] as const,
  conversation: (id: string) => ['conversation', id] as const,
  messages: (id: string) => ['messages', id] as const,
  users: ['user'] as const,
  user: (id: string) => ['user', id] as const,
  ai: (id: string) => ['ai', id] as const,
  actionItems: (id: string) => ['ai-items', id] as const,
  aiLog: (id: string) => ['ai-log', id] as const,
};

/** Invalidate what `event` says changed. */
export function invalidateFor(event: EngineEvent): void {
  switch (event.type) {
    case 'conversations':
      void queryClient.invalidateQueries({ queryKey: keys.conversations });
      void queryClient.invalidateQueries({ queryKey: ['conversation'] });
      break;
    case 'messages':
      void queryClient.invalidateQueries({ queryKey: keys.messages(event.conversationId) });
      void queryClient.invalidateQueries({ queryKey: keys.conversation(event.conversationId) });
      void queryClient.invalidateQueries({ queryKey: keys.conversations });
      void queryClient.invalidateQueries({ queryKey: keys.actionItems(event.conversationId) });
      break;
    case 'receipts':
      void queryClient.invalidateQueries({ queryKey: keys.conversation(event.conversationId) });
      void queryClient.invalidateQueries({ queryKey: keys.messages(event.conversationId) });
      void queryClient.invalidateQueries({ queryKey: keys.conversations });
      break;
    case 'ai_settings':
      queryClient.setQueryData(keys.ai(event.conversationId), event.settings);
      void queryClient.invalidateQueries({ queryKey: keys.actionItems(event.conversationId) });
      void queryClient.invalidateQueries({ queryKey: keys.aiLog(event.conversationId) });
      break;
    case 'unsubscribed':
      void queryClient.invalidateQueries({ queryKey: keys.conversations });
      void queryClient.invalidateQueries({ queryKey: keys.conversation(event.conversationId) });
      break;
    case 'users':
      void queryClient.invalidateQueries({ queryKey: keys.users });
      void queryClient.invalidateQueries({ queryKey: keys.conversations });
      break;
    default:
      break;
  }
}
