/**
 * The engine's calls that are plain requests, with nothing to keep locally:
 * media, search, the AI routes (and `ai_ask`'s stream over the WebSocket), push
 * tokens. Each checks its input before any I/O and validates the answer.
 * Called by engine.ts only, which gives it its `Rest` (and live connection).
 */
import type { Connection } from './connection';
import { EngineError } from './errors';
import type { AskOptions, UploadSource } from './index';
import { LIMITS, type AiAnswer, type Media, type SearchMode } from './protocol';
import { AI_TIMEOUT_MS, type Rest } from './rest';
import * as v from './validate';

// Uploads and downloads of up to the server's 25 MiB on a slow phone link.
const MEDIA_TIMEOUT_MS = 300_000;
// The most answer text passed on from `ai_delta` frames (a server streaming without end).
const MAX_ANSWER_CHARS = 200_000;

function codePoints(text: string): number {
  return [...text.trim()].length;
}

export async function upload(rest: Rest, source: UploadSource): Promise<Media> {
  let body: Blob | Uint8Array;
  let contentType: string;
  if (source.kind === 'blob') {
    body = source.blob;
    contentType = source.blob.type || 'application/octet-stream';
  } else if (source.kind === 'bytes') {
    body = source.bytes;
    contentType = source.contentType;
  } else {
    // React Native's fetch reads file:// and content:// uris into a Blob.
    body = await (await fetch(source.uri)).blob();
    contentType = source.contentType;
  }
  const filename =
    source.filename ?? (source.kind === 'blob' && 'name' in source.blob ? String((source.blob as File).name) : undefined);
  if (
    filename !== undefined &&
    (filename.length < 1 || filename.length > LIMITS.maxFilenameChars || /[/\\]/.test(filename))
  ) {
    throw new EngineError('invalid', 'a file name is 1 to 255 characters without / or \\');
  }
  return v.media(
    await rest.request('/v1/media', { method: 'POST', body, contentType, query: { filename }, timeoutMs: MEDIA_TIMEOUT_MS }),
  );
}

export async function mediaInfo(rest: Rest, mediaId: string): Promise<Media> {
  return v.media(await rest.request(`/v1/media/${encodeURIComponent(mediaId)}/info`));
}

export async function download(rest: Rest, mediaId: string): Promise<Blob> {
  const response = await rest.fetchResponse(`/v1/media/${encodeURIComponent(mediaId)}`, { timeoutMs: MEDIA_TIMEOUT_MS });
  return response.blob();
}

export interface SearchOptions {
  conversationId?: string;
  limit?: number;
  mode?: SearchMode;
}

export async function search(rest: Rest, q: string, options: SearchOptions = {}) {
  const length = codePoints(q);
  if (length < 1 || length > LIMITS.maxSearchChars) {
    throw new EngineError('invalid', `a search is 1 to ${LIMITS.maxSearchChars} characters`);
  }
  return v.searchAnswer(
    await rest.request('/v1/search', {
      query: { q: q.trim(), conversation_id: options.conversationId, limit: options.limit, mode: options.mode },
    }),
  );
}

function aiPath(conversationId: string, tail = ''): string {
  return `/v1/conversations/${encodeURIComponent(conversationId)}/ai${tail}`;
}

export async function aiSettings(rest: Rest, conversationId: string) {
  return v.aiSettings(await rest.request(aiPath(conversationId)));
}

export async function setAiSettings(
  rest: Rest,
  conversationId: string,
  settings: { enabled: boolean; proactive?: boolean },
) {
  return v.aiSettings(await rest.request(aiPath(conversationId), { method: 'PUT', json: settings }));
}

/** Over `conn` (streaming `ai_delta` to `onDelta`) when given, else over REST. */
export async function ask(
  rest: Rest,
  conn: Connection | null,
  conversationId: string,
  question: string,
  options: AskOptions = {},
): Promise<AiAnswer> {
  const length = codePoints(question);
  if (length < 1 || length > LIMITS.maxQuestionChars) {
    throw new EngineError('invalid', `a question is 1 to ${LIMITS.maxQuestionChars} characters`);
  }
  if (conn) {
    let streamed = 0;
    const answer = await conn.request(
      { type: 'ai_ask', conversation_id: conversationId, question },
      {
        timeoutMs: AI_TIMEOUT_MS,
        onFrame: (frame) => {
          if (frame.type !== 'ai_delta') return true; // ai_answer ends it
          if (typeof frame.text === 'string' && streamed < MAX_ANSWER_CHARS && !options.signal?.aborted) {
            streamed += frame.text.length;
            options.onDelta?.(frame.text);
          }
          return false;
        },
      },
    );
    return v.aiAnswer(answer);
  }
  return v.aiAnswer(
    await rest.request(aiPath(conversationId, '/ask'), { method: 'POST', json: { question }, timeoutMs: AI_TIMEOUT_MS }),
  );
}

export async function catchUp(rest: Rest, conversationId: string) {
  return v.catchUp(await rest.request(aiPath(conversationId, '/catch-up'), { method: 'POST', timeoutMs: AI_TIMEOUT_MS }));
}

export async function actionItems(rest: Rest, conversationId: string) {
  const answer = v.obj(await rest.request(aiPath(conversationId, '/action-items')), 'action items');
  return v.list(answer.items, 'action items', v.actionItem);
}

export async function setActionItem(rest: Rest, conversationId: string, itemId: string, status: 'open' | 'done') {
  return v.actionItem(
    await rest.request(aiPath(conversationId, `/action-items/${encodeURIComponent(itemId)}`), {
      method: 'PATCH',
      json: { status },
    }),
  );
}

export async function aiLog(rest: Rest, conversationId: string) {
  const answer = v.obj(await rest.request(aiPath(conversationId, '/log')), 'AI log');
  return v.list(answer.entries, 'AI log', v.aiLogEntry);
}

export async function registerPushToken(rest: Rest, token: string, platform?: string): Promise<void> {
  const json: Record<string, string> = { token };
  if (platform) json.platform = platform;
  await rest.request('/v1/push-tokens', { method: 'POST', json });
}

export async function unregisterPushToken(rest: Rest, token: string): Promise<void> {
  await rest.request(`/v1/push-tokens/${encodeURIComponent(token)}`, { method: 'DELETE' });
}
