/**
 * Clerk mode's token provider, against the real server (local tokens stand in for
 * Clerk's session JWTs: both are bearer tokens the server may stop accepting). The app
 * creates every engine with `refreshToken: renewToken` (state/clerk-hooks), which asks
 * the Clerk hooks registered by the Clerk provider's bridge; a REST request refused 401
 * is renewed there and sent once more. Also: the server's public settings, as the
 * sign-in screen reads them.
 */
import { renewToken, setClerkHooks } from '../../state/clerk-hooks';
import { fetchServerSettings, probeServer } from '../engine';
import { api, closeAll, Device, person, serverUrl, track } from './support';

afterEach(async () => {
  setClerkHooks(null);
  await closeAll();
});

async function login(username: string): Promise<string> {
  const response = await fetch(`${serverUrl()}/v1/auth/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password: 'password1' }),
  });
  return ((await response.json()) as { token: string }).token;
}

test("a refused token is renewed through the registered Clerk getToken and the request sent again", async () => {
  const ada = await person({ start: false });
  const first = await login(ada.username);
  const engine = track(await new Device('clerk-token').engine({ refreshToken: renewToken }));
  expect((await engine.signInWithToken(first)).id).toBe(ada.id);

  // No Clerk mounted (local mode): a revoked token is not renewed.
  expect((await api(first, '/v1/auth/logout', { method: 'POST' })).status).toBe(204);
  await expect(engine.searchUsers(ada.username)).rejects.toMatchObject({ code: 'unauthorized' });

  // Clerk mounted: its getToken gives the next session JWT, once per refusal.
  const second = await login(ada.username);
  await engine.signInWithToken(second);
  let asked = 0;
  let next: string | null = await login(ada.username);
  setClerkHooks({ getToken: async () => (asked++, next), signOut: async () => {} });
  expect((await api(second, '/v1/auth/logout', { method: 'POST' })).status).toBe(204);
  expect((await engine.searchUsers(ada.username)).map((u) => u.id)).toEqual([ada.id]);
  expect(asked).toBe(1);
  // The renewed token is the one used from now on: no more asking.
  await engine.searchUsers(ada.username);
  expect(asked).toBe(1);

  // Clerk's session over (getToken gives null): the 401 stands.
  expect((await api(next!, '/v1/auth/logout', { method: 'POST' })).status).toBe(204);
  next = null;
  await expect(engine.searchUsers(ada.username)).rejects.toMatchObject({ code: 'unauthorized' });
  expect(asked).toBe(2);
});

test("the probe reads the server's public settings: local mode, registration open, no Clerk", async () => {
  const probe = await probeServer(serverUrl());
  expect(probe).toMatchObject({ ok: true, authMode: 'local', error: null });
  expect(probe.settings?.auth).toEqual({ mode: 'local', registration_open: true, clerk: null });
  const settings = await fetchServerSettings(serverUrl());
  expect(settings.limits.max_upload_bytes).toBeGreaterThan(0);
  expect(settings.ai.available).toBe(true); // tests/test_app_engine.py configures its LLM stand-in
});
