/**
 * expo-sqlite's async API (the part backend-sqlite.ts uses) over sql.js: the
 * SQLite C library compiled to WebAssembly, so the phones' backend runs its
 * SQL against real SQLite in jest. The database lives in a real file: read
 * on open, written back on every commit (as a phone's file outlives the app).
 */
import * as fs from 'node:fs';
import initSqlJs, { type Database, type SqlValue } from 'sql.js';
import type { SqliteLike } from '../backend-sqlite';

type Param = string | number;

let sqlJs: ReturnType<typeof initSqlJs> | null = null;

export async function openSqlJsFile(path: string): Promise<SqliteLike> {
  sqlJs ??= initSqlJs();
  const SQL = await sqlJs;
  const db: Database = fs.existsSync(path) ? new SQL.Database(fs.readFileSync(path)) : new SQL.Database();
  let inTransaction = false;
  // expo-sqlite runs exclusive transactions one at a time; so does this.
  let queue: Promise<unknown> = Promise.resolve();
  const persist = () => {
    if (!inTransaction) fs.writeFileSync(path, db.export());
  };

  const rows = <T>(source: string, params: Param[]): T[] => {
    const statement = db.prepare(source);
    try {
      statement.bind(params as SqlValue[]);
      const out: T[] = [];
      while (statement.step()) out.push(statement.getAsObject() as T);
      return out;
    } finally {
      statement.free();
    }
  };

  const api: SqliteLike = {
    async getFirstAsync<T>(source: string, ...params: Param[]) {
      return rows<T>(source, params)[0] ?? null;
    },
    async getAllAsync<T>(source: string, ...params: Param[]) {
      return rows<T>(source, params);
    },
    async runAsync(source: string, ...params: Param[]) {
      db.run(source, params as SqlValue[]);
      persist();
      return { changes: db.getRowsModified() };
    },
    async execAsync(source: string) {
      db.exec(source);
      persist();
    },
    withExclusiveTransactionAsync(task) {
      const run = queue.then(async () => {
        db.exec('BEGIN EXCLUSIVE');
        inTransaction = true;
        try {
          await task(api);
          db.exec('COMMIT');
        } catch (error) {
          db.exec('ROLLBACK');
          throw error;
        } finally {
          inTransaction = false;
        }
        persist();
      });
      queue = run.catch(() => undefined);
      return run;
    },
    async closeAsync() {
      await queue;
      persist();
      db.close();
    },
  };
  return api;
}
