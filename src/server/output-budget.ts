import type {Connection} from './connection.js'

/** Unread output lockd keeps for all its connections together, by default (docs/protocol.md, "Limits"). */
export const DEFAULT_OUTPUT_BUDGET = 512 * 1024 * 1024

/**
 * Output written to connections that their peers have not read, across all connections. Each
 * connection has its own limit (outbox.ts: 16 MiB over its largest answer), but many peers that
 * stop reading — watchers of a busy prefix, dumps of every lock — each under it took gigabytes
 * together, outside the heap the heap guard watches. Past the budget, the connections with the
 * most unread are closed, largest first, until half of it is left: those are the ones not
 * reading; a peer that reads keeps little unread.
 */
export class OutputBudget {
  constructor(
    private readonly budget: number,
    private readonly connections: () => Iterable<Connection>,
  ) {}

  /** Close what must go; answers how many connections and how many unread bytes were dropped. */
  enforce(): {closed: number; bytes: number} {
    let total = 0
    const unreading: {conn: Connection; unread: number}[] = []
    for (const conn of this.connections()) {
      const unread = conn.socket.writableLength
      if (unread === 0) continue
      total += unread
      unreading.push({conn, unread})
    }
    const dropped = {closed: 0, bytes: 0}
    if (total <= this.budget) return dropped
    unreading.sort((a, b) => b.unread - a.unread)
    for (const {conn, unread} of unreading) {
      if (total <= this.budget / 2) break
      conn.socket.destroy()
      total -= unread
      dropped.closed++
      dropped.bytes += unread
    }
    return dropped
  }
}
