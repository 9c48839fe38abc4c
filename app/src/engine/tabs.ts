/**
 * Tabs of one browser over one local database: exactly one tab, the leader,
 * holds the connection and writes the store; the others follow. Made by
 * `createEngine` (engine.ts) when the platform has Web Locks and
 * BroadcastChannel, i.e. in browsers; phones run one engine and need none.
 *
 * Leadership is a Web Lock named after the database, held for the tab's life:
 * the browser grants it to one tab, and when that tab closes (or crashes) to
 * the next one waiting, which re-reads the store (outbox included) and takes
 * the connection over. A follower reads the store directly; every change it
 * makes (sends, edits, reads, typing, conversations, sign-in) goes to the
 * leader as a call over the BroadcastChannel, so the outbox has one writer and
 * one deliverer. The leader relays each engine event; a follower re-reads the
 * store before passing it on (the typing, presence and connection events carry
 * their own state), so every tab shows the same statuses.
 *
 * A call is answered `accepted` before it runs. When the leader changes, a
 * follower resends the calls never accepted (they did not run) and those that
 * are harmless to run twice: a send carries the `client_id` the follower chose,
 * and the engine stores one message per `client_id`. Any other accepted call
 * left unanswered fails with `unavailable` rather than risk a second group or
 * a second sign-in.
 */
import { EngineError, type EngineErrorCode } from './errors';
import type { LocalFirstEngine } from './engine';
import { newClientId } from './engine';
import type * as E from './index';
import type { Conversation, Media, User } from './protocol';

/** What tabs say to each other; `to`/`from` are tab ids. */
export type TabMessage =
  | { t: 'leader'; from: string }
  | { t: 'hello'; from: string; wants: boolean }
  | {
      t: 'snapshot';
      to: string;
      info: E.ConnectionInfo;
      presences: [string, E.Presence][];
      typing: [string, string[]][];
    }
  | { t: 'call'; id: number; from: string; method: CallName; args: unknown[] }
  | { t: 'accepted'; id: number; to: string }
  | { t: 'reply'; id: number; to: string; ok: true; value: unknown }
  | { t: 'reply'; id: number; to: string; ok: false; code: EngineErrorCode; message: string }
  | { t: 'event'; event: E.EngineEvent };

/** The two browser facilities a `TabEngine` needs, behind an interface tests can provide. */
export interface TabLink {
  /** This tab's id, unique among the tabs. */
  readonly id: string;
  /** Calls `onLead` once this tab holds leadership, which it keeps until `close`. */
  lead(onLead: () => void): void;
  post(message: TabMessage): void;
  listen(handler: (message: TabMessage) => void): void;
  /** Leaves: gives leadership up and stops hearing the others. */
  close(): void;
}

/** The part of the Web Locks API used here (`navigator.locks`). */
export interface LockManagerLike {
  request(name: string, callback: () => Promise<unknown>): Promise<unknown>;
}

/** The part of BroadcastChannel used here. */
export interface ChannelLike {
  postMessage(message: unknown): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  close(): void;
}

/** Web Locks and BroadcastChannel, or null where the platform lacks either (phones, Node). */
export function browserTabLink(name: string): TabLink | null {
  const nav = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator;
  const Channel = (globalThis as { BroadcastChannel?: new (name: string) => ChannelLike }).BroadcastChannel;
  if (!nav?.locks || typeof nav.locks.request !== 'function' || !Channel) return null;
  return channelTabLink(name, nav.locks, new Channel(name));
}

export function channelTabLink(name: string, locks: LockManagerLike, channel: ChannelLike): TabLink {
  const id = newClientId(Math.random);
  let release: (() => void) | null = null;
  let closed = false;
  return {
    id,
    lead(onLead) {
      void locks.request(`${name}:leader`, () => {
        if (closed) return Promise.resolve();
        onLead();
        return new Promise<void>((resolve) => {
          release = resolve;
        });
      });
    },
    post(message) {
      if (!closed) channel.postMessage(message);
    },
    listen(handler) {
      channel.onmessage = (event) => {
        if (!closed) handler(event.data as TabMessage);
      };
    },
    close() {
      closed = true;
      release?.();
      channel.onmessage = null;
      channel.close();
    },
  };
}

/** The engine methods a follower hands to the leader. */
type CallName =
  | 'reconnectNow'
  | 'register'
  | 'signInWithToken'
  | 'login'
  | 'logout'
  | 'updateProfile'
  | 'changePassword'
  | 'openConversation'
  | 'closeConversation'
  | 'loadOlder'
  | 'createDirect'
  | 'createGroup'
  | 'createChannel'
  | 'joinChannel'
  | 'addMembers'
  | 'removeMember'
  | 'updateConversation'
  | 'send'
  | 'edit'
  | 'remove'
  | 'react'
  | 'discard'
  | 'markRead'
  | 'setTyping';

// Calls that may run twice when a leader dies between accepting and answering.
const REPEATABLE = new Set<CallName>([
  'reconnectNow',
  'openConversation',
  'closeConversation',
  'loadOlder',
  'createDirect',
  'joinChannel',
  'send',
  'edit',
  'react',
  'discard',
  'markRead',
  'setTyping',
]);
// Calls after which the session may have changed: a follower re-reads it.
const SESSION_CALLS = new Set<CallName>(['register', 'signInWithToken', 'login', 'logout', 'updateProfile']);
// Calls made from a follower and not answered yet: more means the leader is stuck.
const MAX_PENDING_CALLS = 1000;

interface Pending {
  method: CallName;
  args: unknown[];
  accepted: boolean;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

function errorParts(error: unknown): { code: EngineErrorCode; message: string } {
  if (error instanceof EngineError) return { code: error.code, message: error.message };
  return { code: 'internal', message: error instanceof Error ? error.message : String(error) };
}

/** An `Engine` that coordinates with the other tabs over its `TabLink` (see the module docstring). */
export class TabEngine implements E.Engine {
  private leader = false;
  private wants = false;
  // Followers that asked for the connection (their `start` without a `stop`).
  private readonly wanting = new Set<string>();
  private readonly listeners = new Set<(event: E.EngineEvent) => void>();
  private readonly pending = new Map<number, Pending>();
  private nextCall = 1;
  // Followers apply relayed events in order, re-reading the store once per burst.
  private relay: Promise<void> = Promise.resolve();
  private stale = false;
  private info: E.ConnectionInfo;
  private readonly presences = new Map<string, E.Presence>();
  private readonly typists = new Map<string, string[]>();
  private closed = false;

  constructor(
    private readonly inner: LocalFirstEngine,
    private readonly link: TabLink,
  ) {
    this.info = inner.connection();
    inner.on((event) => this.fromInner(event));
    link.listen((message) => this.onMessage(message));
    link.lead(() => void this.becomeLeader());
    link.post({ t: 'hello', from: link.id, wants: false });
  }

  get serverUrl(): string {
    return this.inner.serverUrl;
  }

  get me(): User | null {
    return this.inner.me;
  }

  /** True while this tab holds the connection (tests and the app's diagnostics). */
  get isLeader(): boolean {
    return this.leader;
  }

  // ---------------------------------------------------------------- the link

  private emit(event: E.EngineEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (error) {
        console.error('engine listener failed', error);
      }
    }
  }

  private fromInner(event: E.EngineEvent): void {
    // A follower's own engine is idle: its connection state is the leader's.
    if (!this.leader && event.type === 'connection') return;
    if (this.leader) this.link.post({ t: 'event', event });
    this.emit(event);
  }

  private async becomeLeader(): Promise<void> {
    if (this.closed) return;
    this.leader = true;
    // What the old leader wrote last is in the store, not in this tab's memory.
    await this.inner.reload();
    this.link.post({ t: 'leader', from: this.link.id });
    this.reconcile();
    this.emit({ type: 'conversations' });
    this.emit({ type: 'outbox', size: this.inner.outboxSize(), waiting: this.inner.outboxWaiting() });
    this.emit({ type: 'connection', info: this.inner.connection() });
    // Calls this tab made to the old leader are now its own to run.
    for (const [id, call] of [...this.pending]) {
      this.pending.delete(id);
      if (call.accepted && !REPEATABLE.has(call.method)) {
        call.reject(new EngineError('unavailable', 'the tab that was connected closed: try again'));
      } else {
        this.runLocal(call.method, call.args).then(call.resolve, call.reject);
      }
    }
  }

  /** The leader runs the connection while any tab wants it. */
  private reconcile(): void {
    if (!this.leader || this.closed) return;
    if (this.wants || this.wanting.size > 0) this.inner.start();
    else void this.inner.stop();
  }

  private onMessage(message: TabMessage): void {
    if (this.closed) return;
    switch (message.t) {
      case 'leader':
        if (this.leader) return; // cannot happen: the lock has one holder
        this.link.post({ t: 'hello', from: this.link.id, wants: this.wants });
        for (const [id, call] of this.pending) {
          if (!call.accepted || REPEATABLE.has(call.method)) {
            this.link.post({ t: 'call', id, from: this.link.id, method: call.method, args: call.args });
          } else {
            this.pending.delete(id);
            call.reject(new EngineError('unavailable', 'the tab that was connected closed: try again'));
          }
        }
        return;
      case 'hello':
        if (!this.leader) return;
        if (message.wants) this.wanting.add(message.from);
        else this.wanting.delete(message.from);
        this.reconcile();
        this.link.post({
          t: 'snapshot',
          to: message.from,
          info: this.inner.connection(),
          ...this.inner.liveState(),
        });
        return;
      case 'snapshot':
        if (message.to !== this.link.id || this.leader) return;
        this.info = message.info;
        for (const [id, presence] of message.presences) this.presences.set(id, presence);
        for (const [id, users] of message.typing) this.typists.set(id, users);
        this.emit({ type: 'connection', info: this.info });
        return;
      case 'call':
        if (!this.leader) return;
        this.link.post({ t: 'accepted', id: message.id, to: message.from });
        this.runLocal(message.method, message.args).then(
          (value) => this.link.post({ t: 'reply', id: message.id, to: message.from, ok: true, value }),
          (error: unknown) =>
            this.link.post({ t: 'reply', id: message.id, to: message.from, ok: false, ...errorParts(error) }),
        );
        return;
      case 'accepted': {
        const call = message.to === this.link.id ? this.pending.get(message.id) : undefined;
        if (call) call.accepted = true;
        return;
      }
      case 'reply': {
        const call = message.to === this.link.id ? this.pending.get(message.id) : undefined;
        if (!call) return;
        this.pending.delete(message.id);
        // Relayed events before this reply are applied first: the caller then reads what it did.
        this.relay = this.relay.then(async () => {
          if (message.ok) {
            if (SESSION_CALLS.has(call.method)) await this.inner.reload();
            call.resolve(message.value);
          } else {
            call.reject(new EngineError(message.code, message.message));
          }
        });
        return;
      }
      case 'event':
        if (!this.leader) this.follow(message.event);
        return;
    }
  }

  private follow(event: E.EngineEvent): void {
    switch (event.type) {
      case 'connection':
        this.info = event.info;
        break;
      case 'presence':
        this.presences.set(event.userId, event.presence);
        break;
      case 'typing':
        this.typists.set(event.conversationId, event.userIds);
        break;
      default:
        this.stale = true;
    }
    this.relay = this.relay.then(async () => {
      if (this.stale) {
        this.stale = false;
        try {
          await this.inner.reload();
        } catch (error) {
          // The store was closed under us (sign-out, close): nothing left to show.
          console.error('re-reading the store failed', error);
        }
      }
      this.emit(event);
    });
  }

  private runLocal(method: CallName, args: unknown[]): Promise<unknown> {
    const fn = (this.inner[method] as (...a: unknown[]) => unknown).bind(this.inner);
    try {
      return Promise.resolve(fn(...args));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Runs `method` here when leader, else on the leader. */
  private call<T>(method: CallName, ...args: unknown[]): Promise<T> {
    if (this.closed) return Promise.reject(new EngineError('invalid', 'this engine is closed'));
    if (this.leader) return this.runLocal(method, args) as Promise<T>;
    if (this.pending.size >= MAX_PENDING_CALLS) {
      return Promise.reject(new EngineError('unavailable', 'the connected tab is not answering'));
    }
    const id = this.nextCall++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { method, args, accepted: false, resolve: resolve as (v: unknown) => void, reject });
      this.link.post({ t: 'call', id, from: this.link.id, method, args });
    });
  }

  /** A call whose answer nobody waits for (typing, open, close). */
  private tell(method: CallName, ...args: unknown[]): void {
    this.call(method, ...args).catch(() => undefined);
  }

  // ---------------------------------------------------------------- lifecycle

  start(): void {
    if (this.leader) {
      this.wants = true;
      this.reconcile();
      return;
    }
    if (this.wants) return;
    this.wants = true;
    this.link.post({ t: 'hello', from: this.link.id, wants: true });
  }

  async stop(): Promise<void> {
    this.wants = false;
    if (this.leader) {
      if (this.wanting.size === 0) await this.inner.stop();
      return;
    }
    this.link.post({ t: 'hello', from: this.link.id, wants: false });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.link.close();
    for (const call of this.pending.values()) call.reject(new EngineError('invalid', 'this engine is closed'));
    this.pending.clear();
    await this.inner.close();
  }

  reconnectNow(): void {
    this.tell('reconnectNow');
  }

  connection(): E.ConnectionInfo {
    return this.leader ? this.inner.connection() : { ...this.info };
  }

  on(listener: (event: E.EngineEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---------------------------------------------------------------- accounts

  register(username: string, password: string, displayName?: string): Promise<User> {
    return this.call('register', username, password, displayName);
  }

  signInWithToken(token: string): Promise<User> {
    return this.call('signInWithToken', token);
  }

  login(username: string, password: string): Promise<User> {
    return this.call('login', username, password);
  }

  logout(): Promise<void> {
    return this.call('logout');
  }

  updateProfile(changes: { display_name?: string }): Promise<User> {
    return this.call('updateProfile', changes);
  }

  changePassword(oldPassword: string, newPassword: string): Promise<void> {
    return this.call('changePassword', oldPassword, newPassword);
  }

  // ---------------------------------------------------------------- reads: the store, here

  conversations(): Promise<E.LocalConversation[]> {
    return this.inner.conversations();
  }

  conversation(conversationId: string): Promise<E.LocalConversation | null> {
    return this.inner.conversation(conversationId);
  }

  messages(conversationId: string, options?: { beforeSeq?: number; limit?: number }): Promise<E.LocalMessage[]> {
    return this.inner.messages(conversationId, options);
  }

  message(conversationId: string, seq: number): Promise<E.LocalMessage | null> {
    return this.inner.message(conversationId, seq);
  }

  user(userId: string): Promise<User | null> {
    return this.inner.user(userId);
  }

  knownUser(userId: string): User | null {
    return this.inner.knownUser(userId);
  }

  receipt(conversation: E.LocalConversation, message: E.LocalMessage): E.Receipt {
    return this.inner.receipt(conversation, message);
  }

  presence(userId: string): E.Presence {
    if (this.leader) return this.inner.presence(userId);
    return this.presences.get(userId) ?? { status: 'offline', last_seen_at: null };
  }

  typing(conversationId: string): string[] {
    return this.leader ? this.inner.typing(conversationId) : [...(this.typists.get(conversationId) ?? [])];
  }

  outboxSize(): number {
    return this.inner.outboxSize();
  }

  outboxWaiting(): number {
    return this.inner.outboxWaiting();
  }

  // ---------------------------------------------------------------- conversations: the leader

  openConversation(conversationId: string): void {
    this.tell('openConversation', conversationId);
  }

  closeConversation(conversationId: string): void {
    this.tell('closeConversation', conversationId);
  }

  loadOlder(conversationId: string, limit?: number): Promise<E.HistoryPage> {
    return this.call('loadOlder', conversationId, limit);
  }

  createDirect(userId: string): Promise<E.LocalConversation> {
    return this.call('createDirect', userId);
  }

  createGroup(title: string, memberIds: string[]): Promise<E.LocalConversation> {
    return this.call('createGroup', title, memberIds);
  }

  createChannel(title: string, topic?: string): Promise<E.LocalConversation> {
    return this.call('createChannel', title, topic);
  }

  listChannels(q?: string): Promise<Conversation[]> {
    return this.inner.listChannels(q);
  }

  joinChannel(conversationId: string): Promise<E.LocalConversation> {
    return this.call('joinChannel', conversationId);
  }

  addMembers(conversationId: string, userIds: string[]): Promise<E.LocalConversation> {
    return this.call('addMembers', conversationId, userIds);
  }

  removeMember(conversationId: string, userId: string): Promise<void> {
    return this.call('removeMember', conversationId, userId);
  }

  updateConversation(conversationId: string, changes: { title?: string; topic?: string }): Promise<E.LocalConversation> {
    return this.call('updateConversation', conversationId, changes);
  }

  searchUsers(prefix: string): Promise<User[]> {
    return this.inner.searchUsers(prefix);
  }

  // ---------------------------------------------------------------- messages: the leader's outbox

  send(conversationId: string, body: string, options: E.SendOptions = {}): Promise<E.LocalMessage> {
    if (this.leader) return this.inner.send(conversationId, body, options);
    // Chosen here, so a resend to a new leader finds the message the old one stored.
    const clientId = options.clientId ?? newClientId(Math.random);
    return this.call('send', conversationId, body, { ...options, clientId });
  }

  edit(conversationId: string, seq: number, body: string): Promise<void> {
    return this.call('edit', conversationId, seq, body);
  }

  remove(conversationId: string, seq: number): Promise<void> {
    return this.call('remove', conversationId, seq);
  }

  react(conversationId: string, seq: number, emoji: string, on: boolean): Promise<void> {
    return this.call('react', conversationId, seq, emoji, on);
  }

  discard(conversationId: string, key: string): Promise<void> {
    return this.call('discard', conversationId, key);
  }

  markRead(conversationId: string, seq: number): Promise<void> {
    return this.call('markRead', conversationId, seq);
  }

  setTyping(conversationId: string, typing: boolean): void {
    this.tell('setTyping', conversationId, typing);
  }

  edits(conversationId: string, seq: number): Promise<{ body: string; edited_at: number }[]> {
    return this.inner.edits(conversationId, seq);
  }

  mentionsIn(conversation: E.LocalConversation, body: string): string[] {
    return this.inner.mentionsIn(conversation, body);
  }

  // ---------------------------------------------------------------- REST only: any tab

  upload(source: E.UploadSource): Promise<Media> {
    return this.inner.upload(source);
  }

  mediaInfo(mediaId: string): Promise<Media> {
    return this.inner.mediaInfo(mediaId);
  }

  mediaSource(mediaId: string): Promise<{ uri: string; headers?: Record<string, string> }> {
    return this.inner.mediaSource(mediaId);
  }

  download(mediaId: string): Promise<Blob> {
    return this.inner.download(mediaId);
  }

  search(...args: Parameters<E.Engine['search']>): ReturnType<E.Engine['search']> {
    return this.inner.search(...args);
  }

  aiSettings(conversationId: string): ReturnType<E.Engine['aiSettings']> {
    return this.inner.aiSettings(conversationId);
  }

  setAiSettings(...args: Parameters<E.Engine['setAiSettings']>): ReturnType<E.Engine['setAiSettings']> {
    return this.inner.setAiSettings(...args);
  }

  /** A follower asks over REST (its engine has no connection to stream on). */
  ask(conversationId: string, question: string, options?: E.AskOptions): ReturnType<E.Engine['ask']> {
    return this.inner.ask(conversationId, question, options);
  }

  catchUp(conversationId: string): ReturnType<E.Engine['catchUp']> {
    return this.inner.catchUp(conversationId);
  }

  actionItems(conversationId: string): ReturnType<E.Engine['actionItems']> {
    return this.inner.actionItems(conversationId);
  }

  setActionItem(conversationId: string, itemId: string, status: 'open' | 'done'): ReturnType<E.Engine['setActionItem']> {
    return this.inner.setActionItem(conversationId, itemId, status);
  }

  aiLog(conversationId: string): ReturnType<E.Engine['aiLog']> {
    return this.inner.aiLog(conversationId);
  }

  registerPushToken(token: string, platform?: string): Promise<void> {
    return this.inner.registerPushToken(token, platform);
  }

  unregisterPushToken(token: string): Promise<void> {
    return this.inner.unregisterPushToken(token);
  }
}
