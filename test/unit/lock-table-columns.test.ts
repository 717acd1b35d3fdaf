import {describe, expect, it} from 'vitest'
import {WAIT_FOREVER} from '../../src/protocol/messages.js'
import {HolderColumns} from '../../src/server/holder-columns.js'
import {LockTable, type Holder, type PersistedHolder} from '../../src/server/lock-table.js'
import {FakeClock} from '../helpers/fake-clock.js'
import {ObjectLockTable} from '../helpers/object-lock-table.js'
import {rng} from '../helpers/random.js'

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * Tokens as both tables get them, the same sequence for each: mostly 24 characters of base64url
 * (what lockd makes, kept as bytes), some of other lengths and characters (kept as strings: a log
 * from another version), and some that differ from a kept one in a character Node's base64
 * decoder would read the same ('+' for '-', '/' for '_').
 */
function tokenSequence(seed: number): () => string {
  const random = rng(seed)
  const made: string[] = []
  return () => {
    const r = random()
    let token = ''
    if (r < 0.8 || made.length === 0) {
      for (let i = 0; i < 24; i++) token += BASE64URL[Math.floor(random() * 64)]
    } else if (r < 0.9) {
      token = `odd-${made.length}${random() < 0.5 ? '.x' : ''}`
    } else {
      token = made[Math.floor(random() * made.length)].replace('-', '+').replace('_', '/')
    }
    made.push(token)
    return token
  }
}

const untokened = ({owner, fence, leaseMs, expiresAt, since, shared}: Holder) => ({owner, fence, leaseMs, expiresAt, since, shared})

/** A holder as both tables show it (undefined fields left out). */
const plain = (holder: Holder | null | undefined) => (holder ? JSON.parse(JSON.stringify(holder)) : holder)

describe('LockTable in columns: answers exactly as the object table it replaced', () => {
  const seeds = (process.env.LOCKCTL_TABLE_SEEDS ?? '1,2,3').split(',').map(Number)
  for (const seed of seeds) {
    it(`seed ${seed}: every answer, event, view, change and deadline is the same at every step of a random schedule, across restarts`, () => {
      const random = rng(seed)
      const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]
      const clock = new FakeClock()
      let columns = new LockTable(clock, {newToken: tokenSequence(seed)})
      let objects = new ObjectLockTable(clock, {newToken: tokenSequence(seed)})
      const keys = ['a', 'b', 'c', 'sem', 'rw']
      const sessions = ['S1', 'S2', 'S3', 'S4']
      const tokens: string[] = []
      const attempts = ['at-1', 'at-2', 'at-3']
      let wid = 1
      const waiting: {session: string; wid: number; key: string}[] = []
      let restarts = 0
      for (let step = 0; step < 4000; step++) {
        const at = `seed ${seed}, step ${step}`
        const r = random()
        // (Whatever is random is drawn before: `op` runs once for each table.)
        const both = <T>(op: (t: LockTable | ObjectLockTable) => T): void => {
          const got = op(columns)
          const want = op(objects)
          expect(JSON.parse(JSON.stringify(got ?? null)), at).toEqual(JSON.parse(JSON.stringify(want ?? null)))
        }
        if (r < 0.35) {
          const key = pick(keys)
          const limit = key === 'sem' ? 3 : 1
          const shared = key === 'rw' && random() < 0.6
          const session = pick(sessions)
          const w = wid++
          const waitMs = random() < 0.4 ? 0 : random() < 0.2 ? WAIT_FOREVER : 500 + Math.floor(random() * 3000)
          const token = random() < 0.1 && tokens.length > 0 ? pick(tokens) : undefined
          const attempt = random() < 0.2 ? pick(attempts) : undefined
          const args = {key, leaseMs: 1000 + Math.floor(random() * 4000), waitMs, owner: session, token, attempt, from: {session, wid: w}, limit, shared}
          // (A waiter named like one still queued is refused by lockd before the table.)
          if (objects.isWaiting(args.from)) continue
          both((t) => t.acquire(args))
          if (columns.isWaiting(args.from)) waiting.push({session, wid: w, key})
        } else if (r < 0.5) {
          const key = pick(keys)
          const view = objects.inspect(key)
          const token = view && random() < 0.8 ? pick(view.holders).token : tokens.length > 0 ? pick(tokens) : 'nobody'
          // Sometimes a token that differs from a held one only where base64 decoders are lax.
          const asked = random() < 0.1 ? token.replace('-', '+').replace('_', '/') : token
          const force = random() < 0.05
          const by = pick(sessions)
          both((t) => t.release(key, asked, force, by))
        } else if (r < 0.6) {
          const key = pick(keys)
          const view = objects.inspect(key)
          const token = view ? pick(view.holders).token : 'nobody'
          const leaseMs = random() < 0.5 ? undefined : 1000 + Math.floor(random() * 4000)
          const by = pick(sessions)
          both((t) => t.renew(key, token, leaseMs, by))
          both((t) => t.check(key, token))
        } else if (r < 0.67 && waiting.length > 0) {
          const w = waiting.splice(Math.floor(random() * waiting.length), 1)[0]
          const reason = random() < 0.5 ? 'cancelled' : 'timeout'
          both((t) => t.cancel(w, w.key, reason))
        } else if (r < 0.72) {
          const session = pick(sessions)
          columns.dropSession(session)
          objects.dropSession(session)
        } else if (r < 0.985) {
          clock.advance(Math.floor(random() * 1200))
          columns.tick()
          objects.tick()
        } else {
          // A restart: each table recovers from what it had persisted, which must also be the same.
          const saved = (t: LockTable | ObjectLockTable) => new Map<string, PersistedHolder[]>([...t.heldLocks()].map(({key, holders}) => [key, holders]))
          const fromColumns = saved(columns)
          expect(fromColumns, at).toEqual(saved(objects))
          const fence = columns.lastFence
          columns = new LockTable(clock, {newToken: tokenSequence(seed * 1000 + restarts)})
          objects = new ObjectLockTable(clock, {newToken: tokenSequence(seed * 1000 + restarts)})
          columns.recover(fence, fromColumns)
          objects.recover(fence, saved2(fromColumns))
          waiting.length = 0
          restarts++
        }
        // Everything either table can be asked, after every step.
        const events = columns.drainEvents()
        expect(JSON.parse(JSON.stringify(events)), at).toEqual(JSON.parse(JSON.stringify(objects.drainEvents())))
        for (const event of events) if (event.type === 'granted') tokens.push(event.holder.token)
        expect(columns.drainChanges(), at).toEqual(objects.drainChanges())
        for (const key of keys) {
          expect(JSON.parse(JSON.stringify(columns.inspect(key))), at).toEqual(JSON.parse(JSON.stringify(objects.inspect(key))))
          expect(plain(columns.holderOf(key)), at).toEqual(plain(objects.holderOf(key)))
          expect(columns.waitersOf(key), at).toBe(objects.waitersOf(key))
        }
        // (`list` shows what status and watch show: no tokens, which only their holders are told.)
        const listed = objects.list('', 3)
        const withoutTokens = {...listed, locks: listed.locks.map((view) => ({...view, holder: view.holder && untokened(view.holder), holders: view.holders.map(untokened)}))}
        expect(JSON.parse(JSON.stringify(columns.list('', 3))), at).toEqual(JSON.parse(JSON.stringify(withoutTokens)))
        for (const key of keys) expect(columns.isHeld(key), at).toBe(objects.holderOf(key) !== null)
        expect([columns.size, columns.waiters, columns.lastFence, columns.nextDeadline()], at).toEqual([objects.size, objects.waiters, objects.lastFence, objects.nextDeadline()])
        // Every grant's slot is given back when it ends.
        expect(columns.grantCount, at).toBe(keys.reduce((n, key) => n + (objects.inspect(key)?.holders.length ?? 0), 0))
      }
      // The schedule reached what it is for.
      expect(restarts).toBeGreaterThan(10)
      expect(columns.lastFence).toBeGreaterThan(300)
    })
  }
})

/** A copy of the saved holders (the object table takes its map's values over as its own). */
function saved2(saved: Map<string, PersistedHolder[]>): Map<string, PersistedHolder[]> {
  return new Map([...saved].map(([key, holders]) => [key, holders.map((holder) => ({...holder}))]))
}

describe('LockTable in columns: many grants', () => {
  it('20,000 held locks (past every growth of the columns and chunk of names): each answers to its own token only, and freed slots serve new grants whole', () => {
    const clock = new FakeClock()
    const table = new LockTable(clock)
    const grant = (key: string, owner: string) => {
      const result = table.acquire({key, leaseMs: 60_000, waitMs: 0, owner, from: {session: owner, wid: 0}})
      if (result.kind !== 'granted') throw new Error(`${key} not granted`)
      return result.grant
    }
    const granted = new Map<string, Holder>()
    for (let i = 0; i < 20_000; i++) granted.set(`k${i}`, grant(`k${i}`, `owner-${i % 7}`))
    const check = () => {
      const all = [...granted]
      all.forEach(([key, holder], i) => {
        expect(plain(table.check(key, holder.token))).toEqual(plain(holder))
        // Another lock's token never holds this one.
        expect(table.check(key, all[(i + 1) % all.length][1].token)).toBeNull()
      })
      expect(table.grantCount).toBe(granted.size)
    }
    check()
    for (let i = 0; i < 20_000; i += 2) {
      expect(table.release(`k${i}`, granted.get(`k${i}`)!.token).ok).toBe(true)
      granted.delete(`k${i}`)
    }
    check()
    for (let i = 0; i < 20_000; i += 4) granted.set(`again${i}`, grant(`again${i}`, 'later'))
    check()
    table.drainEvents()
    // Every lease still ends, each at its own time.
    clock.advance(60_001)
    table.tick()
    expect(table.drainEvents().filter((e) => e.type === 'expired')).toHaveLength(granted.size)
    expect([table.size, table.grantCount]).toEqual([0, 0])
  })
})

describe('LockTable in columns: recovered values', () => {
  it('a recovered lease longer than lockd grants (a log written elsewhere) is kept whole, never cut to 32 bits', () => {
    const clock = new FakeClock()
    const table = new LockTable(clock)
    const leaseMs = 2 ** 32 + 1000
    table.recover(7, new Map([['k', {token: 'AAAAAAAAAAAAAAAAAAAAAAAA', fence: 7, owner: 'o', leaseMs, since: 1}]]))
    clock.advance(5000)
    table.tick()
    expect(table.holderOf('k')).toMatchObject({leaseMs, expiresAt: clock.now() - 5000 + leaseMs})
  })
})

describe('HolderColumns', () => {
  it('refuses to free a slot twice (it would be given to two grants at once)', () => {
    const columns = new HolderColumns()
    const slot = columns.add({key: 'k', token: 'AAAAAAAAAAAAAAAAAAAAAAAA', fence: 1, owner: 'o', leaseMs: 1000, expiresAt: 1000, since: 1})
    columns.free(slot)
    expect(() => columns.free(slot)).toThrow('slot 0 is not in use: freed twice')
    // Given once to the next grant, not twice.
    const a = columns.add({key: 'a', token: 'BBBBBBBBBBBBBBBBBBBBBBBB', fence: 2, owner: 'o', leaseMs: 1000, expiresAt: 1000, since: 1})
    const b = columns.add({key: 'b', token: 'CCCCCCCCCCCCCCCCCCCCCCCC', fence: 3, owner: 'o', leaseMs: 1000, expiresAt: 1000, since: 1})
    expect(a).not.toBe(b)
    expect([columns.tokenOf(a), columns.tokenOf(b)]).toEqual(['BBBBBBBBBBBBBBBBBBBBBBBB', 'CCCCCCCCCCCCCCCCCCCCCCCC'])
  })
})
