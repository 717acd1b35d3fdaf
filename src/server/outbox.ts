import {ErrorCode} from '../protocol/errors.js'
import {encodeFrame} from '../protocol/framing.js'
import type {Response, ServerMessage} from '../protocol/messages.js'
import type {Connection} from './connection.js'
import type {DurableLog, LogRecord} from './durable-log.js'
import type {Outgoing} from './subscriptions.js'

const MAX_OUTPUT_BUFFER = 16 * 1024 * 1024
/**
 * Upper bound of one encoded LockInfo: a 512-byte key, a 256-character owner (up to 3 bytes a
 * UTF-16 unit), numbers and field names. Answers with many locks are cut into parts of
 * `(frame limit - slack) / this` locks, so no part can exceed the peer's frame limit.
 */
const MAX_LOCK_INFO_BYTES = 512 + 256 * 3 + 256
const PART_SLACK_BYTES = 4096

/**
 * Commit-gated delivery: answers and pushes produced by a batch of work leave only once every
 * log record written before them is durable (docs/recovery.md, "What is durable when"), in
 * order per connection. Without a log they leave at the end of the batch.
 */
export class Outbox {
  /** Messages produced since the last batch boundary. */
  private outgoing: Outgoing[] = []
  private releaseChain: Promise<void> = Promise.resolve()
  private commitsInFlight = 0

  constructor(
    private readonly log: DurableLog | null,
    /** The log could not be written: nothing more may be acknowledged. */
    private readonly onLogFailed: (error: Error) => void,
  ) {}

  send(conn: Connection, message: ServerMessage): void {
    this.outgoing.push({conn, message})
  }

  sendAll(messages: Outgoing[]): void {
    for (const item of messages) this.outgoing.push(item)
  }

  /**
   * An answer; one with more locks than fit in the peer's frame limit goes as the response with
   * the first part (`more: true`) and `part` pushes carrying the request id, the last with
   * `more: false` (docs/protocol.md, "Answers in parts"). Queued together: nothing else on the
   * connection comes between them.
   */
  sendResponse(conn: Connection, id: number, response: Omit<Response, 't' | 'id'>, sent?: () => void): void {
    const locks = response.locks
    const perPart = conn.peerMaxFrame === null ? Number.POSITIVE_INFINITY : Math.floor((conn.peerMaxFrame - PART_SLACK_BYTES) / MAX_LOCK_INFO_BYTES)
    if (!locks || locks.length <= perPart) {
      this.outgoing.push({conn, message: {t: 'res', id, ...response}, sent})
      return
    }
    this.send(conn, {t: 'res', id, ...response, locks: locks.slice(0, perPart), more: true})
    for (let from = perPart; from < locks.length; from += perPart) {
      this.send(conn, {t: 'push', ev: 'part', id, locks: locks.slice(from, from + perPart), more: from + perPart < locks.length})
    }
  }

  /**
   * End of a batch: log the records, and release this batch's messages after the commit (or at
   * once when nothing changed and nothing is in flight, which keeps reads and refusals fast).
   */
  endBatch(records: LogRecord[], fence: number): void {
    const outgoing = this.outgoing
    this.outgoing = []
    if (records.length > 0 && this.log) {
      this.log.append(records, fence)
      const commit = this.log.commit()
      this.commitsInFlight++
      this.releaseChain = this.releaseChain
        .then(() => commit)
        .then(
          () => {
            this.commitsInFlight--
            this.deliver(outgoing)
          },
          (error: Error) => this.onLogFailed(error),
        )
    } else if (this.commitsInFlight > 0) {
      // Keep per-connection order behind messages still waiting for their commit.
      this.releaseChain = this.releaseChain.then(() => this.deliver(outgoing))
    } else {
      this.deliver(outgoing)
    }
  }

  /** Resolves once everything queued so far has been delivered (or the log failed). */
  drained(): Promise<void> {
    return this.releaseChain.catch(() => {})
  }

  private deliver(outgoing: Outgoing[]): void {
    const touched = new Set<Connection>()
    for (const {conn, message, sent} of outgoing) {
      if (conn.socket.destroyed) continue
      if (!touched.has(conn)) {
        touched.add(conn)
        conn.socket.cork()
      }
      conn.socket.write(encode(conn, message))
      sent?.()
    }
    for (const conn of touched) {
      conn.socket.uncork()
      // A peer that never reads its pushes must not make the server hold unbounded memory.
      if (conn.socket.writableLength > MAX_OUTPUT_BUFFER) conn.socket.destroy()
    }
  }
}

/** Encode under the peer's limit; an answer that still does not fit fails alone, not the connection. */
function encode(conn: Connection, message: ServerMessage): Buffer {
  try {
    return encodeFrame(conn.codec, message, conn.peerMaxFrame ?? Number.MAX_SAFE_INTEGER)
  } catch (error) {
    if (message.t !== 'res') throw error
    return encodeFrame(conn.codec, {t: 'res', id: message.id, code: ErrorCode.INTERNAL, msg: `the answer is too large for this connection: ${(error as Error).message}`})
  }
}
