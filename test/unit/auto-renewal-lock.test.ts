import {afterEach, beforeEach, describe, expect, it, vi} from 'vitest'
import type {AcquireRequest, AcquireResult, ConnectionState, GrantInfo, HolderInfo, LockBackend} from '../../src/client/backend.js'
import {AutoRenewalLock} from '../../src/client/auto-renewal-lock.js'
import {NotHolderError, UnreachableError} from '../../src/client/errors.js'

/** A scripted lock service: the test decides whether acquires and renewals succeed. */
class FakeBackend implements LockBackend {
  readonly kind = 'lockd'
  readonly label = 'fake'
  acquireFails = false
  renewMode: 'ok' | 'unreachable' | 'not_holder' = 'ok'
  fence = 0
  token: string | null = null
  renewCalls: number[] = []
  releases: string[] = []

  private grant(leaseMs: number): GrantInfo {
    return {key: 'k', token: this.token!, owner: 'me', fence: this.fence, leaseMs, leaseLeftMs: leaseMs, since: Date.now()}
  }
  /** A new grant with the next fence, as the service would make it. */
  issue(leaseMs: number, queued: boolean): AcquireResult {
    this.fence++
    this.token = `t${this.fence}`
    return {grant: this.grant(leaseMs), queued}
  }
  async acquire(request: AcquireRequest): Promise<AcquireResult> {
    if (this.acquireFails) throw new UnreachableError('fake: down')
    return this.issue(request.leaseMs, false)
  }
  async renew(_key: string, token: string, leaseMs?: number): Promise<GrantInfo> {
    this.renewCalls.push(performance.now())
    if (this.renewMode === 'unreachable') throw new UnreachableError('fake: down')
    if (this.renewMode === 'not_holder' || token !== this.token) throw new NotHolderError('k')
    return this.grant(leaseMs ?? 10_000)
  }
  async release(_key: string, token: string | undefined): Promise<HolderInfo> {
    this.releases.push(token ?? '')
    if (token === this.token) this.token = null
    return {owner: 'me', fence: this.fence, leaseMs: 0, leaseLeftMs: 0, since: 0}
  }
  async check(): Promise<HolderInfo> {
    throw new Error('unused')
  }
  async inspect() {
    return null
  }
  async list() {
    return {locks: [], total: 0}
  }
  async info() {
    return {}
  }
  // eslint-disable-next-line require-yield
  async *watch(): AsyncGenerator<never> {
    throw new Error('unused')
  }
  onStateChange(_listener: (state: ConnectionState) => void) {
    return () => {}
  }
  async close() {}
}

beforeEach(() => {
  vi.useFakeTimers({toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'performance', 'Date']})
})
afterEach(() => {
  vi.useRealTimers()
})

describe('AutoRenewalLock (fake clock, fake backend)', () => {
  it('renews at half the lease, reports lost when renewals fail past the lease, and alternates events over several losses', async () => {
    const backend = new FakeBackend()
    const events: string[] = []
    const lostAt: number[] = []
    const lock = new AutoRenewalLock('k', backend, {
      leaseMs: 10_000,
      owner: 'me',
      onAcquired: (grant) => events.push(`acquired:${grant.fence}`),
      onLost: () => {
        events.push('lost')
        lostAt.push(performance.now())
      },
    })
    await vi.advanceTimersByTimeAsync(0)
    expect(events).toEqual(['acquired:1'])
    const grantSignal = lock.signal

    // Healthy: renewals every 5 s, never lost.
    await vi.advanceTimersByTimeAsync(30_000)
    expect(backend.renewCalls.length).toBe(6)
    expect(events).toEqual(['acquired:1'])
    expect(lock.isHeldByCurrentClient()).toBe(true)

    // The service goes away: retries happen before the lease is gone, then lost, exactly once.
    backend.renewMode = 'unreachable'
    backend.acquireFails = true
    const lastGoodRenewal = backend.renewCalls.at(-1)!
    const callsBefore = backend.renewCalls.length
    await vi.advanceTimersByTimeAsync(20_000)
    expect(events).toEqual(['acquired:1', 'lost'])
    expect(lostAt[0]).toBeLessThanOrEqual(lastGoodRenewal + 10_000 + 1)
    expect(backend.renewCalls.length - callsBefore).toBeGreaterThanOrEqual(3)
    expect(grantSignal.aborted).toBe(true)
    expect(lock.isHeldByCurrentClient()).toBe(false)

    // It comes back: acquired again with a new fence.
    backend.renewMode = 'ok'
    backend.acquireFails = false
    await vi.advanceTimersByTimeAsync(61_000)
    expect(events).toEqual(['acquired:1', 'lost', 'acquired:2'])

    // "Not the holder" (force-released elsewhere): lost at the next renewal, then re-acquired.
    backend.token = 'someone-else'
    await vi.advanceTimersByTimeAsync(5_000)
    expect(events).toEqual(['acquired:1', 'lost', 'acquired:2', 'lost', 'acquired:3'])

    for (let round = 0; round < 5; round++) {
      backend.token = 'someone-else'
      await vi.advanceTimersByTimeAsync(5_000)
    }
    const kinds = events.map((e) => e.split(':')[0])
    for (let i = 1; i < kinds.length; i++) expect(kinds[i]).not.toBe(kinds[i - 1])
    const fences = events.filter((e) => e.startsWith('acquired')).map((e) => Number(e.split(':')[1]))
    expect(fences).toEqual([1, 2, 3, 4, 5, 6, 7, 8])

    await lock.close()
    await lock.close() // idempotent
    expect(backend.releases.at(-1)).toBe('t8')
    expect(lock.isHeldByCurrentClient()).toBe(false)
    await vi.advanceTimersByTimeAsync(60_000)
    expect(events.filter((e) => e === 'lost')).toHaveLength(7) // close is not a loss
  })

  it('close waits for an in-flight renewal, then releases', async () => {
    const backend = new FakeBackend()
    let releaseRenewal!: () => void
    const original = backend.renew.bind(backend)
    backend.renew = (...args) => new Promise((resolve) => (releaseRenewal = () => resolve(original(...args))))
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 4000, owner: 'me'})
    await vi.advanceTimersByTimeAsync(2000) // renewal starts and hangs
    let closed = false
    const closing = lock.close().then(() => (closed = true))
    await vi.advanceTimersByTimeAsync(10)
    expect(closed).toBe(false)
    expect(backend.releases).toEqual([])
    releaseRenewal()
    await closing
    expect(backend.releases).toEqual(['t1'])
  })

  it('a queued grant whose catch-up renewal fails is kept and renewed in time, not thrown away and queued for again', async () => {
    // A waiter granted after more than half its lease renews at once; the service is briefly
    // unreachable right then (an etcd leader election). Dropping the grant and queueing again
    // would leave the grant held on the server and send us behind every other waiter.
    const backend = new FakeBackend()
    let acquireCalls = 0
    backend.acquire = async (request) => {
      acquireCalls++
      await new Promise((r) => setTimeout(r, 7_000)) // waited in the queue
      backend.renewMode = 'unreachable'
      return backend.issue(request.leaseMs, true)
    }
    const events: string[] = []
    const lock = new AutoRenewalLock('k', backend, {
      leaseMs: 10_000,
      owner: 'me',
      retryMillis: [1000],
      onAcquired: (grant) => events.push(`acquired:${grant.fence}`),
      onLost: () => events.push('lost'),
    })
    await vi.advanceTimersByTimeAsync(7_000)
    expect(backend.renewCalls).toHaveLength(1) // the catch-up renewal, which failed
    expect(events).toEqual(['acquired:1'])
    expect(lock.isHeldByCurrentClient()).toBe(true)
    // Reachable again: the next renewal comes before the 3 s left run out.
    backend.renewMode = 'ok'
    await vi.advanceTimersByTimeAsync(2_900)
    expect(backend.renewCalls.length).toBeGreaterThanOrEqual(2)
    await vi.advanceTimersByTimeAsync(30_000)
    expect(events).toEqual(['acquired:1'])
    expect(acquireCalls).toBe(1)
    expect(backend.releases).toEqual([])
    await lock.close()
    expect(backend.releases).toEqual(['t1'])
  })

  it('a queued grant already past its lease when the catch-up renewal fails is released, then queued for again', async () => {
    const backend = new FakeBackend()
    let acquireCalls = 0
    backend.acquire = async (request) => {
      acquireCalls++
      if (acquireCalls === 1) {
        await new Promise((r) => setTimeout(r, 12_000)) // longer than the lease
        backend.renewMode = 'unreachable'
      } else backend.renewMode = 'ok'
      return backend.issue(request.leaseMs, acquireCalls === 1)
    }
    const events: string[] = []
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 10_000, owner: 'me', retryMillis: [1000], onAcquired: (grant) => events.push(`acquired:${grant.fence}`)})
    await vi.advanceTimersByTimeAsync(12_000)
    expect(backend.releases).toEqual(['t1']) // given back: it cannot be trusted any more
    expect(events).toEqual([])
    await vi.advanceTimersByTimeAsync(1_000)
    expect(events).toEqual(['acquired:2'])
    await lock.close()
  })

  it('a bounded first wait that fails rejects ready and closes', async () => {
    const backend = new FakeBackend()
    backend.acquire = async () => {
      const {LockHeldError} = await import('../../src/client/errors.js')
      throw new LockHeldError('k', null)
    }
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 4000, owner: 'me', waitMs: 0})
    await expect(lock.ready).rejects.toMatchObject({code: 'LOCK_HELD'})
  })
})
