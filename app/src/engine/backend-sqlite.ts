/**
 * The phones' local database: expo-sqlite, one file per server, one table per
 * name in TABLES with (key TEXT PRIMARY KEY, value TEXT of JSON). WAL, and each
 * `write` in one exclusive transaction, so a batch (a message and its outbox
 * entry) is never half-applied. Opened by `backend.native.ts`.
 */
import type { Backend, TableName, WriteOp } from './store';
import { TABLES } from './store';

type Param = string | number;

/** The part of expo-sqlite's `SQLiteDatabase` this backend uses (its Transaction too). */
export interface SqliteLike {
  getFirstAsync<T>(source: string, ...params: Param[]): Promise<T | null>;
  getAllAsync<T>(source: string, ...params: Param[]): Promise<T[]>;
  runAsync(source: string, ...params: Param[]): Promise<unknown>;
  execAsync(source: string): Promise<void>;
  withExclusiveTransactionAsync(task: (txn: SqliteLike) => Promise<void>): Promise<void>;
  closeAsync(): Promise<void>;
}

export function sqliteBackend(db: SqliteLike): Backend {
  return {
    async get(table: TableName, keys: string[]) {
      const out: (unknown | undefined)[] = [];
      for (const key of keys) {
        const row = await db.getFirstAsync<{ value: string }>(
          `SELECT value FROM ${table} WHERE key = ?`,
          key,
        );
        out.push(row ? JSON.parse(row.value) : undefined);
      }
      return out;
    },
    async range(table, lower, upper, options = {}) {
      const order = options.reverse ? 'DESC' : 'ASC';
      const limit = options.limit ?? -1;
      const rows = await db.getAllAsync<{ key: string; value: string }>(
        `SELECT key, value FROM ${table} WHERE key >= ? AND key < ? ORDER BY key ${order} LIMIT ?`,
        lower,
        upper,
        limit,
      );
      return rows.map((row) => ({ key: row.key, value: JSON.parse(row.value) as unknown }));
    },
    async write(ops: WriteOp[]) {
      if (ops.length === 0) return;
      await db.withExclusiveTransactionAsync(async (txn) => {
        for (const op of ops) {
          if (op.value === undefined) {
            await txn.runAsync(`DELETE FROM ${op.table} WHERE key = ?`, op.key);
          } else {
            await txn.runAsync(
              `INSERT OR REPLACE INTO ${op.table} (key, value) VALUES (?, ?)`,
              op.key,
              JSON.stringify(op.value),
            );
          }
        }
      });
    },
    async clear() {
      await db.withExclusiveTransactionAsync(async (txn) => {
        for (const table of TABLES) await txn.execAsync(`DELETE FROM ${table}`);
      });
    },
    async close() {
      await db.closeAsync();
    },
  };
}

/** The schema, created on open. Keys compare as binary strings, like IndexedDB's. */
export const SCHEMA =
  'PRAGMA journal_mode = WAL;\n' +
  TABLES.map(
    (table) =>
      `CREATE TABLE IF NOT EXISTS ${table} (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;`,
  ).join('\n');
