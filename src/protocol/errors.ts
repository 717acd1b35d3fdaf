/**
 * Stable error codes shared by the wire protocol, the client library and the CLI.
 * The strings travel on the wire and are part of the public API: never rename one.
 */
export const ErrorCode = {
  /** Held by someone else and the caller did not wait (or cannot). */
  LOCK_HELD: 'LOCK_HELD',
  /** The caller waited in the queue and its wait ran out. */
  WAIT_TIMEOUT: 'WAIT_TIMEOUT',
  /** The token does not hold the lock (never did, released, expired or force-released). */
  NOT_HOLDER: 'NOT_HOLDER',
  /** A lock this client held was lost (lease ran out, or a renewal said "not the holder"). */
  LEASE_LOST: 'LEASE_LOST',
  /** The backend cannot be reached, or the connection was lost. */
  UNREACHABLE: 'UNREACHABLE',
  /** The peer broke the protocol: bad frame, bad message, version mismatch. */
  PROTOCOL: 'PROTOCOL',
  /** A key, duration, token, endpoint or option is not acceptable. */
  BAD_INPUT: 'BAD_INPUT',
  /** A second operation was started on a lock object while one is in flight. */
  BUSY: 'BUSY',
  /** The operation was cancelled through its AbortSignal. */
  ABORTED: 'ABORTED',
  /** The client or lock object was closed. */
  CLOSED: 'CLOSED',
  /** Authentication failed, or the user may not do that (e.g. a force release by a non-admin). */
  NOT_PERMITTED: 'NOT_PERMITTED',
  /** The server refused because one of its limits was reached (connections, waiters per connection). */
  LIMIT: 'LIMIT',
  /** The server failed to do what it was asked (for example it could not write its log). */
  INTERNAL: 'INTERNAL',
  /** The CLI could not write its output (stdout full, or its reader gone). Never on the wire. */
  OUTPUT: 'OUTPUT',
} as const

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]
