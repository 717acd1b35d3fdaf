import {beforeEach, describe, expect, it} from 'vitest'
import {LockTable, type TableEvent} from '../../src/server/lock-table.js'
import {WAIT_FOREVER} from '../../src/protocol/messages.js'
import {lockInfo} from '../../src/server/wire.js'
import {FakeClock} from '../helpers/fake-clock.js'
import {rng} from '../helpers/random.js'

let clock: FakeClock
let table: LockTable
let nextWid = 1

function acquire(key: string, session: string, opts: {leaseMs?: number; waitMs?: number; token?: string; owner?: string; attempt?: string} = {}) {
  const wid = nextWid++
  const result = table.acquire({
    key,
    leaseMs: opts.leaseMs ?? 10_000,
    waitMs: opts.waitMs ?? 0,
    owner: opts.owner ?? session,
    token: opts.token,
    attempt: opts.attempt,
    from: {session, wid},
  })
  return {result, wid}
}

function tick(ms: number): TableEvent[] {
  clock.advance(ms)
  table.tick()
  return table.drainEvents()
}

function grants(events: TableEvent[]) {
  return events.filter((e): e is Extract<TableEvent, {type: 'granted'}> => e.type === 'granted')
}

beforeEach(() => {
  clock = new FakeClock()
  table = new LockTable(clock)
  nextWid = 1
})

describe('LockTable', () => {
  it('grants a free key at once and refuses a second owner that does not wait', () => {
    const a = acquire('k', 'A')
    expect(a.result.kind).toBe('granted')
    const b = acquire('k', 'B')
    expect(b.result).toMatchObject({kind: 'held', holder: {owner: 'A', fence: 1}})
  })

  it('hands the lock to waiters strictly in arrival order', () => {
    const a = acquire('k', 'A')
    const order = ['B', 'C', 'D', 'E']
    for (const [i, s] of order.entries()) {
      const r = acquire('k', s, {waitMs: WAIT_FOREVER})
      expect(r.result).toMatchObject({kind: 'queued', position: i + 1})
    }
    table.drainEvents()
    let token = a.result.kind === 'granted' ? a.result.grant.token : ''
    const got: string[] = []
    for (let i = 0; i < order.length; i++) {
      expect(table.release('k', token).ok).toBe(true)
      const granted = grants(table.drainEvents())
      expect(granted).toHaveLength(1)
      got.push(granted[0].to!.session)
      token = granted[0].holder.token
    }
    expect(got).toEqual(order)
  })

  it('expires a lease exactly when it runs out and gives the lock to the next waiter', () => {
    acquire('k', 'A', {leaseMs: 5000})
    acquire('k', 'B', {waitMs: WAIT_FOREVER, leaseMs: 7000})
    table.drainEvents()
    expect(grants(tick(4999))).toHaveLength(0)
    expect(table.inspect('k')?.holder?.owner).toBe('A')
    const events = tick(1)
    expect(events.map((e) => e.type)).toEqual(['expired', 'dequeued', 'granted'])
    expect(table.inspect('k')?.holder).toMatchObject({owner: 'B', fence: 2, expiresAt: clock.now() + 7000})
  })

  it('never has two holders: at every step of a random schedule at most one, and fences increase', () => {
    // A seeded pseudo-random mix of acquires, releases, renewals, cancels and time passing.
    let seed = 42
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    const tokens = new Map<string, string>()
    let lastFence = 0
    for (let step = 0; step < 5000; step++) {
      const session = `S${Math.floor(rand() * 6)}`
      const r = rand()
      if (r < 0.4) {
        // Some acquires are retries of an attempt, from this or another connection.
        const attempt = rand() < 0.3 ? `attempt-${Math.floor(rand() * 4)}` : undefined
        const {result} = acquire('k', session, {waitMs: rand() < 0.5 ? 0 : 3000, leaseMs: 1000 + Math.floor(rand() * 4000), attempt})
        if (result.kind === 'granted' && !result.reentrant) tokens.set(result.grant.token, session)
      } else if (r < 0.55) {
        const holder = table.inspect('k')?.holder
        if (holder) {
          const token = [...tokens.keys()].find((t) => table.check('k', t))
          if (token) table.release('k', token)
        }
      } else if (r < 0.65) {
        table.dropSession(session)
      } else {
        clock.advance(Math.floor(rand() * 1500))
        table.tick()
      }
      for (const event of table.drainEvents()) {
        if (event.type === 'granted') {
          expect(event.holder.fence).toBeGreaterThan(lastFence)
          lastFence = event.holder.fence
          tokens.set(event.holder.token, event.to?.session ?? '?')
        }
      }
      const live = [...tokens.keys()].filter((t) => table.check('k', t))
      expect(live.length).toBeLessThanOrEqual(1)
    }
    expect(lastFence).toBeGreaterThan(50)
  })

  it('is reentrant with the current token: succeeds at once and restarts the lease', () => {
    const {result} = acquire('k', 'A', {leaseMs: 5000})
    const token = result.kind === 'granted' ? result.grant.token : ''
    clock.advance(4000)
    const again = acquire('k', 'A2', {leaseMs: 5000, token})
    expect(again.result).toMatchObject({kind: 'granted', reentrant: true, grant: {fence: 1, token, expiresAt: clock.now() + 5000}})
    table.drainEvents()
    expect(grants(tick(4999))).toHaveLength(0)
    expect(table.check('k', token)).not.toBeNull()
  })

  it('keeps the fencing counter strictly increasing across keys', () => {
    const fences: number[] = []
    for (const key of ['a', 'b', 'a2', 'c']) {
      const {result} = acquire(key, 'A')
      if (result.kind === 'granted') {
        fences.push(result.grant.fence)
        table.release(key, result.grant.token)
      }
    }
    const {result} = acquire('a', 'A')
    if (result.kind === 'granted') fences.push(result.grant.fence)
    expect(fences).toEqual([1, 2, 3, 4, 5])
  })

  it('force release frees the key for the next waiter; the old token is then not the holder', () => {
    const {result} = acquire('k', 'A')
    const token = result.kind === 'granted' ? result.grant.token : ''
    acquire('k', 'B', {waitMs: WAIT_FOREVER})
    expect(table.release('k', undefined, true).ok).toBe(true)
    expect(table.inspect('k')?.holder?.owner).toBe('B')
    expect(table.renew('k', token).ok).toBe(false)
    expect(table.release('k', token).ok).toBe(false)
  })

  it('a waiter whose wait runs out leaves the queue and is told so', () => {
    acquire('k', 'A')
    const b = acquire('k', 'B', {waitMs: 2000})
    acquire('k', 'C', {waitMs: WAIT_FOREVER})
    table.drainEvents()
    const events = tick(2000)
    expect(events).toContainEqual({type: 'wait_timeout', key: 'k', waiter: expect.objectContaining({session: 'B', wid: b.wid})})
    expect(table.inspect('k')?.waiters).toBe(1)
  })

  it('a cancelled waiter leaves the queue; the one behind it moves up', () => {
    const a = acquire('k', 'A')
    const b = acquire('k', 'B', {waitMs: WAIT_FOREVER})
    acquire('k', 'C', {waitMs: WAIT_FOREVER})
    expect(table.cancel({session: 'B', wid: b.wid}, 'k')).toEqual({released: false})
    table.release('k', a.result.kind === 'granted' ? a.result.grant.token : '')
    expect(table.inspect('k')?.holder?.owner).toBe('C')
  })

  it('a cancel that races the grant releases the grant, so nobody sits on the lock unknowingly', () => {
    const a = acquire('k', 'A')
    const b = acquire('k', 'B', {waitMs: 5000})
    acquire('k', 'C', {waitMs: WAIT_FOREVER})
    // The grant to B is made (and pushed) just before B's cancel arrives.
    table.release('k', a.result.kind === 'granted' ? a.result.grant.token : '')
    expect(table.inspect('k')?.holder?.owner).toBe('B')
    expect(table.cancel({session: 'B', wid: b.wid}, 'k')).toEqual({released: true})
    expect(table.inspect('k')?.holder).toMatchObject({owner: 'C', fence: 3})
  })

  it('a dropped connection leaves the queue but keeps its grants', () => {
    acquire('k', 'A')
    acquire('k', 'B', {waitMs: WAIT_FOREVER})
    acquire('j', 'B')
    table.dropSession('B')
    expect(table.inspect('k')).toMatchObject({holder: {owner: 'A'}, waiters: 0})
    expect(table.inspect('j')?.holder?.owner).toBe('B')
  })

  it('renewal extends from now, optionally with a new length', () => {
    const {result} = acquire('k', 'A', {leaseMs: 2000})
    const token = result.kind === 'granted' ? result.grant.token : ''
    clock.advance(1500)
    expect(table.renew('k', token, 10_000).ok).toBe(true)
    tick(9999)
    expect(table.check('k', token)).not.toBeNull()
    tick(1)
    expect(table.check('k', token)).toBeNull()
  })

  it('recovery gives every holder its whole lease from now and continues the fence counter', () => {
    table.recover(41, new Map([['k', [{token: 't1', fence: 40, owner: 'A', leaseMs: 3000, since: 1}]]]))
    expect(table.inspect('k')?.holder).toMatchObject({fence: 40, expiresAt: clock.now() + 3000})
    expect(acquire('k', 'B').result.kind).toBe('held')
    tick(3000)
    const {result} = acquire('k', 'B')
    expect(result).toMatchObject({kind: 'granted', grant: {fence: 42}})
  })

  it('reports changed keys once, with their state now, for the durable log', () => {
    const {result} = acquire('k', 'A')
    const token = result.kind === 'granted' ? result.grant.token : ''
    expect(table.drainChanges()).toEqual([{key: 'k', holders: [expect.objectContaining({owner: 'A', fence: 1})], changed: [token]}])
    expect(table.drainChanges()).toEqual([])
    table.release('k', token)
    expect(table.drainChanges()).toEqual([{key: 'k', holders: [], changed: [token]}])
    // Several changes of one name in a batch: each grant that changed, once.
    const first = table.acquire({key: 's', leaseMs: 1000, waitMs: 0, owner: 'A', from: {session: 'a', wid: 1}, limit: 3})
    const second = table.acquire({key: 's', leaseMs: 1000, waitMs: 0, owner: 'B', from: {session: 'b', wid: 1}, limit: 3})
    const [t1, t2] = [first, second].map((r) => (r.kind === 'granted' ? r.grant.token : ''))
    table.renew('s', t1, 2000)
    table.release('s', t2)
    expect(table.drainChanges()).toEqual([{key: 's', holders: [expect.objectContaining({owner: 'A', leaseMs: 2000})], changed: [t1, t2]}])
    // A table that keeps no log (in-memory lockd) keeps no changes either.
    const unlogged = new LockTable(clock, {tracksChanges: false})
    unlogged.acquire({key: 'k', leaseMs: 1000, waitMs: 0, owner: 'A', from: {session: 'a', wid: 1}})
    expect(unlogged.drainChanges()).toEqual([])
  })

  it('an attempt asked again from a new connection gets the grant made to it, renewed; no other attempt does', () => {
    const a = acquire('k', 'A')
    expect(acquire('k', 'B1', {waitMs: WAIT_FOREVER, attempt: 'attempt-b'}).result.kind).toBe('queued')
    table.drainEvents()
    table.release('k', a.result.kind === 'granted' ? a.result.grant.token : '')
    const [granted] = grants(table.drainEvents())
    expect(granted.to?.session).toBe('B1')
    // B1's connection drops before the grant push reaches it; its retry comes on B2.
    table.dropSession('B1')
    clock.advance(4000)
    expect(acquire('k', 'C', {waitMs: 0, attempt: 'attempt-c'}).result.kind).toBe('held')
    const again = acquire('k', 'B2', {waitMs: WAIT_FOREVER, attempt: 'attempt-b', leaseMs: 10_000})
    expect(again.result).toMatchObject({kind: 'granted', reentrant: true, grant: {token: granted.holder.token, fence: granted.holder.fence, expiresAt: clock.now() + 10_000}})
    expect(table.waitersOf('k')).toBe(0)
  })

  it('the same attempt queued again from a new connection takes over its place instead of queueing twice', () => {
    const a = acquire('k', 'A')
    acquire('k', 'B1', {waitMs: WAIT_FOREVER, attempt: 'attempt-b'})
    acquire('k', 'C', {waitMs: WAIT_FOREVER})
    // lockd has not yet seen B1's connection drop when the retry arrives.
    expect(acquire('k', 'B2', {waitMs: WAIT_FOREVER, attempt: 'attempt-b'}).result).toMatchObject({kind: 'queued', position: 1})
    expect(table.waitersOf('k')).toBe(2)
    table.dropSession('B1') // now it has: nothing changes
    expect(table.waitersOf('k')).toBe(2)
    table.drainEvents()
    table.release('k', a.result.kind === 'granted' ? a.result.grant.token : '')
    expect(grants(table.drainEvents()).map((g) => g.to?.session)).toEqual(['B2'])
  })

  it('a grant keeps its attempt through the durable log and recovery', () => {
    acquire('k', 'A', {attempt: 'attempt-a'})
    const [
      {
        holders: [holder],
      },
    ] = table.drainChanges()
    expect(holder).toMatchObject({attempt: 'attempt-a'})
    const restarted = new LockTable(clock)
    restarted.recover(holder.fence, new Map([['k', [holder]]]))
    const again = restarted.acquire({key: 'k', leaseMs: 5000, waitMs: 0, owner: 'A', attempt: 'attempt-a', from: {session: 'A2', wid: 1}})
    expect(again).toMatchObject({kind: 'granted', grant: {token: holder.token, fence: holder.fence}})
  })

  it('lists the first N names of a prefix in key order, whatever order they came in (seeded)', () => {
    const seeds = (process.env.LOCKCTL_TABLE_SEEDS ?? '1,2,3').split(',').map(Number)
    for (const seed of seeds) {
      const random = rng(seed)
      const own = new LockTable(clock)
      const keys = new Set<string>()
      const alphabet = ['a', 'b', 'B', '/', '-', 'é', '0', '9']
      while (keys.size < 300) {
        let key = ''
        for (let i = 1 + Math.floor(random() * 6); i > 0; i--) key += alphabet[Math.floor(random() * alphabet.length)]
        keys.add(key)
      }
      for (const key of keys) own.acquire({key, leaseMs: 10_000, waitMs: 0, owner: 'A', from: {session: 'A', wid: 0}})
      for (const prefix of ['', 'a', 'b/', 'é']) {
        const expected = [...keys].filter((k) => k.startsWith(prefix)).sort((x, y) => (x < y ? -1 : x > y ? 1 : 0))
        for (const limit of [1, 2, 7, 50, 299, 300, 1000, Number.POSITIVE_INFINITY]) {
          const {locks, total} = own.list(prefix, limit)
          expect(total, `seed ${seed}, prefix ${prefix}, limit ${limit}`).toBe(expected.length)
          expect(
            locks.map((l) => l.key),
            `seed ${seed}, prefix ${prefix}, limit ${limit}`,
          ).toEqual(expected.slice(0, limit))
        }
        // Pages: `after` a name (listed or not), the next names in key order; total stays all.
        for (const after of [expected[0], expected[Math.floor(expected.length / 2)], expected.at(-1), 'a', 'é9', '']) {
          if (after === undefined) continue
          const rest = expected.filter((k) => k > after)
          for (const limit of [1, 7, 300, Number.POSITIVE_INFINITY]) {
            const {locks, total} = own.list(prefix, limit, after)
            expect(total).toBe(expected.length)
            expect(
              locks.map((l) => l.key),
              `seed ${seed}, prefix ${prefix}, after ${after}, limit ${limit}`,
            ).toEqual(rest.slice(0, limit))
          }
        }
        // Paging through 7 at a time gives the whole list, once each, in order.
        const paged: string[] = []
        for (let page = own.list(prefix, 7).locks; page.length > 0; page = own.list(prefix, 7, paged.at(-1)).locks) paged.push(...page.map((l) => l.key))
        expect(paged, `seed ${seed}, prefix ${prefix}, paged`).toEqual(expected)
      }
    }
  })

  it('lists by prefix in key order; the wire form never shows tokens', () => {
    for (const key of ['b/2', 'a/1', 'b/1', 'c']) acquire(key, 'A')
    const {locks, total} = table.list('b/')
    expect(total).toBe(2)
    expect(locks.map((l) => l.key)).toEqual(['b/1', 'b/2'])
    const wire = locks.map((view) => lockInfo(view, clock.now()))
    expect(wire[0].holder).toMatchObject({owner: 'A', leaseLeftMs: 10_000})
    expect(JSON.stringify(wire)).not.toContain('token')
  })
})
