/**
 * `LocalStore`: the one interface of the local database, the UI's source of
 * truth. Implemented over a small ordered key-value backend (`Backend`) twice:
 * IndexedDB in the browser (`backend-idb.ts`) and expo-sqlite on phones
 * (`backend-sqlite.ts`). Written by the engine only; screens read through `Engine`.
 */
export interface Backend {
  /** The values of `keys` in `table` (undefined where absent). */
  get(table: TableName, keys: string[]): Promise<(unknown | undefined)[]>;
  /** Rows with lower <= key < upper, ascending (or descending), at most `limit`. */
  range(
    table: TableName,
    lower: string,
    upper: string,
    options?: { reverse?: boolean; limit?: number },
  ): Promise<{ key: string; value: unknown }[]>;
  /** Apply puts (value) and deletes (value undefined) atomically, in order. */
  write(ops: WriteOp[]): Promise<void>;
  /** Erase every table. */
  clear(): Promise<void>;
  close(): Promise<void>;
}

export type TableName = 'meta' | 'users' | 'conversations' | 'messages' | 'outbox';
export const TABLES: readonly TableName[] = ['meta', 'users', 'conversations', 'messages', 'outbox'];

export interface WriteOp {
  table: TableName;
  key: string;
  /** undefined: delete the key. */
  value: unknown;
}
