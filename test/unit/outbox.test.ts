import {EventEmitter} from 'node:events'
import type {Socket} from 'node:net'
import {describe, expect, it} from 'vitest'
import {FrameDecoder} from '../../src/protocol/framing.js'
import type {ServerMessage} from '../../src/protocol/messages.js'
import {newConnection, type Connection} from '../../src/server/connection.js'
import type {DurableLog} from '../../src/server/durable-log.js'
import type {LogRecord} from '../../src/server/log-format.js'
import {Outbox} from '../../src/server/outbox.js'

/**
 * The outbox decides when an answer may leave: a grant only once every log record written
 * before it is on disk (docs/recovery.md, "What is durable when"). A kill -9 cannot show a grant
 * that left too early (the kernel keeps what was written), so this drives the outbox with a log
 * whose commits finish when the test says, and a socket that records what was written.
 */

/** A log whose commits resolve or fail when the test says, in any order. */
class ScriptedLog {
  readonly commits: {durable: boolean; records: number; resolve: () => void; reject: (error: Error) => void}[] = []
  private appended = 0

  append(records: LogRecord[]): void {
    this.appended += records.length
  }

  commit(durable = true): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.commits.push({durable, records: this.appended, resolve, reject})
      this.appended = 0
    })
  }
}

/** An outbox over a scripted log. */
function scripted(onLogFailed: (error: Error) => void = () => {}): {log: ScriptedLog; outbox: Outbox} {
  const log = new ScriptedLog()
  return {log, outbox: new Outbox(log as unknown as DurableLog, onLogFailed)}
}

/** A connection whose socket keeps the decoded messages written to it, in order. */
function connection(session: string): {conn: Connection; written: ServerMessage[]} {
  const written: ServerMessage[] = []
  const socket = Object.assign(new EventEmitter(), {
    destroyed: false,
    writableLength: 0,
    cork() {},
    uncork() {},
    destroy() {},
    write(frame: Buffer) {
      written.push(...(decoder.push(frame) as ServerMessage[]))
      return true
    },
  })
  const conn = newConnection(socket as unknown as Socket, session, 1 << 20)
  const decoder = new FrameDecoder(conn.codec)
  return {conn, written}
}

const record = (key: string): LogRecord => ({key, holders: [], fence: 1})
const grant = (id: number, key: string): ServerMessage => ({t: 'res', id, code: 'OK', grant: {key, token: `t${id}`, fence: id, leaseMs: 1000}}) as unknown as ServerMessage
const refused = (id: number): ServerMessage => ({t: 'res', id, code: 'LOCK_HELD', msg: 'held'}) as unknown as ServerMessage
const released = (id: number): ServerMessage => ({t: 'res', id, code: 'OK', holder: {owner: 'o', fence: 1}}) as unknown as ServerMessage
const ids = (messages: ServerMessage[]) => messages.map((m) => (m as {id?: number}).id)
/**
 * Let the outbox's promise chain run as far as the log's commits allow: a timer fires only after
 * every promise job already queued has run, so nothing is left to happen when this resolves.
 */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0))

describe('Outbox: what waits for the disk', () => {
  it('a grant leaves only once its commit is durable; a release in a batch of its own leaves at once, its commit not flushed', async () => {
    const {log, outbox} = scripted()
    const a = connection('a')
    outbox.send(a.conn, grant(1, 'k'))
    outbox.endBatch([record('k')], 1)
    await settle()
    expect(log.commits.map((c) => c.durable)).toEqual([true])
    expect(a.written).toEqual([])
    log.commits[0].resolve()
    await settle()
    expect(ids(a.written)).toEqual([1])
    outbox.send(a.conn, released(2))
    outbox.endBatch([record('k')], 1)
    expect(ids(a.written)).toEqual([1, 2])
    expect(log.commits[1].durable).toBe(false)
  })

  it("keeps each connection's order: an answer behind a waiting grant waits with it; another connection's does not", async () => {
    const {log, outbox} = scripted()
    const a = connection('a')
    const b = connection('b')
    outbox.send(a.conn, grant(1, 'k'))
    outbox.endBatch([record('k')], 1)
    // Nothing new to log: a's refusal would leave at once, but a's grant is still waiting.
    outbox.send(a.conn, refused(2))
    outbox.send(b.conn, refused(3))
    outbox.endBatch([], 1)
    await settle()
    expect(a.written).toEqual([])
    expect(ids(b.written)).toEqual([3])
    log.commits[0].resolve()
    await settle()
    expect(ids(a.written)).toEqual([1, 2])
  })

  it('a grant waits for every commit queued before it, even one that finishes later than its own', async () => {
    const {log, outbox} = scripted()
    const a = connection('a')
    const b = connection('b')
    outbox.send(a.conn, grant(1, 'k1'))
    outbox.endBatch([record('k1')], 1)
    outbox.send(b.conn, grant(2, 'k2'))
    outbox.endBatch([record('k2')], 2)
    // A grant with nothing of its own to log (say, pushed to a waiter of a name whose release
    // is in the first commit) still waits for the commits in flight.
    outbox.send(b.conn, {t: 'push', ev: 'granted', wid: 9, grant: {key: 'k1', token: 'x', fence: 3, leaseMs: 1000}} as unknown as ServerMessage)
    outbox.endBatch([], 3)
    log.commits[1].resolve()
    await settle()
    expect([...a.written, ...b.written]).toEqual([])
    log.commits[0].resolve()
    await settle()
    expect(ids(a.written)).toEqual([1])
    expect(b.written.map((m) => (m as {id?: number; wid?: number}).id ?? (m as {wid?: number}).wid)).toEqual([2, 9])
  })

  it('a log that cannot be written: said once, and no grant ever leaves after it', async () => {
    const failures: string[] = []
    const {log, outbox} = scripted((error) => failures.push(error.message))
    const a = connection('a')
    outbox.send(a.conn, grant(1, 'k'))
    outbox.endBatch([record('k')], 1)
    outbox.send(a.conn, grant(2, 'k2'))
    outbox.endBatch([record('k2')], 2)
    log.commits[0].reject(new Error('disk full'))
    log.commits[1].reject(new Error('disk full'))
    await settle()
    outbox.send(a.conn, grant(3, 'k3'))
    outbox.endBatch([record('k3')], 3)
    log.commits[2].reject(new Error('disk full'))
    await settle()
    expect(failures).toEqual(['disk full'])
    expect(a.written).toEqual([])
  })

  it('without a log (in memory) everything leaves at the end of its batch', () => {
    const outbox = new Outbox(null, () => {})
    const a = connection('a')
    outbox.send(a.conn, grant(1, 'k'))
    expect(a.written).toEqual([])
    outbox.endBatch([record('k')], 1)
    expect(ids(a.written)).toEqual([1])
  })
})
