/**
 * The screens' pure helpers: mention autocomplete and extraction, search highlights,
 * and the status line under a sender's message (sending, queued, sent, read, read by N of M).
 */
import type { LocalMessage, Receipt } from '../../engine';
import { statusText } from '../status';
import { completeMention, highlightParts, mentionAt, mentionedIds, mentionParts } from '../text';

const members = [
  { id: 'u_1', username: 'ada' },
  { id: 'u_2', username: 'bob' },
  { id: 'u_3', username: 'bob.smith' },
];

describe('mentions', () => {
  test('the partial @name before the cursor is found, and nothing inside a word or an email', () => {
    expect(mentionAt('hey @bo', 7)).toEqual({ start: 4, prefix: 'bo' });
    expect(mentionAt('@', 1)).toEqual({ start: 0, prefix: '' });
    expect(mentionAt('mail ada@example', 16)).toBeNull();
    expect(mentionAt('hey @bob done', 13)).toBeNull();
  });

  test('completing replaces only the partial name and puts the cursor after it', () => {
    expect(completeMention('hey @bo and', 4, 7, 'bob.smith')).toEqual({ text: 'hey @bob.smith  and', cursor: 15 });
  });

  test('the ids mentioned are members named in full, first occurrence first, without repeats', () => {
    expect(mentionedIds('@bob.smith and @ada, @ada again; @nobody', members)).toEqual(['u_3', 'u_1']);
    expect(mentionedIds('ada@bob is an address', members)).toEqual([]);
  });

  test('a body splits into plain text and mentions for display', () => {
    expect(mentionParts('hi @ada!')).toEqual([
      { text: 'hi ', mention: false },
      { text: '@ada', mention: true },
      { text: '!', mention: false },
    ]);
  });
});

describe('search highlights', () => {
  test('ranges are code points, not UTF-16 units', () => {
    // "🎉" is one code point and two UTF-16 units: the highlight must still cover "party".
    expect(highlightParts('🎉 party time', [[2, 7]])).toEqual([
      { text: '🎉 ', hit: false },
      { text: 'party', hit: true },
      { text: ' time', hit: false },
    ]);
  });

  test('out-of-range or overlapping ranges never throw or repeat text', () => {
    const parts = highlightParts('abc', [[1, 9], [0, 2]]);
    expect(parts.map((p) => p.text).join('')).toBe('abc');
  });
});

function message(status: LocalMessage['status'], error: string | null = null): LocalMessage {
  return {
    key: 'k',
    id: status === 'sent' ? 'm_1' : null,
    seq: status === 'sent' ? 1 : null,
    rev: status === 'sent' ? 1 : null,
    conversation_id: 'c_1',
    sender_id: 'u_1',
    client_id: 'x',
    body: 'hi',
    attachments: [],
    created_at: 0,
    reply_to: null,
    mentions: [],
    edited_at: null,
    deleted_at: null,
    reactions: {},
    status,
    pendingChange: false,
    error,
  };
}

function receipt(readBy: number, of: number): Receipt {
  return { status: readBy > 0 ? 'read' : 'sent', readBy, of, readers: [] };
}

describe('the status under my message', () => {
  test('sending while connected, queued while offline', () => {
    expect(statusText(message('sending'), null, true)).toBe('Sending…');
    expect(statusText(message('sending'), null, false)).toBe('Queued (offline)');
  });

  test('sent, then read in a direct conversation', () => {
    expect(statusText(message('sent'), receipt(0, 1), true)).toBe('Sent');
    expect(statusText(message('sent'), receipt(1, 1), true)).toBe('Read');
  });

  test('read by N of M in a group', () => {
    expect(statusText(message('sent'), receipt(0, 4), true)).toBe('Sent');
    expect(statusText(message('sent'), receipt(2, 4), true)).toBe('Read by 2 of 4');
  });

  test('a refused message says why', () => {
    expect(statusText(message('failed', 'you are not a member'), null, true)).toBe('Not sent: you are not a member');
  });
});
