import {ErrorCode} from '../protocol/errors.js'

/** The documented exit codes (docs/exit-codes.md). One table, used by every command. */
export const ExitCode = {
  OK: 0,
  /** Not acquired: held by another, or the wait ran out (`--conflict-exit-code` changes it). */
  NOT_ACQUIRED: 1,
  /** Usage: bad flag, key, duration, token or endpoint. */
  USAGE: 2,
  /** The lock was lost while holding it. */
  LOST: 3,
  /** Backend unreachable, connection lost, or the backend broke the protocol. */
  UNREACHABLE: 4,
  /** The token does not hold the lock. */
  NOT_HOLDER: 5,
  /** Not permitted: authentication failed, or the user may not do that. */
  NOT_PERMITTED: 6,
  /** lockctl could not write its output: stdout full or failing, or (lock, hold) its reader gone. sysexits' EX_IOERR. */
  OUTPUT: 74,
  /** Interrupted (Ctrl-C) while waiting, as a shell reports SIGINT. */
  INTERRUPTED: 130,
  /** A bug in lockctl: an error nobody classified. */
  INTERNAL: 70,
} as const

export function exitCodeFor(code: string | undefined): number {
  switch (code) {
    case ErrorCode.LOCK_HELD:
    case ErrorCode.WAIT_TIMEOUT:
      return ExitCode.NOT_ACQUIRED
    case ErrorCode.BAD_INPUT:
      return ExitCode.USAGE
    case ErrorCode.LEASE_LOST:
      return ExitCode.LOST
    case ErrorCode.UNREACHABLE:
    case ErrorCode.PROTOCOL:
    case ErrorCode.INTERNAL:
    case ErrorCode.CLOSED:
    case ErrorCode.LIMIT:
      return ExitCode.UNREACHABLE
    case ErrorCode.NOT_HOLDER:
      return ExitCode.NOT_HOLDER
    case ErrorCode.NOT_PERMITTED:
      return ExitCode.NOT_PERMITTED
    case ErrorCode.ABORTED:
      return ExitCode.INTERRUPTED
    case ErrorCode.OUTPUT:
      return ExitCode.OUTPUT
    default:
      return ExitCode.INTERNAL
  }
}
