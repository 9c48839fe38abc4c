/**
 * The nine-step optimistic send against the real server: stored as `sending`
 * before any I/O, `sent` with its seq on the ack, `read` when the others'
 * read cursors reach it ("read by 2 of 2" in a group); refused input and a
 * refused send.
 */
import { EngineError } from '../errors';
import { closeAll, person, until } from './support';

afterEach(closeAll);

test('a message is stored as sending before any I/O, then sent with its seq, then read', async () => {
  const ada = await person({ start: false });
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  // Not started: no connection at all, and the message is there already.
  const sent = await ada.engine.send(conv.id, '  hello bob  ');
  expect(sent.status).toBe('sending');
  expect(sent.seq).toBeNull();
  expect(sent.body).toBe('hello bob');
  const local = await ada.engine.messages(conv.id);
  expect(local.map((m) => [m.body, m.status])).toEqual([['hello bob', 'sending']]);
  expect(ada.engine.outboxSize()).toBe(1);
  let c = (await ada.engine.conversation(conv.id))!;
  expect(ada.engine.receipt(c, local[0]!).status).toBe('sending');

  ada.engine.start();
  // Read without pause while the ack lands: the pending row becomes the acked
  // one in one transaction, so no read ever sees neither (or both).
  const lengths = new Set<number>();
  const acked = await until(async () => {
    const all = await ada.engine.messages(conv.id);
    lengths.add(all.length);
    const [m] = all;
    return m && m.status === 'sent' && m.seq !== null ? m : null;
  }, 'the ack', 20_000, 0);
  expect([...lengths]).toEqual([1]);
  expect(acked.key).toBe(sent.key);
  expect(acked.seq).toBe(1);
  // Then the mark_read that sending implies leaves the outbox too.
  await until(() => ada.engine.outboxSize() === 0, 'an empty outbox');
  c = (await ada.engine.conversation(conv.id))!;
  expect(ada.engine.receipt(c, acked)).toMatchObject({ status: 'sent', readBy: 0, of: 1 });

  // Bob gets it live, reads it; Ada sees "read".
  const got = await until(async () => (await bob.engine.messages(conv.id))[0], 'delivery to bob');
  expect(got.body).toBe('hello bob');
  expect((await bob.engine.conversation(conv.id))!.unread_count).toBe(1);
  await bob.engine.markRead(conv.id, got.seq!);
  expect((await bob.engine.conversation(conv.id))!.unread_count).toBe(0);
  await until(async () => {
    const cc = (await ada.engine.conversation(conv.id))!;
    return ada.engine.receipt(cc, acked).status === 'read';
  }, 'the read receipt');
  const cc = (await ada.engine.conversation(conv.id))!;
  expect(ada.engine.receipt(cc, acked)).toMatchObject({ status: 'read', readBy: 1, of: 1, readers: [bob.id] });
});

test('in a group of three, receipts count "read by 1 of 2" then "2 of 2"', async () => {
  const ada = await person();
  const bob = await person();
  const cy = await person();
  const group = await ada.engine.createGroup('Trio', [bob.id, cy.id]);
  await ada.engine.send(group.id, 'team, hi');
  const acked = await until(async () => {
    const [m] = await ada.engine.messages(group.id);
    return m?.status === 'sent' ? m : null;
  }, 'the ack');
  const receipt = async () => ada.engine.receipt((await ada.engine.conversation(group.id))!, acked);
  expect(await receipt()).toMatchObject({ status: 'sent', readBy: 0, of: 2 });

  await until(async () => (await bob.engine.messages(group.id)).length === 1, 'bob has it');
  await bob.engine.markRead(group.id, acked.seq!);
  await until(async () => (await receipt()).readBy === 1, 'read by 1');
  expect(await receipt()).toMatchObject({ status: 'read', readBy: 1, of: 2 });

  await until(async () => (await cy.engine.messages(group.id)).length === 1, 'cy has it');
  await cy.engine.markRead(group.id, acked.seq!);
  await until(async () => (await receipt()).readBy === 2, 'read by 2');
  expect((await receipt()).readers.sort()).toEqual([bob.id, cy.id].sort());
});

test('bad input is refused before it is queued, with the reason', async () => {
  const ada = await person({ start: false });
  const bob = await person({ start: false });
  const conv = await ada.engine.createDirect(bob.id);
  await expect(ada.engine.send(conv.id, '   ')).rejects.toThrow(/cannot be empty/);
  await expect(ada.engine.send(conv.id, 'x'.repeat(16001))).rejects.toThrow(/at most 16000/);
  await expect(ada.engine.send('c_nope', 'hi')).rejects.toMatchObject({ code: 'not_found' });
  await expect(ada.engine.search(' ')).rejects.toBeInstanceOf(EngineError);
  expect(ada.engine.outboxSize()).toBe(0);
  expect(await ada.engine.messages(conv.id)).toEqual([]);
});

test('a send the server refuses for good becomes failed, says why, and leaves the outbox', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  // Bob's upload is not Ada's to attach: the server answers forbidden.
  const media = await bob.engine.upload({ kind: 'bytes', bytes: new TextEncoder().encode('notes'), contentType: 'text/plain' });
  await ada.engine.send(conv.id, 'look', { attachments: [media.id] });
  const failed = await until(async () => {
    const [m] = await ada.engine.messages(conv.id);
    return m?.status === 'failed' ? m : null;
  }, 'the refusal');
  expect(failed.error).toBeTruthy();
  expect(ada.engine.outboxSize()).toBe(0);
  // The next message goes through: one refusal does not block the queue.
  await ada.engine.send(conv.id, 'never mind');
  await until(async () => (await bob.engine.messages(conv.id)).some((m) => m.body === 'never mind'), 'the next one');
  await ada.engine.discard(conv.id, failed.key);
  expect((await ada.engine.messages(conv.id)).map((m) => m.body)).toEqual(['never mind']);
});

test('a message of the most characters goes through; one whose frame would be over 64 KiB is refused before it is queued', async () => {
  const ada = await person();
  const bob = await person();
  const conv = await ada.engine.createDirect(bob.id);
  // 16000 control characters encode as 96000 bytes of JSON: the server would close
  // the connection over that frame, after every reconnect, so it is never queued.
  await expect(ada.engine.send(conv.id, 'a' + '\u0007'.repeat(15999))).rejects.toThrow(/too long to send/);
  expect(ada.engine.outboxSize()).toBe(0);
  expect(await ada.engine.messages(conv.id)).toEqual([]);
  await ada.engine.send(conv.id, 'x'.repeat(16000));
  const got = await until(async () => (await bob.engine.messages(conv.id))[0], 'the longest message');
  expect(got.body.length).toBe(16000);
  expect(ada.engine.connection().state).toBe('online');
});
