/**
 * Both backends (IndexedDB in the browser, SQLite on phones) keep one contract:
 * ordered ranges, atomic batches, and data that outlives a reload.
 */
import { closeAll, Device, type BackendKind } from './support';

afterAll(closeAll);

describe.each<BackendKind>(['indexeddb', 'sqlite'])('the %s backend', (kind) => {

test('ranges come back in key order, bounded, either way', async () => {
  const backend = await new Device(`ranges-${kind}`, kind).backend();
  await backend.write(
    ['c\u0001s0000000000000010', 'c\u0001s0000000000000002', 'c\u0001p0000000000000001', 'd\u0001s1'].map((key) => ({
      table: 'messages' as const,
      key,
      value: { key },
    })),
  );
  const all = await backend.range('messages', 'c\u0001', 'c\u0001\uffff');
  expect(all.map((r) => r.key)).toEqual([
    'c\u0001p0000000000000001',
    'c\u0001s0000000000000002',
    'c\u0001s0000000000000010',
  ]);
  const newest = await backend.range('messages', 'c\u0001s', 'c\u0001s\uffff', { reverse: true, limit: 1 });
  expect(newest.map((r) => r.key)).toEqual(['c\u0001s0000000000000010']);
  await backend.close();
});

test('a batch with a failing write changes nothing', async () => {
  const backend = await new Device(`atomic-${kind}`, kind).backend();
  await expect(
    backend.write([
      { table: 'outbox', key: 'a', value: 1 },
      // A value neither backend can store: the whole batch aborts.
      { table: 'outbox', key: 'b', value: cyclic() },
    ]),
  ).rejects.toBeTruthy();
  expect(await backend.get('outbox', ['a', 'b'])).toEqual([undefined, undefined]);
  await backend.close();
});

test('what was written is there after a reload, and clear erases every table', async () => {
  const device = new Device(`reload-${kind}`, kind);
  const first = await device.backend();
  await first.write([
    { table: 'meta', key: 'session', value: { token: 't' } },
    { table: 'outbox', key: '0000000000000001', value: { kind: 'read' } },
  ]);
  await first.close();
  const second = await device.backend();
  expect(await second.get('meta', ['session'])).toEqual([{ token: 't' }]);
  await second.clear();
  expect(await second.range('outbox', '', '\uffff')).toEqual([]);
  await second.close();
});
});

function cyclic(): unknown {
  const value: Record<string, unknown> = {};
  value.self = value;
  // JSON (SQLite's rows) refuses the cycle; structured clone (IndexedDB) the function.
  value.fn = () => 0;
  return value;
}
