/**
 * The rest of the engine against the real server: optimistic edits, deletes
 * and reactions; history paging; conversations announced and ended live;
 * media upload and download; search; the AI routes (the server's endpoint is
 * tests/llm.py's stand-in); push tokens; the backoff's bounds; probing a server.
 */
import { backoffDelay, probeServer } from '../engine';
import { EngineError } from '../errors';
import { closeAll, Device, person, serverUrl, until } from './support';

afterEach(closeAll);

test('edits, deletes and reactions show at once, then reach the other member', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await ada.engine.send(conv.id, 'first draft');
  await until(async () => (await bob.engine.messages(conv.id)).length === 1, 'delivery');
  await until(async () => (await ada.engine.message(conv.id, 1))?.status === 'sent', 'the ack');

  await ada.engine.stop(); // offline: the change must show without the server
  await ada.engine.edit(conv.id, 1, 'final text');
  await ada.engine.react(conv.id, 1, ':+1:', true);
  const local = (await ada.engine.message(conv.id, 1))!;
  expect(local).toMatchObject({ body: 'final text', pendingChange: true, reactions: { ':+1:': [ada.id] } });
  expect(local.edited_at).not.toBeNull();
  ada.engine.start();

  await until(async () => (await bob.engine.message(conv.id, 1))?.body === 'final text', 'the edit at bob');
  await until(async () => (await bob.engine.message(conv.id, 1))?.reactions[':+1:']?.length === 1, 'the reaction');
  await until(async () => (await ada.engine.message(conv.id, 1))?.pendingChange === false, 'settled');
  expect(await ada.engine.edits(conv.id, 1)).toEqual([{ body: 'first draft', edited_at: expect.any(Number) }]);

  await bob.engine.react(conv.id, 1, ':+1:', true);
  await until(async () => (await ada.engine.message(conv.id, 1))?.reactions[':+1:']?.length === 2, 'both reacted');
  await ada.engine.remove(conv.id, 1);
  expect((await ada.engine.message(conv.id, 1))!.deleted_at).not.toBeNull();
  await until(async () => (await bob.engine.message(conv.id, 1))?.deleted_at !== null, 'the delete at bob');
  const tombstone = (await bob.engine.message(conv.id, 1))!;
  expect(tombstone).toMatchObject({ body: '', reactions: {}, attachments: [] });
});

test('a change the server refuses is undone locally', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await bob.engine.send(conv.id, 'bob says');
  await until(async () => (await ada.engine.message(conv.id, 1)) !== null, 'delivery');
  // Only the sender may delete in a direct conversation: the server refuses Ada's.
  await ada.engine.remove(conv.id, 1);
  await until(async () => (await ada.engine.message(conv.id, 1))?.deleted_at === null, 'the undo');
  const restored = (await ada.engine.message(conv.id, 1))!;
  expect(restored.body).toBe('bob says');
  expect(restored.error).toBeTruthy();
  await expect(ada.engine.edit(conv.id, 1, 'mine now')).rejects.toThrow(/only the sender/);
});

test('history is paged in on demand, older first, until its beginning', async () => {
  const ada = await person();
  const bob = await person({ start: false });
  const conv = await ada.engine.createDirect(bob.id);
  for (let i = 1; i <= 60; i++) await ada.engine.send(conv.id, `m${i}`);
  await until(() => ada.engine.outboxSize() === 0, 'sixty delivered', 30_000);
  bob.engine.start(); // a new device: it gets the latest page only
  await until(async () => (await bob.engine.messages(conv.id)).length === 50, 'the latest page');
  let held = await bob.engine.messages(conv.id);
  expect(held[0]!.body).toBe('m11');
  expect((await bob.engine.conversation(conv.id))!.has_beginning).toBe(false);
  const page = await bob.engine.loadOlder(conv.id, 50);
  expect(page).toEqual({ added: 10, hasMore: false });
  held = await bob.engine.messages(conv.id, { limit: 1000 });
  expect(held.map((m) => m.seq)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
  expect((await bob.engine.conversation(conv.id))!.has_beginning).toBe(true);
  expect((await bob.engine.messages(conv.id, { beforeSeq: 5 })).map((m) => m.seq)).toEqual([1, 2, 3, 4]);
});

test('a new group appears live for its members, and a removed member loses it', async () => {
  const ada = await person();
  const bob = await person();
  const group = await ada.engine.createGroup('Plans', [bob.id]);
  await until(async () => (await bob.engine.conversation(group.id)) !== null, 'conversation_added');
  await ada.engine.send(group.id, 'welcome');
  await until(async () => (await bob.engine.messages(group.id)).length === 1, 'live after the announcement');
  const ended: string[] = [];
  bob.engine.on((event) => {
    if (event.type === 'unsubscribed') ended.push(event.conversationId);
  });
  await ada.engine.removeMember(group.id, bob.id);
  await until(() => ended.includes(group.id), 'unsubscribed');
  expect(await bob.engine.conversation(group.id)).toBeNull();
  expect(await bob.engine.messages(group.id)).toEqual([]);
  expect((await ada.engine.conversation(group.id))!.member_ids).toEqual([ada.id]);
});

test('an image uploads, rides a message, and downloads for the other member', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  // The smallest PNG: the server checks that the bytes bear out the type.
  const png = Uint8Array.from(
    atob('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='),
    (c) => c.charCodeAt(0),
  );
  const media = await ada.engine.upload({ kind: 'bytes', bytes: png, contentType: 'image/png', filename: 'dot.png' });
  expect(media).toMatchObject({ content_type: 'image/png', size: png.length, filename: 'dot.png' });
  await ada.engine.send(conv.id, '', { attachments: [media.id] });
  const got = await until(async () => (await bob.engine.messages(conv.id))[0], 'delivery');
  expect(got.attachments).toEqual([media.id]);
  expect(await bob.engine.mediaInfo(media.id)).toMatchObject({ filename: 'dot.png' });
  const blob = await bob.engine.download(media.id);
  expect(new Uint8Array(await blob.arrayBuffer())).toEqual(png);
  // Off the web there is no object URL: a uri and the header for Image.
  const source = await bob.engine.mediaSource(media.id);
  expect(source.uri).toBe(`${serverUrl()}/v1/media/${media.id}`);
  expect(source.headers?.Authorization).toMatch(/^Bearer /);
  await expect(ada.engine.upload({ kind: 'bytes', bytes: new Uint8Array(), contentType: 'text/plain' })).rejects.toMatchObject({
    code: 'bad_request',
  });
});

test('search finds a message by its words', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await ada.engine.send(conv.id, 'the quarterly meetings are on Thursday');
  await until(() => ada.engine.outboxSize() === 0, 'delivered');
  const answer = await bob.engine.search('meeting thursday');
  expect(answer.results.map((r) => r.message.seq)).toEqual([1]);
  expect(answer.results[0]!.conversation_id).toBe(conv.id);
  expect(answer.results[0]!.highlights.length).toBeGreaterThan(0);
  const none = await bob.engine.search('(*:-AND)', { conversationId: conv.id });
  expect(none.results).toEqual([]);
});

// tests/llm.py's stand-in endpoint answers every request with this text.
const LLM_ANSWER = 'I found nothing more to say.';

test('AI: the switch guards asking; answers stream over the WebSocket, come from REST offline, and are cached', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  await bob.engine.send(conv.id, 'shall we ship on friday?');
  await until(async () => (await ada.engine.messages(conv.id)).length === 1, 'delivery');
  expect(await ada.engine.aiSettings(conv.id)).toEqual({ enabled: false, proactive: false, changed_by: null, changed_at: null });
  await expect(ada.engine.ask(conv.id, 'when do we ship?')).rejects.toMatchObject({ code: 'forbidden' });

  const seen: boolean[] = [];
  bob.engine.on((event) => {
    if (event.type === 'ai_settings' && event.conversationId === conv.id) seen.push(event.settings.enabled);
  });
  expect(await ada.engine.setAiSettings(conv.id, { enabled: true })).toMatchObject({ enabled: true, changed_by: ada.id });
  await until(() => seen.includes(true), 'ai_settings at bob');

  const deltas: string[] = [];
  const answer = await ada.engine.ask(conv.id, 'when do we ship?', { onDelta: (text) => deltas.push(text) });
  expect(answer).toEqual({ answer: LLM_ANSWER, citations: [], cached: false });
  expect(deltas.join('')).toBe(LLM_ANSWER);
  // The same question over the same messages: the server's cache, no deltas.
  const again = await ada.engine.ask(conv.id, '  When do we SHIP? ');
  expect(again.cached).toBe(true);
  await ada.engine.stop(); // offline from the WebSocket: REST asks
  expect((await ada.engine.ask(conv.id, 'when do we ship?')).answer).toBe(LLM_ANSWER);
  const summary = await ada.engine.catchUp(conv.id);
  expect(summary.from_seq).toBe(1);
  expect(summary.to_seq).toBe(1);
  expect(Array.isArray(await ada.engine.actionItems(conv.id))).toBe(true);
  const log = await ada.engine.aiLog(conv.id);
  expect(log.map((entry) => entry.action)).toEqual(expect.arrayContaining(['ask', 'catch_up']));
  await expect(ada.engine.ask(conv.id, ' ')).rejects.toBeInstanceOf(EngineError);
});

test('push tokens register and unregister; other forms are refused', async () => {
  const ada = await person({ start: false });
  await ada.engine.registerPushToken('ExponentPushToken[abcdefghijklmnop]', 'ios');
  await ada.engine.unregisterPushToken('ExponentPushToken[abcdefghijklmnop]');
  await expect(ada.engine.registerPushToken('not-a-token')).rejects.toMatchObject({ code: 'bad_request' });
});

test('a wrong password is refused with the server words; a taken name too', async () => {
  const ada = await person({ start: false });
  const other = await new Device('wrong-password').engine();
  await expect(other.login(ada.username, 'wrong-password')).rejects.toMatchObject({ code: 'unauthorized' });
  await expect(other.register(ada.username, 'password1')).rejects.toMatchObject({ code: 'conflict' });
  expect(other.me).toBeNull();
  const me = await other.login(ada.username, 'password1');
  expect(me.id).toBe(ada.id);
  await other.close();
});

test('backoff waits are full-jitter and capped', () => {
  expect(backoffDelay(0, 500, 30_000, () => 0.999)).toBeCloseTo(499.5);
  expect(backoffDelay(3, 500, 30_000, () => 0.5)).toBe(2000);
  expect(backoffDelay(10, 500, 30_000, () => 0.999)).toBeLessThan(30_000);
  expect(backoffDelay(1000, 500, 30_000, () => 1)).toBe(30_000);
  expect(backoffDelay(5, 500, 30_000, () => 0)).toBe(0);
});

test('probing a server tells a MessageAI server in local mode from nothing there', async () => {
  expect(await probeServer(serverUrl())).toMatchObject({ ok: true, authMode: 'local', error: null });
  const nothing = await probeServer('http://127.0.0.1:1');
  expect(nothing.ok).toBe(false);
  expect(nothing.error).toMatch(/cannot be reached/);
});
