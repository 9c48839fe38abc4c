/**
 * What Clerk's SDK lends the session in Clerk mode: `getToken` (a fresh session JWT)
 * and `signOut`, registered by `state/clerk`'s bridge while `ClerkProvider` is mounted.
 * `renewToken` is every engine's token provider (`EngineOptions.refreshToken`), set by
 * `state/session`. Kept apart, without imports, so the engine's tests use it as it is.
 */

export type ClerkHooks = { getToken: () => Promise<string | null>; signOut: () => Promise<void> };

let hooks: ClerkHooks | null = null;

export function setClerkHooks(next: ClerkHooks | null): void {
  hooks = next;
}

export function clerkHooks(): ClerkHooks | null {
  return hooks;
}

/**
 * Clerk's `getToken()` while Clerk is mounted (a fresh session JWT, or null when
 * Clerk's session is over), else null: a local token the server refuses is not
 * renewed, and the person signs in again.
 */
export async function renewToken(): Promise<string | null> {
  return hooks === null ? null : hooks.getToken();
}
