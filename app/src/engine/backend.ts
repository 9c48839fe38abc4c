/**
 * `openBackend(name)`: the platform's local database for one server. Metro
 * picks `backend.web.ts` in the browser and `backend.native.ts` on phones; this
 * file is what TypeScript and jest resolve, and it uses IndexedDB where the
 * environment has it.
 */
import { openIdbBackend } from './backend-idb';
import { EngineError } from './errors';
import type { Backend } from './store';

export async function openBackend(name: string): Promise<Backend> {
  if (typeof globalThis.indexedDB === 'undefined') {
    throw new EngineError('internal', `no local database on this platform (${name})`);
  }
  return openIdbBackend(name);
}
