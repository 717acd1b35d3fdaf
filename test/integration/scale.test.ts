import {connect as netConnect} from 'node:net'
import {describe, expect, it} from 'vitest'
import type {LockEvent, LockInfo} from '../../src/client/index.js'
import {createCodec, encodeFrame} from '../../src/protocol/framing.js'
import {PROTOCOL_VERSION} from '../../src/protocol/messages.js'
import {clientFactory} from '../helpers/clients.js'
import {eventually, runCli, startLockd} from '../helpers/processes.js'

const client = clientFactory()
/** Enough that one answer of them all (~25 MB) is over lockd's 16 MB limit of unread output. */
const LOCKS = 250_000

describe('lockd with 250k locks: large answers come in parts under the frame limit', () => {
  it('status --json lists them all (an answer over the unread-output limit goes whole), watch gets its whole snapshot, and other requests on the connection go on', {timeout: 180_000}, async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    // Acquire in bounded batches over one connection.
    for (let from = 0; from < LOCKS; from += 2000) {
      await Promise.all(Array.from({length: Math.min(2000, LOCKS - from)}, (_, i) => a.backend.acquire({key: `big/${String(from + i).padStart(6, '0')}`, leaseMs: 600_000, waitMs: 0, owner: 'A'})))
    }
    // A waiter on the same connection as the big answers below.
    const b = await client(lockd.endpoint, 'B')
    const waiting = b.createLock('big/000001').acquire({leaseMs: 10_000, waitMs: 60_000})

    const status = await runCli(['status', '--json', '--endpoints', lockd.endpoint], {timeoutMs: 60_000})
    expect(status.code).toBe(0)
    const document = JSON.parse(status.stdout) as {total: number; locks: {key: string}[]}
    expect(document.total).toBe(LOCKS)
    expect(document.locks).toHaveLength(LOCKS)
    expect(new Set(document.locks.map((l) => l.key)).size).toBe(LOCKS)
    // Read in pages of 20,000 (so lockd serves others in between): still every name, in order.
    expect(document.locks.every((l, i) => i === 0 || document.locks[i - 1].key < l.key)).toBe(true)

    const controller = new AbortController()
    const updates = b.watch({prefix: ''}, {signal: controller.signal})[Symbol.asyncIterator]()
    const snapshotPromise = updates.next()
    // Issued while the snapshot streams in: answered, not torn down with it.
    const inspected = await b.inspect('big/000002')
    expect(inspected?.holder?.owner).toBe('A')
    const first = (await snapshotPromise).value as {type: string; locks: LockInfo[]}
    expect(first.type).toBe('snapshot')
    expect(first.locks).toHaveLength(LOCKS)
    const listed = await b.list('big/0000')
    expect(listed.total).toBe(100)

    // A peer that asks and never reads is cut off once what it left unread passes the limit
    // (40 answers of 10,000 locks, ~1 MB each); everyone else is served as before.
    const codec = createCodec()
    const connections = async (): Promise<number> => ((await b.info()) as {connections: number}).connections
    const before = await connections()
    const greedy = netConnect({host: '127.0.0.1', port: lockd.port})
    await new Promise((resolve) => greedy.once('connect', resolve))
    greedy.pause() // (a paused socket does not see its own end either: lockd's count tells)
    greedy.on('error', () => {})
    greedy.write(encodeFrame(codec, {t: 'hello', v: PROTOCOL_VERSION}))
    await eventually(async () => (await connections()) === before + 1)
    for (let id = 1; id <= 40; id++) greedy.write(encodeFrame(codec, {t: 'req', id, op: 'list', prefix: 'big/00'}))
    await eventually(async () => (await connections()) === before)
    greedy.destroy()
    // A peer reading one large answer slowly (here: not yet) keeps its connection while it asks
    // small things meanwhile, each its own delivery: the answer it asked for is not held against it.
    const slow = netConnect({host: '127.0.0.1', port: lockd.port})
    await new Promise((resolve) => slow.once('connect', resolve))
    slow.pause()
    slow.on('error', () => {})
    slow.write(encodeFrame(codec, {t: 'hello', v: PROTOCOL_VERSION, maxFrame: 1 << 20}))
    slow.write(encodeFrame(codec, {t: 'req', id: 1, op: 'list', prefix: ''}))
    // A round trip through lockd after each write: lockd has read what came before it, so each
    // ping is answered in a delivery of its own, and a connection cut off is already gone.
    await connections()
    for (let id = 2; id <= 6; id++) {
      slow.write(encodeFrame(codec, {t: 'req', id, op: 'ping'}))
      await connections()
    }
    expect(await connections()).toBe(before + 1)
    slow.destroy()
    expect((await b.inspect('big/000003'))?.holder?.owner).toBe('A')

    // Events still flow on that connection, and the waiter still waits and is granted.
    await a.release('big/000001', undefined, {force: true})
    const grant = await waiting
    expect(grant.owner).toBe('B')
    const events: LockEvent[] = []
    await eventually(async () => {
      const next = (await updates.next()).value as {type: string; event?: LockEvent}
      if (next.event) events.push(next.event)
      return events.some((e) => e.type === 'acquired' && e.key === 'big/000001' && e.owner === 'B')
    }, 20_000)
    controller.abort()
    await lockd.stop()
  })
})
