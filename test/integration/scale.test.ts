import {describe, expect, it} from 'vitest'
import type {LockEvent, LockInfo} from '../../src/client/index.js'
import {clientFactory} from '../helpers/clients.js'
import {eventually, runCli, startLockd} from '../helpers/processes.js'

const client = clientFactory()
const LOCKS = 100_000

describe('lockd with 100k locks: large answers come in parts under the frame limit', () => {
  it('status --json lists them all, watch gets its whole snapshot, and other requests on the connection go on', {timeout: 120_000}, async () => {
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
