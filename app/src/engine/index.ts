/**
 * The engine's public interface: everything a screen may use. Screens import
 * from `src/engine` only (never from the files beside this one), read from the
 * local store through `Engine`, and re-read when an `EngineEvent` says what
 * changed (the natural fit for TanStack Query: invalidate the query keys
 * named in the event). The engine is written from PROTOCOL.md (v1 and v1.1).
 *
 * Local-first: every read below comes from the local store and works with the
 * server down; every write (send, edit, delete, react, mark read) is applied
 * to the store at once and queued in the outbox, which survives restarts and
 * reloads and is delivered, in order, whenever the connection is up, each send
 * with the same `client_id` every time (the server stores it once).
 */

import type {
  ActionItem,
  AiAnswer,
  AiLogEntry,
  AiSettings,
  CatchUp,
  Conversation,
  ErrorCode,
  Media,
  Message,
  Millis,
  SearchAnswer,
  SearchMode,
  ServerSettings,
  User,
} from './protocol';
import type { Backend } from './store';
import type { TabLink } from './tabs';

export * from './protocol';
export { createEngine, fetchServerSettings, probeServer, normalizeServerUrl } from './engine';
export { EngineError } from './errors';
export type { EngineErrorCode } from './errors';
export type { Backend } from './store';
export { openBackend } from './backend';
export type { TabLink } from './tabs';


/** The delivery state of a message, as the nine-step optimistic send defines it. */
export type DeliveryStatus =
  /** Stored locally, in the outbox, not yet acknowledged by the server. */
  | 'sending'
  /** Acknowledged: durably stored by the server, with its `seq`. */
  | 'sent'
  /** At least one other member's read cursor has reached it. */
  | 'read'
  /** The server refused it for good (e.g. `forbidden`); `error` says why. */
  | 'failed';

/**
 * A message as the local store holds it. A message of mine that is still in
 * the outbox has `seq`, `id` and `rev` null; `key` never changes, so a list
 * keyed by it does not re-mount a row when the ack arrives.
 */
export interface LocalMessage extends Omit<Message, 'id' | 'seq' | 'rev'> {
  /** Stable local key: conversation, sender and client_id. */
  key: string;
  id: string | null;
  seq: number | null;
  rev: number | null;
  /** `sending` / `failed` only for my own messages; others' are `sent`. */
  status: 'sending' | 'sent' | 'failed';
  /** True while an edit, delete or reaction of mine on it waits in the outbox. */
  pendingChange: boolean;
  /** Why the server refused it (status `failed`), in words for a person. */
  error: string | null;
}

/** A conversation as the local store holds it. */
export interface LocalConversation extends Conversation {
  /** read cursors of the members I know of: user id -> seq. */
  read_cursors: Record<string, number>;
  /** The oldest seq held locally (history older than it is paged on demand). */
  oldest_seq: number | null;
  /** True once the beginning of the conversation is held locally. */
  has_beginning: boolean;
  /** My messages still in the outbox here. */
  pending_count: number;
}

/** What a sender sees under their message: "sent", "read", "read by 2 of 4". */
export interface Receipt {
  status: DeliveryStatus;
  /** Members other than the sender whose read cursor has reached the message. */
  readBy: number;
  /** Members other than the sender who were members when it was sent. */
  of: number;
  /** Ids of those who read it. */
  readers: string[];
}

export type ConnectionState =
  /** No connection and none being attempted (stopped or signed out). */
  | 'offline'
  /** Opening the WebSocket, or waiting before the next attempt. */
  | 'connecting'
  /** Subscribed and caught up: live. */
  | 'online';

export interface ConnectionInfo {
  state: ConnectionState;
  /** When the next attempt is due (state `connecting`, between attempts). */
  retryAt: Millis | null;
  /** Attempts since the last success. */
  attempts: number;
  /** The last reason the connection failed, for a banner. */
  lastError: string | null;
}

export interface Presence {
  status: 'online' | 'offline';
  last_seen_at: Millis | null;
}

/**
 * What changed. Each names the query keys to re-read: `conversations` the
 * list, `messages` one conversation's messages, and so on.
 */
export type EngineEvent =
  | { type: 'conversations' }
  | { type: 'messages'; conversationId: string }
  | { type: 'receipts'; conversationId: string }
  | { type: 'typing'; conversationId: string; userIds: string[] }
  | { type: 'presence'; userId: string; presence: Presence }
  | { type: 'connection'; info: ConnectionInfo }
  /** `size` counts every queued change; `waiting` only what the person wrote (not read receipts). */
  | { type: 'outbox'; size: number; waiting: number }
  | { type: 'ai_settings'; conversationId: string; settings: AiSettings }
  | { type: 'unsubscribed'; conversationId: string; reason: string }
  /** The token stopped working (revoked, expired): the app shows sign-in. */
  | { type: 'signed_out'; reason: string }
  | { type: 'users' };

export interface SendOptions {
  /** seq of the message replied to. */
  replyTo?: number | null;
  /** user ids mentioned (members). `mentionsIn` finds them in a body. */
  mentions?: string[];
  /** media ids from `upload`. */
  attachments?: string[];
  /**
   * The `client_id` to send it with (default: a new one). A send repeated with
   * the same one returns the message stored the first time and queues nothing.
   */
  clientId?: string;
}

export interface HistoryPage {
  /** Messages newly stored by this page. */
  added: number;
  /** Older messages remain on the server. */
  hasMore: boolean;
}

/** Something to upload: bytes, a web Blob/File, or a file uri on phones. */
export type UploadSource =
  | { kind: 'blob'; blob: Blob; filename?: string }
  | { kind: 'bytes'; bytes: Uint8Array; contentType: string; filename?: string }
  | { kind: 'uri'; uri: string; contentType: string; filename?: string };

export interface AskOptions {
  /** Called with each piece of the answer as the server streams it. */
  onDelta?: (text: string) => void;
  signal?: AbortSignal;
}

export interface ServerProbe {
  /** The normalised base URL (`http(s)://host[:port]`, no trailing slash). */
  url: string;
  ok: boolean;
  /** From the server's `GET /v1/settings`; `unknown` for a server without it. */
  authMode: 'local' | 'clerk' | 'unknown';
  /** The server's public settings; null when it has none (an older server) or is not there. */
  settings: ServerSettings | null;
  error: string | null;
}

/** The engine: one account on one server. Made by `createEngine`. */
export interface Engine {
  readonly serverUrl: string;
  /** The signed-in user, or null. */
  readonly me: User | null;

  // ---- lifecycle ------------------------------------------------------------
  /** Stay connected (reconnecting with capped, jittered backoff) until `stop`. */
  start(): void;
  /** Close the connection; the store and outbox stay. */
  stop(): Promise<void>;
  /** Stop and close the store. */
  close(): Promise<void>;
  /** Try to connect now instead of waiting out the backoff ("Retry now"). */
  reconnectNow(): void;
  connection(): ConnectionInfo;
  /** Listen to changes; returns the unsubscribe function. */
  on(listener: (event: EngineEvent) => void): () => void;

  // ---- accounts (REST) ---------------------------------------------------------
  register(username: string, password: string, displayName?: string): Promise<User>;
  /** Sign in with a token obtained elsewhere (Clerk mode: Clerk's session JWT). */
  signInWithToken(token: string): Promise<User>;
  login(username: string, password: string): Promise<User>;
  /** Revokes the token and erases this account's local data (outbox included). */
  logout(): Promise<void>;
  updateProfile(changes: { display_name?: string }): Promise<User>;
  changePassword(oldPassword: string, newPassword: string): Promise<void>;

  // ---- local reads (work offline) ---------------------------------------------
  conversations(): Promise<LocalConversation[]>;
  conversation(conversationId: string): Promise<LocalConversation | null>;
  /** Ascending by seq, pending ones last; the newest `limit` below `beforeSeq`. */
  messages(
    conversationId: string,
    options?: { beforeSeq?: number; limit?: number },
  ): Promise<LocalMessage[]>;
  message(conversationId: string, seq: number): Promise<LocalMessage | null>;
  /** A known user (local, then the server when online); null when unknown. */
  user(userId: string): Promise<User | null>;
  /** Synchronous: the users already known locally, for display names. */
  knownUser(userId: string): User | null;
  receipt(conversation: LocalConversation, message: LocalMessage): Receipt;
  presence(userId: string): Presence;
  typing(conversationId: string): string[];
  /** Every queued change, read receipts included. */
  outboxSize(): number;
  /** The queued changes the person made: sends, edits, deletes, reactions. */
  outboxWaiting(): number;

  // ---- conversations ------------------------------------------------------------
  /** Subscribe (when online) and keep it caught up while it is open on screen. */
  openConversation(conversationId: string): void;
  closeConversation(conversationId: string): void;
  /** Fetch one page of older history into the store. */
  loadOlder(conversationId: string, limit?: number): Promise<HistoryPage>;
  createDirect(userId: string): Promise<LocalConversation>;
  createGroup(title: string, memberIds: string[]): Promise<LocalConversation>;
  createChannel(title: string, topic?: string): Promise<LocalConversation>;
  listChannels(q?: string): Promise<Conversation[]>;
  joinChannel(conversationId: string): Promise<LocalConversation>;
  addMembers(conversationId: string, userIds: string[]): Promise<LocalConversation>;
  /** Remove a member (or leave, with my own id). */
  removeMember(conversationId: string, userId: string): Promise<void>;
  updateConversation(
    conversationId: string,
    changes: { title?: string; topic?: string },
  ): Promise<LocalConversation>;
  searchUsers(prefix: string): Promise<User[]>;

  // ---- messages (optimistic, through the outbox) ------------------------------------
  /** Stores it as `sending` before any I/O and returns it. Bad input throws EngineError. */
  send(conversationId: string, body: string, options?: SendOptions): Promise<LocalMessage>;
  edit(conversationId: string, seq: number, body: string): Promise<void>;
  remove(conversationId: string, seq: number): Promise<void>;
  react(conversationId: string, seq: number, emoji: string, on: boolean): Promise<void>;
  /** Drop a `failed` (or still `sending`) message of mine from the outbox and the store. */
  discard(conversationId: string, key: string): Promise<void>;
  /** Move my read cursor to `seq` (at most the last seq). Queued while offline. */
  markRead(conversationId: string, seq: number): Promise<void>;
  setTyping(conversationId: string, typing: boolean): void;
  /** The earlier bodies of an edited message, oldest first (REST). */
  edits(conversationId: string, seq: number): Promise<{ body: string; edited_at: Millis }[]>;
  /** User ids of the members named `@username` in `body`. */
  mentionsIn(conversation: LocalConversation, body: string): string[];

  // ---- media ------------------------------------------------------------------------
  upload(source: UploadSource): Promise<Media>;
  mediaInfo(mediaId: string): Promise<Media>;
  /**
   * A URL a view can show: on the web an object URL of the downloaded bytes
   * (cached, bounded); on phones a uri with the bearer header for `Image`.
   */
  mediaSource(mediaId: string): Promise<{ uri: string; headers?: Record<string, string> }>;
  download(mediaId: string): Promise<Blob>;

  // ---- search (REST) ------------------------------------------------------------------
  search(
    q: string,
    options?: { conversationId?: string; limit?: number; mode?: SearchMode },
  ): Promise<SearchAnswer>;

  // ---- AI over a conversation (REST, and `ai_ask` over the WebSocket) ---------------------
  aiSettings(conversationId: string): Promise<AiSettings>;
  setAiSettings(
    conversationId: string,
    settings: { enabled: boolean; proactive?: boolean },
  ): Promise<AiSettings>;
  /** Streams over the WebSocket when online (`onDelta`), else asks over REST. */
  ask(conversationId: string, question: string, options?: AskOptions): Promise<AiAnswer>;
  catchUp(conversationId: string): Promise<CatchUp>;
  actionItems(conversationId: string): Promise<ActionItem[]>;
  setActionItem(
    conversationId: string,
    itemId: string,
    status: 'open' | 'done',
  ): Promise<ActionItem>;
  aiLog(conversationId: string): Promise<AiLogEntry[]>;

  // ---- push (phones) ---------------------------------------------------------------------
  registerPushToken(token: string, platform?: string): Promise<void>;
  unregisterPushToken(token: string): Promise<void>;
}

export interface EngineOptions {
  /** Base URL of the server, e.g. `http://192.168.1.20:8080` (see normalizeServerUrl). */
  serverUrl: string;
  /**
   * The local database. Default: the platform's (IndexedDB in the browser,
   * expo-sqlite on phones: `openBackend`), one database per server.
   */
  backend?: Backend;
  /** Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** Default: the global `WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff: full jitter, `random() * min(capMs, baseMs * 2^attempt)`. */
  backoff?: { baseMs?: number; capMs?: number };
  /** The most operations the outbox holds (default 1000); beyond, `send` refuses. */
  outboxLimit?: number;
  /**
   * Called when the server refuses the token (401): a new one (Clerk's SDK
   * `getToken()`), or null to sign out. Without it a refused token signs out.
   * A REST request refused 401 is sent once more with the new token; a refused
   * WebSocket reconnects with it.
   */
  refreshToken?: () => Promise<string | null>;
  /** Default: `Math.random` (tests pass a fixed one). */
  random?: () => number;
  /**
   * How this engine shares its database with other tabs (tabs.ts): default
   * Web Locks and BroadcastChannel where the platform has both (browsers),
   * none elsewhere; null for none.
   */
  tabs?: TabLink | null;
}

/** The subset of the WHATWG WebSocket the engine uses (browsers, React Native, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type { ErrorCode };
