import {afterEach, beforeEach, describe, expect, it, vi} from 'vitest'
import type {AcquireRequest, AcquireResult, ConnectionState, GrantInfo, HolderInfo, LockBackend} from '../../src/client/backend.js'
import {AutoRenewalLock} from '../../src/client/auto-renewal-lock.js'
import {DistributedLock} from '../../src/client/distributed-lock.js'
import {ErrorCode, NotHolderError, UnreachableError} from '../../src/client/errors.js'
import {LeaseClock} from '../../src/client/lease-clock.js'

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
  /** Time the machine spent suspended: the wall and boot clocks counted it, the monotonic one did not. */
  private suspendedMs = 0
  /** Time the wall clock was stepped ahead by (NTP, `date -s`): the boot clock did not move. */
  private wallStepMs = 0
  readonly leaseClock = new LeaseClock({
    sources: {
      monotonic: () => performance.now(),
      wall: () => 1_700_000_000_000 + performance.now() + this.suspendedMs + this.wallStepMs,
      boot: () => 5_000 + performance.now() + this.suspendedMs,
    },
  })
  /** The machine slept for `ms` and woke up now (no timer ran meanwhile: their clock stopped too). */
  suspend(ms: number): void {
    this.suspendedMs += ms
  }
  stepWallClock(ms: number): void {
    this.wallStepMs += ms
  }

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
  // eslint-disable-next-line require-yield
  async *stateChanges(): AsyncGenerator<ConnectionState> {
    return
  }
  /** Grants watched for an end pushed by the service, by token. */
  watched = new Map<string, (reason: string) => void>()
  watchGrant(_key: string, token: string, onEnded: (reason: string) => void) {
    this.watched.set(token, onEnded)
    return () => this.watched.delete(token)
  }
  /** The service says the grant ended by another hand (a forced release, say). */
  end(token: string): void {
    if (this.token === token) this.token = null
    this.watched.get(token)?.('it was force-released (unlock --force)')
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

  it('close does not wait for a renewal that hangs: the work stops first, the release goes out at once, the late answer revives nothing', async () => {
    // A service that stops answering (SIGSTOP, a partition) held close() for the renewal's
    // whole request deadline: a lost hold exited that much later.
    const backend = new FakeBackend()
    let answerRenewal!: () => void
    const original = backend.renew.bind(backend)
    backend.renew = (...args) => new Promise((resolve) => (answerRenewal = () => resolve(original(...args))))
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 4000, owner: 'me'})
    await vi.advanceTimersByTimeAsync(2000) // renewal starts and hangs
    const signal = lock.signal
    const closing = lock.close()
    // The work under the lock is told to stop before anything else happens.
    expect(signal.aborted).toBe(true)
    await closing
    expect(backend.releases).toEqual(['t1'])
    answerRenewal()
    await vi.advanceTimersByTimeAsync(10_000)
    expect(lock.isHeldByCurrentClient()).toBe(false)
    expect(backend.releases).toEqual(['t1'])
  })

  it('a DistributedLock ended while its renewal was out stays ended when the renewal answers (an etcd watch event can overtake it)', async () => {
    const backend = new FakeBackend()
    let answerRenewal!: () => void
    const original = backend.renew.bind(backend)
    const lock = new DistributedLock('k', backend, 'me')
    await lock.acquire({leaseMs: 4000})
    // The service renews it, then it ends (here: closed) before the renewal's answer arrives.
    backend.renew = (...args) => {
      const answer = original(...args)
      return new Promise((resolve, reject) => (answerRenewal = () => void answer.then(resolve, reject)))
    }
    const renewing = lock.updateLease(4000)
    await lock.close()
    answerRenewal()
    await expect(renewing).rejects.toMatchObject({code: ErrorCode.NOT_HOLDER})
    expect(lock.isHeldByCurrentClient()).toBe(false)
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

  it('a queued grant the service let go before the catch-up renewal (the waiter was paused) is LEASE_LOST, not "the token does not hold"', async () => {
    const backend = new FakeBackend()
    backend.acquire = async (request) => {
      await new Promise((r) => setTimeout(r, 12_000)) // granted late; the service has let it go meanwhile
      backend.renewMode = 'not_holder'
      return backend.issue(request.leaseMs, true)
    }
    const lock = new DistributedLock('k', backend, 'me')
    const acquiring = lock.acquire({leaseMs: 10_000, waitMs: 60_000})
    const outcome = expect(acquiring).rejects.toMatchObject({code: ErrorCode.LEASE_LOST, message: expect.stringMatching(/^lost "k": granted after the wait, but its lease ran out/)})
    await vi.advanceTimersByTimeAsync(12_000)
    await outcome
    expect(lock.isHeldByCurrentClient()).toBe(false)
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

  it('a grant ended by the service (a push) is lost at once: onLost, signal, isHeld — not at the next renewal', async () => {
    const backend = new FakeBackend()
    const events: string[] = []
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 20_000, owner: 'me', onAcquired: (g) => events.push(`acquired:${g.fence}`), onLost: (why) => events.push(`lost:${why.message}`)})
    await vi.advanceTimersByTimeAsync(0)
    const signal = lock.signal
    backend.end('t1')
    expect(events).toEqual(['acquired:1', 'lost:lost "k": it was force-released (unlock --force)'])
    expect(signal.aborted).toBe(true)
    expect(lock.isHeld()).toBe(false)
    expect(backend.renewCalls).toEqual([])
    await vi.advanceTimersByTimeAsync(0)
    expect(events.at(-1)).toBe('acquired:2') // reacquire is the default
    await lock.close()
  })

  it('a suspend of the machine past the lease ends the grant on waking: isHeld and signal at once, onLost within a second', async () => {
    const backend = new FakeBackend()
    const events: string[] = []
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 60_000, reacquire: false, owner: 'me', onAcquired: (g) => events.push(`acquired:${g.fence}`), onLost: () => events.push('lost')})
    await vi.advanceTimersByTimeAsync(10_000)
    const signal = lock.signal
    expect(lock.isHeld()).toBe(true)
    // The monotonic clock (and every timer) stopped for the 10 minutes; the service's did not.
    backend.suspend(10 * 60_000)
    expect(lock.leaseRestMillis()).toBe(0)
    expect(signal.aborted).toBe(true)
    expect(lock.isHeld()).toBe(false)
    expect(events).toEqual(['acquired:1', 'lost'])

    // Without a read: the watchdog notices within its step, long before the monotonic deadline.
    const second = new FakeBackend()
    const lostAt: number[] = []
    const watched = new AutoRenewalLock('k', second, {leaseMs: 60_000, reacquire: false, owner: 'me', onLost: () => lostAt.push(performance.now())})
    await vi.advanceTimersByTimeAsync(10_000)
    second.suspend(10 * 60_000)
    const wokeAt = performance.now()
    await vi.advanceTimersByTimeAsync(1_500)
    expect(lostAt).toHaveLength(1)
    expect(lostAt[0] - wokeAt).toBeLessThanOrEqual(1_000)
    await Promise.all([lock.close(), watched.close()])
  })

  it('a wall clock stepped ahead is not a suspend: the grant stays held, and a suspend after the step still counts', async () => {
    const backend = new FakeBackend()
    const events: string[] = []
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 60_000, reacquire: false, owner: 'me', onLost: () => events.push('lost')})
    await vi.advanceTimersByTimeAsync(1_000)
    backend.stepWallClock(45 * 60_000)
    expect(lock.isHeld()).toBe(true)
    expect(lock.leaseRestMillis()).toBeGreaterThan(55_000)
    await vi.advanceTimersByTimeAsync(2_000)
    expect(events).toEqual([])
    backend.suspend(50_000)
    expect(lock.leaseRestMillis()).toBeLessThan(8_000)
    expect(lock.isHeld()).toBe(true)
    backend.suspend(10_000)
    expect(lock.isHeld()).toBe(false)
    await lock.close()
  })

  it('reacquire: false ends with the loss: no second grant', async () => {
    const backend = new FakeBackend()
    let acquires = 0
    const original = backend.acquire.bind(backend)
    backend.acquire = (request) => {
      acquires++
      return original(request)
    }
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 20_000, owner: 'me', reacquire: false})
    await vi.advanceTimersByTimeAsync(0)
    backend.end('t1')
    await vi.advanceTimersByTimeAsync(60_000)
    expect(acquires).toBe(1)
    expect(lock.isHeld()).toBe(false)
    await lock.close()
  })

  it('a bounded first wait counts the time the service is unreachable: ready rejects with UNREACHABLE when it runs out', async () => {
    const backend = new FakeBackend()
    backend.acquireFails = true
    const delays: number[] = []
    const lock = new AutoRenewalLock('k', backend, {leaseMs: 4000, owner: 'me', waitMs: 2500, onRetry: (_e, delay) => delays.push(delay)})
    let outcome: unknown = null
    lock.ready.catch((error) => (outcome = error))
    await vi.advanceTimersByTimeAsync(2400)
    expect(outcome).toBeNull()
    await vi.advanceTimersByTimeAsync(200)
    expect(outcome).toMatchObject({code: 'UNREACHABLE'})
    expect(delays).toEqual([1000, 1500]) // the second backoff (10 s) was cut to what was left
    // With no wait at all: one try.
    const once = new AutoRenewalLock('k', backend, {leaseMs: 4000, owner: 'me', waitMs: 0})
    await expect(once.ready).rejects.toMatchObject({code: 'UNREACHABLE'})
  })
})

describe('AutoRenewalLock checks that are true when read (real clock, a real pause)', () => {
  beforeEach(() => {
    vi.useRealTimers()
  })
  /** Block the event loop, as SIGSTOP or a long GC would: no timer runs meanwhile. */
  const pause = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

  it('after a pause past the lease, signal.aborted, throwIfAborted() and isHeld() say so before any timer has run', async () => {
    const backend = new FakeBackend()
    for (const read of ['aborted', 'throwIfAborted', 'isHeld'] as const) {
      const lost: string[] = []
      const lock = new AutoRenewalLock('k', backend, {leaseMs: 1000, owner: 'me', onLost: (why) => lost.push(why.message)})
      await lock.ready
      const signal = lock.signal
      expect(signal.aborted).toBe(false)
      // Renewals are stopped, so the lease runs out; the watchdog timer cannot run while paused.
      backend.renew = () => new Promise(() => {})
      pause(1100)
      if (read === 'aborted') expect(signal.aborted).toBe(true)
      if (read === 'throwIfAborted') expect(() => signal.throwIfAborted()).toThrow(/the lease ran out/)
      if (read === 'isHeld') expect(lock.isHeld()).toBe(false)
      expect(lost).toEqual(['lost "k": the lease ran out'])
      expect(signal.reason).toMatchObject({code: 'LEASE_LOST'})
      await lock.close({release: false})
      backend.renew = FakeBackend.prototype.renew.bind(backend)
    }
  })
})

describe('DistributedLock closed while its acquire is in flight', () => {
  it('stays closed: the late grant is released, nothing is held, unlock is refused', async () => {
    const {DistributedLock} = await import('../../src/client/distributed-lock.js')
    const backend = new FakeBackend()
    let grantNow!: () => void
    const original = backend.acquire.bind(backend)
    backend.acquire = (request) =>
      new Promise((resolve, reject) => {
        grantNow = () => void original(request).then(resolve, reject)
        // The abort of close() does not reach this fake: the grant arrives anyway, as it can on the wire.
      })
    const lock = new DistributedLock('k', backend, 'me')
    const acquiring = lock.acquire({leaseMs: 10_000, waitMs: 60_000})
    await vi.advanceTimersByTimeAsync(0)
    await lock.close()
    grantNow()
    await expect(acquiring).rejects.toMatchObject({code: 'CLOSED'})
    expect(lock.isHeldByCurrentClient()).toBe(false)
    expect(backend.releases).toEqual(['t1'])
    await expect(lock.unlock()).rejects.toMatchObject({code: 'CLOSED'})
  })
})
