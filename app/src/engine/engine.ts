/**
 * `createEngine`: builds the engine (index.ts `Engine`) over a backend, the
 * REST client and the WebSocket connection. Called once per signed-in server
 * by the app's state layer (src/state).
 */
import type { Engine, EngineOptions, ServerProbe } from './index';
import { EngineError } from './errors';

/** `http(s)://host[:port]` with no path or trailing slash; throws on anything else. */
export function normalizeServerUrl(input: string): string {
  let text = input.trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) text = `http://${text}`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new EngineError('invalid', `not a server address: ${input}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new EngineError('invalid', 'the server address starts with http:// or https://');
  }
  const path = url.pathname.replace(/\/+$/, '');
  return `${url.protocol}//${url.host}${path}`;
}

export async function probeServer(input: string, fetchImpl?: typeof fetch): Promise<ServerProbe> {
  const url = normalizeServerUrl(input);
  const doFetch = fetchImpl ?? fetch;
  try {
    const health = await doFetch(`${url}/healthz`);
    if (!health.ok) return { url, ok: false, authMode: 'unknown', error: `HTTP ${health.status}` };
    return { url, ok: true, authMode: 'unknown', error: null };
  } catch (error) {
    return { url, ok: false, authMode: 'unknown', error: String(error) };
  }
}

export async function createEngine(options: EngineOptions): Promise<Engine> {
  void options;
  throw new EngineError('internal', 'the engine is being built (issue 12)');
}
