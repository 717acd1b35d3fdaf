import {beforeEach, describe, expect, it} from 'vitest'
import {LockTable, type TableEvent, type WaiterRef} from '../../src/server/lock-table.js'
import {WAIT_FOREVER} from '../../src/protocol/messages.js'
import {lockInfo} from '../../src/server/wire.js'
import {FakeClock} from '../helpers/fake-clock.js'
import {rng} from '../helpers/random.js'

let clock: FakeClock
let table: LockTable
let nextWid = 1

function acquire(key: string, session: string, opts: {waitMs?: number; leaseMs?: number; limit?: number; shared?: boolean; attempt?: string} = {}) {
  const wid = nextWid++
  const result = table.acquire({key, leaseMs: opts.leaseMs ?? 10_000, waitMs: opts.waitMs ?? 0, owner: session, attempt: opts.attempt, from: {session, wid}, limit: opts.limit, shared: opts.shared})
  return {result, wid, token: result.kind === 'granted' ? result.grant.token : ''}
}

const grantedTo = (events: TableEvent[]) => events.filter((e): e is Extract<TableEvent, {type: 'granted'}> => e.type === 'granted').map((e) => e.to?.session)

beforeEach(() => {
  clock = new FakeClock()
  table = new LockTable(clock)
  nextWid = 1
})

describe('LockTable: semaphores', () => {
  it('grants up to the limit, queues the rest in order, and hands a freed place to the next', () => {
    const a = acquire('backup', 'A', {limit: 2})
    const b = acquire('backup', 'B', {limit: 2})
    expect([a.result.kind, b.result.kind]).toEqual(['granted', 'granted'])
    expect(acquire('backup', 'C', {limit: 2}).result).toMatchObject({kind: 'held', holder: {owner: 'A'}})
    expect(acquire('backup', 'C', {limit: 2, waitMs: WAIT_FOREVER}).result).toMatchObject({kind: 'queued', position: 1})
    expect(acquire('backup', 'D', {limit: 2, waitMs: WAIT_FOREVER}).result).toMatchObject({kind: 'queued', position: 2})
    table.drainEvents()
    table.release('backup', b.token)
    expect(grantedTo(table.drainEvents())).toEqual(['C'])
    expect(table.inspect('backup')?.holders.map((h) => h.owner)).toEqual(['A', 'C'])
    const wire = lockInfo(table.inspect('backup')!, clock.now())
    expect(wire).toMatchObject({limit: 2, waiters: 1, holder: {owner: 'A'}, holders: [{owner: 'A'}, {owner: 'C'}]})
    // Fences still increase across every grant.
    expect(table.inspect('backup')!.holders.map((h) => h.fence)).toEqual([1, 3])
  })

  it('refuses a request with another limit while the name is held or awaited, and accepts it once free', () => {
    const a = acquire('n', 'A', {limit: 3})
    expect(acquire('n', 'B', {limit: 2}).result).toEqual({kind: 'mismatch', limit: 3})
    expect(acquire('n', 'B').result).toEqual({kind: 'mismatch', limit: 3})
    table.release('n', a.token)
    expect(acquire('n', 'B').result.kind).toBe('granted')
    expect(acquire('n', 'C', {limit: 3}).result).toEqual({kind: 'mismatch', limit: 1})
  })

  it('each holder renews, checks and releases with its own token; a forced release without one frees them all', () => {
    const a = acquire('n', 'A', {limit: 2})
    const b = acquire('n', 'B', {limit: 2})
    clock.advance(5000)
    expect(table.renew('n', a.token).ok).toBe(true)
    clock.advance(6000)
    table.tick()
    expect(table.check('n', a.token)).not.toBeNull()
    expect(table.check('n', b.token)).toBeNull() // expired on its own
    acquire('n', 'C', {limit: 2})
    table.drainEvents()
    expect(table.release('n', undefined, true).ok).toBe(true)
    expect(table.drainEvents().filter((e) => e.type === 'released').length).toBe(2)
    expect(table.inspect('n')).toBeNull()
  })
})

describe('LockTable: shared locks', () => {
  it('shared holders hold together; an exclusive waiter waits for all of them, and a later shared request waits behind it', () => {
    const readers = ['R1', 'R2', 'R3'].map((s) => acquire('report', s, {shared: true}))
    expect(readers.map((r) => r.result.kind)).toEqual(['granted', 'granted', 'granted'])
    expect(acquire('report', 'W', {waitMs: WAIT_FOREVER}).result).toMatchObject({kind: 'queued', position: 1})
    // Fits beside the shared holders, but the exclusive waiter is ahead: FIFO, no starvation.
    expect(acquire('report', 'R4', {shared: true}).result.kind).toBe('held')
    expect(acquire('report', 'R4', {shared: true, waitMs: WAIT_FOREVER}).result).toMatchObject({kind: 'queued', position: 2})
    table.drainEvents()
    table.release('report', readers[0].token)
    table.release('report', readers[1].token)
    expect(grantedTo(table.drainEvents())).toEqual([])
    table.release('report', readers[2].token)
    expect(grantedTo(table.drainEvents())).toEqual(['W'])
    const writer = table.inspect('report')!.holders[0]
    table.release('report', writer.token)
    expect(grantedTo(table.drainEvents())).toEqual(['R4'])
  })

  it('an exclusive waiter that gives up lets the shared waiters behind it in at once', () => {
    acquire('r', 'R1', {shared: true})
    const w = acquire('r', 'W', {waitMs: WAIT_FOREVER})
    acquire('r', 'R2', {shared: true, waitMs: WAIT_FOREVER})
    acquire('r', 'R3', {shared: true, waitMs: 5000})
    table.drainEvents()
    table.cancel({session: 'W', wid: w.wid}, 'r')
    expect(grantedTo(table.drainEvents())).toEqual(['R2', 'R3'])
  })

  it('a connection dropping with an exclusive waiter ahead of its own shared waiter grants that one to nobody', () => {
    acquire('r', 'R1', {shared: true})
    acquire('r', 'X', {waitMs: WAIT_FOREVER})
    acquire('r', 'X', {shared: true, waitMs: WAIT_FOREVER})
    acquire('r', 'Y', {shared: true, waitMs: WAIT_FOREVER})
    table.drainEvents()
    table.dropSession('X')
    expect(grantedTo(table.drainEvents())).toEqual(['Y'])
    expect(table.inspect('r')!.holders.map((h) => h.owner)).toEqual(['R1', 'Y'])
  })
})

/** The rule each mode keeps: at most `limit` holders; a lock: one exclusive or only shared ones. */
function checkHolders(key: string, limit: number): void {
  const holders = table.inspect(key)?.holders ?? []
  if (limit > 1) {
    expect(holders.length).toBeLessThanOrEqual(limit)
    expect(holders.every((h) => !h.shared && h.limit === limit)).toBe(true)
  } else if (holders.some((h) => !h.shared)) {
    expect(holders.length).toBe(1)
  }
}

describe('LockTable: random schedules of semaphores and shared locks (seeded)', () => {
  const seeds = (process.env.LOCKCTL_TABLE_SEEDS ?? '1,2,3,4,5,6,7,8').split(',').map(Number)
  for (const seed of seeds) {
    it(`seed ${seed}: never more holders than fit, fences always increase, grants from the queue strictly in its order, all through restarts`, () => {
      const random = rng(seed)
      // One name per mode: a semaphore of 3, and a lock taken shared or exclusive at random.
      const names = [
        {key: 'sem', limit: 3},
        {key: 'rw', limit: 1},
      ]
      const tokens = new Map<string, string[]>()
      const queues = new Map<string, WaiterRef[]>(names.map((n) => [n.key, []]))
      const sharedWaits = new Set<string>() // `${session}:${wid}` of the shared acquires
      let lastFence = 0
      let grants = 0
      // The model of who holds: every grant until it is released or its lease runs out. A grant
      // that is lost without either is as bad as one too many (its holder still believes it holds).
      const live = new Map<string, {key: string; expiresAt: number}>()
      const sameRef = (a: WaiterRef, b: WaiterRef) => a.session === b.session && a.wid === b.wid
      for (let step = 0; step < 4000; step++) {
        const {key, limit} = names[Math.floor(random() * names.length)]
        const session = `S${Math.floor(random() * 8)}`
        const r = random()
        if (r < 0.4) {
          const attempt = random() < 0.2 ? `attempt-${key}-${Math.floor(random() * 3)}-x` : undefined
          const shared = limit === 1 && random() < 0.6
          const {result, wid} = acquire(key, session, {limit, shared, waitMs: random() < 0.3 ? 0 : 2000 + Math.floor(random() * 3000), leaseMs: 1000 + Math.floor(random() * 4000), attempt})
          if (shared) sharedWaits.add(`${session}:${wid}`)
          if (result.kind === 'granted' && !result.reentrant) tokens.set(key, [...(tokens.get(key) ?? []), result.grant.token])
          expect(result.kind).not.toBe('mismatch')
        } else if (r < 0.55) {
          const live = (tokens.get(key) ?? []).filter((t) => table.check(key, t))
          if (live.length > 0) table.release(key, live[Math.floor(random() * live.length)])
        } else if (r < 0.62) {
          const queue = queues.get(key)!
          const ref = queue[Math.floor(random() * queue.length)]
          if (ref) table.cancel(ref, key)
        } else if (r < 0.68) {
          table.dropSession(session)
        } else if (r < 0.69) {
          // A restart: the table is rebuilt from what a snapshot reads; waiters are gone with their connections.
          const fence = table.lastFence
          const held = new Map([...table.heldLocks()].map((l) => [l.key, l.holders]))
          table = new LockTable(clock)
          table.recover(fence, held)
          for (const queue of queues.values()) queue.length = 0
          for (const [token, grant] of live) {
            const holder = table.check(grant.key, token)
            expect(holder, `seed ${seed} step ${step}: a grant lost in the restart`).not.toBeNull()
            // Its whole lease again, from now: never less than it had.
            expect(holder!.expiresAt).toBeGreaterThanOrEqual(grant.expiresAt)
            grant.expiresAt = holder!.expiresAt
          }
        } else {
          clock.advance(Math.floor(random() * 1500))
          table.tick()
        }
        for (const event of table.drainEvents()) {
          if (event.type === 'queued') queues.get(event.key)!.splice(event.position - 1, 0, event.waiter)
          if (event.type === 'dequeued') {
            const queue = queues.get(event.key)!
            const at = queue.findIndex((w) => sameRef(w, event.waiter))
            expect(at, `seed ${seed} step ${step}: dequeued a waiter that was not queued`).toBeGreaterThanOrEqual(0)
            if (event.reason === 'granted') expect(at, `seed ${seed} step ${step}: granted out of queue order`).toBe(0)
            queue.splice(at, 1)
          }
          if (event.type === 'granted') {
            expect(live.has(event.holder.token), `seed ${seed} step ${step}: a token granted twice`).toBe(false)
            live.set(event.holder.token, {key: event.key, expiresAt: event.holder.expiresAt})
          } else if (event.type === 'renewed') {
            live.get(event.holder.token)!.expiresAt = event.holder.expiresAt
          } else if (event.type === 'released' || event.type === 'expired') {
            const grant = live.get(event.holder.token)
            expect(grant, `seed ${seed} step ${step}: ${event.type} a grant that did not hold`).toBeDefined()
            if (event.type === 'expired') expect(clock.now(), `seed ${seed} step ${step}: expired before its lease ran out`).toBeGreaterThanOrEqual(grant!.expiresAt)
            live.delete(event.holder.token)
          }
          if (event.type === 'granted') {
            expect(event.holder.fence, `seed ${seed} step ${step}`).toBeGreaterThan(lastFence)
            lastFence = event.holder.fence
            grants++
            tokens.set(event.key, [...(tokens.get(event.key) ?? []), event.holder.token])
          }
        }
        for (const [token, grant] of live) expect(table.check(grant.key, token)?.expiresAt, `seed ${seed} step ${step}: a grant was lost`).toBe(grant.expiresAt)
        for (const name of names) {
          expect(table.inspect(name.key)?.holders.length ?? 0, `seed ${seed} step ${step}: holders the model does not know`).toBe([...live.values()].filter((g) => g.key === name.key).length)
          checkHolders(name.key, name.limit)
          expect(table.waitersOf(name.key)).toBe(queues.get(name.key)!.length)
          // Nobody waits who would fit now: the head of a queue is blocked by the holders.
          const head = queues.get(name.key)![0]
          if (head) {
            const holders = table.inspect(name.key)?.holders ?? []
            const blocked = name.limit > 1 ? holders.length >= name.limit : holders.length > 0 && (!sharedWaits.has(`${head.session}:${head.wid}`) || holders.some((h) => !h.shared))
            expect(blocked, `seed ${seed} step ${step}: the head of ${name.key}'s queue fits but waits`).toBe(true)
          }
        }
      }
      expect(grants).toBeGreaterThan(100)
    })
  }
})
