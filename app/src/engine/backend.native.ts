/** Phones: the local database is an expo-sqlite file per server (see backend-sqlite.ts). */
import * as SQLite from 'expo-sqlite';
import { SCHEMA, sqliteBackend } from './backend-sqlite';
import type { Backend } from './store';

export async function openBackend(name: string): Promise<Backend> {
  const file = `${name.replace(/[^a-zA-Z0-9._-]/g, '_')}.db`;
  const db = await SQLite.openDatabaseAsync(file);
  await db.execAsync(SCHEMA);
  return sqliteBackend(db);
}
