/**
 * The records the engine keeps in the local database and their keys. Keys are
 * strings that sort the way the engine reads: a conversation's messages by seq
 * (`<cid>\u0001s<seq, 16 digits>`), its pending ones after them in the order
 * they were written (`<cid>\u0001p<order, 16 digits>`); outbox entries by order.
 * Used by engine.ts and outbox.ts only.
 */
import type { LocalMessage } from './index';
import type { Conversation, User } from './protocol';

export const SEP = '\u0001';
// Above every other character used in keys: the end of a prefix range.
export const END = '\uffff';

export function pad(n: number): string {
  return String(n).padStart(16, '0');
}

export function seqKey(conversationId: string, seq: number): string {
  return `${conversationId}${SEP}s${pad(seq)}`;
}

export function pendingKey(conversationId: string, order: number): string {
  return `${conversationId}${SEP}p${pad(order)}`;
}

/** The stable key of a message for screens: sender and client_id. */
export function messageKey(senderId: string, clientId: string): string {
  return `${senderId}:${clientId}`;
}

/** A conversation as stored: the server's object plus what this device holds of it. */
export interface StoredConversation {
  conv: Conversation;
  read_cursors: Record<string, number>;
  /** Highest seq and rev held (the sync cursors). */
  max_seq: number;
  max_rev: number;
  oldest_seq: number | null;
  has_beginning: boolean;
}

export interface Session {
  token: string;
  user: User;
}

/** A stored message: a LocalMessage plus where it is kept. */
export type StoredMessage = LocalMessage & { storeKey: string };

/** One queued operation of the outbox, in the order it was made. */
export type OutboxOp =
  | {
      kind: 'send';
      order: number;
      conversation_id: string;
      client_id: string;
      body: string;
      attachments: string[];
      reply_to: number | null;
      mentions: string[];
      storeKey: string;
    }
  | {
      kind: 'edit';
      order: number;
      conversation_id: string;
      seq: number;
      body: string;
      before: StoredMessage;
    }
  | { kind: 'delete'; order: number; conversation_id: string; seq: number; before: StoredMessage }
  | {
      kind: 'react';
      order: number;
      conversation_id: string;
      seq: number;
      emoji: string;
      on: boolean;
      before: StoredMessage;
    }
  | { kind: 'read'; order: number; conversation_id: string; seq: number };

export function outboxKey(order: number): string {
  return pad(order);
}
