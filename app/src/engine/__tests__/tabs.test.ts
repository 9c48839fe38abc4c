/**
 * Two tabs of one browser over one IndexedDB (tabs.ts), against the real
 * server: one connection between them, a follower's send delivered once with
 * the same statuses in both tabs, and leadership moving when the leader
 * closes, with a send the dead leader accepted but never answered stored and
 * delivered once, and a group it made unanswered refused rather than made twice. Node has BroadcastChannel but no Web Locks: `TabLocks` plays
 * `navigator.locks` (one holder per name, the next waiter granted on release);
 * tests/browser/test_tabs.py runs the browser's own.
 */
import { BroadcastChannel } from 'node:worker_threads';
import type { Engine, WebSocketConstructor, WebSocketLike } from '../index';
import { channelTabLink, type ChannelLike, type LockManagerLike, type TabLink, type TabMessage } from '../tabs';
import WebSocket from 'ws';
import { closeAll, Device, person, track, uniqueName, until } from './support';

afterEach(closeAll);

// Tabs share a browser's IndexedDB; a phone's SQLite file has one engine.
const browserOnly = process.env.MESSAGEAI_TEST_BACKEND === 'sqlite' ? test.skip : test;

class TabLocks implements LockManagerLike {
  private readonly tails = new Map<string, Promise<unknown>>();
  request(name: string, callback: () => Promise<unknown>): Promise<unknown> {
    const run = (this.tails.get(name) ?? Promise.resolve()).then(callback);
    this.tails.set(name, run.catch(() => undefined));
    return run;
  }
}

/** A tab: its engine over the device's database, the sockets it opened, the link it speaks on. */
async function tab(
  device: Device,
  locks: TabLocks,
  name: string,
  filter: (message: TabMessage) => boolean = () => true,
): Promise<{ engine: Engine; sockets: () => number }> {
  let opened = 0;
  class Counted extends (WebSocket as unknown as WebSocketConstructor) {
    constructor(url: string) {
      super(url);
      opened++;
    }
  }
  const link = channelTabLink(name, locks, new BroadcastChannel(name) as unknown as ChannelLike);
  const filtered: TabLink = { ...link, id: link.id, post: (m) => (filter(m) ? link.post(m) : undefined) };
  const engine = track(await device.engine({ tabs: filtered, WebSocket: Counted as unknown as WebSocketConstructor }));
  return { engine, sockets: () => opened };
}

function isLeader(engine: Engine): boolean {
  return (engine as unknown as { isLeader: boolean }).isLeader;
}

browserOnly('one tab holds the connection; a follower sends through it once, and both show sent then read', async () => {
  const bob = await person();
  const device = new Device(uniqueName('d'), 'indexeddb');
  const locks = new TabLocks();
  const name = uniqueName('tabs');
  const a = await tab(device, locks, name);
  const me = await a.engine.register(uniqueName(), 'password1');
  const b = await tab(device, locks, name);
  a.engine.start();
  b.engine.start();
  await until(() => a.engine.connection().state === 'online', 'the leader online');
  await until(() => b.engine.connection().state === 'online', 'the follower told it is online');
  expect([isLeader(a.engine), isLeader(b.engine)]).toEqual([true, false]);
  expect(b.engine.me?.id).toBe(me.id);

  const conv = await b.engine.createDirect(bob.id);
  expect((await a.engine.conversation(conv.id))?.id).toBe(conv.id);
  const sent = await b.engine.send(conv.id, 'from the second tab');
  expect(sent.status).toBe('sending');
  const atBob = await until(async () => (await bob.engine.messages(conv.id))[0], 'delivery to bob');
  expect(atBob.body).toBe('from the second tab');
  for (const t of [a, b]) {
    await until(async () => (await t.engine.message(conv.id, 1))?.status === 'sent', 'sent in both tabs');
    await until(() => t.engine.outboxSize() === 0, 'an empty outbox in both tabs');
  }

  await bob.engine.markRead(conv.id, 1);
  bob.engine.setTyping(conv.id, true);
  for (const t of [a, b]) {
    await until(async () => {
      const c = (await t.engine.conversation(conv.id))!;
      return t.engine.receipt(c, (await t.engine.message(conv.id, 1))!).status === 'read';
    }, 'read in both tabs');
    await until(() => t.engine.typing(conv.id).includes(bob.id), 'bob typing, in both tabs');
  }
  expect((await bob.engine.messages(conv.id)).map((m) => m.body)).toEqual(['from the second tab']);
  // Only the leader ever opened a socket.
  expect(a.sockets()).toBeGreaterThan(0);
  expect(b.sockets()).toBe(0);
});

browserOnly('when the leader closes, the next tab takes over and sends what the old one accepted, once', async () => {
  const bob = await person();
  const device = new Device(uniqueName('d'), 'indexeddb');
  const locks = new TabLocks();
  const name = uniqueName('tabs');
  // This leader accepts and runs calls but its answers never arrive (it "dies" first).
  const a = await tab(device, locks, name, (m) => m.t !== 'reply');
  await a.engine.register(uniqueName(), 'password1');
  const conv = await a.engine.createDirect(bob.id);
  const b = await tab(device, locks, name);

  let answered = false;
  const sending = b.engine.send(conv.id, 'accepted, never answered').then((m) => {
    answered = true;
    return m;
  });
  // The old leader stored it (it is in the shared outbox) without answering.
  await until(async () => (await b.engine.messages(conv.id)).length === 1, 'stored by the old leader');
  expect(answered).toBe(false);
  // A call that is not safe to repeat, run by the old leader, unanswered: refused, not run again.
  const grouping = b.engine.createGroup('Plans', [bob.id]);
  const refused = expect(grouping).rejects.toMatchObject({ code: 'unavailable' });
  await until(async () => (await b.engine.conversations()).some((c) => c.title === 'Plans'), 'the group made');
  await a.engine.close();
  await refused;
  b.engine.start();

  const m = await sending;
  expect(m.body).toBe('accepted, never answered');
  expect(isLeader(b.engine)).toBe(true);
  await until(() => b.engine.connection().state === 'online', 'the new leader online');
  expect(b.sockets()).toBeGreaterThan(0);
  await until(async () => (await b.engine.message(conv.id, 1))?.status === 'sent', 'sent by the new leader');
  await until(() => b.engine.outboxSize() === 0, 'an empty outbox');
  const later = await b.engine.send(conv.id, 'after the handover');
  expect(later.status).toBe('sending');
  await until(async () => (await bob.engine.messages(conv.id)).length === 2, 'both at bob');
  expect((await bob.engine.messages(conv.id)).map((x) => x.body)).toEqual([
    'accepted, never answered',
    'after the handover',
  ]);
  expect((await b.engine.messages(conv.id)).map((x) => x.body)).toEqual([
    'accepted, never answered',
    'after the handover',
  ]);
  expect((await bob.engine.conversations()).filter((c) => c.title === 'Plans')).toHaveLength(1);
});
