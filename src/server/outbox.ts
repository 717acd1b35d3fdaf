import {ErrorCode} from '../protocol/errors.js'
import {encodeFrame} from '../protocol/framing.js'
import type {Answer, LockInfo, ServerMessage} from '../protocol/messages.js'
import type {Connection} from './connection.js'
import type {DurableLog} from './durable-log.js'
import type {LogRecord} from './log-format.js'
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
 * Whether a message tells of a state that must be on disk first (docs/recovery.md, "What is
 * durable when"): a grant (an acquire's or a renewal's answer, a grant pushed to a waiter), and
 * the watch and `ended` pushes. Anything else — a release's answer, refusals, reads, queue
 * places — leaves at once: a release lost in a crash only brings the lock back held by the
 * grant that released it, until its lease runs out.
 */
function needsDurability(message: ServerMessage): boolean {
  if (message.t === 'res') return 'grant' in message
  if (message.t === 'push') return message.ev === 'granted' || message.ev === 'lock' || message.ev === 'ended'
  return false
}

/**
 * Commit-gated delivery: a message that needs durability leaves once every log record written
 * before it is durable; any other leaves at once, unless its connection still has messages
 * waiting (order per connection is kept). Without a log everything leaves at the end of the batch.
 */
export class Outbox {
  /** Messages produced since the last batch boundary. */
  private outgoing: Outgoing[] = []
  private releaseChain: Promise<void> = Promise.resolve()
  private commitsInFlight = 0
  /** Messages per connection waiting for a commit. */
  private readonly waiting = new Map<Connection, number>()
  /** The log could not be written: nothing gated is ever delivered. */
  private failed = false

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
  sendResponse(conn: Connection, id: number, response: Answer, sent?: () => void): void {
    const locks: LockInfo[] | undefined = 'locks' in response ? response.locks : undefined
    const perPart = conn.peerMaxFrame === null ? Number.POSITIVE_INFINITY : Math.floor((conn.peerMaxFrame - PART_SLACK_BYTES) / MAX_LOCK_INFO_BYTES)
    if (!locks || locks.length <= perPart) {
      this.outgoing.push({conn, message: {t: 'res', id, ...response}, sent})
      return
    }
    this.send(conn, {t: 'res', id, ...response, locks: locks.slice(0, perPart), more: true} as ServerMessage)
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
      // Written at once either way; flushed to the disk only when a message of this batch tells
      // of a state that must be durable (a grant): a batch of releases waits for no fdatasync.
      const commit = this.log.commit(outgoing.some((item) => needsDurability(item.message)))
      this.commitsInFlight++
      this.releaseChain = this.releaseChain
        .then(() => commit)
        .then(
          () => void this.commitsInFlight--,
          (error: Error) => {
            // Nothing that waits for the log may leave any more; say so once.
            if (!this.failed) this.onLogFailed(error)
            this.failed = true
          },
        )
    }
    const now: Outgoing[] = []
    const gated: Outgoing[] = []
    for (const item of outgoing) {
      if (this.commitsInFlight > 0 && (needsDurability(item.message) || (this.waiting.get(item.conn) ?? 0) > 0)) {
        gated.push(item)
        this.waiting.set(item.conn, (this.waiting.get(item.conn) ?? 0) + 1)
      } else {
        now.push(item)
      }
    }
    this.deliver(now)
    if (gated.length === 0) return
    // After every commit queued so far: this batch's own, and any earlier one still in flight.
    this.releaseChain = this.releaseChain.then(() => {
      if (this.failed) return
      for (const {conn} of gated) {
        const left = (this.waiting.get(conn) ?? 1) - 1
        if (left === 0) this.waiting.delete(conn)
        else this.waiting.set(conn, left)
      }
      this.deliver(gated)
    })
  }

  /** Resolves once everything queued so far has been delivered (or the log failed). */
  drained(): Promise<void> {
    return this.releaseChain
  }

  private deliver(outgoing: Outgoing[]): void {
    /** Per connection: the bytes of each answer written now, by request id. */
    const touched = new Map<Connection, Map<number, number>>()
    for (const {conn, message, sent} of outgoing) {
      if (conn.socket.destroyed) continue
      let answers = touched.get(conn)
      if (!answers) {
        answers = new Map()
        touched.set(conn, answers)
        // Everything written before was read: no earlier answer is still being read.
        if (conn.socket.writableLength === 0) conn.answerAllowance = 0
        conn.socket.cork()
      }
      const frame = encode(conn, message)
      conn.socket.write(frame)
      const answering = message.t === 'res' || (message.t === 'push' && message.ev === 'part') ? message.id : undefined
      if (answering !== undefined) {
        const bytes = (answers.get(answering) ?? 0) + frame.length
        answers.set(answering, bytes)
        if (bytes > conn.answerAllowance) conn.answerAllowance = bytes
      }
      sent?.()
    }
    for (const conn of touched.keys()) {
      conn.socket.uncork()
      // A peer that does not read must not make the server hold unbounded memory. One answer it
      // asked for may be large, and goes whole (status --json of a million locks is ~100 MB, in
      // parts), read over a while: the limit is over the largest answer since the output was
      // last empty. More unread on top of that ends the connection.
      if (conn.socket.writableLength > MAX_OUTPUT_BUFFER + conn.answerAllowance) conn.socket.destroy()
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
