/**
 * Pure text helpers for the screens: times, sizes, mentions (the `@name` being typed and
 * the ids a body mentions). No React here, so jest tests them directly.
 */

/** "14:05" today, "Mon 14:05" this week, else "3 Dec 14:05" (local time). */
export function shortTime(ms: number, now: number = Date.now()): string {
  const d = new Date(ms);
  const hm = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  const today = new Date(now);
  if (d.toDateString() === today.toDateString()) return hm;
  const days = (now - ms) / 86_400_000;
  if (days >= 0 && days < 6) {
    return `${['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getDay()]} ${hm}`;
  }
  const month = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][d.getMonth()];
  return `${d.getDate()} ${month} ${hm}`;
}

export function fileSize(bytes: number | null | undefined): string {
  if (bytes == null) return '';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

// A username as the server allows them (PROTOCOL.md: 3-32 of [a-z0-9_.-]).
const MENTION = /(^|[^\w@])@([a-z0-9_.-]{3,32})/g;

/** The partial `@name` that ends at the cursor, for autocomplete, or null. */
export function mentionAt(text: string, cursor: number): { start: number; prefix: string } | null {
  const before = text.slice(0, cursor);
  const m = /(^|[^\w@])@([a-z0-9_.-]{0,32})$/.exec(before);
  if (!m) return null;
  const prefix = m[2] ?? '';
  return { start: cursor - prefix.length - 1, prefix };
}

/** `text` with the partial mention at `start` replaced by `@username `, and the new cursor. */
export function completeMention(
  text: string,
  start: number,
  cursor: number,
  username: string,
): { text: string; cursor: number } {
  const inserted = `@${username} `;
  return { text: text.slice(0, start) + inserted + text.slice(cursor), cursor: start + inserted.length };
}

/** Ids of the members named as `@username` in `body`, first occurrence first, at most 50. */
export function mentionedIds(body: string, members: { id: string; username: string }[]): string[] {
  const byName = new Map(members.map((m) => [m.username, m.id]));
  const out: string[] = [];
  for (const m of body.matchAll(MENTION)) {
    const id = byName.get(m[2] ?? '');
    if (id !== undefined && !out.includes(id)) out.push(id);
    if (out.length === 50) break;
  }
  return out;
}

/** Splits a body into plain and `@mention` parts, for display. */
export function mentionParts(body: string): { text: string; mention: boolean }[] {
  const out: { text: string; mention: boolean }[] = [];
  let last = 0;
  for (const m of body.matchAll(MENTION)) {
    const at = (m.index ?? 0) + (m[1]?.length ?? 0);
    if (at > last) out.push({ text: body.slice(last, at), mention: false });
    out.push({ text: `@${m[2] ?? ''}`, mention: true });
    last = at + 1 + (m[2]?.length ?? 0);
  }
  if (last < body.length) out.push({ text: body.slice(last), mention: false });
  return out;
}

/** Splits `snippet` at the `[start, end)` code-point ranges the server highlighted. */
export function highlightParts(snippet: string, highlights: [number, number][]): { text: string; hit: boolean }[] {
  const points = Array.from(snippet);
  const out: { text: string; hit: boolean }[] = [];
  let at = 0;
  for (const [start, end] of [...highlights].sort((a, b) => a[0] - b[0])) {
    const s = Math.max(at, Math.min(start, points.length));
    const e = Math.max(s, Math.min(end, points.length));
    if (s > at) out.push({ text: points.slice(at, s).join(''), hit: false });
    if (e > s) out.push({ text: points.slice(s, e).join(''), hit: true });
    at = e;
  }
  if (at < points.length) out.push({ text: points.slice(at).join(''), hit: false });
  return out;
}
