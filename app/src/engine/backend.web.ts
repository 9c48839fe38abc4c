/** The browser: the local database is IndexedDB, one database per server (see backend-idb.ts). */
import { openIdbBackend } from './backend-idb';
import type { Backend } from './store';

export function openBackend(name: string): Promise<Backend> {
  return openIdbBackend(name);
}
