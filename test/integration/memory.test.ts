import {describe, expect, it} from 'vitest'
import {clientFactory} from '../helpers/clients.js'
import {eventually, startLockd} from '../helpers/processes.js'

const client = clientFactory()
const LOCKS = 100_000

describe("lockd's memory after a burst", () => {
  it('once quiet, lockd collects the garbage of a burst and says so in one line; every lock is still held and it serves as before', {timeout: 120_000}, async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    // Long keys: the heap grows by far more than the collector's least growth whatever V8
    // collected on its own meanwhile, so the collection is sure to come.
    const pad = 'k'.repeat(480)
    for (let from = 0; from < LOCKS; from += 2000) {
      await Promise.all(Array.from({length: 2000}, (_, i) => a.backend.acquire({key: `${pad}/${from + i}`, leaseMs: 600_000, waitMs: 0, owner: 'A'})))
    }
    // Quiet now: within a few seconds, one collection and one line.
    await eventually(() => /quiet after a burst: collected garbage, heap in use \d+ -> \d+ MB \(\d+ ms\)/.test(lockd.stderr()), 15_000).catch((error: Error) => {
      throw new Error(`${error.message}; lockd said: ${lockd.stderr()}`)
    })
    const [, before, after] = /heap in use (\d+) -> (\d+) MB/.exec(lockd.stderr())!.map(Number)
    expect(after).toBeLessThanOrEqual(before)
    expect(lockd.stderr().match(/quiet after a burst/g)).toHaveLength(1)
    const info = (await a.info()) as {locks: number}
    expect(info.locks).toBe(LOCKS)
    const taken = await a.backend.acquire({key: `${pad}/7`, leaseMs: 1000, waitMs: 0, owner: 'B'}).catch((error: {code?: string}) => error.code)
    expect(taken).toBe('LOCK_HELD')
    const fresh = await a.createLock('after-the-collection').acquire({leaseMs: 5000})
    expect(fresh.fence).toBe(LOCKS + 1)
    await lockd.stop()
  })
})
