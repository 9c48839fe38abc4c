/**
 * The server's public settings (`GET /v1/settings`) as TanStack Query state, read by the
 * root layout (Clerk or not), the server screen and sign-in. The last answer of each
 * server is kept in the kv store, so a restart without a network still knows the mode
 * (the Clerk provider is mounted from the first render, not when the network is back).
 */
import { useQuery } from '@tanstack/react-query';

import { fetchServerSettings, type ServerSettings } from '../engine';
import { kvStorage } from './kv';

const KEY_PREFIX = 'messageai.settings.';
// A new config takes a server restart; a few minutes' delay in noticing it is fine.
const STALE_MS = 5 * 60_000;

// A browser refuses `fetch` called as a method of another object (the REST client).
const boundFetch: typeof fetch = (input, init) => fetch(input, init);

export const settingsKey = (url: string | null) => ['server-settings', url] as const;

/** The settings last fetched from `url`, if any were kept. */
export function keptSettings(url: string): ServerSettings | undefined {
  const kept = kvStorage.getItem(KEY_PREFIX + url);
  if (typeof kept !== 'string') return undefined;
  try {
    return JSON.parse(kept) as ServerSettings;
  } catch {
    return undefined;
  }
}

/** Keep `settings` for `url` (the probe and every fetch call this). */
export function keepSettings(url: string, settings: ServerSettings): void {
  void kvStorage.setItem(KEY_PREFIX + url, JSON.stringify(settings));
}

/** The settings of `url` (null: no server chosen yet): kept ones at once, then fresh. */
export function useServerSettings(url: string | null) {
  return useQuery({
    queryKey: settingsKey(url),
    enabled: url !== null,
    staleTime: STALE_MS,
    initialData: () => (url === null ? undefined : keptSettings(url)),
    // Kept settings count as old: fetch fresh ones right away.
    initialDataUpdatedAt: 0,
    queryFn: async () => {
      const settings = await fetchServerSettings(url!, boundFetch);
      keepSettings(url!, settings);
      return settings;
    },
  });
}
