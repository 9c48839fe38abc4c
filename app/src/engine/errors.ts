/**
 * `EngineError`: the one error type the engine throws to screens. `code` is
 * PROTOCOL.md's error code when the server answered one, or `offline` when the
 * server could not be reached, or `invalid` for input refused before any I/O.
 */
import type { ErrorCode } from './protocol';

export type EngineErrorCode = ErrorCode | 'offline' | 'invalid' | 'protocol';

export class EngineError extends Error {
  readonly code: EngineErrorCode;
  /** HTTP status when the error came from a REST answer. */
  readonly status: number | null;
  /** From `rate_limited` answers: retrying after this long succeeds. */
  readonly retryAfterMs: number | null;

  constructor(
    code: EngineErrorCode,
    message: string,
    options: { status?: number | null; retryAfterMs?: number | null } = {},
  ) {
    super(message);
    this.name = 'EngineError';
    this.code = code;
    this.status = options.status ?? null;
    this.retryAfterMs = options.retryAfterMs ?? null;
  }

  /** Worth retrying later with the same request (the outbox keeps it). */
  get transient(): boolean {
    return (
      this.code === 'offline' ||
      this.code === 'unavailable' ||
      this.code === 'rate_limited' ||
      this.code === 'internal'
    );
  }
}
