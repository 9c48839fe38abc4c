/**
 * What the engine's jest tests share: the real server's URL (MESSAGEAI_TEST_URL,
 * set by tests/test_app_engine.py), its stop/start control, engines over a
 * real IndexedDB implementation in memory (fake-indexeddb, the spec's own
 * algorithms: a reload is a new engine over the same factory), and waits
 * that poll the engine's state until a bound.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IDBFactory, IDBKeyRange } from 'fake-indexeddb';
import WebSocket from 'ws';
import { openIdbBackend } from '../backend-idb';
import { SCHEMA, sqliteBackend } from '../backend-sqlite';
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

import { openSqlJsFile } from './sqljs';

export type BackendKind = 'indexeddb' | 'sqlite';

/**
 * One device: a browser profile's IndexedDB, or a phone's SQLite file (over
 * sql.js, see sqljs.ts), that survives its engines: a reload or a restart is
 * a new engine over the same device.
 */
export class Device {
  readonly factory = new IDBFactory();
  private count = 0;
  private readonly file: string;
  constructor(
    readonly name = 'device',
    readonly kind: BackendKind = (process.env.MESSAGEAI_TEST_BACKEND as BackendKind | undefined) ?? 'indexeddb',
  ) {
    this.file = path.join(os.tmpdir(), `messageai-jest-${process.pid}-${name}.db`);
    fs.rmSync(this.file, { force: true });
    devices.push(this);
  }
  /** Deletes the device's SQLite file (closeAll calls it after each test). */
  forget(): void {
    fs.rmSync(this.file, { force: true });
  }
  async backend(): Promise<Backend> {
    if (this.kind === 'sqlite') {
      const db = await openSqlJsFile(this.file);
      await db.execAsync(SCHEMA);
      return sqliteBackend(db);
    }
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
const devices: Device[] = [];

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
  while (devices.length) devices.pop()!.forget();
}

/**
 * Polls `check` every `everyMs` until it is truthy; fails with `what` after
 * `ms`, a bound for a loaded 2-core machine (CI), not a measure of speed.
 */
export async function until<T>(
  check: () => T | Promise<T>,
  what: string,
  ms = 20_000,
  everyMs = 20,
): Promise<NonNullable<T>> {
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
    await new Promise((resolve) => setTimeout(resolve, everyMs));
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
