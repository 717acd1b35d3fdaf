import {ErrorCode} from '../protocol/errors.js'
import type {HolderInfo} from '../protocol/messages.js'
import {printable} from '../util/printable.js'

export {ErrorCode}

/**
 * A key as messages show it: quoted, with invisible characters (format controls, odd spaces,
 * bidi overrides) escaped as \uXXXX, so that two keys that look alike never read alike.
 */
export function quoteKey(key: string): string {
  return quoteText(key)
}

/** `quoteKey` for a word the user typed; a long one is shown by its start, so an error stays one readable line. */
export function quoteStart(text: string): string {
  return text.length > 60 ? `${quoteText(text.slice(0, 40)).slice(0, -1)}…"` : quoteText(text)
}

function quoteText(text: string): string {
  return JSON.stringify(text).replace(/[\p{Cf}\p{Zl}\p{Zp}\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]/gu, (c) => `\\u${c.codePointAt(0)!.toString(16).padStart(4, '0')}`)
}

/** Base of every error the client throws; `code` is stable and safe to switch on. */
export class LockError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: {cause?: unknown},
  ) {
    super(message, options)
    this.name = new.target.name
  }
}

/** Held by another owner and the caller did not wait. */
export class LockHeldError extends LockError {
  constructor(
    readonly key: string,
    readonly holder: HolderInfo | null,
    /** The limit asked for: a semaphore's refusal says that every slot is taken. */
    limit = 1,
  ) {
    super(ErrorCode.LOCK_HELD, limit > 1 ? `${quoteKey(key)} is full: all ${limit} slots are held (the oldest by ${describeHolder(holder)})` : `${quoteKey(key)} is held by ${describeHolder(holder)}`)
  }
}

/** The caller waited in the queue and gave up when its wait ran out. */
export class WaitTimeoutError extends LockError {
  constructor(
    readonly key: string,
    readonly waitedMs: number,
    readonly holder: HolderInfo | null,
  ) {
    super(ErrorCode.WAIT_TIMEOUT, `gave up waiting for ${quoteKey(key)} after ${formatMs(waitedMs)}; held by ${describeHolder(holder)}`)
  }
}

export class NotHolderError extends LockError {
  constructor(
    readonly key: string,
    message?: string,
  ) {
    super(ErrorCode.NOT_HOLDER, message ?? `the token does not hold ${quoteKey(key)} (released, expired, or never held)`)
  }
}

export class LeaseLostError extends LockError {
  constructor(
    readonly key: string,
    /** Why, without the key (for lines that name the key already). */
    readonly reason: string,
  ) {
    super(ErrorCode.LEASE_LOST, `lost ${quoteKey(key)}: ${reason}`)
  }
}

export class UnreachableError extends LockError {
  constructor(message: string, options?: {cause?: unknown}) {
    super(ErrorCode.UNREACHABLE, message, options)
  }
}

export class ProtocolError extends LockError {
  constructor(message: string) {
    super(ErrorCode.PROTOCOL, message)
  }
}

export class BadInputError extends LockError {
  constructor(message: string) {
    super(ErrorCode.BAD_INPUT, message)
  }
}

export class BusyError extends LockError {
  constructor(key: string) {
    super(ErrorCode.BUSY, `an operation on ${quoteKey(key)} is already in flight on this lock object`)
  }
}

export class AbortedError extends LockError {
  constructor(message = 'the operation was aborted') {
    super(ErrorCode.ABORTED, message)
  }
}

export class ClosedError extends LockError {
  constructor(what = 'the client') {
    super(ErrorCode.CLOSED, `${what} is closed`)
  }
}

/** Authentication failed, or the user may not do that (a force release by a non-admin). */
export class NotPermittedError extends LockError {
  constructor(message: string, options?: {cause?: unknown}) {
    super(ErrorCode.NOT_PERMITTED, message, options)
  }
}

/** The server refused because one of its limits was reached (connections, waiters per connection). */
export class LimitError extends LockError {
  constructor(message: string) {
    super(ErrorCode.LIMIT, message)
  }
}

export class ServerError extends LockError {
  constructor(message: string, options?: {cause?: unknown}) {
    super(ErrorCode.INTERNAL, message, options)
  }
}

/**
 * The service is down or restarting, or out of room for connections: waiting may mend it. What
 * a wait (`lock --wait`) and a watch's reconnection keep trying through.
 */
export function mayPass(error: unknown): boolean {
  return error instanceof LockError && (error.code === ErrorCode.UNREACHABLE || error.code === ErrorCode.LIMIT)
}

/** A wait given up at its end because the service did not answer its try at all (tryUntil in async.ts). */
export function noAnswerWithin(key: string, waitMs: number): UnreachableError {
  return new UnreachableError(`gave up waiting for ${quoteKey(key)} after ${formatMs(waitMs)}: the lock service did not answer`)
}

export function describeHolder(holder: HolderInfo | null | undefined): string {
  if (!holder) return 'nobody'
  // (The owner as the service gave it, without control characters: this goes into error lines.)
  return `${printable(holder.owner)} (fence ${holder.fence}, ${formatMs(holder.leaseLeftMs)} left)`
}

export function formatMs(ms: number): string {
  // (Rounded first: 999.7 ms is "1s", not "1000ms".)
  if (Math.round(ms) < 1000) return `${Math.round(ms)}ms`
  // Under 10 s a tenth counts: a --wait of 1.5s is not "2s".
  if (ms < 10_000 && Math.round(ms / 100) % 10 !== 0) return `${(Math.round(ms / 100) / 10).toFixed(1)}s`
  const totalSeconds = Math.round(ms / 1000)
  const h = Math.floor(totalSeconds / 3600)
  const m = Math.floor((totalSeconds % 3600) / 60)
  const s = totalSeconds % 60
  return [h ? `${h}h` : '', m ? `${m}m` : '', s || (!h && !m) ? `${s}s` : ''].join('')
}
