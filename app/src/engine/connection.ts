/**
 * One WebSocket to `/v1/ws`: opens it with `?access_token=` (browsers cannot
 * set headers on a WebSocket), matches answers to requests by `req`, hands
 * every other frame to `onFrame`, and reports the close once. The reconnect
 * loop that makes a new one after a close lives in engine.ts.
 */
import { EngineError, type EngineErrorCode } from './errors';
import type { WebSocketConstructor, WebSocketLike } from './index';

type Frame = Record<string, unknown>;

// Requests in flight on one connection; more is a bug or a flood: refused.
const MAX_PENDING = 512;
const OPEN_TIMEOUT_MS = 15_000;
export const REQUEST_TIMEOUT_MS = 30_000;

interface Pending {
  resolve: (frame: Frame) => void;
  reject: (error: EngineError) => void;
  /** For multi-frame answers (`ai_ask`): true when this frame ends the request. */
  onFrame?: (frame: Frame) => boolean;
  timer: ReturnType<typeof setTimeout>;
}

export class Connection {
  private ws: WebSocketLike | null = null;
  private nextReq = 1;
  private readonly pending = new Map<number, Pending>();
  private closedWith: { code: number; reason: string } | null = null;
  opened = false;
  /** Resolves once, when the socket has closed (or failed to open). */
  readonly closed: Promise<{ code: number; reason: string }>;
  private resolveClosed!: (value: { code: number; reason: string }) => void;

  constructor(
    private readonly url: string,
    private readonly WebSocketCtor: WebSocketConstructor,
    private readonly onFrame: (frame: Frame) => void,
  ) {
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
  }

  /** Opens the socket; rejects (EngineError `offline`) if it closes or times out first. */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new this.WebSocketCtor(this.url);
      } catch (error) {
        this.finish(1006, String(error));
        reject(new EngineError('offline', `cannot open a WebSocket: ${String(error)}`));
        return;
      }
      this.ws = ws;
      const timer = setTimeout(() => {
        reject(new EngineError('offline', 'the WebSocket did not open in time'));
        this.close(4000, 'open timeout');
      }, OPEN_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        this.opened = true;
        resolve();
      };
      ws.onerror = () => {
        // A close event follows; it carries what little the platform tells.
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!this.opened) reject(new EngineError('offline', 'the WebSocket was refused or dropped'));
        this.finish(event.code, event.reason);
      };
      ws.onmessage = (event) => this.receive(event.data);
    });
  }

  get isOpen(): boolean {
    return this.opened && this.closedWith === null;
  }

  /** Sends a frame without `req` (no answer unless it is refused). */
  send(frame: Frame): void {
    if (!this.isOpen || !this.ws) throw new EngineError('offline', 'not connected');
    this.ws.send(JSON.stringify(frame));
  }

  /**
   * Sends `frame` with a fresh `req` and resolves with its answer; rejects with
   * the `error` frame's code, or `offline` when the socket closes or the answer
   * does not come within `timeoutMs` (then the socket is closed: a server that
   * does not answer is treated as gone, and the reconnect loop takes over).
   */
  request(
    frame: Frame,
    options: { timeoutMs?: number; onFrame?: (frame: Frame) => boolean } = {},
  ): Promise<Frame> {
    if (!this.isOpen || !this.ws) return Promise.reject(new EngineError('offline', 'not connected'));
    if (this.pending.size >= MAX_PENDING) {
      return Promise.reject(new EngineError('rate_limited', 'too many requests in flight'));
    }
    const req = this.nextReq++;
    const ws = this.ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(req);
        reject(new EngineError('offline', `no answer to ${String(frame.type)} in time`));
        this.close(4000, 'request timeout');
      }, options.timeoutMs ?? REQUEST_TIMEOUT_MS);
      this.pending.set(req, { resolve, reject, onFrame: options.onFrame, timer });
      ws.send(JSON.stringify({ ...frame, req }));
    });
  }

  close(code = 1000, reason = ''): void {
    if (this.ws && this.closedWith === null) {
      try {
        this.ws.close(code >= 4000 || code === 1000 ? code : 1000, reason);
      } catch {
        // Already closing: the close event reports it.
      }
    }
    // Do not wait for the peer: a dead network may never answer the close.
    this.finish(code, reason);
  }

  private finish(code: number, reason: string): void {
    if (this.closedWith !== null) return;
    this.closedWith = { code, reason };
    if (this.ws) {
      this.ws.onmessage = null;
      this.ws.onopen = null;
    }
    for (const [req, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new EngineError('offline', 'the connection closed'));
      this.pending.delete(req);
    }
    this.resolveClosed(this.closedWith);
  }

  private receive(data: unknown): void {
    if (typeof data !== 'string') return;
    let frame: unknown;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // Not JSON: nothing this client can act on.
    }
    if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) return;
    const f = frame as Frame;
    const req = f.req;
    if (typeof req === 'number' && this.pending.has(req)) {
      const pending = this.pending.get(req)!;
      if (f.type === 'error') {
        this.pending.delete(req);
        clearTimeout(pending.timer);
        const code = (typeof f.code === 'string' ? f.code : 'internal') as EngineErrorCode;
        const message = typeof f.message === 'string' ? f.message : 'refused';
        const retryAfterMs = typeof f.retry_after_ms === 'number' ? f.retry_after_ms : null;
        pending.reject(new EngineError(code, message, { retryAfterMs }));
        return;
      }
      if (pending.onFrame && !pending.onFrame(f)) return;
      this.pending.delete(req);
      clearTimeout(pending.timer);
      pending.resolve(f);
      return;
    }
    this.onFrame(f);
  }
}
