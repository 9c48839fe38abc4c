/**
 * The browser's local database: IndexedDB, one database per server, one object
 * store per table, string keys in order. Chosen over expo-sqlite's web build
 * because IndexedDB needs nothing from the page: no WebAssembly (so the CSP
 * needs no 'wasm-unsafe-eval'), no SharedArrayBuffer (so no COOP/COEP headers),
 * no OPFS worker; it survives reloads and works offline in every browser.
 * Opened by `backend.web.ts`; tests open it over fake-indexeddb.
 */
import { EngineError } from './errors';
import type { Backend, TableName, WriteOp } from './store';
import { TABLES } from './store';

const VERSION = 1;

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

export interface IdbGlobals {
  indexedDB: IDBFactory;
  IDBKeyRange: typeof IDBKeyRange;
}

export async function openIdbBackend(name: string, globals?: IdbGlobals): Promise<Backend> {
  const factory = globals?.indexedDB ?? globalThis.indexedDB;
  const KeyRange = globals?.IDBKeyRange ?? globalThis.IDBKeyRange;
  if (!factory) throw new EngineError('internal', 'this browser has no IndexedDB');
  const open = factory.open(name, VERSION);
  open.onupgradeneeded = () => {
    const db = open.result;
    for (const table of TABLES) {
      if (!db.objectStoreNames.contains(table)) db.createObjectStore(table);
    }
  };
  const db = await request(open);
  // Another tab upgrading the schema: let it, this one reopens on reload.
  db.onversionchange = () => db.close();

  return {
    async get(table: TableName, keys: string[]) {
      const tx = db.transaction(table, 'readonly');
      const store = tx.objectStore(table);
      const values = await Promise.all(keys.map((key) => request(store.get(key))));
      return values as (unknown | undefined)[];
    },
    async range(table, lower, upper, options = {}) {
      const tx = db.transaction(table, 'readonly');
      const store = tx.objectStore(table);
      const bounds = KeyRange.bound(lower, upper, false, true);
      const out: { key: string; value: unknown }[] = [];
      const limit = options.limit ?? Infinity;
      await new Promise<void>((resolve, reject) => {
        const cursorReq = store.openCursor(bounds, options.reverse ? 'prev' : 'next');
        cursorReq.onerror = () => reject(cursorReq.error);
        cursorReq.onsuccess = () => {
          const cursor = cursorReq.result;
          if (!cursor || out.length >= limit) return resolve();
          out.push({ key: String(cursor.key), value: cursor.value });
          cursor.continue();
        };
      });
      return out;
    },
    async write(ops: WriteOp[]) {
      if (ops.length === 0) return;
      const tables = [...new Set(ops.map((op) => op.table))];
      const tx = db.transaction(tables, 'readwrite');
      const finished = done(tx);
      try {
        for (const op of ops) {
          const store = tx.objectStore(op.table);
          if (op.value === undefined) store.delete(op.key);
          else store.put(op.value, op.key);
        }
      } catch (error) {
        // A value that cannot be stored throws here: without the abort the
        // writes before it would commit and the batch would be half-applied.
        tx.abort();
        await finished.catch(() => undefined);
        throw error;
      }
      await finished;
    },
    async clear() {
      const tx = db.transaction([...TABLES], 'readwrite');
      const finished = done(tx);
      for (const table of TABLES) tx.objectStore(table).clear();
      await finished;
    },
    async close() {
      db.close();
    },
  };
}
