/**
 * The wire objects of PROTOCOL.md (v1 and v1.1) and MessageAI's documented
 * extensions (docs/protocol.md), as TypeScript types. The engine validates
 * every object it receives against these shapes (see `validate.ts`) before it
 * stores or shows it; screens only ever see validated values.
 */

/** Milliseconds since the Unix epoch, server clock. */
export type Millis = number;

export interface User {
  id: string;
  username: string;
  display_name: string;
  created_at: Millis;
  /** v1.1: true only for the server's assistant. */
  bot: boolean;
}

export interface Message {
  id: string;
  conversation_id: string;
  seq: number;
  sender_id: string;
  client_id: string;
  /** Stored trimmed; `""` for a tombstone or a captionless attachment. */
  body: string;
  /** Media ids. */
  attachments: string[];
  created_at: Millis;
  /** v1.1: the seq of the message this one replies to. */
  reply_to: number | null;
  mentions: string[];
  edited_at: Millis | null;
  deleted_at: Millis | null;
  /** emoji -> user ids, in the order they reacted. */
  reactions: Record<string, string[]>;
  /** The conversation's change counter at this message's latest change. */
  rev: number;
}

export type ConversationKind = 'direct' | 'group' | 'channel';

export interface Conversation {
  id: string;
  kind: ConversationKind;
  title: string | null;
  topic: string | null;
  member_ids: string[];
  created_at: Millis;
  last_seq: number;
  last_rev: number;
  last_message: Message | null;
  unread_count: number;
  /** Extension: for groups, when each member joined ({} otherwise). */
  members_joined_at: Record<string, Millis>;
  /** Only in `GET /v1/channels` answers. */
  member_count?: number;
}

export interface Media {
  id: string;
  content_type: string;
  size: number;
  sha256: string;
  filename: string | null;
}

export type SearchMode = 'keyword' | 'semantic' | 'hybrid';

export interface SearchResult {
  conversation_id: string;
  message: Message;
  snippet: string;
  /** [start, end) code point offsets into `snippet`. */
  highlights: [number, number][];
  score: number;
}

export interface SearchAnswer {
  mode: SearchMode;
  results: SearchResult[];
  indexing: boolean;
  truncated?: boolean;
}

/** `GET /v1/settings` (docs/protocol.md): what a server publishes before anyone signs in. */
export interface ServerSettings {
  auth: {
    mode: 'local' | 'clerk';
    /** Whether `POST /v1/auth/register` takes new accounts (never in Clerk mode). */
    registration_open: boolean;
    /** Clerk mode with a publishable key: what Clerk's SDK is configured with. */
    clerk: { publishable_key: string; frontend_api: string } | null;
  };
  limits: {
    max_body_chars: number;
    max_attachments: number;
    max_upload_bytes: number;
    upload_types: string[];
    max_group_members: number;
  };
  ai: { available: boolean };
  version: string;
}

export interface AiSettings {
  enabled: boolean;
  proactive: boolean;
  changed_by: string | null;
  changed_at: Millis | null;
}

export interface AiAnswer {
  answer: string;
  citations: number[];
  cached: boolean;
}

export interface CatchUp {
  summary: string | null;
  citations: number[];
  from_seq: number | null;
  to_seq: number | null;
}

export interface ActionItem {
  id: string;
  text: string;
  owner_id: string | null;
  due: string | null;
  source_seqs: number[];
  status: 'open' | 'done';
}

export interface AiLogEntry {
  at: Millis;
  user_id: string | null;
  action: 'ask' | 'catch_up' | 'action_items' | 'proactive';
  seqs: number[];
}

/** PROTOCOL.md's closed list of error codes. */
export type ErrorCode =
  | 'bad_request'
  | 'unknown_type'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

/** PROTOCOL.md limits a client checks before it queues anything. */
export const LIMITS = {
  maxBodyChars: 16000,
  maxAttachments: 10,
  maxMentions: 50,
  maxEmojiBytes: 32,
  maxQuestionChars: 2000,
  maxSearchChars: 256,
  maxClientIdChars: 128,
  maxFilenameChars: 255,
} as const;
