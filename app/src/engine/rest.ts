/**
 * The REST client: one base URL, the bearer token, JSON in and out, and every
 * failure turned into an EngineError (`offline` when the server could not be
 * reached, else the server's error code and message). Used by the engine only.
 */
import { EngineError, type EngineErrorCode } from './errors';

// A request that takes longer than this counts as the server being unreachable.
const REQUEST_TIMEOUT_MS = 30_000;
// AI answers may take the server's whole `ai.timeout_seconds` (30 s) and more.
export const AI_TIMEOUT_MS = 65_000;

const CODES = new Set([
  'bad_request',
  'unknown_type',
  'unauthorized',
  'forbidden',
  'not_found',
  'conflict',
  'too_large',
  'rate_limited',
  'unavailable',
  'internal',
]);

export interface RestOptions {
  method?: string;
  json?: unknown;
  body?: Blob | Uint8Array;
  contentType?: string;
  query?: Record<string, string | number | undefined>;
  timeoutMs?: number;
  /** Return the Response as is (downloads). */
  raw?: boolean;
}

export class Rest {
  token: string | null = null;
  /**
   * Asked for a new token when the server refuses this one (401): the request is
   * sent once more with it. Null (or an answer of null): the 401 stands.
   */
  renew: (() => Promise<string | null>) | null = null;

  constructor(
    readonly baseUrl: string,
    readonly fetchImpl: typeof fetch,
  ) {}

  url(path: string, query?: RestOptions['query']): string {
    let url = `${this.baseUrl}${path}`;
    if (query) {
      const params = Object.entries(query)
        .filter((entry): entry is [string, string | number] => entry[1] !== undefined)
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
      if (params.length) url += `?${params.join('&')}`;
    }
    return url;
  }

  async request(path: string, options: RestOptions = {}): Promise<unknown> {
    const response = await this.fetchResponse(path, options);
    if (response.status === 204) return null;
    const text = await response.text();
    try {
      return text ? (JSON.parse(text) as unknown) : null;
    } catch {
      throw new EngineError('protocol', `the server answered ${path} with something that is not JSON`);
    }
  }

  async fetchResponse(path: string, options: RestOptions = {}): Promise<Response> {
    const sent = this.token;
    const response = await this.send(path, options, sent);
    if (response.ok) return response;
    if (response.status === 401 && sent && this.renew) {
      // Another request may have renewed it meanwhile; requests refused together share
      // one renewal (Clerk's getToken, once).
      const fresh = this.token !== sent ? this.token : await this.renewOnce(this.renew);
      if (fresh && fresh !== sent) {
        const again = await this.send(path, options, fresh);
        if (again.ok) return again;
        throw await errorOf(again);
      }
    }
    throw await errorOf(response);
  }

  private renewing: Promise<string | null> | null = null;

  private renewOnce(renew: () => Promise<string | null>): Promise<string | null> {
    this.renewing ??= renew().finally(() => {
      this.renewing = null;
    });
    return this.renewing;
  }

  private async send(path: string, options: RestOptions, token: string | null): Promise<Response> {
    const headers: Record<string, string> = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    let body: BodyInit | undefined;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.body !== undefined) {
      headers['Content-Type'] = options.contentType ?? 'application/octet-stream';
      body = options.body as BodyInit;
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), options.timeoutMs ?? REQUEST_TIMEOUT_MS);
    let response: Response;
    try {
      response = await this.fetchImpl(this.url(path, options.query), {
        method: options.method ?? 'GET',
        headers,
        body,
        signal: controller.signal,
      });
    } catch (error) {
      throw new EngineError('offline', `the server cannot be reached (${describe(error)})`);
    } finally {
      clearTimeout(timer);
    }
    return response;
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.name === 'AbortError' ? 'timed out' : error.message;
  return String(error);
}

async function errorOf(response: Response): Promise<EngineError> {
  let code: EngineErrorCode = response.status >= 500 ? 'unavailable' : 'bad_request';
  let message = `HTTP ${response.status}`;
  let retryAfterMs: number | null = null;
  try {
    const body = (await response.json()) as { error?: Record<string, unknown> };
    const err = body.error;
    if (err && typeof err.code === 'string' && CODES.has(err.code)) code = err.code as EngineErrorCode;
    if (err && typeof err.message === 'string') message = err.message;
    if (err && typeof err.retry_after_ms === 'number') retryAfterMs = err.retry_after_ms;
  } catch {
    // Not JSON (a proxy's page): the status alone tells.
    if (response.status === 401) code = 'unauthorized';
    if (response.status === 403) code = 'forbidden';
    if (response.status === 404) code = 'not_found';
  }
  return new EngineError(code, message, { status: response.status, retryAfterMs });
}
