/**
 * Clerk mode in the app (Clerk's Expo SDK, `@clerk/expo`): `ClerkRoot`, in the root
 * layout, mounts `ClerkProvider` with the publishable key the chosen server publishes in
 * `GET /v1/settings` (at run time: one web export serves every server), and `ClerkBridge`
 * inside it hands the session Clerk's `getToken()` (the engine's token provider: Clerk's
 * session JWTs live a minute) and `signOut()`. The sign-in screen's Clerk form
 * (`useClerkPasswordSignIn`) renders only where `useClerkMounted()` says so.
 */
import { ClerkProvider, useAuth, useClerk, useSignIn } from '@clerk/expo';
import { tokenCache } from '@clerk/expo/token-cache';
import { router } from 'expo-router';
import React, { createContext, useContext, useEffect, useRef, type ReactNode } from 'react';
import { Platform } from 'react-native';

import type { ServerSettings } from '../engine';
import { useServerSettings } from './server-settings';
import { setClerkHooks } from './clerk-hooks';
import { useSession } from './session';

type ClerkSettings = NonNullable<ServerSettings['auth']['clerk']>;

const Mounted = createContext(false);
// The longest a token request waits for clerk-js to load (it comes from the Frontend API).
const LOAD_WAIT_MS = 15_000;

function waitAtMost(promise: Promise<void>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    void promise.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Whether a `ClerkProvider` is above (the server is in Clerk mode and published its key). */
export function useClerkMounted(): boolean {
  return useContext(Mounted);
}

/** The `ClerkProvider` props for a server's Clerk settings. */
function clerkProviderProps(clerk: ClerkSettings) {
  return {
    publishableKey: clerk.publishable_key,
    // The app signs in with its own form: Clerk's prebuilt components (@clerk/ui, a
    // second script from the Frontend API, styled with inline CSS the CSP refuses) are
    // never loaded.
    prefetchUI: false,
    // Where Clerk navigates (after sign-out, `afterSignOutUrl`), the app's router goes,
    // inside the page: never a full reload in the browser.
    routerPush: (to: string) => router.push(appPath(to)),
    routerReplace: (to: string) => router.replace(appPath(to)),
    // Phones keep Clerk's client token in the secure store; a browser keeps its own.
    tokenCache: Platform.OS === 'web' ? undefined : tokenCache,
    // No Clerk native component is rendered (the form is the app's own): the native
    // client Clerk's native module keeps needs no syncing with clerk-js.
    __experimental_disableNativeClientSync: true,
  };
}

/** The path of a URL Clerk navigates to (absolute or not), for expo-router. */
function appPath(to: string): '/' {
  const path = to.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]+/i, '') || '/';
  // Clerk names only the app's own pages here (the home page, after sign-out).
  return path as '/';
}

/** Children under `ClerkProvider` when the current server is in Clerk mode, else as they are. */
export function ClerkRoot({ children }: { children: ReactNode }) {
  const serverUrl = useSession((s) => s.serverUrl);
  const clerk = useServerSettings(serverUrl).data?.auth.clerk ?? null;
  if (clerk === null) return <>{children}</>;
  return (
    <ClerkProvider {...clerkProviderProps(clerk)}>
      <Mounted.Provider value>
        <ClerkBridge />
        {children}
      </Mounted.Provider>
    </ClerkProvider>
  );
}

/**
 * Registers Clerk's `getToken` and `signOut` with the session while mounted, and ends
 * the app's sign-in when Clerk's session is gone (signed out in another tab, ended by
 * an administrator) once Clerk has loaded.
 */
function ClerkBridge() {
  const clerk = useClerk();
  const { isLoaded, isSignedIn } = useAuth();
  const phase = useSession((s) => s.phase);
  const signOut = useSession((s) => s.signOut);
  // Resolved once clerk-js has loaded: after a reload the engine may ask for a token
  // (the stored one has expired) before the script has even arrived.
  const loaded = useRef<{ promise: Promise<void>; resolve: () => void } | null>(null);
  if (loaded.current === null) {
    let resolve = () => {};
    const promise = new Promise<void>((done) => (resolve = done));
    loaded.current = { promise, resolve };
  }
  if (isLoaded) loaded.current.resolve();

  useEffect(() => {
    const ready = loaded.current!.promise;
    setClerkHooks({
      getToken: async () => {
        await waitAtMost(ready, LOAD_WAIT_MS);
        return clerk.loaded && clerk.session ? await clerk.session.getToken() : null;
      },
      signOut: () => clerk.signOut(),
    });
    return () => setClerkHooks(null);
  }, [clerk]);

  useEffect(() => {
    if (isLoaded && !isSignedIn && phase === 'ready') void signOut();
  }, [isLoaded, isSignedIn, phase, signOut]);
  return null;
}

export type ClerkSignInResult = { ok: true } | { ok: false; message: string };

/**
 * Password sign-in with Clerk (`useSignIn`): identifier (email or username) and
 * password, then the new Clerk session's JWT signs the engine in. Only under `ClerkRoot`.
 */
export function useClerkPasswordSignIn() {
  const { signIn, fetchStatus } = useSignIn();
  const clerk = useClerk();
  const signInWithToken = useSession((s) => s.signInWithToken);

  async function submit(identifier: string, password: string): Promise<ClerkSignInResult> {
    const { error } = await signIn.password({ identifier, password });
    if (error) return { ok: false, message: clerkMessage(error) };
    if (signIn.status !== 'complete') {
      return {
        ok: false,
        message:
          `This account needs another step to sign in (${signIn.status.replace(/_/g, ' ')}),` +
          " which this app does not offer yet: sign in once with Clerk's own page, or ask the administrator.",
      };
    }
    const finished = await signIn.finalize();
    if (finished.error) return { ok: false, message: clerkMessage(finished.error) };
    const token = clerk.session ? await clerk.session.getToken() : null;
    if (!token) return { ok: false, message: 'Clerk signed you in but gave no session token; try again.' };
    await signInWithToken(token);
    return { ok: true };
  }

  return { submit, busy: fetchStatus === 'fetching' };
}

function clerkMessage(error: unknown): string {
  const e = error as { longMessage?: unknown; message?: unknown; errors?: { longMessage?: string; message?: string }[] };
  const first = Array.isArray(e.errors) ? e.errors[0] : undefined;
  const text = first?.longMessage ?? first?.message ?? e.longMessage ?? e.message;
  return typeof text === 'string' && text ? text : 'Clerk refused the sign-in.';
}
