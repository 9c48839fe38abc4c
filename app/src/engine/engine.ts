/**
 * `createEngine`: the local-first engine (index.ts `Engine`) for one account on
 * one server. Called once per server by the app's state layer (src/state).
 *
 * Lifecycle: `createEngine` opens the local database and loads the session,
 * the conversations, the known users and the outbox; `start()` runs the
 * connection loop (open the WebSocket, list the conversations, subscribe to
 * each, catch up with `get_changes`, deliver the outbox, then live frames),
 * which after any close waits `random() * min(cap, base * 2^attempt)` (full
 * jitter) and starts again, until `stop()`. Every change to the local state
 * goes through one serial queue (`serial`), so frames, acks and the user's own
 * writes apply in the order they happened.
 */
import { openBackend } from './backend';
import { Connection } from './connection';
import { EngineError } from './errors';
import type {
  AskOptions,
  ConnectionInfo,
  Engine,
  EngineEvent,
  EngineOptions,
  HistoryPage,
  LocalConversation,
  LocalMessage,
  Presence,
  Receipt,
  SendOptions,
  ServerProbe,
  ServerSettings,
  UploadSource,
  WebSocketConstructor,
} from './index';
import {
  END,
  SEP,
  messageKey,
  outboxKey,
  pad,
  pendingKey,
  seqKey,
  type OutboxOp,
  type Session,
  type StoredConversation,
  type StoredMessage,
} from './localstore';
import { LIMITS, type Conversation, type Media, type Message, type User } from './protocol';
import * as api from './api';
import { Rest } from './rest';
import { browserTabLink, TabEngine } from './tabs';
import type { Backend, WriteOp } from './store';
import * as v from './validate';

type Frame = Record<string, unknown>;

const DEFAULT_BACKOFF_BASE_MS = 500;
const DEFAULT_BACKOFF_CAP_MS = 30_000;
const DEFAULT_OUTBOX_LIMIT = 1000;
// Frames waiting for the serial queue; a backlog past this means the device
// cannot keep up: drop the connection and catch up from the store's cursors.
const MAX_QUEUED_FRAMES = 5000;
// A ping every so often finds a dead network the OS has not noticed.
const PING_EVERY_MS = 25_000;
const PING_TIMEOUT_MS = 10_000;
// Re-send `typing: true` this often while typing (the server expires it after 6 s).
const TYPING_RENEW_MS = 3000;
// Forget a typist we have not heard from for this long (the server's false was lost).
const TYPING_FORGET_MS = 8000;
// Subscriptions and catch-ups run this many at a time.
const SYNC_CONCURRENCY = 8;
const HISTORY_PAGE = 50;
const CHANGES_PAGE = 200;
// Object URLs of downloaded media kept for views (web); the oldest is revoked.
const MAX_MEDIA_URLS = 200;
// PROTOCOL.md's default `limits.max_frame_bytes`: a larger frame closes the connection.
const MAX_FRAME_BYTES = 65536;
// Users fetched by id after a sync, at most this many per pass.
const MAX_USER_FETCHES = 200;

/** `http(s)://host[:port][/path]` with no trailing slash; throws on anything else. */
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
  if (!url.hostname) throw new EngineError('invalid', `not a server address: ${input}`);
  const path = url.pathname.replace(/\/+$/, '');
  return `${url.protocol}//${url.host}${path}`;
}

/** The server's public settings (`GET /v1/settings`), validated. */
export async function fetchServerSettings(url: string, fetchImpl?: typeof fetch): Promise<ServerSettings> {
  // Bound: a browser refuses `fetch` called as a method of another object.
  const rest = new Rest(normalizeServerUrl(url), fetchImpl ?? ((i, o) => fetch(i, o)));
  return v.serverSettings(await rest.request('/v1/settings'));
}

/**
 * Is a MessageAI server there (`/healthz`), and how does it sign people in (its
 * public settings)? A server too old to have `/v1/settings` is `unknown`: the app
 * then offers local sign-in, and a Clerk server's 403 says the rest.
 */
export async function probeServer(input: string, fetchImpl?: typeof fetch): Promise<ServerProbe> {
  const url = normalizeServerUrl(input);
  const rest = new Rest(url, fetchImpl ?? ((i, o) => fetch(i, o)));
  try {
    const health = v.obj(await rest.request('/healthz'), 'health answer');
    if (health.status !== 'ok') {
      return { url, ok: false, authMode: 'unknown', settings: null, error: 'not a MessageAI server' };
    }
  } catch (error) {
    return { url, ok: false, authMode: 'unknown', settings: null, error: messageOf(error) };
  }
  try {
    const settings = await fetchServerSettings(url, fetchImpl);
    return { url, ok: true, authMode: settings.auth.mode, settings, error: null };
  } catch (error) {
    return { url, ok: true, authMode: 'unknown', settings: null, error: messageOf(error) };
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function newClientId(random: () => number): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  let out = '';
  for (let i = 0; i < 32; i++) out += Math.floor(random() * 16).toString(16);
  return out;
}

/** Full jitter: a uniform wait in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  return random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function trimmedLength(text: string): number {
  return [...text.trim()].length;
}

export async function createEngine(options: EngineOptions): Promise<Engine> {
  const serverUrl = normalizeServerUrl(options.serverUrl);
  const backend = options.backend ?? (await openBackend(`messageai:${serverUrl}`));
  const engine = new LocalFirstEngine(serverUrl, backend, options);
  await engine.load();
  const link = options.tabs === undefined ? browserTabLink(`messageai:${serverUrl}`) : options.tabs;
  return link === null ? engine : new TabEngine(engine, link);
}

export class LocalFirstEngine implements Engine {
  private readonly rest: Rest;
  private readonly WebSocketCtor: WebSocketConstructor;
  private readonly random: () => number;
  private readonly backoffBase: number;
  private readonly backoffCap: number;
  private readonly outboxLimit: number;

  private session: Session | null = null;
  private readonly convs = new Map<string, StoredConversation>();
  private readonly users = new Map<string, User>();
  private outbox: OutboxOp[] = [];
  private nextOrder = 1;
  private readonly presences = new Map<string, Presence>();
  // Which presence_update last set each user's presence (see subscribe).
  private presenceClock = 0;
  private readonly presenceStamps = new Map<string, number>();
  private readonly typists = new Map<string, Map<string, number>>();
  private readonly typingSent = new Map<string, number>();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly listeners = new Set<(event: EngineEvent) => void>();
  private readonly openConversations = new Set<string>();
  private readonly subscribed = new Set<string>();
  private readonly mediaUrls = new Map<string, string>();

  private queue: Promise<unknown> = Promise.resolve();
  private queuedFrames = 0;
  private running = false;
  private loop: Promise<void> | null = null;
  private conn: Connection | null = null;
  private live = false;
  private flushing = false;
  private wake: (() => void) | null = null;
  private info: ConnectionInfo = { state: 'offline', retryAt: null, attempts: 0, lastError: null };
  private closedStore = false;

  constructor(
    readonly serverUrl: string,
    private readonly backend: Backend,
    options: EngineOptions,
  ) {
    const fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
    this.rest = new Rest(serverUrl, fetchImpl);
    const ctor = options.WebSocket ?? (globalThis.WebSocket as unknown as WebSocketConstructor);
    if (!ctor) throw new EngineError('internal', 'no WebSocket on this platform');
    this.WebSocketCtor = ctor;
    this.random = options.random ?? Math.random;
    this.backoffBase = options.backoff?.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
    this.backoffCap = options.backoff?.capMs ?? DEFAULT_BACKOFF_CAP_MS;
    this.outboxLimit = options.outboxLimit ?? DEFAULT_OUTBOX_LIMIT;
    this.refreshToken = options.refreshToken ?? null;
    if (this.refreshToken) this.rest.renew = () => this.refreshSession();
  }

  private readonly refreshToken: (() => Promise<string | null>) | null;

  get me(): User | null {
    return this.session?.user ?? null;
  }

  // ---------------------------------------------------------------- loading

  async load(): Promise<void> {
    const [session] = await this.backend.get('meta', ['session']);
    const convRows = await this.backend.range('conversations', '', END);
    const userRows = await this.backend.range('users', '', END);
    const outboxRows = await this.backend.range('outbox', '', END);
    // Swapped in without an await between, so no read sees a half-loaded state (reload).
    this.session = (session as Session | undefined) ?? null;
    this.rest.token = this.session?.token ?? null;
    this.convs.clear();
    for (const row of convRows) {
      const stored = row.value as StoredConversation;
      this.convs.set(stored.conv.id, stored);
    }
    this.users.clear();
    for (const row of userRows) {
      const user = row.value as User;
      this.users.set(user.id, user);
    }
    if (this.session) this.users.set(this.session.user.id, this.session.user);
    this.outbox = outboxRows.map((row) => row.value as OutboxOp);
    const last = this.outbox[this.outbox.length - 1];
    // Orders start at the clock in microseconds: two tabs over one database
    // then never pick the same key for their entries (each keeps its own counter).
    this.nextOrder = Math.max((last?.order ?? 0) + 1, Date.now() * 1000);
    // Pending rows may outlive their op (a crash between writes cannot happen:
    // one transaction holds both); orders must stay above every pending key.
    for (const stored of this.convs.values()) {
      const rows = await this.backend.range(
        'messages',
        `${stored.conv.id}${SEP}p`,
        `${stored.conv.id}${SEP}p${END}`,
        { reverse: true, limit: 1 },
      );
      const row = rows[0];
      if (row) {
        const order = Number(row.key.slice(row.key.lastIndexOf('p') + 1));
        if (order >= this.nextOrder) this.nextOrder = order + 1;
      }
    }
  }

  /**
   * Reads everything again from the store, after the leader tab wrote it
   * (a follower, see tabs.ts) or before this tab takes the connection over.
   */
  reload(): Promise<void> {
    return this.serial(() => this.load());
  }

  /** What only the connection knows (presence, typing), for a tab that just opened (tabs.ts). */
  liveState(): { presences: [string, Presence][]; typing: [string, string[]][] } {
    const typing: [string, string[]][] = [];
    for (const id of this.typists.keys()) typing.push([id, this.typing(id)]);
    return { presences: [...this.presences.entries()], typing };
  }

  /** Runs `task` after every earlier state change; the queue survives a failed task. */
  private serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private emit(event: EngineEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (error) {
        // A screen's bug must not stop the engine; it shows in the console.
        console.error('engine listener failed', error);
      }
    }
  }

  on(listener: (event: EngineEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  connection(): ConnectionInfo {
    return { ...this.info };
  }

  private setInfo(changes: Partial<ConnectionInfo>): void {
    this.info = { ...this.info, ...changes };
    this.emit({ type: 'connection', info: this.connection() });
  }

  // ---------------------------------------------------------------- lifecycle

  start(): void {
    if (this.running || !this.session || this.closedStore) return;
    this.running = true;
    this.watchNetwork(true);
    this.loop = this.runLoop();
  }

  /**
   * Browsers say when the network goes and comes back: close at once on
   * `offline` (a socket on a dead network can take minutes to notice) and try
   * again at once on `online` instead of waiting out the backoff.
   */
  private readonly onOnline = () => this.reconnectNow();
  private readonly onOffline = () => this.conn?.close(4000, 'the device went offline');

  private watchNetwork(on: boolean): void {
    const target = globalThis as unknown as {
      addEventListener?: (type: string, listener: () => void) => void;
      removeEventListener?: (type: string, listener: () => void) => void;
      document?: unknown;
    };
    if (typeof target.addEventListener !== 'function' || target.document === undefined) return;
    if (on) {
      target.addEventListener('online', this.onOnline);
      target.addEventListener('offline', this.onOffline);
    } else {
      target.removeEventListener?.('online', this.onOnline);
      target.removeEventListener?.('offline', this.onOffline);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    this.watchNetwork(false);
    this.wake?.();
    this.conn?.close(1000, 'stopped');
    await this.loop;
    this.loop = null;
    await this.queue;
    this.setInfo({ state: 'offline', retryAt: null });
  }

  async close(): Promise<void> {
    await this.stop();
    for (const url of this.mediaUrls.values()) URL.revokeObjectURL?.(url);
    this.mediaUrls.clear();
    this.closedStore = true;
    await this.backend.close();
  }

  reconnectNow(): void {
    this.wake?.();
  }

  private wsUrl(): string {
    const base = this.serverUrl.replace(/^http/, 'ws');
    return `${base}/v1/ws?access_token=${encodeURIComponent(this.session?.token ?? '')}`;
  }

  private async runLoop(): Promise<void> {
    while (this.running && this.session) {
      this.setInfo({ state: 'connecting', retryAt: null });
      const conn = new Connection(this.wsUrl(), this.WebSocketCtor, (frame) => this.onFrame(conn, frame));
      let closeCode = 0;
      try {
        await conn.open();
        this.conn = conn;
        const pinger = this.keepAlive(conn);
        await this.syncAll(conn);
        if (conn.isOpen) {
          this.live = true;
          this.setInfo({ state: 'online', attempts: 0, lastError: null });
          void this.flush();
        }
        const closed = await conn.closed;
        closeCode = closed.code;
        this.setInfo({ lastError: closed.reason || `connection closed (${closed.code})` });
        void pinger;
      } catch (error) {
        this.setInfo({ lastError: messageOf(error) });
        conn.close(4000, 'sync failed');
      }
      this.live = false;
      this.conn = null;
      this.subscribed.clear();
      this.clearTypists();
      if (!this.running) break;
      // A refused handshake and a revoked token look alike from here (browsers
      // hide the HTTP status): ask the REST API whether the token still works. A
      // refused one is renewed there (`refreshToken`), and the next connection uses
      // the new one; still refused, the sign-in is over.
      if (!conn.opened || closeCode === 1008) {
        try {
          await this.rest.request('/v1/me');
        } catch (error) {
          if (error instanceof EngineError && error.code === 'unauthorized') {
            await this.signedOut('the server no longer accepts this sign-in');
            break;
          }
        }
      }
      const attempt = this.info.attempts;
      const delay = backoffDelay(attempt, this.backoffBase, this.backoffCap, this.random);
      this.setInfo({ state: 'connecting', attempts: attempt + 1, retryAt: Date.now() + delay });
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
    if (!this.running) this.setInfo({ state: 'offline', retryAt: null });
  }

  private async keepAlive(conn: Connection): Promise<void> {
    while (conn.isOpen) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, PING_EVERY_MS);
        void conn.closed.then(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (!conn.isOpen) return;
      try {
        await conn.request({ type: 'ping' }, { timeoutMs: PING_TIMEOUT_MS });
      } catch {
        return; // The request closed the connection on timeout.
      }
    }
  }

  /**
   * A fresh token from `refreshToken` (Clerk's short-lived JWTs), if one is given:
   * the REST client and the next WebSocket use it at once. Also the REST client's
   * `renew`, which may run inside a `serial` section: the store write is queued
   * behind it, never awaited here.
   */
  private async refreshSession(): Promise<string | null> {
    if (!this.refreshToken || !this.session) return null;
    let token: string | null;
    try {
      token = await this.refreshToken();
    } catch {
      return null;
    }
    if (!token || !this.session) return null;
    this.rest.token = token;
    this.session = { ...this.session, token };
    const renewed = this.session;
    void this.serial(async () => {
      if (this.session === renewed) await this.backend.write([{ table: 'meta', key: 'session', value: renewed }]);
    });
    return token;
  }

  private async signedOut(reason: string): Promise<void> {
    this.running = false;
    this.watchNetwork(false);
    await this.serial(async () => {
      this.session = null;
      this.rest.token = null;
      await this.backend.write([{ table: 'meta', key: 'session', value: undefined }]);
    });
    this.emit({ type: 'signed_out', reason });
  }

  // ---------------------------------------------------------------- sync

  /** List, subscribe, catch up, on a fresh connection. */
  private async syncAll(conn: Connection): Promise<void> {
    const listed = v.obj(await this.rest.request('/v1/conversations'), 'conversation list');
    const conversations = v.list(listed.conversations, 'conversation list', v.conversation);
    await this.serial(() => this.replaceConversations(conversations));
    const ids = conversations.map((c) => c.id);
    await this.eachLimited(ids, async (id) => {
      await this.subscribe(conn, id);
      await this.syncChanges(conn, id);
    });
    void this.fetchUnknownUsers();
  }

  private async eachLimited(ids: string[], task: (id: string) => Promise<void>): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const id = ids[next++]!;
        await task(id);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SYNC_CONCURRENCY, ids.length) }, worker));
  }

  private async subscribe(conn: Connection, id: string): Promise<void> {
    // presence_update frames are not ordered with the conversation's frames: one
    // may overtake this answer, whose `online` list is then older than it.
    const asked = this.presenceClock;
    let answer: Frame;
    try {
      answer = await conn.request({ type: 'subscribe', conversation_id: id });
    } catch (error) {
      if (error instanceof EngineError && (error.code === 'forbidden' || error.code === 'not_found')) {
        await this.serial(() => this.dropConversation(id));
        return;
      }
      throw error;
    }
    this.subscribed.add(id);
    const cursors = v.readCursors(answer.read_cursors);
    const online = v.strList(answer, 'online', 'subscribed');
    const lastSeq = v.int(answer, 'last_seq', 'subscribed');
    await this.serial(async () => {
      const stored = this.convs.get(id);
      if (!stored) return;
      // The conversation object may be older than the subscription (listed or
      // created before messages came): catch-up must start from this last_seq.
      stored.conv.last_seq = Math.max(stored.conv.last_seq, lastSeq);
      // Cursors only move forward: keep the higher of what is held and what came.
      for (const [uid, seq] of Object.entries(cursors)) {
        stored.read_cursors[uid] = Math.max(stored.read_cursors[uid] ?? 0, seq);
      }
      await this.recountUnread(stored);
      await this.putConv(stored);
      // In the queue, like presence_update frames: a frame that came after this
      // answer must not be overwritten by the answer's older `online` list.
      for (const uid of stored.conv.member_ids) {
        if ((this.presenceStamps.get(uid) ?? 0) > asked) continue;
        const status = online.includes(uid) ? 'online' : 'offline';
        const old = this.presences.get(uid);
        if (!old || old.status !== status) {
          const presence: Presence = { status, last_seen_at: old?.last_seen_at ?? null };
          this.presences.set(uid, presence);
          this.emit({ type: 'presence', userId: uid, presence });
        }
      }
    });
    this.emit({ type: 'receipts', conversationId: id });
  }

  /** v1.1 catch-up: `get_changes` from the highest rev held; a new conversation gets its latest page. */
  private async syncChanges(conn: Connection, id: string): Promise<void> {
    const stored = this.convs.get(id);
    if (!stored || !this.subscribed.has(id)) return;
    if (stored.max_rev === 0 && stored.oldest_seq === null) {
      if (stored.conv.last_seq === 0) {
        await this.serial(async () => {
          const s = this.convs.get(id);
          if (s && s.oldest_seq === null) {
            s.has_beginning = true;
            await this.putConv(s);
          }
        });
        return;
      }
      const answer = await conn.request({ type: 'get_history', conversation_id: id, limit: HISTORY_PAGE });
      const page = v.page(answer, 'history');
      await this.serial(() => this.storeHistory(id, page.messages, page.has_more));
      return;
    }
    for (;;) {
      const after = this.convs.get(id)?.max_rev ?? 0;
      const answer = await conn.request({
        type: 'get_changes',
        conversation_id: id,
        after_rev: after,
        limit: CHANGES_PAGE,
      });
      const page = v.changes(answer);
      await this.serial(() => this.storeMessages(page.messages, { catchUp: true, lastRev: page.last_rev }));
      if (!page.has_more || page.messages.length === 0) break;
    }
  }

  private async replaceConversations(conversations: Conversation[]): Promise<void> {
    const ops: WriteOp[] = [];
    const seen = new Set<string>();
    for (const conv of conversations) {
      seen.add(conv.id);
      ops.push(...this.upsertConvOps(conv));
    }
    for (const id of [...this.convs.keys()]) {
      if (!seen.has(id)) ops.push(...(await this.dropConversationOps(id)));
    }
    await this.backend.write(ops);
    this.emit({ type: 'conversations' });
  }

  private upsertConvOps(conv: Conversation): WriteOp[] {
    const old = this.convs.get(conv.id);
    const stored: StoredConversation = old
      ? { ...old, conv: { ...conv, last_message: this.newerLast(old.conv.last_message, conv.last_message) } }
      : { conv, read_cursors: {}, max_seq: 0, max_rev: 0, oldest_seq: null, has_beginning: false };
    if (old) {
      // The server's counts are the truth at listing time; held messages may be newer.
      stored.conv.last_seq = Math.max(conv.last_seq, old.max_seq);
      stored.conv.last_rev = Math.max(conv.last_rev, old.max_rev);
    }
    this.convs.set(conv.id, stored);
    return [{ table: 'conversations', key: conv.id, value: stored }];
  }

  private newerLast(a: Message | null, b: Message | null): Message | null {
    if (!a) return b;
    if (!b) return a;
    if (a.seq !== b.seq) return a.seq > b.seq ? a : b;
    return a.rev >= b.rev ? a : b;
  }

  private async dropConversationOps(id: string): Promise<WriteOp[]> {
    this.convs.delete(id);
    this.subscribed.delete(id);
    const ops: WriteOp[] = [{ table: 'conversations', key: id, value: undefined }];
    const rows = await this.backend.range('messages', `${id}${SEP}`, `${id}${SEP}${END}`);
    for (const row of rows) ops.push({ table: 'messages', key: row.key, value: undefined });
    const keep: OutboxOp[] = [];
    for (const op of this.outbox) {
      if (op.conversation_id === id) ops.push({ table: 'outbox', key: outboxKey(op.order), value: undefined });
      else keep.push(op);
    }
    this.outbox = keep;
    return ops;
  }

  private async dropConversation(id: string): Promise<void> {
    if (!this.convs.has(id)) return;
    await this.backend.write(await this.dropConversationOps(id));
    this.emit({ type: 'conversations' });
    this.emit({ type: 'messages', conversationId: id });
    this.emitOutbox();
  }

  private async putConv(stored: StoredConversation): Promise<void> {
    await this.backend.write([{ table: 'conversations', key: stored.conv.id, value: stored }]);
  }

  private async storeHistory(id: string, messages: Message[], hasMore: boolean): Promise<void> {
    const stored = this.convs.get(id);
    if (!stored) return;
    const first = messages[0];
    if (first && (stored.oldest_seq === null || first.seq < stored.oldest_seq)) {
      stored.oldest_seq = first.seq;
    }
    if (!hasMore) stored.has_beginning = true;
    await this.storeMessages(messages, { history: true });
  }

  /**
   * Stores server messages (new, changed, acked or paged in). A message older
   * than the oldest held is not kept (history is paged in on demand); one
   * already held at the same or a later `rev` changes nothing. One of mine
   * whose send is still queued (its ack was lost) settles that send.
   */
  private async storeMessages(
    messages: Message[],
    how: { catchUp?: boolean; history?: boolean; live?: boolean; lastRev?: number; extraOps?: WriteOp[]; force?: boolean } = {},
  ): Promise<Set<string>> {
    const touched = new Set<string>();
    const recount = new Set<StoredConversation>();
    const ops: WriteOp[] = [...(how.extraOps ?? [])];
    const me = this.session?.user.id;
    // One read for the page (catch-up pages are up to 200): what is held of each.
    const keys = messages.map((m) => seqKey(m.conversation_id, m.seq));
    const held = new Map<string, StoredMessage>();
    (await this.backend.get('messages', keys)).forEach((row, i) => {
      if (row) held.set(keys[i]!, row as StoredMessage);
    });
    for (const message of messages) {
      const stored = this.convs.get(message.conversation_id);
      if (!stored) continue;
      if (!how.history && stored.oldest_seq !== null && message.seq < stored.oldest_seq) {
        stored.max_rev = Math.max(stored.max_rev, message.rev);
        continue;
      }
      if (stored.oldest_seq === null) {
        stored.oldest_seq = message.seq;
        if (message.seq === 1) stored.has_beginning = true;
      }
      const key = seqKey(message.conversation_id, message.seq);
      const existing = held.get(key);
      stored.max_rev = Math.max(stored.max_rev, message.rev);
      if (existing && existing.rev !== null && existing.rev >= message.rev && !how.force) continue;
      const isNew = !existing;
      if (message.sender_id === me) {
        const sendOp = this.outbox.find(
          (op) => op.kind === 'send' && op.conversation_id === message.conversation_id && op.client_id === message.client_id,
        );
        if (sendOp && sendOp.kind === 'send') {
          ops.push({ table: 'messages', key: sendOp.storeKey, value: undefined });
          ops.push({ table: 'outbox', key: outboxKey(sendOp.order), value: undefined });
          this.outbox = this.outbox.filter((op) => op !== sendOp);
        }
      }
      const pendingChange = this.outbox.some(
        (op) => op.kind !== 'send' && op.kind !== 'read' && op.conversation_id === message.conversation_id && op.seq === message.seq,
      );
      const local: StoredMessage = {
        ...message,
        key: messageKey(message.sender_id, message.client_id),
        status: 'sent',
        pendingChange,
        error: null,
        storeKey: key,
      };
      ops.push({ table: 'messages', key, value: local });
      held.set(key, local);
      if (message.seq > stored.max_seq) stored.max_seq = message.seq;
      stored.conv.last_seq = Math.max(stored.conv.last_seq, message.seq);
      stored.conv.last_rev = Math.max(stored.conv.last_rev, message.rev);
      stored.conv.last_message = this.newerLast(stored.conv.last_message, message);
      if (how.catchUp) {
        // The listed unread_count already counts what the catch-up brings: recount below.
        recount.add(stored);
      } else if (
        isNew &&
        !how.history &&
        message.sender_id !== me &&
        message.deleted_at === null &&
        message.seq > (stored.read_cursors[me ?? ''] ?? 0)
      ) {
        stored.conv.unread_count += 1;
      } else if (!isNew && message.deleted_at !== null && existing?.deleted_at === null) {
        recount.add(stored);
      }
      touched.add(message.conversation_id);
    }
    if (how.lastRev !== undefined && messages[0]) {
      const stored = this.convs.get(messages[0].conversation_id);
      if (stored) stored.conv.last_rev = Math.max(stored.conv.last_rev, how.lastRev);
    }
    if (recount.size) {
      // The deleted rows must be counted as deleted: write them first.
      await this.backend.write(ops.splice(0));
      for (const stored of recount) await this.recountUnread(stored);
    }
    const convIds = new Set(messages.map((m) => m.conversation_id));
    for (const id of convIds) {
      const stored = this.convs.get(id);
      if (stored) ops.push({ table: 'conversations', key: id, value: stored });
    }
    await this.backend.write(ops);
    for (const id of touched) this.emit({ type: 'messages', conversationId: id });
    if (touched.size) this.emit({ type: 'conversations' });
    if (ops.some((op) => op.table === 'outbox')) this.emitOutbox();
    return touched;
  }

  /**
   * unread_count from the rows held, when every message above my cursor is
   * held; otherwise the server's count stays. The caller holds the serial
   * queue and writes `stored` afterwards.
   */
  private async recountUnread(stored: StoredConversation): Promise<void> {
    const me = this.session?.user.id ?? '';
    const cursor = stored.read_cursors[me] ?? 0;
    if (cursor >= Math.max(stored.conv.last_seq, stored.max_seq)) {
      stored.conv.unread_count = 0;
      return;
    }
    // Only a count over everything above the cursor beats the server's.
    if (stored.oldest_seq === null || stored.oldest_seq > cursor + 1) return;
    if (stored.max_seq < stored.conv.last_seq) return;
    const id = stored.conv.id;
    const rows = await this.backend.range('messages', seqKey(id, cursor + 1), `${id}${SEP}s${END}`);
    let count = 0;
    for (const row of rows) {
      const m = row.value as StoredMessage;
      if (m.sender_id !== me && m.deleted_at === null) count++;
    }
    stored.conv.unread_count = count;
  }

  // ---------------------------------------------------------------- frames

  private onFrame(conn: Connection, frame: Frame): void {
    if (this.queuedFrames >= MAX_QUEUED_FRAMES) {
      conn.close(4000, 'falling behind');
      return;
    }
    this.queuedFrames++;
    void this.serial(async () => {
      try {
        await this.handleFrame(conn, frame);
      } catch (error) {
        // A frame that does not validate is dropped; catch-up brings the truth.
        console.warn('dropped a server frame', String(frame.type), messageOf(error));
      } finally {
        this.queuedFrames--;
      }
    });
  }

  private async handleFrame(conn: Connection, frame: Frame): Promise<void> {
    switch (frame.type) {
      case 'new_message':
      case 'message_updated': {
        const message = v.message(frame.message);
        const stored = this.convs.get(message.conversation_id);
        if (stored && message.sender_id !== this.me?.id) this.dropTypist(message.conversation_id, message.sender_id);
        await this.storeMessages([message], { live: true });
        return;
      }
      case 'message_read': {
        const id = v.str(frame, 'conversation_id', 'message_read');
        const user = v.str(frame, 'user_id', 'message_read');
        const seq = v.int(frame, 'seq', 'message_read');
        const stored = this.convs.get(id);
        if (!stored) return;
        stored.read_cursors[user] = Math.max(stored.read_cursors[user] ?? 0, seq);
        if (user === this.me?.id) {
          await this.recountUnread(stored);
          this.emit({ type: 'conversations' });
        }
        await this.putConv(stored);
        this.emit({ type: 'receipts', conversationId: id });
        return;
      }
      case 'presence_update': {
        const user = v.str(frame, 'user_id', 'presence_update');
        const status = v.str(frame, 'status', 'presence_update');
        if (status !== 'online' && status !== 'offline') return;
        const presence: Presence = { status, last_seen_at: v.intOrNull(frame, 'last_seen_at', 'presence_update') };
        this.presences.set(user, presence);
        this.presenceStamps.set(user, ++this.presenceClock);
        this.emit({ type: 'presence', userId: user, presence });
        return;
      }
      case 'typing': {
        const id = v.str(frame, 'conversation_id', 'typing');
        const user = v.str(frame, 'user_id', 'typing');
        if (v.bool(frame, 'typing', 'typing')) {
          let map = this.typists.get(id);
          if (!map) this.typists.set(id, (map = new Map()));
          map.set(user, Date.now() + TYPING_FORGET_MS);
          this.emit({ type: 'typing', conversationId: id, userIds: this.typing(id) });
          this.forgetTypistLater(id, user);
        } else {
          this.dropTypist(id, user);
        }
        return;
      }
      case 'unsubscribed': {
        const id = v.str(frame, 'conversation_id', 'unsubscribed');
        const reason = typeof frame.reason === 'string' ? frame.reason : 'access ended';
        await this.dropConversation(id);
        this.emit({ type: 'unsubscribed', conversationId: id, reason });
        return;
      }
      case 'conversation_added':
      case 'conversation_updated': {
        const conv = v.conversation(frame.conversation);
        const isNew = !this.convs.has(conv.id);
        await this.backend.write(this.upsertConvOps(conv));
        this.emit({ type: 'conversations' });
        if (isNew && this.live) {
          // Outside the queue: subscribing waits for answers that the queue delivers.
          void (async () => {
            try {
              await this.subscribe(conn, conv.id);
              await this.syncChanges(conn, conv.id);
            } catch {
              // The connection dropped: the next sync subscribes.
            }
          })();
        }
        return;
      }
      case 'ai_settings': {
        const id = v.str(frame, 'conversation_id', 'ai_settings');
        this.emit({ type: 'ai_settings', conversationId: id, settings: v.aiSettings({ changed_at: null, ...frame }) });
        return;
      }
      default:
        return; // pong, error without req, frames of later versions: nothing to do.
    }
  }

  /** If the server's `typing: false` never comes (a lost connection), the typist fades anyway. */
  private forgetTypistLater(id: string, user: string): void {
    const key = `${id}\u0000${user}`;
    clearTimeout(this.typingTimers.get(key));
    this.typingTimers.set(
      key,
      setTimeout(() => {
        this.typingTimers.delete(key);
        const until = this.typists.get(id)?.get(user);
        if (until !== undefined && until <= Date.now()) this.dropTypist(id, user);
      }, TYPING_FORGET_MS + 50),
    );
  }

  private dropTypist(id: string, user: string): void {
    const map = this.typists.get(id);
    if (map?.delete(user)) this.emit({ type: 'typing', conversationId: id, userIds: this.typing(id) });
  }

  private clearTypists(): void {
    for (const timer of this.typingTimers.values()) clearTimeout(timer);
    this.typingTimers.clear();
    for (const id of [...this.typists.keys()]) {
      this.typists.delete(id);
      this.emit({ type: 'typing', conversationId: id, userIds: [] });
    }
  }

  // ---------------------------------------------------------------- outbox

  /** Delivers the outbox in order while live; transient failures wait, permanent ones settle. */
  private async flush(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    let retries = 0;
    try {
      while (this.live && this.conn?.isOpen) {
        const op = this.outbox[0];
        if (!op) break;
        const conn = this.conn;
        let answer: Frame;
        try {
          answer = await conn.request(this.frameOf(op));
        } catch (error) {
          const e = error instanceof EngineError ? error : new EngineError('internal', messageOf(error));
          if (e.code === 'offline') break;
          if (e.transient) {
            // The server is busy or rate-limiting: wait as it says, else back off.
            const wait = e.retryAfterMs ?? backoffDelay(retries, this.backoffBase, this.backoffCap, this.random);
            retries++;
            await sleep(Math.min(this.backoffCap, wait));
            continue;
          }
          await this.serial(() => this.settleFailed(op, e));
          continue;
        }
        retries = 0;
        try {
          await this.serial(() => this.settleDone(op, answer));
        } catch (error) {
          // An answer that does not validate: settle the entry as failed rather
          // than resending it forever; the next catch-up brings the server's state.
          const e = error instanceof EngineError ? error : new EngineError('protocol', messageOf(error));
          await this.serial(() => this.settleFailed(op, e));
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  /**
   * Refuses, before it is queued, a frame the server would close the connection
   * over (over `limits.max_frame_bytes`, 65536 by default): resent after every
   * reconnect it would block the outbox for good.
   */
  private checkFrameSize(op: OutboxOp): void {
    const bytes = new TextEncoder().encode(JSON.stringify({ ...this.frameOf(op), req: 2 ** 31 })).length;
    if (bytes > MAX_FRAME_BYTES) {
      throw new EngineError('invalid', `this message is too long to send (${bytes} bytes encoded; at most ${MAX_FRAME_BYTES})`);
    }
  }

  private frameOf(op: OutboxOp): Frame {
    switch (op.kind) {
      case 'send': {
        const frame: Frame = {
          type: 'send_message',
          conversation_id: op.conversation_id,
          client_id: op.client_id,
          body: op.body,
        };
        if (op.attachments.length) frame.attachments = op.attachments;
        if (op.reply_to !== null) frame.reply_to = op.reply_to;
        if (op.mentions.length) frame.mentions = op.mentions;
        return frame;
      }
      case 'edit':
        return { type: 'edit_message', conversation_id: op.conversation_id, seq: op.seq, body: op.body };
      case 'delete':
        return { type: 'delete_message', conversation_id: op.conversation_id, seq: op.seq };
      case 'react':
        return { type: 'react', conversation_id: op.conversation_id, seq: op.seq, emoji: op.emoji, on: op.on };
      case 'read':
        return { type: 'mark_read', conversation_id: op.conversation_id, seq: op.seq };
    }
  }

  private removeOpWrites(op: OutboxOp): WriteOp[] {
    this.outbox = this.outbox.filter((o) => o !== op);
    return [{ table: 'outbox', key: outboxKey(op.order), value: undefined }];
  }

  private async settleDone(op: OutboxOp, answer: Frame): Promise<void> {
    if (!this.outbox.includes(op)) return; // Settled meanwhile (a catch-up saw the message).
    if (op.kind === 'send') {
      const message = v.message(answer.message);
      // One transaction: the pending row becomes the acked one, never neither.
      await this.storeMessages([message], {
        extraOps: [...this.removeOpWrites(op), { table: 'messages', key: op.storeKey, value: undefined }],
      });
      this.emitOutbox();
      // Sending into a conversation reads it (PROTOCOL.md: clients usually do).
      // Already inside the serial queue: the locked variant (serial() here would deadlock).
      if (await this.moveReadCursor(op.conversation_id, message.seq)) {
        this.emit({ type: 'conversations' });
        this.emit({ type: 'receipts', conversationId: op.conversation_id });
      }
      return;
    }
    if (op.kind === 'read') {
      await this.backend.write(this.removeOpWrites(op));
    } else {
      // The answer is the truth even when a live frame of the same rev came first
      // (`force`), and it lands with the entry's removal in one transaction.
      await this.storeMessages([v.message(answer.message)], { force: true, extraOps: this.removeOpWrites(op) });
    }
    this.emitOutbox();
  }

  private async settleFailed(op: OutboxOp, error: EngineError): Promise<void> {
    if (!this.outbox.includes(op)) return;
    const ops = this.removeOpWrites(op);
    if (op.kind === 'send') {
      const [row] = (await this.backend.get('messages', [op.storeKey])) as (StoredMessage | undefined)[];
      if (row) ops.push({ table: 'messages', key: op.storeKey, value: { ...row, status: 'failed', error: error.message } });
    } else if (op.kind !== 'read') {
      const key = seqKey(op.conversation_id, op.seq);
      const [row] = (await this.backend.get('messages', [key])) as (StoredMessage | undefined)[];
      // Undo the optimistic change unless the server's state has moved on since.
      if (row && (row.rev ?? 0) <= (op.before.rev ?? 0)) {
        ops.push({ table: 'messages', key, value: { ...op.before, pendingChange: false, error: error.message } });
      }
    }
    await this.backend.write(ops);
    this.emit({ type: 'messages', conversationId: op.conversation_id });
    this.emitOutbox();
  }

  private enqueueWrites(op: OutboxOp): WriteOp[] {
    this.checkFrameSize(op);
    this.outbox.push(op);
    return [{ table: 'outbox', key: outboxKey(op.order), value: op }];
  }

  private checkRoom(): void {
    if (this.outbox.length >= this.outboxLimit) {
      throw new EngineError('invalid', `${this.outbox.length} changes are waiting to be sent: wait for the connection`);
    }
  }

  outboxSize(): number {
    return this.outbox.length;
  }

  outboxWaiting(): number {
    // Read receipts are bookkeeping, not something the person wrote: not counted.
    return this.outbox.reduce((n, op) => (op.kind === 'read' ? n : n + 1), 0);
  }

  private emitOutbox(): void {
    this.emit({ type: 'outbox', size: this.outbox.length, waiting: this.outboxWaiting() });
  }

  // ---------------------------------------------------------------- accounts

  private requireMe(): User {
    if (!this.session) throw new EngineError('unauthorized', 'not signed in');
    return this.session.user;
  }

  private async signIn(path: string, body: Record<string, string>): Promise<User> {
    const answer = v.obj(await this.rest.request(path, { method: 'POST', json: body }), 'sign-in answer');
    const user = v.user(answer.user);
    const token = v.str(answer, 'token', 'sign-in answer');
    await this.adoptSession(user, token);
    return user;
  }

  private async adoptSession(user: User, token: string): Promise<void> {
    await this.stop();
    await this.serial(async () => {
      if (this.session?.user.id !== user.id) await this.eraseLocal();
      this.session = { token, user };
      this.rest.token = token;
      this.users.set(user.id, user);
      await this.backend.write([
        { table: 'meta', key: 'session', value: this.session },
        { table: 'users', key: user.id, value: user },
      ]);
    });
    this.emit({ type: 'conversations' });
  }

  private async eraseLocal(): Promise<void> {
    await this.backend.clear();
    this.convs.clear();
    this.users.clear();
    this.outbox = [];
    this.presences.clear();
    this.typists.clear();
  }

  /**
   * Sign in with a token from elsewhere (Clerk mode: a Clerk session JWT from
   * Clerk's SDK). Checked with `GET /v1/me`; a token that expires is renewed
   * through `EngineOptions.refreshToken`.
   */
  async signInWithToken(token: string): Promise<User> {
    const probe = new Rest(this.serverUrl, this.rest.fetchImpl);
    probe.token = token;
    const user = v.user(await probe.request('/v1/me'));
    await this.adoptSession(user, token);
    return user;
  }

  register(username: string, password: string, displayName?: string): Promise<User> {
    const body: Record<string, string> = { username, password };
    if (displayName) body.display_name = displayName;
    return this.signIn('/v1/auth/register', body);
  }

  login(username: string, password: string): Promise<User> {
    return this.signIn('/v1/auth/login', { username, password });
  }

  async logout(): Promise<void> {
    try {
      await this.rest.request('/v1/auth/logout', { method: 'POST' });
    } catch (error) {
      // Offline or already revoked: this device forgets the token all the same.
      if (!(error instanceof EngineError) || (error.code !== 'offline' && error.code !== 'unauthorized')) throw error;
    }
    await this.stop();
    await this.serial(async () => {
      await this.eraseLocal();
      this.session = null;
      this.rest.token = null;
    });
    this.emit({ type: 'conversations' });
    this.emit({ type: 'signed_out', reason: 'signed out' });
  }

  async updateProfile(changes: { display_name?: string }): Promise<User> {
    this.requireMe();
    const user = v.user(await this.rest.request('/v1/me', { method: 'PATCH', json: changes }));
    await this.serial(async () => {
      if (!this.session) return;
      this.session = { ...this.session, user };
      this.users.set(user.id, user);
      await this.backend.write([
        { table: 'meta', key: 'session', value: this.session },
        { table: 'users', key: user.id, value: user },
      ]);
    });
    this.emit({ type: 'users' });
    return user;
  }

  async changePassword(oldPassword: string, newPassword: string): Promise<void> {
    this.requireMe();
    await this.rest.request('/v1/me/password', {
      method: 'POST',
      json: { old_password: oldPassword, new_password: newPassword },
    });
  }

  // ---------------------------------------------------------------- reads

  private toLocal(stored: StoredConversation): LocalConversation {
    return {
      ...stored.conv,
      read_cursors: { ...stored.read_cursors },
      oldest_seq: stored.oldest_seq,
      has_beginning: stored.has_beginning,
      pending_count: this.outbox.filter((op) => op.kind === 'send' && op.conversation_id === stored.conv.id).length,
    };
  }

  async conversations(): Promise<LocalConversation[]> {
    const list = [...this.convs.values()].map((s) => this.toLocal(s));
    const activity = (c: LocalConversation) => c.last_message?.created_at ?? c.created_at;
    return list.sort((a, b) => activity(b) - activity(a));
  }

  async conversation(conversationId: string): Promise<LocalConversation | null> {
    const stored = this.convs.get(conversationId);
    return stored ? this.toLocal(stored) : null;
  }

  async messages(conversationId: string, options: { beforeSeq?: number; limit?: number } = {}): Promise<LocalMessage[]> {
    const limit = Math.max(1, Math.min(options.limit ?? 100, 1000));
    const prefix = `${conversationId}${SEP}`;
    const upper = options.beforeSeq !== undefined ? seqKey(conversationId, options.beforeSeq) : `${prefix}s${END}`;
    const rows = await this.backend.range('messages', `${prefix}s`, upper, { reverse: true, limit });
    const held = rows.reverse().map((row) => strip(row.value as StoredMessage));
    if (options.beforeSeq !== undefined) return held;
    const pending = await this.backend.range('messages', `${prefix}p`, `${prefix}p${END}`);
    return [...held, ...pending.map((row) => strip(row.value as StoredMessage))];
  }

  async message(conversationId: string, seq: number): Promise<LocalMessage | null> {
    const [row] = (await this.backend.get('messages', [seqKey(conversationId, seq)])) as (StoredMessage | undefined)[];
    return row ? strip(row) : null;
  }

  knownUser(userId: string): User | null {
    return this.users.get(userId) ?? null;
  }

  async user(userId: string): Promise<User | null> {
    const known = this.users.get(userId);
    if (known) return known;
    try {
      const user = v.user(await this.rest.request(`/v1/users/${encodeURIComponent(userId)}`));
      await this.rememberUsers([user]);
      return user;
    } catch (error) {
      if (error instanceof EngineError && (error.code === 'not_found' || error.code === 'offline')) return null;
      throw error;
    }
  }

  private async rememberUsers(users: User[]): Promise<void> {
    const changed = users.filter((u) => JSON.stringify(this.users.get(u.id)) !== JSON.stringify(u));
    if (!changed.length) return;
    for (const u of changed) this.users.set(u.id, u);
    await this.backend.write(changed.map((u) => ({ table: 'users' as const, key: u.id, value: u })));
    this.emit({ type: 'users' });
  }

  private async fetchUnknownUsers(): Promise<void> {
    const unknown = new Set<string>();
    for (const stored of this.convs.values()) {
      for (const id of stored.conv.member_ids) if (!this.users.has(id)) unknown.add(id);
    }
    let fetched = 0;
    for (const id of unknown) {
      if (++fetched > MAX_USER_FETCHES || !this.running) break;
      try {
        await this.user(id);
      } catch {
        // Shown as its id until the next sync tries again.
      }
    }
  }

  receipt(conversation: LocalConversation, message: LocalMessage): Receipt {
    if (message.status === 'sending' || message.status === 'failed' || message.seq === null) {
      return { status: message.status === 'failed' ? 'failed' : 'sending', readBy: 0, of: 0, readers: [] };
    }
    const joined = conversation.members_joined_at;
    const others = conversation.member_ids.filter(
      (id) => id !== message.sender_id && (joined[id] === undefined || joined[id]! <= message.created_at),
    );
    const seq = message.seq;
    const readers = others.filter((id) => (conversation.read_cursors[id] ?? 0) >= seq);
    return { status: readers.length > 0 ? 'read' : 'sent', readBy: readers.length, of: others.length, readers };
  }

  presence(userId: string): Presence {
    return this.presences.get(userId) ?? { status: 'offline', last_seen_at: null };
  }

  typing(conversationId: string): string[] {
    const map = this.typists.get(conversationId);
    if (!map) return [];
    const now = Date.now();
    for (const [user, until] of map) if (until < now) map.delete(user);
    return [...map.keys()];
  }

  // ---------------------------------------------------------------- conversations

  openConversation(conversationId: string): void {
    this.openConversations.add(conversationId);
    const conn = this.conn;
    if (conn && this.live && !this.subscribed.has(conversationId)) {
      void this.subscribe(conn, conversationId)
        .then(() => this.syncChanges(conn, conversationId))
        .catch(() => undefined);
    }
  }

  closeConversation(conversationId: string): void {
    this.openConversations.delete(conversationId);
    this.setTyping(conversationId, false);
  }

  async loadOlder(conversationId: string, limit = HISTORY_PAGE): Promise<HistoryPage> {
    const stored = this.convs.get(conversationId);
    if (!stored) throw new EngineError('not_found', 'no such conversation here');
    if (stored.has_beginning && stored.oldest_seq !== null) return { added: 0, hasMore: false };
    const before = stored.oldest_seq ?? undefined;
    const answer = await this.rest.request(`/v1/conversations/${encodeURIComponent(conversationId)}/messages`, {
      query: { before_seq: before, limit: Math.max(1, Math.min(limit, 200)) },
    });
    const page = v.page(answer, 'history');
    await this.serial(() => this.storeHistory(conversationId, page.messages, page.has_more));
    return { added: page.messages.length, hasMore: page.has_more };
  }

  private async adoptConversation(value: unknown): Promise<LocalConversation> {
    const conv = v.conversation(value);
    await this.serial(async () => {
      await this.backend.write(this.upsertConvOps(conv));
    });
    this.emit({ type: 'conversations' });
    this.openConversation(conv.id);
    void this.fetchUnknownUsers();
    return this.toLocal(this.convs.get(conv.id)!);
  }

  async createDirect(userId: string): Promise<LocalConversation> {
    this.requireMe();
    return this.adoptConversation(
      await this.rest.request('/v1/conversations', { method: 'POST', json: { kind: 'direct', member_ids: [userId] } }),
    );
  }

  async createGroup(title: string, memberIds: string[]): Promise<LocalConversation> {
    this.requireMe();
    return this.adoptConversation(
      await this.rest.request('/v1/conversations', {
        method: 'POST',
        json: { kind: 'group', title, member_ids: memberIds },
      }),
    );
  }

  async createChannel(title: string, topic?: string): Promise<LocalConversation> {
    this.requireMe();
    const json: Record<string, string> = { kind: 'channel', title };
    if (topic) json.topic = topic;
    return this.adoptConversation(await this.rest.request('/v1/conversations', { method: 'POST', json }));
  }

  async listChannels(q?: string): Promise<Conversation[]> {
    const answer = v.obj(await this.rest.request('/v1/channels', { query: { q } }), 'channel list');
    return v.list(answer.channels, 'channel list', v.conversation);
  }

  async joinChannel(conversationId: string): Promise<LocalConversation> {
    return this.adoptConversation(
      await this.rest.request(`/v1/conversations/${encodeURIComponent(conversationId)}/join`, { method: 'POST' }),
    );
  }

  async addMembers(conversationId: string, userIds: string[]): Promise<LocalConversation> {
    return this.adoptConversation(
      await this.rest.request(`/v1/conversations/${encodeURIComponent(conversationId)}/members`, {
        method: 'POST',
        json: { user_ids: userIds },
      }),
    );
  }

  async removeMember(conversationId: string, userId: string): Promise<void> {
    await this.rest.request(
      `/v1/conversations/${encodeURIComponent(conversationId)}/members/${encodeURIComponent(userId)}`,
      { method: 'DELETE' },
    );
    if (userId === this.me?.id) {
      await this.serial(() => this.dropConversation(conversationId));
      return;
    }
    try {
      await this.adoptConversation(await this.rest.request(`/v1/conversations/${encodeURIComponent(conversationId)}`));
    } catch {
      // The conversation_updated frame brings the new member list too.
    }
  }

  async updateConversation(
    conversationId: string,
    changes: { title?: string; topic?: string },
  ): Promise<LocalConversation> {
    return this.adoptConversation(
      await this.rest.request(`/v1/conversations/${encodeURIComponent(conversationId)}`, {
        method: 'PATCH',
        json: changes,
      }),
    );
  }

  async searchUsers(prefix: string): Promise<User[]> {
    const answer = v.obj(await this.rest.request('/v1/users', { query: { q: prefix } }), 'user list');
    const users = v.list(answer.users, 'user list', v.user);
    await this.serial(() => this.rememberUsers(users));
    return users;
  }

  // ---------------------------------------------------------------- writes

  private checkBody(body: string, allowEmpty: boolean): string {
    const length = trimmedLength(body);
    if (length === 0 && !allowEmpty) throw new EngineError('invalid', 'a message cannot be empty');
    if (length > LIMITS.maxBodyChars) {
      throw new EngineError('invalid', `a message is at most ${LIMITS.maxBodyChars} characters; this one has ${length}`);
    }
    return body.trim();
  }

  async send(conversationId: string, body: string, options: SendOptions = {}): Promise<LocalMessage> {
    const me = this.requireMe();
    const attachments = [...(options.attachments ?? [])];
    if (attachments.length > LIMITS.maxAttachments) {
      throw new EngineError('invalid', `at most ${LIMITS.maxAttachments} attachments per message`);
    }
    const text = this.checkBody(body, attachments.length > 0);
    const mentions = [...new Set(options.mentions ?? [])];
    if (mentions.length > LIMITS.maxMentions) throw new EngineError('invalid', `at most ${LIMITS.maxMentions} mentions`);
    const local = await this.serial(async () => {
      const stored = this.convs.get(conversationId);
      if (!stored) throw new EngineError('not_found', 'no such conversation here');
      if (options.clientId !== undefined) {
        const earlier = await this.sentBefore(conversationId, options.clientId);
        if (earlier) return earlier;
      }
      this.checkRoom();
      const order = this.nextOrder++;
      const clientId = options.clientId ?? newClientId(this.random);
      const storeKey = pendingKey(conversationId, order);
      const message: StoredMessage = {
        key: messageKey(me.id, clientId),
        id: null,
        conversation_id: conversationId,
        seq: null,
        rev: null,
        sender_id: me.id,
        client_id: clientId,
        body: text,
        attachments,
        created_at: Date.now(),
        reply_to: options.replyTo ?? null,
        mentions,
        edited_at: null,
        deleted_at: null,
        reactions: {},
        status: 'sending',
        pendingChange: false,
        error: null,
        storeKey,
      };
      const op: OutboxOp = {
        kind: 'send',
        order,
        conversation_id: conversationId,
        client_id: clientId,
        body: text,
        attachments,
        reply_to: options.replyTo ?? null,
        mentions,
        storeKey,
      };
      // One transaction: the message is never shown without its outbox entry.
      await this.backend.write([{ table: 'messages', key: storeKey, value: message }, ...this.enqueueWrites(op)]);
      return message;
    });
    this.emit({ type: 'messages', conversationId });
    this.emit({ type: 'conversations' });
    this.emitOutbox();
    void this.flush();
    return strip(local);
  }

  /**
   * The message already stored with `clientId` (still queued, or acknowledged
   * among the latest page), so a send repeated by a tab that never heard its
   * answer (tabs.ts) stores nothing twice. The caller holds the serial queue.
   */
  private async sentBefore(conversationId: string, clientId: string): Promise<StoredMessage | null> {
    const queued = this.outbox.find((op) => op.kind === 'send' && op.client_id === clientId);
    if (queued && queued.kind === 'send') {
      const [row] = (await this.backend.get('messages', [queued.storeKey])) as (StoredMessage | undefined)[];
      if (row) return row;
    }
    const prefix = `${conversationId}${SEP}s`;
    const rows = await this.backend.range('messages', prefix, `${prefix}${END}`, { reverse: true, limit: HISTORY_PAGE * 4 });
    const me = this.me?.id;
    for (const row of rows) {
      const m = row.value as StoredMessage;
      if (m.client_id === clientId && m.sender_id === me) return m;
    }
    return null;
  }

  /** Applies a change to a held message optimistically and queues it. */
  private async change(
    conversationId: string,
    seq: number,
    apply: (m: StoredMessage) => StoredMessage | null,
    makeOp: (order: number, before: StoredMessage) => OutboxOp,
  ): Promise<void> {
    this.requireMe();
    await this.serial(async () => {
      const key = seqKey(conversationId, seq);
      const [row] = (await this.backend.get('messages', [key])) as (StoredMessage | undefined)[];
      if (!row) throw new EngineError('not_found', 'no such message here');
      this.checkRoom();
      const changed = apply(row);
      if (changed === null) return;
      const op = makeOp(this.nextOrder++, row);
      await this.backend.write([
        { table: 'messages', key, value: { ...changed, pendingChange: true } },
        ...this.enqueueWrites(op),
      ]);
    });
    this.emit({ type: 'messages', conversationId });
    this.emitOutbox();
    void this.flush();
  }

  async edit(conversationId: string, seq: number, body: string): Promise<void> {
    const text = this.checkBody(body, false);
    const me = this.requireMe();
    await this.change(
      conversationId,
      seq,
      (m) => {
        if (m.sender_id !== me.id) throw new EngineError('invalid', 'only the sender may edit a message');
        if (m.deleted_at !== null) throw new EngineError('invalid', 'a deleted message cannot be edited');
        return m.body === text ? null : { ...m, body: text, edited_at: Date.now() };
      },
      (order, before) => ({ kind: 'edit', order, conversation_id: conversationId, seq, body: text, before }),
    );
  }

  async remove(conversationId: string, seq: number): Promise<void> {
    await this.change(
      conversationId,
      seq,
      (m) =>
        m.deleted_at !== null
          ? null
          : { ...m, body: '', attachments: [], mentions: [], reactions: {}, deleted_at: Date.now() },
      (order, before) => ({ kind: 'delete', order, conversation_id: conversationId, seq, before }),
    );
  }

  async react(conversationId: string, seq: number, emoji: string, on: boolean): Promise<void> {
    const bytes = new TextEncoder().encode(emoji).length;
    if (bytes < 1 || bytes > LIMITS.maxEmojiBytes || /[\s\p{Cc}]/u.test(emoji)) {
      throw new EngineError('invalid', `a reaction is 1 to ${LIMITS.maxEmojiBytes} bytes with no spaces`);
    }
    const me = this.requireMe();
    await this.change(
      conversationId,
      seq,
      (m) => {
        if (m.deleted_at !== null) throw new EngineError('invalid', 'a deleted message takes no reactions');
        const users = m.reactions[emoji] ?? [];
        const has = users.includes(me.id);
        if (has === on) return null;
        const reactions = { ...m.reactions };
        const next = on ? [...users, me.id] : users.filter((u) => u !== me.id);
        if (next.length) reactions[emoji] = next;
        else delete reactions[emoji];
        return { ...m, reactions };
      },
      (order, before) => ({ kind: 'react', order, conversation_id: conversationId, seq, emoji, on, before }),
    );
  }

  async discard(conversationId: string, key: string): Promise<void> {
    await this.serial(async () => {
      const op = this.outbox.find(
        (o) => o.kind === 'send' && o.conversation_id === conversationId && messageKey(this.me?.id ?? '', o.client_id) === key,
      );
      const rows = await this.backend.range('messages', `${conversationId}${SEP}p`, `${conversationId}${SEP}p${END}`);
      const ops: WriteOp[] = [];
      for (const row of rows) {
        if ((row.value as StoredMessage).key === key) ops.push({ table: 'messages', key: row.key, value: undefined });
      }
      if (op) ops.push(...this.removeOpWrites(op));
      await this.backend.write(ops);
    });
    this.emit({ type: 'messages', conversationId });
    this.emitOutbox();
  }

  async markRead(conversationId: string, seq: number): Promise<void> {
    await this.applyRead(conversationId, seq);
    void this.flush();
  }

  /** Moves my cursor locally and queues `mark_read` (one per conversation, the highest). */
  private async applyRead(conversationId: string, seq: number): Promise<void> {
    this.requireMe();
    const moved = await this.serial(() => this.moveReadCursor(conversationId, seq));
    if (moved) {
      this.emit({ type: 'conversations' });
      this.emit({ type: 'receipts', conversationId });
    }
  }

  /** applyRead's body; the caller holds the serial queue. */
  private async moveReadCursor(conversationId: string, seq: number): Promise<boolean> {
    const me = this.requireMe();
    const stored = this.convs.get(conversationId);
    if (!stored) return false;
    const target = Math.min(seq, Math.max(stored.max_seq, stored.conv.last_seq));
    const old = stored.read_cursors[me.id] ?? 0;
    if (target <= old) return false;
    stored.read_cursors[me.id] = target;
    const writes: WriteOp[] = [];
    const queued = this.outbox.find((op) => op.kind === 'read' && op.conversation_id === conversationId);
    // The head of the outbox may be in flight: a new entry then, not a changed one.
    if (queued && queued.kind === 'read' && queued !== this.outbox[0]) {
      queued.seq = Math.max(queued.seq, target);
      writes.push({ table: 'outbox', key: outboxKey(queued.order), value: queued });
    } else {
      writes.push(...this.enqueueWrites({ kind: 'read', order: this.nextOrder++, conversation_id: conversationId, seq: target }));
    }
    await this.recountUnread(stored);
    writes.push({ table: 'conversations', key: conversationId, value: stored });
    await this.backend.write(writes);
    return true;
  }

  setTyping(conversationId: string, typing: boolean): void {
    const conn = this.conn;
    if (!conn?.isOpen || !this.live) return;
    const last = this.typingSent.get(conversationId);
    const now = Date.now();
    if (typing) {
      if (last !== undefined && now - last < TYPING_RENEW_MS) return;
      this.typingSent.set(conversationId, now);
    } else {
      if (last === undefined) return;
      this.typingSent.delete(conversationId);
    }
    try {
      conn.send({ type: 'typing', conversation_id: conversationId, typing });
    } catch {
      // Typing is ephemeral: lost with the connection, by design.
    }
  }

  async edits(conversationId: string, seq: number): Promise<{ body: string; edited_at: number }[]> {
    const answer = v.obj(
      await this.rest.request(`/v1/conversations/${encodeURIComponent(conversationId)}/messages/${seq}/edits`),
      'edit list',
    );
    return v.list(answer.edits, 'edit list', (item) => {
      const o = v.obj(item, 'edit');
      return { body: v.str(o, 'body', 'edit'), edited_at: v.int(o, 'edited_at', 'edit') };
    });
  }

  mentionsIn(conversation: LocalConversation, body: string): string[] {
    const out: string[] = [];
    const names = new Map<string, string>();
    for (const id of conversation.member_ids) {
      const user = this.users.get(id);
      if (user) names.set(user.username, id);
    }
    for (const match of body.matchAll(/(?<![\w@])@([a-z0-9_.-]{3,32})/g)) {
      const id = names.get(match[1]!.replace(/[.]+$/, '')) ?? names.get(match[1]!);
      if (id && !out.includes(id)) out.push(id);
    }
    return out.slice(0, LIMITS.maxMentions);
  }

  // ---------------------------------------------------------------- media, search, AI, push (api.ts)

  upload(source: UploadSource): Promise<Media> {
    this.requireMe();
    return api.upload(this.rest, source);
  }

  mediaInfo(mediaId: string): Promise<Media> {
    return api.mediaInfo(this.rest, mediaId);
  }

  download(mediaId: string): Promise<Blob> {
    return api.download(this.rest, mediaId);
  }

  /** Object URLs are cached here (bounded, the oldest revoked); phones get the uri and header. */
  async mediaSource(mediaId: string): Promise<{ uri: string; headers?: Record<string, string> }> {
    const url = this.rest.url(`/v1/media/${encodeURIComponent(mediaId)}`);
    const canObjectUrl = typeof document !== 'undefined' && typeof URL.createObjectURL === 'function';
    if (!canObjectUrl) return { uri: url, headers: { Authorization: `Bearer ${this.session?.token ?? ''}` } };
    const cached = this.mediaUrls.get(mediaId);
    if (cached) {
      this.mediaUrls.delete(mediaId);
      this.mediaUrls.set(mediaId, cached);
      return { uri: cached };
    }
    const objectUrl = URL.createObjectURL(await this.download(mediaId));
    this.mediaUrls.set(mediaId, objectUrl);
    while (this.mediaUrls.size > MAX_MEDIA_URLS) {
      const [oldest, oldUrl] = this.mediaUrls.entries().next().value as [string, string];
      this.mediaUrls.delete(oldest);
      URL.revokeObjectURL(oldUrl);
    }
    return { uri: objectUrl };
  }

  search(q: string, options: api.SearchOptions = {}) {
    return api.search(this.rest, q, options);
  }

  aiSettings(conversationId: string) {
    return api.aiSettings(this.rest, conversationId);
  }

  setAiSettings(conversationId: string, settings: { enabled: boolean; proactive?: boolean }) {
    return api.setAiSettings(this.rest, conversationId, settings);
  }

  /** Streams over the WebSocket while live, else asks over REST. */
  ask(conversationId: string, question: string, options: AskOptions = {}) {
    const conn = this.conn?.isOpen && this.live ? this.conn : null;
    return api.ask(this.rest, conn, conversationId, question, options);
  }

  catchUp(conversationId: string) {
    return api.catchUp(this.rest, conversationId);
  }

  actionItems(conversationId: string) {
    return api.actionItems(this.rest, conversationId);
  }

  setActionItem(conversationId: string, itemId: string, status: 'open' | 'done') {
    return api.setActionItem(this.rest, conversationId, itemId, status);
  }

  aiLog(conversationId: string) {
    return api.aiLog(this.rest, conversationId);
  }

  registerPushToken(token: string, platform?: string): Promise<void> {
    return api.registerPushToken(this.rest, token, platform);
  }

  unregisterPushToken(token: string): Promise<void> {
    return api.unregisterPushToken(this.rest, token);
  }
}

function strip(message: StoredMessage): LocalMessage {
  const { storeKey, ...rest } = message;
  void storeKey;
  return rest;
}

export { pad };
