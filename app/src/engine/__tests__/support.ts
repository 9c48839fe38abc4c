/**
 * What the engine's jest tests share: the real server's URL (MESSAGEAI_TEST_URL,
 * set by tests/test_app_engine.py), its stop/start control, engines over a
 * real IndexedDB implementation in memory (fake-indexeddb, the spec's own
 * algorithms: a reload is a new engine over the same factory), and waits
 * that poll the engine's state until a bound.
 */
import { IDBFactory, IDBKeyRange } from 'fake-indexeddb';
import WebSocket from 'ws';
import { openIdbBackend } from '../backend-idb';
import { createEngine } from '../engine';
import type { Engine, EngineOptions, WebSocketConstructor } from '../index';
import type { Backend } from '../store';

export function serverUrl(): string {
  const url = process.env.MESSAGEAI_TEST_URL;
  if (!url) throw new Error('MESSAGEAI_TEST_URL is not set: run these tests through tests/test_app_engine.py');
  return url;
}

export async function control(action: 'stop' | 'start'): Promise<void> {
  const url = process.env.MESSAGEAI_TEST_CONTROL;
  if (!url) throw new Error('MESSAGEAI_TEST_CONTROL is not set: run these tests through tests/test_app_engine.py');
  const response = await fetch(`${url}/${action}`, { method: 'POST' });
  if (!response.ok) throw new Error(`control ${action}: HTTP ${response.status}`);
}

/** One "browser profile": the IndexedDB that survives its engines. */
export class Device {
  readonly factory = new IDBFactory();
  private count = 0;
  constructor(readonly name = 'device') {}
  backend(): Promise<Backend> {
    return openIdbBackend(`messageai-test-${this.name}`, { indexedDB: this.factory, IDBKeyRange });
  }
  async engine(options: Partial<EngineOptions> = {}): Promise<Engine> {
    this.count++;
    return createEngine({
      serverUrl: serverUrl(),
      backend: await this.backend(),
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      backoff: { baseMs: 50, capMs: 500 },
      ...options,
    });
  }
}

let names = 0;
export function uniqueName(prefix = 'u'): string {
  names++;
  return `${prefix}${Date.now().toString(36)}${names}${Math.floor(Math.random() * 1e6).toString(36)}`.slice(0, 32);
}

const engines: Engine[] = [];

/** A signed-up user on a fresh device, started and live. */
export async function person(options: { start?: boolean; device?: Device } = {}): Promise<{
  engine: Engine;
  device: Device;
  username: string;
  id: string;
}> {
  const device = options.device ?? new Device(uniqueName('d'));
  const engine = await device.engine();
  engines.push(engine);
  const username = uniqueName();
  const user = await engine.register(username, 'password1');
  if (options.start !== false) {
    engine.start();
    await until(() => engine.connection().state === 'online', 'online');
  }
  return { engine, device, username, id: user.id };
}

export function track(engine: Engine): Engine {
  engines.push(engine);
  return engine;
}

export async function closeAll(): Promise<void> {
  while (engines.length) {
    const engine = engines.pop()!;
    try {
      await engine.close();
    } catch {
      // Already closed by the test.
    }
  }
}

/** Polls `check` every 20 ms until it is truthy; fails with `what` after `ms`. */
export async function until<T>(check: () => T | Promise<T>, what: string, ms = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** REST as a bare client (a bot or another device), for checking what the server holds. */
export async function api(token: string, path: string, init: RequestInit = {}): Promise<any> {
  const response = await fetch(`${serverUrl()}${path}`, {
    ...init,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', ...(init.headers ?? {}) },
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}
