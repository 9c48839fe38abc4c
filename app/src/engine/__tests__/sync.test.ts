/**
 * Offline, reload, reconnect and catch-up against the real server: the outbox
 * survives a reload and is delivered once and in order; a lost ack does not
 * make a duplicate; a device that was away catches up new messages and the
 * edits and reactions of old ones with get_changes; the server stopped and
 * restarted under a running engine; a revoked token signs the device out.
 */
import WebSocket from 'ws';
import type { Engine, WebSocketConstructor, WebSocketLike } from '../index';
import { api, closeAll, control, Device, person, serverUrl, track, until } from './support';

afterEach(closeAll);

async function bodies(engine: Engine, id: string): Promise<string[]> {
  return (await engine.messages(id)).map((m) => m.body);
}

test('three messages sent offline survive a reload and arrive once, in order', async () => {
  const device = new Device('offline-reload');
  const ada = await person({ device });
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await ada.engine.send(conv.id, 'before');
  await until(async () => (await bob.engine.messages(conv.id)).length === 1, 'the first message');
  await until(async () => (await ada.engine.messages(conv.id))[0]?.status === 'sent', 'its ack');
  await ada.engine.stop(); // offline
  // (A mark_read that the first ack implies may still be queued.)
  const queued = ada.engine.outboxSize();
  for (const body of ['one', 'two', 'three']) await ada.engine.send(conv.id, body);
  expect(ada.engine.outboxSize()).toBe(queued + 3);
  // What the banner shows: the three written, never the read receipt beside them.
  expect(ada.engine.outboxWaiting()).toBe(3);
  await ada.engine.close(); // the page reloads while offline

  const reloaded = track(await device.engine());
  expect(reloaded.me?.id).toBe(ada.id);
  expect(reloaded.outboxSize()).toBe(queued + 3);
  expect(reloaded.outboxWaiting()).toBe(3);
  const held = await reloaded.messages(conv.id);
  expect(held.map((m) => [m.body, m.status])).toEqual([
    ['before', 'sent'],
    ['one', 'sending'],
    ['two', 'sending'],
    ['three', 'sending'],
  ]);

  reloaded.start(); // back online
  await until(async () => (await bodies(bob.engine, conv.id)).length === 4, 'the three at bob');
  expect(await bodies(bob.engine, conv.id)).toEqual(['before', 'one', 'two', 'three']);
  const seqs = (await bob.engine.messages(conv.id)).map((m) => m.seq);
  expect(seqs).toEqual([1, 2, 3, 4]);
  await until(async () => (await reloaded.messages(conv.id)).every((m) => m.status === 'sent'), 'all acked');
  expect((await reloaded.messages(conv.id)).map((m) => m.seq)).toEqual([1, 2, 3, 4]);
});

test('a read receipt queued offline is sent but not counted as waiting', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await bob.engine.send(conv.id, 'hello');
  const first = await until(async () => (await ada.engine.messages(conv.id))[0], 'the first');
  await ada.engine.stop();
  await ada.engine.markRead(conv.id, first.seq!);
  await ada.engine.send(conv.id, 'one');
  await ada.engine.send(conv.id, 'two');
  expect(ada.engine.outboxSize()).toBe(3);
  expect(ada.engine.outboxWaiting()).toBe(2);
  ada.engine.start();
  await until(() => ada.engine.outboxSize() === 0, 'all delivered');
  expect(ada.engine.outboxWaiting()).toBe(0);
  await until(async () => (await bob.engine.messages(conv.id)).length === 3, 'both at bob');
});

/** A `ws` WebSocket that loses the first `ack` it receives and drops the connection, as a network would. */
function lossyWebSocket(): { ctor: WebSocketConstructor; lost: () => number } {
  let lost = 0;
  class Lossy implements WebSocketLike {
    private readonly ws: WebSocket;
    onopen: ((event: unknown) => void) | null = null;
    onclose: ((event: { code: number; reason: string }) => void) | null = null;
    onerror: ((event: unknown) => void) | null = null;
    onmessage: ((event: { data: unknown }) => void) | null = null;
    constructor(url: string) {
      this.ws = new WebSocket(url);
      this.ws.onopen = (event) => this.onopen?.(event);
      this.ws.onerror = (event) => this.onerror?.(event);
      this.ws.onclose = (event) => this.onclose?.({ code: event.code, reason: event.reason });
      this.ws.onmessage = (event) => {
        const data = String(event.data);
        if (lost === 0 && data.includes('"type":"ack"')) {
          lost++;
          this.ws.terminate();
          return;
        }
        this.onmessage?.({ data });
      };
    }
    get readyState(): number {
      return this.ws.readyState;
    }
    send(data: string): void {
      this.ws.send(data);
    }
    close(code?: number, reason?: string): void {
      this.ws.close(code, reason);
    }
  }
  return { ctor: Lossy, lost: () => lost };
}

test('a send whose ack was lost is resent with its client_id and stored once', async () => {
  const lossy = lossyWebSocket();
  const device = new Device('lossy');
  const first = await person({ device, start: false });
  const bob = await person();
  const conv = await first.engine.createDirect(bob.id);
  await first.engine.close();
  const ada = track(await device.engine({ WebSocket: lossy.ctor }));
  ada.start();
  await until(() => ada.connection().state === 'online', 'online');
  await ada.send(conv.id, 'exactly once');
  await until(() => lossy.lost() === 1, 'the lost ack');
  await until(async () => {
    const mine = await ada.messages(conv.id);
    return mine.length === 1 && mine[0]!.status === 'sent';
  }, 'the message settled after the reconnect');
  await until(async () => (await bob.engine.messages(conv.id)).length === 1, 'bob has it');
  // Give a duplicate every chance to show up, then check the server itself.
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(await bodies(bob.engine, conv.id)).toEqual(['exactly once']);
  expect(await bodies(ada, conv.id)).toEqual(['exactly once']);
});

test('a device that was away catches up new messages, edits, deletes and reactions', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await bob.engine.send(conv.id, 'old one');
  await bob.engine.send(conv.id, 'old two');
  await until(async () => (await ada.engine.messages(conv.id)).length === 2, 'ada has both');
  await ada.engine.stop();

  await until(async () => (await bob.engine.messages(conv.id)).every((m) => m.seq !== null), 'acked');
  await bob.engine.edit(conv.id, 1, 'old one, edited');
  await bob.engine.react(conv.id, 1, '👍', true);
  await bob.engine.remove(conv.id, 2);
  await bob.engine.send(conv.id, 'new');
  await until(() => bob.engine.outboxSize() === 0, 'bob delivered everything');

  ada.engine.start();
  await until(async () => (await ada.engine.messages(conv.id)).length === 3, 'the new message');
  const [one, two, three] = await ada.engine.messages(conv.id);
  expect(one).toMatchObject({ body: 'old one, edited', reactions: { '👍': [bob.id] } });
  expect(one!.edited_at).not.toBeNull();
  expect(two).toMatchObject({ body: '', seq: 2 });
  expect(two!.deleted_at).not.toBeNull();
  expect(three).toMatchObject({ body: 'new', seq: 3 });
  // Unread: the new message only (the tombstone does not count).
  expect((await ada.engine.conversation(conv.id))!.unread_count).toBe(2); // seq 1 and 3
});

test('the engine reconnects after the server is stopped and restarted, and delivers what was queued', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await control('stop');
  try {
    await until(() => ada.engine.connection().state === 'connecting', 'the drop noticed');
    await ada.engine.send(conv.id, 'while the server was down');
    // Until the next retry is scheduled too: between two, an attempt is in flight (and
    // `retryAt` null) for as long as a loaded machine takes to fail it.
    await until(
      () => ada.engine.connection().attempts >= 2 && ada.engine.connection().retryAt !== null,
      'retries with backoff',
    );
    expect(ada.engine.connection().retryAt).not.toBeNull();
  } finally {
    await control('start');
  }
  await until(() => ada.engine.connection().state === 'online', 'back online', 30_000);
  await until(() => bob.engine.connection().state === 'online', 'bob back online', 30_000);
  await until(async () => (await bodies(bob.engine, conv.id)).includes('while the server was down'), 'delivery', 30_000);
  expect(ada.engine.connection().attempts).toBe(0);
});

test('a revoked token signs the device out', async () => {
  const device = new Device('revoked');
  const ada = await person({ device });
  const events: string[] = [];
  ada.engine.on((event) => {
    if (event.type === 'signed_out') events.push(event.reason);
  });
  // Another client logs this token out (as a password change or an admin would).
  const [session] = (await (await device.backend()).get('meta', ['session'])) as { token: string }[];
  expect((await api(session!.token, '/v1/auth/logout', { method: 'POST' })).status).toBe(204);
  await until(() => events.length === 1, 'signed_out');
  expect(ada.engine.me).toBeNull();
  expect(ada.engine.connection().state).toBe('offline');
});

test('presence and typing reach the other member', async () => {
  const ada = await person();
  const bob = await person({ start: false });
  const conv = await ada.engine.createDirect(bob.id);
  bob.engine.start();
  await until(() => ada.engine.presence(bob.id).status === 'online', 'bob online');
  await until(() => bob.engine.connection().state === 'online', 'bob live');
  bob.engine.setTyping(conv.id, true);
  await until(() => ada.engine.typing(conv.id).includes(bob.id), 'bob typing');
  bob.engine.setTyping(conv.id, false);
  await until(() => ada.engine.typing(conv.id).length === 0, 'bob stopped');
  await bob.engine.stop();
  await until(() => ada.engine.presence(bob.id).status === 'offline', 'bob offline');
  expect(ada.engine.presence(bob.id).last_seen_at).not.toBeNull();
});

test('a token from elsewhere signs in; a refused one is renewed through refreshToken', async () => {
  const ada = await person({ start: false });
  const login = async () =>
    (
      await (
        await fetch(`${serverUrl()}/v1/auth/login`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ username: ada.username, password: 'password1' }),
        })
      ).json()
    ).token as string;
  const first = await login();
  let renewals = 0;
  const device = new Device('token');
  const engine = track(
    await device.engine({
      refreshToken: async () => {
        renewals++;
        return login();
      },
    }),
  );
  expect((await engine.signInWithToken(first)).id).toBe(ada.id);
  await expect(engine.signInWithToken('not-a-token')).rejects.toMatchObject({ code: 'unauthorized' });
  expect(engine.me?.id).toBe(ada.id);
  engine.start();
  await until(() => engine.connection().state === 'online', 'online');
  const signedOut: string[] = [];
  engine.on((event) => {
    if (event.type === 'signed_out') signedOut.push(event.reason);
  });
  // The token is revoked (as a Clerk session expires): the engine asks for a new one.
  expect((await api(first, '/v1/auth/logout', { method: 'POST' })).status).toBe(204);
  await until(() => renewals === 1 && engine.connection().state === 'online', 'renewed and back online');
  expect(signedOut).toEqual([]);
  expect(engine.me?.id).toBe(ada.id);
});

test('unread counts what came while away once, not once from the list and again from the catch-up', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await bob.engine.send(conv.id, 'seen');
  const first = await until(async () => (await ada.engine.messages(conv.id))[0], 'the first');
  await ada.engine.markRead(conv.id, first.seq!);
  await until(() => ada.engine.outboxSize() === 0, 'read delivered');
  await ada.engine.stop();
  for (const body of ['a', 'b', 'c']) await bob.engine.send(conv.id, body);
  await until(() => bob.engine.outboxSize() === 0, 'bob delivered');
  // Every count the list shows on the way: never more than 3, and once the
  // listing has said 3, never less (no count from a half-held conversation).
  const counts: number[] = [];
  ada.engine.on((event) => {
    if (event.type === 'conversations') {
      void ada.engine.conversation(conv.id).then((c) => c && counts.push(c.unread_count));
    }
  });
  ada.engine.start();
  await until(async () => (await ada.engine.messages(conv.id)).length === 4, 'caught up');
  await until(() => ada.engine.connection().state === 'online', 'online');
  expect((await ada.engine.conversation(conv.id))!.unread_count).toBe(3);
  expect(Math.max(...counts)).toBe(3);
  expect(counts.slice(counts.indexOf(3))).toEqual(counts.slice(counts.indexOf(3)).map(() => 3));
});
