import {readdirSync, readFileSync} from 'node:fs'

/**
 * lockd and the open-file limit (docs/protocol.md, "Connections and the open-file limit"). Every connection
 * is a file descriptor, and so is every file lockd opens: a new log, a snapshot, the fence
 * mark's temporary file, its data directory for an fsync, the auth and TLS files on SIGHUP.
 * With connections up to the limit, the next of those failed (EMFILE) and lockd stopped with
 * a stack trace: anyone who could connect could stop it. So connections get only what the
 * limit leaves after lockd's own files.
 */

/** Descriptors kept for lockd's own files and Node's (a snapshot in progress needs three at once). */
export const FILES_RESERVE = 32
/** Kept for the --metrics HTTP server's connections (it takes no more than these at once). */
export const METRICS_CONNECTIONS = 16
/**
 * Above the connections served: room for connections being refused with a message, each of
 * which keeps its descriptor until the refusal is read (at most a second).
 */
export const REFUSING_ROOM = 32

/** The process's open-file limit now and how many descriptors it has open. */
export interface DescriptorUse {
  limit: number
  open: number
}

/** Read on Linux from /proc; null elsewhere, or when the limit is "unlimited". */
export function descriptorUse(): DescriptorUse | null {
  try {
    // "Max open files            1024                 524288               files"
    // (Node raises the soft limit to the hard one as it starts: the soft one is what applies.)
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'))
    const limit = Number(line?.slice('Max open files'.length).trim().split(/\s+/)[0])
    if (!Number.isSafeInteger(limit) || limit <= 0) return null
    return {limit, open: readdirSync('/proc/self/fd').length}
  } catch {
    return null
  }
}

export interface ConnectionLimits {
  /** Sockets open at once, served and being refused; more are closed as they are accepted. */
  sockets: number
  /** Connections served at once; more are refused with a message. */
  served: number
  /** The open-file limit, when it (and not --max-connections) is what bounds `served`. */
  boundByFiles: number | null
  /** The open-file limit, when known. */
  files: number | null
}

/**
 * How many connections lockd can take, given --max-connections and its descriptors once its
 * listeners and files are open (`reserve`: FILES_RESERVE, plus the metrics server's share).
 * `served` below 1: the limit leaves no room for any client.
 */
export function connectionLimits(maxConnections: number, use: DescriptorUse | null, reserve: number): ConnectionLimits {
  if (use === null) return {sockets: Number.POSITIVE_INFINITY, served: maxConnections, boundByFiles: null, files: null}
  const sockets = Math.max(0, use.limit - use.open - reserve)
  const byFiles = sockets - REFUSING_ROOM
  if (byFiles >= maxConnections) return {sockets, served: maxConnections, boundByFiles: null, files: use.limit}
  return {sockets, served: byFiles, boundByFiles: use.limit, files: use.limit}
}
