/**
 * The session (Zustand): which server, the engine for it, who is signed in, and the
 * live app state the engine reports (connection, outbox size, typing, presence).
 * `boot` runs once from the root layout; the first-start screens call `chooseServer`
 * and `signIn` (Clerk mode: `signInWithToken`); settings calls `signOut`. Screens read
 * it with `useSession`. In Clerk mode `state/clerk` registers Clerk's `getToken` and
 * `signOut` in `state/clerk-hooks`: the engine renews its token through them.
 */
import { Platform } from 'react-native';
import { create } from 'zustand';

import {
  createEngine,
  EngineError,
  normalizeServerUrl,
  probeServer,
  type ConnectionInfo,
  type Engine,
  type EngineEvent,
  type Presence,
  type ServerProbe,
  type User,
} from '../engine';
import { clerkHooks, renewToken } from './clerk-hooks';
import { kvStorage } from './kv';
import { invalidateFor, queryClient } from './query';
import { keepSettings, settingsKey } from './server-settings';

const SERVER_KEY = 'messageai.server';

export type Phase = 'booting' | 'server' | 'signin' | 'ready';

type Session = {
  phase: Phase;
  serverUrl: string | null;
  engine: Engine | null;
  me: User | null;
  connection: ConnectionInfo;
  /** The browser's own word (navigator.onLine); always true on phones. */
  deviceOnline: boolean;
  /** The person's own changes still waiting to be sent (read receipts not counted). */
  outbox: number;
  typing: Record<string, string[]>;
  presence: Record<string, Presence>;
  /** Why the app is on the sign-in screen when it did not ask to be (token revoked). */
  notice: string | null;
  /** Conversations the server ended our access to, with the reason. */
  removed: Record<string, string>;

  boot: () => Promise<void>;
  chooseServer: (input: string) => Promise<ServerProbe>;
  changeServer: () => Promise<void>;
  signIn: (how: 'login' | 'register', username: string, password: string, displayName?: string) => Promise<void>;
  /** Clerk mode: sign in with the session JWT Clerk's SDK just gave. */
  signInWithToken: (token: string) => Promise<void>;
  signOut: () => Promise<void>;
  setMe: (me: User) => void;
};

const idle: ConnectionInfo = { state: 'offline', retryAt: null, attempts: 0, lastError: null };

// `probeServer` would call the global fetch as a method of its REST client, which
// browsers refuse ("Illegal invocation"): hand it one bound to the global scope.
const browserFetch: typeof fetch = (input, init) => fetch(input, init);

// The engine's listener, kept so a new engine never leaves the old one's bound.
let unlisten: (() => void) | null = null;

/** In the browser the app is served by the server itself: its origin is the default. */
export function defaultServerUrl(): string | null {
  if (Platform.OS !== 'web') return null;
  const origin = globalThis.location?.origin;
  return origin && /^https?:/.test(origin) ? origin : null;
}

export const useSession = create<Session>()((set, get) => {
  function onEvent(event: EngineEvent): void {
    invalidateFor(event);
    switch (event.type) {
      case 'connection':
        set({ connection: event.info });
        break;
      case 'outbox':
        set({ outbox: event.waiting });
        break;
      case 'typing':
        set((s) => ({ typing: { ...s.typing, [event.conversationId]: event.userIds } }));
        break;
      case 'presence':
        set((s) => ({ presence: { ...s.presence, [event.userId]: event.presence } }));
        break;
      case 'unsubscribed':
        set((s) => ({ removed: { ...s.removed, [event.conversationId]: event.reason } }));
        break;
      case 'signed_out':
        void get().engine?.stop();
        queryClient.clear();
        set({ phase: 'signin', me: null, notice: `You were signed out: ${event.reason}` });
        break;
      default:
        break;
    }
  }

  async function attach(url: string): Promise<Engine> {
    const old = get().engine;
    unlisten?.();
    unlisten = null;
    if (old !== null && old.serverUrl !== url) await old.close();
    const engine = old !== null && old.serverUrl === url ? old : await createEngine({ serverUrl: url, refreshToken: renewToken });
    unlisten = engine.on(onEvent);
    set({ engine, serverUrl: url, connection: engine.connection(), outbox: engine.outboxWaiting() });
    return engine;
  }

  // In the browser, follow the device's network: show "offline" at once, and reconnect
  // as soon as it is back rather than waiting out the backoff.
  function watchDevice(): void {
    if (Platform.OS !== 'web' || typeof window === 'undefined' || typeof navigator === 'undefined') return;
    set({ deviceOnline: navigator.onLine !== false });
    window.addEventListener('offline', () => set({ deviceOnline: false }));
    window.addEventListener('online', () => {
      set({ deviceOnline: true });
      get().engine?.reconnectNow();
    });
  }

  function enter(engine: Engine): void {
    engine.start();
    queryClient.clear();
    set({ phase: 'ready', me: engine.me, notice: null, connection: engine.connection() });
  }

  return {
    phase: 'booting',
    serverUrl: null,
    engine: null,
    me: null,
    connection: idle,
    deviceOnline: true,
    outbox: 0,
    typing: {},
    presence: {},
    notice: null,
    removed: {},

    boot: async () => {
      watchDevice();
      const saved = kvStorage.getItem(SERVER_KEY);
      const url = (typeof saved === 'string' ? saved : null) ?? defaultServerUrl();
      if (url === null) {
        set({ phase: 'server' });
        return;
      }
      try {
        const engine = await attach(url);
        if (engine.me !== null) enter(engine);
        else set({ phase: 'signin' });
      } catch (error) {
        set({ phase: 'server', notice: describe(error) });
      }
    },

    chooseServer: async (input) => {
      const probe = await probeServer(input, browserFetch);
      if (!probe.ok) return probe;
      await kvStorage.setItem(SERVER_KEY, probe.url);
      if (probe.settings !== null) {
        // Sign-in (and the Clerk provider) read them at once, without a second fetch.
        keepSettings(probe.url, probe.settings);
        queryClient.setQueryData(settingsKey(probe.url), probe.settings);
      }
      const engine = await attach(probe.url);
      set({ notice: null });
      if (engine.me !== null) enter(engine);
      else set({ phase: 'signin' });
      return probe;
    },

    changeServer: async () => {
      const engine = get().engine;
      if (engine !== null) await engine.stop();
      set({ phase: 'server', me: null });
    },

    signIn: async (how, username, password, displayName) => {
      let engine = get().engine;
      if (engine === null) {
        const url = get().serverUrl ?? defaultServerUrl();
        if (url === null) throw new EngineError('invalid', 'choose a server first');
        engine = await attach(normalizeServerUrl(url));
      }
      if (how === 'login') await engine.login(username, password);
      else await engine.register(username, password, displayName);
      enter(engine);
    },

    signInWithToken: async (token) => {
      const engine = get().engine;
      if (engine === null) throw new EngineError('invalid', 'choose a server first');
      await engine.signInWithToken(token);
      enter(engine);
    },

    signOut: async () => {
      const engine = get().engine;
      if (engine !== null) {
        try {
          await engine.logout();
        } catch {
          // Offline or already revoked: the engine still erased the local data, and the
          // token dies with the server's next revocation or expiry.
        }
      }
      const clerk = clerkHooks();
      if (clerk !== null) {
        try {
          await clerk.signOut();
        } catch {
          // Offline: Clerk's session outlives this device's sign-out until it expires;
          // the local data is gone all the same.
        }
      }
      queryClient.clear();
      // The engine reports its own logout as `signed_out`: that is no news to the person.
      set({ phase: 'signin', me: null, typing: {}, presence: {}, removed: {}, outbox: 0, notice: null });
    },

    setMe: (me) => set({ me }),
  };
});

/** The engine of a signed-in screen (the main layout renders only when there is one). */
export function useEngine(): Engine {
  const engine = useSession((s) => s.engine);
  if (engine === null) throw new Error('useEngine outside a signed-in screen');
  return engine;
}

/** An error, in words for a person. */
export function describe(error: unknown): string {
  if (error instanceof EngineError) {
    if (error.code === 'offline') return 'The server cannot be reached. Check the address and your connection.';
    if (error.code === 'rate_limited' && error.retryAfterMs !== null) {
      return `${error.message} (try again in ${Math.ceil(error.retryAfterMs / 1000)} s)`;
    }
    return error.message;
  }
  if (error instanceof Error) return error.message;
  return String(error);
}
