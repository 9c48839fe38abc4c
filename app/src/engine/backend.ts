/**
 * `openBackend`: the platform's local database for one server. Metro picks
 * `backend.web.ts` in the browser and `backend.native.ts` on phones; this file
 * is what TypeScript and jest see.
 */
import type { Backend } from './store';
import { EngineError } from './errors';

export async function openBackend(name: string): Promise<Backend> {
  throw new EngineError('internal', `no local database on this platform (${name})`);
}
