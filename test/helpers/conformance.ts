import {afterEach, expect, it} from 'vitest'
import {connect, type LockClient} from '../../src/client/index.js'
import {eventually, runCli} from './processes.js'

/**
 * The lock semantics of design.md §2, written once and run against every backend: FIFO,
 * expiry hand-off, reentrancy, fencing, stale tokens, force release, the wait-timeout race.
 * `shortLeaseMs` is the shortest lease the backend honours exactly (etcd rounds up to seconds
 * and has a minimum TTL).
 */
export function conformanceSuite(endpoint: () => string, options: {shortLeaseMs: number}): void {
  const {client, key} = suiteClients(endpoint, 'conf')

  it('a holder learns of a forced release at once (onLost, signal), long before its next renewal', async () => {
    const k = key('pushed-loss')
    const a = await client('A')
    const b = await client('B')
    const lost: string[] = []
    const lock = a.createAutoRenewalLock(k, {leaseMs: 60_000, onLost: (why) => lost.push(why.code)})
    await lock.ready
    const signal = lock.signal
    await b.release(k, undefined, {force: true})
    // A renewal would come after 30 s; the test's own timeout is shorter.
    await eventually(() => lost.length === 1, 15_000)
    expect(lost).toEqual(['LEASE_LOST'])
    expect(signal.aborted).toBe(true)
    await lock.close()
  })

  it('a lock closed while it waits stays closed: the grant that follows is given back, nothing is held', async () => {
    const k = key('closed-waiter')
    const a = await client('A')
    const b = await client('B')
    const c = await client('C')
    const holder = a.createLock(k)
    await holder.acquire({leaseMs: 30_000})
    const waiter = b.createLock(k)
    const waiting = waiter.acquire({leaseMs: 30_000, waitMs: 20_000}).catch((error: Error) => error)
    await eventually(async () => (await a.inspect(k))?.waiters === 1)
    await waiter.close()
    await holder.unlock()
    expect(await waiting).toMatchObject({code: 'CLOSED'})
    expect(waiter.isHeldByCurrentClient()).toBe(false)
    await expect(waiter.unlock()).rejects.toMatchObject({code: 'CLOSED'})
    // Nobody is left holding it: the next one gets it at once.
    await eventually(async () => (await c.inspect(k))?.holder == null, 10_000)
    expect(await c.createLock(k).tryLock({leaseMs: 5000})).toBe(true)
  })

  it('a wait longer than one timer can hold (30 days) waits: it gave up after a few ms', async () => {
    const k = key('month-wait')
    const a = await client('A')
    const b = await client('B')
    const holder = a.createLock(k)
    await holder.acquire({leaseMs: 30_000})
    let settled = false
    const waiting = b
      .createLock(k)
      .acquire({leaseMs: 30_000, waitMs: 30 * 24 * 60 * 60 * 1000})
      .finally(() => (settled = true))
    // Queued, and still there once lockd or etcd has shown it: an overflowing timer gave up
    // after 1 ms, before any look at the queue could find it.
    await eventually(async () => (await a.inspect(k))?.waiters === 1)
    expect(settled).toBe(false)
    await holder.unlock()
    expect((await waiting).key).toBe(k)
  })

  it('a holder that waited shows since = when it was granted, not when it queued', async () => {
    const k = key('since')
    const a = await client('A')
    const b = await client('B')
    const holder = a.createLock(k)
    await holder.acquire({leaseMs: 30_000})
    const waiting = b.createLock(k).acquire({leaseMs: 30_000, waitMs: 20_000})
    await eventually(async () => (await a.inspect(k))?.waiters === 1)
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const releasedAt = Date.now()
    await holder.unlock()
    await waiting
    const since = (await a.inspect(k))!.holder!.since
    expect(since).toBeGreaterThanOrEqual(releasedAt - 50)
  })

  it('grants in FIFO order', async () => {
    const k = key('fifo')
    const a = await client('A')
    const holder = a.createLock(k)
    await holder.acquire({leaseMs: 30_000})
    const order: string[] = []
    const waits: Promise<unknown>[] = []
    for (const name of ['B', 'C', 'D']) {
      const c = await client(name)
      const lock = c.createLock(k)
      waits.push(
        lock.acquire({leaseMs: 30_000, waitMs: 20_000}).then(async () => {
          order.push(name)
          await lock.unlock()
        }),
      )
      // Make the arrival order certain before the next one queues.
      await eventually(async () => (await a.inspect(k))?.waiters === order.length + waits.length)
    }
    await holder.unlock()
    await Promise.all(waits)
    expect(order).toEqual(['B', 'C', 'D'])
  })

  it('a waiter is told its place in the queue, and again as it moves up', async () => {
    const k = key('position')
    const a = await client('A')
    const holder = a.createLock(k)
    await holder.acquire({leaseMs: 30_000})
    const locks = []
    for (const name of ['B', 'C']) {
      const lock = (await client(name)).createLock(k)
      locks.push(lock)
      // Each holds for a moment, so that the waiter behind has time to see its place change.
      void lock
        .acquire({leaseMs: 30_000, waitMs: 20_000})
        .then(() => new Promise((resolve) => setTimeout(resolve, 150)))
        .then(() => lock.unlock())
      await eventually(async () => (await a.inspect(k))?.waiters === locks.length)
    }
    const positions: number[] = []
    const last = (await client('D')).createLock(k)
    const done = last.acquire({leaseMs: 30_000, waitMs: 20_000, onQueued: ({position}) => positions.push(position)})
    await eventually(() => positions.length === 1)
    await holder.unlock()
    await done
    // Starts third, only ever moves up, and is told each step.
    expect(positions).toEqual([3, 2, 1])
    await last.unlock()
  })

  it('hands the lock to the next waiter when the lease expires', async () => {
    const k = key('expiry')
    const a = await client('A')
    const b = await client('B')
    const first = await a.createLock(k).acquire({leaseMs: options.shortLeaseMs})
    const second = await b.createLock(k).acquire({leaseMs: 30_000, waitMs: options.shortLeaseMs * 4 + 5000})
    expect(second.owner).toBe('B')
    expect(second.fence).toBeGreaterThan(first.fence)
    await expect(a.check(k, first.token)).rejects.toMatchObject({code: 'NOT_HOLDER'})
  })

  it('is reentrant with the current token, keeping the fence', async () => {
    const k = key('reentrant')
    const a = await client('A')
    const lock = a.createLock(k)
    const first = await lock.acquire({leaseMs: 10_000})
    const again = await lock.acquire({leaseMs: 20_000, waitMs: 0})
    expect(again.fence).toBe(first.fence)
    expect(lock.isHeldByCurrentClient()).toBe(true)
    const b = await client('B')
    expect(await b.createLock(k).tryLock()).toBe(false)
  })

  it('fencing tokens strictly increase across grants of a key', async () => {
    const k = key('fence')
    const a = await client('A')
    const fences: number[] = []
    for (let i = 0; i < 4; i++) {
      const lock = a.createLock(k)
      fences.push((await lock.acquire()).fence)
      await lock.unlock()
    }
    for (let i = 1; i < fences.length; i++) expect(fences[i]).toBeGreaterThan(fences[i - 1])
  })

  it('a stale token is not the holder: NOT_HOLDER, and exit 5 from the CLI', async () => {
    const k = key('stale')
    const a = await client('A')
    const lock = a.createLock(k)
    const grant = await lock.acquire()
    await lock.unlock()
    await expect(a.renew(k, grant.token)).rejects.toMatchObject({code: 'NOT_HOLDER'})
    await expect(a.release(k, grant.token)).rejects.toMatchObject({code: 'NOT_HOLDER'})
    await expect(a.check(k, grant.token)).rejects.toMatchObject({code: 'NOT_HOLDER'})
    const env = {LOCKCTL_ENDPOINTS: endpoint()}
    expect((await runCli(['unlock', k, '--token', grant.token], {env})).code).toBe(5)
    expect((await runCli(['renew', k, '--token', grant.token], {env})).code).toBe(5)
  })

  it('renew with a new length keeps the token, the fence and the place', async () => {
    const k = key('renew')
    const a = await client('A')
    const grant = await a.createLock(k).acquire({leaseMs: 5000})
    const renewed = await a.renew(k, grant.token, 30_000)
    expect(renewed.fence).toBe(grant.fence)
    expect((await a.check(k, grant.token)).leaseLeftMs).toBeGreaterThan(20_000)
    await a.release(k, grant.token)
  })

  it('force release frees the lock for the next waiter; the old token is dead', async () => {
    const k = key('force')
    const a = await client('A')
    const b = await client('B')
    const grant = await a.createLock(k).acquire({leaseMs: 30_000})
    const waiting = b.createLock(k).acquire({waitMs: 10_000})
    await eventually(async () => (await a.inspect(k))?.waiters === 1)
    const released = await a.release(k, undefined, {force: true})
    expect(released.owner).toBe('A')
    expect((await waiting).owner).toBe('B')
    await expect(a.check(k, grant.token)).rejects.toMatchObject({code: 'NOT_HOLDER'})
  })

  it('a wait that gives up leaves the queue; a grant racing the give-up is released', async () => {
    const a = await client('A')
    const b = await client('B')
    // Round 0 releases well inside the wait (B must get it), round 1 well after (B must not);
    // the others release about when B gives up, where either outcome is right.
    const outcomes: boolean[] = []
    for (let r = 0; r < 8; r++) {
      const k = key('race')
      const holder = a.createLock(k)
      await holder.acquire({leaseMs: 30_000})
      const wait = 150
      const releaseAfter = r === 0 ? 20 : r === 1 ? wait + 400 : wait - 20 + r * 6
      const release = new Promise((resolve) => setTimeout(resolve, releaseAfter)).then(() => holder.unlock())
      const lock = b.createLock(k)
      const got = await lock.tryLock({waitMs: wait, leaseMs: 30_000})
      await release
      outcomes.push(got)
      if (got) {
        expect((await a.inspect(k))?.holder?.owner).toBe('B')
        await lock.unlock()
      }
      await eventually(async () => (await a.inspect(k)) === null, 5000)
    }
    // Both outcomes happened, and each was cleaned up the same way.
    expect(outcomes.slice(0, 2)).toEqual([true, false])
  })

  it('contention with releases, abandoned grants and expiries: never two believing holders, fences increase', async () => {
    // Bounded: 5 clients x 6 rounds. A round either releases, or abandons the grant (as a
    // crashed process would) so that the next holder only gets it when the lease expires.
    const k = key('contention')
    const leaseMs = options.shortLeaseMs
    type Lock = ReturnType<LockClient['createLock']>
    let inside: {name: string; lock: Lock} | null = null
    const fences: number[] = []
    const violations: string[] = []
    const worker = async (name: string, rounds: number) => {
      const c = await client(name)
      for (let r = 0; r < rounds; r++) {
        const lock = c.createLock(k)
        const grant = await lock.acquire({leaseMs, waitMs: 30_000})
        // Whoever was inside before must no longer believe it holds the lock.
        if (inside && inside.lock.isHeldByCurrentClient()) violations.push(`${name} got fence ${grant.fence} while ${inside.name} still held`)
        inside = {name, lock}
        fences.push(grant.fence)
        await new Promise((resolve) => setTimeout(resolve, 5 + ((r * 7) % 20)))
        if (r === 2) continue // abandoned: expires on the server
        inside = null
        await lock.unlock()
      }
    }
    await Promise.all(['A', 'B', 'C', 'D', 'E'].map((name) => worker(name, 6)))
    expect(violations).toEqual([])
    expect(fences).toHaveLength(30)
    for (let i = 1; i < fences.length; i++) expect(fences[i]).toBeGreaterThan(fences[i - 1])
  }, 120_000)
}

/**
 * For a suite: clients (closed after each test) of one owner each, and a fresh key per call
 * (`PREFIX/NAME/...`), so tests never see each other's locks.
 */
export function suiteClients(endpoint: () => string, prefix: string): {client: (owner: string) => Promise<LockClient>; key: (name: string) => string} {
  const clients: LockClient[] = []
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()))
  })
  let round = 0
  return {
    async client(owner) {
      const c = await connect({endpoints: endpoint(), owner, requestTimeoutMs: 5000})
      clients.push(c)
      return c
    },
    key: (name) => `${prefix}/${name}/${Date.now()}-${round++}`,
  }
}
