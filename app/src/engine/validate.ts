/**
 * Checks every object the server sends against PROTOCOL.md before the engine
 * stores or shows it. Unknown extra fields are kept out (the result is built
 * field by field); a missing or mistyped known field throws EngineError
 * `protocol` naming it. v1 servers lack the v1.1 fields: they get their
 * documented defaults (no reply, no mentions, no reactions, rev = seq).
 */
import { EngineError } from './errors';
import type {
  ActionItem,
  AiAnswer,
  AiLogEntry,
  AiSettings,
  CatchUp,
  Conversation,
  ConversationKind,
  Media,
  Message,
  SearchAnswer,
  SearchMode,
  SearchResult,
  ServerSettings,
  User,
} from './protocol';

type Obj = Record<string, unknown>;

function fail(where: string, what: string): never {
  throw new EngineError('protocol', `the server sent a bad ${where}: ${what}`);
}

export function obj(value: unknown, where: string): Obj {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(where, 'not an object');
  return value as Obj;
}

function str(o: Obj, key: string, where: string): string {
  const v = o[key];
  if (typeof v !== 'string') fail(where, `${key} is not a string`);
  return v;
}

function strOrNull(o: Obj, key: string, where: string): string | null {
  const v = o[key];
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string') fail(where, `${key} is not a string or null`);
  return v;
}

function int(o: Obj, key: string, where: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(where, `${key} is not an integer`);
  return v;
}

function intOrNull(o: Obj, key: string, where: string): number | null {
  const v = o[key];
  if (v === null || v === undefined) return null;
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(where, `${key} is not an integer or null`);
  return v;
}

function bool(o: Obj, key: string, where: string, fallback?: boolean): boolean {
  const v = o[key];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v !== 'boolean') fail(where, `${key} is not a boolean`);
  return v;
}

function strList(o: Obj, key: string, where: string, optional = false): string[] {
  const v = o[key];
  if (v === undefined && optional) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    fail(where, `${key} is not a list of strings`);
  }
  return [...(v as string[])];
}

function intList(o: Obj, key: string, where: string): number[] {
  const v = o[key];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isInteger(x))) {
    fail(where, `${key} is not a list of integers`);
  }
  return [...(v as number[])];
}

export function list<T>(value: unknown, where: string, item: (v: unknown) => T): T[] {
  if (!Array.isArray(value)) fail(where, 'not a list');
  return value.map(item);
}

export function user(value: unknown): User {
  const o = obj(value, 'user');
  return {
    id: str(o, 'id', 'user'),
    username: str(o, 'username', 'user'),
    display_name: str(o, 'display_name', 'user'),
    created_at: int(o, 'created_at', 'user'),
    bot: bool(o, 'bot', 'user', false),
  };
}

export function message(value: unknown): Message {
  const w = 'message';
  const o = obj(value, w);
  const seq = int(o, 'seq', w);
  const reactionsRaw = o.reactions === undefined ? {} : obj(o.reactions, 'message reactions');
  const reactions: Record<string, string[]> = {};
  for (const [emoji, users] of Object.entries(reactionsRaw)) {
    reactions[emoji] = strList(reactionsRaw, emoji, 'message reactions');
    void users;
  }
  return {
    id: str(o, 'id', w),
    conversation_id: str(o, 'conversation_id', w),
    seq,
    sender_id: str(o, 'sender_id', w),
    client_id: str(o, 'client_id', w),
    body: str(o, 'body', w),
    attachments: strList(o, 'attachments', w, true),
    created_at: int(o, 'created_at', w),
    reply_to: intOrNull(o, 'reply_to', w),
    mentions: strList(o, 'mentions', w, true),
    edited_at: intOrNull(o, 'edited_at', w),
    deleted_at: intOrNull(o, 'deleted_at', w),
    reactions,
    rev: o.rev === undefined ? seq : int(o, 'rev', w),
  };
}

const KINDS: readonly ConversationKind[] = ['direct', 'group', 'channel'];

export function conversation(value: unknown): Conversation {
  const w = 'conversation';
  const o = obj(value, w);
  const kind = str(o, 'kind', w);
  if (!(KINDS as readonly string[]).includes(kind)) fail(w, `unknown kind ${kind}`);
  const joinedRaw = o.members_joined_at === undefined ? {} : obj(o.members_joined_at, w);
  const joined: Record<string, number> = {};
  for (const key of Object.keys(joinedRaw)) joined[key] = int(joinedRaw, key, 'members_joined_at');
  const lastSeq = int(o, 'last_seq', w);
  const result: Conversation = {
    id: str(o, 'id', w),
    kind: kind as ConversationKind,
    title: strOrNull(o, 'title', w),
    topic: strOrNull(o, 'topic', w),
    member_ids: strList(o, 'member_ids', w),
    created_at: int(o, 'created_at', w),
    last_seq: lastSeq,
    last_rev: o.last_rev === undefined ? lastSeq : int(o, 'last_rev', w),
    last_message: o.last_message === null || o.last_message === undefined ? null : message(o.last_message),
    unread_count: o.unread_count === undefined ? 0 : int(o, 'unread_count', w),
    members_joined_at: joined,
  };
  if (o.member_count !== undefined) result.member_count = int(o, 'member_count', w);
  return result;
}

export function media(value: unknown): Media {
  const o = obj(value, 'media');
  return {
    id: str(o, 'id', 'media'),
    content_type: str(o, 'content_type', 'media'),
    size: int(o, 'size', 'media'),
    sha256: str(o, 'sha256', 'media'),
    filename: strOrNull(o, 'filename', 'media'),
  };
}

export function page(value: unknown, where: string): { messages: Message[]; has_more: boolean } {
  const o = obj(value, where);
  return { messages: list(o.messages, where, message), has_more: bool(o, 'has_more', where) };
}

export function changes(value: unknown): { messages: Message[]; has_more: boolean; last_rev: number } {
  const o = obj(value, 'changes');
  return { ...page(o, 'changes'), last_rev: int(o, 'last_rev', 'changes') };
}

const MODES: readonly SearchMode[] = ['keyword', 'semantic', 'hybrid'];

function searchResult(value: unknown): SearchResult {
  const w = 'search result';
  const o = obj(value, w);
  const highlights = list(o.highlights, w, (pair) => {
    if (
      !Array.isArray(pair) ||
      pair.length !== 2 ||
      !pair.every((x) => typeof x === 'number' && Number.isInteger(x))
    ) {
      fail(w, 'a highlight is not a [start, end) pair');
    }
    return [pair[0], pair[1]] as [number, number];
  });
  const score = o.score;
  if (typeof score !== 'number') fail(w, 'score is not a number');
  return {
    conversation_id: str(o, 'conversation_id', w),
    message: message(o.message),
    snippet: str(o, 'snippet', w),
    highlights,
    score,
  };
}

export function searchAnswer(value: unknown): SearchAnswer {
  const o = obj(value, 'search answer');
  const mode = str(o, 'mode', 'search answer');
  if (!(MODES as readonly string[]).includes(mode)) fail('search answer', `unknown mode ${mode}`);
  const answer: SearchAnswer = {
    mode: mode as SearchMode,
    results: list(o.results, 'search answer', searchResult),
    indexing: bool(o, 'indexing', 'search answer', false),
  };
  if (o.truncated !== undefined) answer.truncated = bool(o, 'truncated', 'search answer');
  return answer;
}

export function aiSettings(value: unknown): AiSettings {
  const o = obj(value, 'AI settings');
  return {
    enabled: bool(o, 'enabled', 'AI settings'),
    proactive: bool(o, 'proactive', 'AI settings', false),
    changed_by: strOrNull(o, 'changed_by', 'AI settings'),
    changed_at: intOrNull(o, 'changed_at', 'AI settings'),
  };
}

export function serverSettings(value: unknown): ServerSettings {
  const where = 'settings';
  const o = obj(value, where);
  const auth = obj(o.auth, 'settings auth');
  const mode = str(auth, 'mode', 'settings auth');
  if (mode !== 'local' && mode !== 'clerk') fail(where, `auth.mode ${mode} is neither local nor clerk`);
  let clerk: ServerSettings['auth']['clerk'] = null;
  if (auth.clerk !== null && auth.clerk !== undefined) {
    const c = obj(auth.clerk, 'settings auth.clerk');
    const key = str(c, 'publishable_key', 'settings auth.clerk');
    if (!/^pk_(test|live)_[A-Za-z0-9+/=]+$/.test(key)) fail(where, 'auth.clerk.publishable_key is not a Clerk key');
    clerk = { publishable_key: key, frontend_api: str(c, 'frontend_api', 'settings auth.clerk') };
  }
  const limits = obj(o.limits, 'settings limits');
  return {
    auth: { mode, registration_open: bool(auth, 'registration_open', 'settings auth'), clerk },
    limits: {
      max_body_chars: int(limits, 'max_body_chars', 'settings limits'),
      max_attachments: int(limits, 'max_attachments', 'settings limits'),
      max_upload_bytes: int(limits, 'max_upload_bytes', 'settings limits'),
      upload_types: strList(limits, 'upload_types', 'settings limits', true),
      max_group_members: int(limits, 'max_group_members', 'settings limits'),
    },
    ai: { available: bool(obj(o.ai, 'settings ai'), 'available', 'settings ai') },
    version: str(o, 'version', where),
  };
}

export function aiAnswer(value: unknown): AiAnswer {
  const o = obj(value, 'AI answer');
  return {
    answer: str(o, 'answer', 'AI answer'),
    citations: intList(o, 'citations', 'AI answer'),
    cached: bool(o, 'cached', 'AI answer', false),
  };
}

export function catchUp(value: unknown): CatchUp {
  const o = obj(value, 'catch-up');
  return {
    summary: strOrNull(o, 'summary', 'catch-up'),
    citations: intList(o, 'citations', 'catch-up'),
    from_seq: intOrNull(o, 'from_seq', 'catch-up'),
    to_seq: intOrNull(o, 'to_seq', 'catch-up'),
  };
}

export function actionItem(value: unknown): ActionItem {
  const w = 'action item';
  const o = obj(value, w);
  const status = str(o, 'status', w);
  if (status !== 'open' && status !== 'done') fail(w, `unknown status ${status}`);
  return {
    id: str(o, 'id', w),
    text: str(o, 'text', w),
    owner_id: strOrNull(o, 'owner_id', w),
    due: strOrNull(o, 'due', w),
    source_seqs: intList(o, 'source_seqs', w),
    status,
  };
}

const ACTIONS: readonly string[] = ['ask', 'catch_up', 'action_items', 'proactive'];

export function aiLogEntry(value: unknown): AiLogEntry {
  const w = 'AI log entry';
  const o = obj(value, w);
  const action = str(o, 'action', w);
  if (!ACTIONS.includes(action)) fail(w, `unknown action ${action}`);
  return {
    at: int(o, 'at', w),
    user_id: strOrNull(o, 'user_id', w),
    action: action as AiLogEntry['action'],
    seqs: intList(o, 'seqs', w),
  };
}

export function readCursors(value: unknown): Record<string, number> {
  const o = obj(value, 'read_cursors');
  const out: Record<string, number> = {};
  for (const key of Object.keys(o)) out[key] = int(o, key, 'read_cursors');
  return out;
}

export { int, str, strOrNull, bool, strList, intOrNull };
