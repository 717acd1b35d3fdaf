import {WAIT_FOREVER} from '../../src/protocol/messages.js'
import {DeadlineHeap} from '../../src/server/deadline-heap.js'
import {FirstKeys} from '../../src/server/first-keys.js'
import {holdersOf} from '../../src/server/log-format.js'
import type {AcquireMode, AcquireResult, Clock, Holder, LockTableOptions, LockView, PersistedHolder, TableEvent, TokenResult, WaiterRef} from '../../src/server/lock-table.js'
import {TokenSource} from '../../src/server/tokens.js'

/**
 * The oracle of test/unit/lock-table-columns.test.ts: the lock table as it was (commit 0ba1e8d)
 * before its grants moved from an object each into columns (src/server/holder-columns.ts). It
 * kept every rule the same way for 15 stops of tests; the columnar table must answer as it does,
 * step for step. Not used by lockd. Below, the text as it was (its types are the table's own).
 *
 * The lock table: keys, holders, FIFO waiters and the fencing counter. Pure state: no sockets,
 * no timers, no I/O. Time comes from an injected clock and the server calls `tick()` at
 * `nextDeadline()`, so every rule here is testable with a fake clock.
 */

interface Waiter extends WaiterRef {
  key: string
  owner: string
  leaseMs: number
  deadline: number
  attempt?: string
  shared: boolean
}

/** What the deadline heap holds: a holder (its lease) or a waiter (its wait). */
type Deadline = Holder | Waiter
const isHolder = (item: Deadline): item is Holder => (item as Holder).token !== undefined

/**
 * A name's holders as the table keeps them: the one holder itself (a plain lock, by far the most
 * names: no array around it, ~56 bytes less per held lock), or an array in grant order once a
 * name has had several holders or is between holders (empty only while a change is under way).
 */
type Held = Holder | Holder[]

const countOf = (held: Held): number => (Array.isArray(held) ? held.length : 1)
const firstOf = (held: Held): Holder | undefined => (Array.isArray(held) ? held[0] : held)
const findIn = (held: Held | undefined, match: (holder: Holder) => boolean): Holder | undefined => {
  if (held === undefined) return undefined
  if (!Array.isArray(held)) return match(held) ? held : undefined
  return held.find(match)
}
const holds = (held: Held | undefined, holder: Holder): boolean => held !== undefined && (held === holder || (Array.isArray(held) && held.includes(holder)))

/** The waiters of a name nobody waits for: shared (most names), replaced by an array of their own on the first waiter. */
const NO_WAITERS: Waiter[] = Object.freeze([]) as unknown as Waiter[]

/**
 * A name's state is its holders in the order they were granted (`holdersByKey`), its FIFO queue
 * (`queues`, only while anyone waits) and its limit — 1 for a lock (one exclusive holder, or any
 * number of shared ones), N for a semaphore of N (`limits`, only for N > 1). The limit is fixed
 * while the name has holders or waiters (docs/semantics.md, "Semaphores and shared locks").
 * Most names are plain locks nobody waits for: their whole state is the map's value, their one
 * holder, with neither an object nor an array around it (a million held locks, ~110 MB less
 * than both), and a restart takes the recovered map over as it is.
 */
export class ObjectLockTable {
  /** Every name anyone holds or waits for (an empty array only while a change is under way). */
  private holdersByKey = new Map<string, Held>()
  private readonly queues = new Map<string, Waiter[]>()
  private readonly limits = new Map<string, number>()
  private readonly waitersBySession = new Map<string, Map<number, Waiter>>()
  /** Queued waiters that carry an attempt id, by that id (at most one each). */
  private readonly waitersByAttempt = new Map<string, Waiter>()
  private readonly deadlines = new DeadlineHeap<Deadline>()
  private readonly events: TableEvent[] = []
  /**
   * Keys changed since the last drainChanges, with the tokens of the grants that changed: the
   * one token itself (most names change one grant per batch), a set once there are more.
   */
  private readonly dirty = new Map<string, string | Set<string>>()
  private fenceCounter = 0
  private waiterCount = 0
  private readonly newToken: () => string
  private readonly tracksChanges: boolean

  constructor(
    private readonly clock: Clock,
    options: LockTableOptions = {},
  ) {
    this.tracksChanges = options.tracksChanges ?? true
    if (options.newToken) {
      this.newToken = options.newToken
    } else {
      const tokens = new TokenSource()
      this.newToken = () => tokens.next()
    }
  }

  get lastFence(): number {
    return this.fenceCounter
  }

  get size(): number {
    return this.holdersByKey.size
  }

  get waiters(): number {
    return this.waiterCount
  }

  acquire(args: {
    key: string
    leaseMs: number
    waitMs: number
    owner: string
    token?: string
    attempt?: string
    from: WaiterRef
    /** Default: an exclusive lock (limit 1, not shared). */
    limit?: number
    shared?: boolean
  }): AcquireResult {
    const now = this.clock.now()
    const limit = args.limit ?? 1
    const shared = limit === 1 && args.shared === true
    const holders = this.holdersByKey.get(args.key)
    const same = findIn(holders, (h) => (args.token !== undefined && h.token === args.token) || (args.attempt !== undefined && h.attempt === args.attempt))
    if (same) {
      same.session = args.from.session
      this.extend(args.key, same, args.leaseMs, now)
      return {kind: 'granted', grant: same, reentrant: true}
    }
    const namedLimit = holders ? this.limitOf(args.key) : limit
    if (namedLimit !== limit) return {kind: 'mismatch', limit: namedLimit}
    // The same attempt still queued from a connection that has not been seen to drop: the new
    // request takes over its place (below), so a reconnect keeps the queue order and never
    // leaves two waiters for one grant. Asked in another mode, it is a new request: the old
    // one leaves first (and whoever then fits is granted).
    let earlier = args.attempt === undefined ? undefined : this.waitersByAttempt.get(args.attempt)
    if (earlier && (earlier.key !== args.key || earlier.shared !== shared)) {
      this.removeWaiter(earlier, 'disconnected')
      earlier = undefined
    }
    // FIFO: a request that fits beside the holders still waits behind anyone already queued,
    // so a stream of shared requests never starves an exclusive one.
    if (!holders || (this.queueOf(args.key).length === 0 && fits(holders, limit, shared))) {
      const granted = this.grant(args.key, args.owner, args.leaseMs, now, {limit, shared}, undefined, args.attempt, args.from.session)
      return {kind: 'granted', grant: granted, reentrant: false}
    }
    // An entry always has a holder: a name with waiters and no holder grants at once (pump).
    const blocking = firstOf(holders)!
    if (args.waitMs === 0) return {kind: 'held', holder: blocking}
    // Waiters are named by (session, wid): a second one under the same name could never be
    // cancelled or dropped with its connection. The server refuses such a request before here.
    if (this.isWaiting(args.from)) throw new Error(`wid ${args.from.wid} is already waiting in session ${args.from.session}`)

    const waiter: Waiter = {
      ...args.from,
      key: args.key,
      owner: args.owner,
      leaseMs: args.leaseMs,
      deadline: args.waitMs === WAIT_FOREVER ? Number.POSITIVE_INFINITY : now + args.waitMs,
      attempt: args.attempt,
      shared,
    }
    const place = earlier ? this.queueOf(args.key).indexOf(earlier) : -1
    if (earlier) this.removeWaiter(earlier, 'disconnected', false)
    let queue = this.queues.get(args.key)
    if (!queue) this.queues.set(args.key, (queue = []))
    if (place >= 0) queue.splice(place, 0, waiter)
    else queue.push(waiter)
    if (waiter.attempt !== undefined) this.waitersByAttempt.set(waiter.attempt, waiter)
    this.waiterCount++
    let bySession = this.waitersBySession.get(waiter.session)
    if (!bySession) this.waitersBySession.set(waiter.session, (bySession = new Map()))
    bySession.set(waiter.wid, waiter)
    if (waiter.deadline !== Number.POSITIVE_INFINITY) this.deadlines.push(waiter.deadline, waiter)
    const position = queue.indexOf(waiter) + 1
    this.events.push({type: 'queued', key: args.key, waiter: args.from, position})
    return {kind: 'queued', position, holder: blocking}
  }

  /**
   * The waiter gave up. If it is still queued it leaves the queue; if the grant was already made
   * to it (the push is on its way) the grant is released, so nobody sits on a lock it does not
   * know it holds.
   */
  cancel(ref: WaiterRef, key: string, reason: 'cancelled' | 'timeout' = 'cancelled'): {released: boolean} {
    const waiter = this.waitersBySession.get(ref.session)?.get(ref.wid)
    if (waiter) {
      this.removeWaiter(waiter, reason)
      return {released: false}
    }
    const holder = findIn(this.holdersByKey.get(key), (h) => h.origin !== undefined && h.origin.session === ref.session && h.origin.wid === ref.wid)
    if (holder) {
      this.releaseHolder(key, holder, false, ref.session)
      return {released: true}
    }
    return {released: false}
  }

  /**
   * `by`: the connection asking, so the holder's own connection is told when it is another.
   * With `token`: that grant. Forced: every holder of the name, whatever the token (an admin
   * breaking a semaphore or a shared lock frees it whole, as on etcd). Answers the (first)
   * holder released.
   */
  release(key: string, token: string | undefined, force = false, by?: string): TokenResult {
    const holders = this.holdersByKey.get(key)
    if (!force) {
      const holder = token === undefined ? undefined : findIn(holders, (h) => h.token === token)
      if (!holder) return {ok: false}
      this.releaseHolder(key, holder, false, by)
      return {ok: true, holder}
    }
    if (!holders || countOf(holders) === 0) return {ok: false}
    // (A copy: each release takes its holder out of the name's array.)
    const all = [...holdersOf(holders)]
    for (const each of all) this.releaseHolder(key, each, true, by)
    return {ok: true, holder: all[0]}
  }

  /** `by`: the connection renewing becomes the one told if the grant ends. */
  renew(key: string, token: string, leaseMs?: number, by?: string): TokenResult {
    const holder = this.check(key, token)
    if (!holder) return {ok: false}
    if (by !== undefined) holder.session = by
    this.extend(key, holder, leaseMs ?? holder.leaseMs, this.clock.now())
    return {ok: true, holder}
  }

  /** The holder if `token` holds `key` now, else null. Changes nothing. */
  check(key: string, token: string): Holder | null {
    return findIn(this.holdersByKey.get(key), (h) => h.token === token) ?? null
  }

  /**
   * A connection went away: its waiters leave their queues. Holders keep their leases. All of
   * them leave before anyone is granted: one of its waiters leaving must not grant another of
   * its own (which nobody could be told of).
   */
  dropSession(session: string): void {
    const bySession = this.waitersBySession.get(session)
    if (!bySession) return
    const keys = new Set<string>()
    for (const waiter of [...bySession.values()]) {
      keys.add(waiter.key)
      this.removeWaiter(waiter, 'disconnected', false)
    }
    this.waitersBySession.delete(session)
    const now = this.clock.now()
    for (const key of keys) this.pump(key, now)
  }

  /** Expire leases and waits that are due; hand expired locks to the next waiter. */
  tick(): void {
    const now = this.clock.now()
    for (let at = this.deadlines.peekAt(); at !== undefined && at <= now; at = this.deadlines.peekAt()) {
      const due = this.deadlines.pop()!
      if (isHolder(due)) {
        // Stale heap entries (renewed or released holders) are skipped here.
        if (!holds(this.holdersByKey.get(due.key), due) || due.expiresAt !== at) continue
        this.events.push({type: 'expired', key: due.key, holder: due})
        this.removeHolder(due.key, due, now)
      } else if (this.waitersBySession.get(due.session)?.get(due.wid) === due) {
        this.removeWaiter(due, 'timeout')
        this.events.push({type: 'wait_timeout', key: due.key, waiter: due})
      }
    }
    if (this.deadlines.size > 1024 && this.deadlines.size > 4 * (this.holdersByKey.size + this.waiterCount)) {
      this.deadlines.compact((item, at) => this.isLive(item, at))
    }
  }

  nextDeadline(): number | undefined {
    return this.deadlines.peekAt()
  }

  inspect(key: string): LockView | null {
    const holders = this.holdersByKey.get(key)
    return holders ? this.view(key, holders) : null
  }

  list(prefix: string, limit = Number.POSITIVE_INFINITY, after?: string): {locks: LockView[]; total: number} {
    // The first `limit` names in key order, kept in a max-heap as the names go by instead of
    // sorting every match: `status` (1,000 of a million names) held lockd up for ~0.3 s.
    // `after`: a later page of the same list (the client reads a long one a page at a time).
    const first = new FirstKeys(limit)
    let total = 0
    for (const key of this.holdersByKey.keys()) {
      if (!key.startsWith(prefix)) continue
      total++
      if (after === undefined || key > after) first.offer(key)
    }
    return {locks: first.sorted().map((key) => this.view(key, this.holdersByKey.get(key)!)), total}
  }

  /** Events since the last call, in the order they happened. */
  drainEvents(): TableEvent[] {
    return this.events.splice(0)
  }

  /**
   * Keys whose holders changed since the last call: their holders now (none = free), and the
   * tokens of the grants that changed (granted, re-leased or gone), so that the log can write
   * only those of a name with many holders.
   */
  drainChanges(): {key: string; holders: PersistedHolder[]; changed: string[]}[] {
    if (this.dirty.size === 0) return []
    const changes: {key: string; holders: PersistedHolder[]; changed: string[]}[] = []
    for (const [key, tokens] of this.dirty) {
      const held = this.holdersByKey.get(key)
      changes.push({key, holders: holdersOf(held).map(persisted), changed: typeof tokens === 'string' ? [tokens] : [...tokens]})
    }
    this.dirty.clear()
    return changes
  }

  private markDirty(key: string, token: string): void {
    if (!this.tracksChanges) return
    const tokens = this.dirty.get(key)
    if (tokens === undefined) this.dirty.set(key, token)
    else if (typeof tokens !== 'string') tokens.add(token)
    else if (tokens !== token) this.dirty.set(key, new Set([tokens, token]))
  }

  /**
   * Every held lock, read lazily: the durable log's snapshot reads it a slice at a time while the
   * table goes on changing (a Map's iterator visits each entry that is still there when reached).
   */
  *heldLocks(): Generator<{key: string; holders: PersistedHolder[]}> {
    for (const [key, held] of this.holdersByKey) if (countOf(held) > 0) yield {key, holders: holdersOf(held).map(persisted)}
  }

  /**
   * Rebuild state after a restart. A recovered holder gets its whole lease again, counted from
   * now: its owner may have renewed just before the crash and still believes it holds, and the
   * old monotonic clock is gone, so nothing shorter is safe.
   * An empty table takes `holders` over (its values become the table's entries): the caller
   * reads nothing from it afterwards.
   */
  recover(fence: number, holders: Map<string, PersistedHolder | PersistedHolder[]>): void {
    const now = this.clock.now()
    this.fenceCounter = Math.max(this.fenceCounter, fence)
    // A restart of a million locks: the saved holders become the table's (no copy), and their
    // leases go into the deadline heap in one heapify. An empty table adopts the recovered map
    // itself, whose values are already what the table keeps (a name's one holder, or an array of
    // several): setting a million keys again costs more than the rest of the table's part of a
    // restart.
    const adopt = this.holdersByKey.size === 0
    const holdersByKey = adopt ? (holders as Map<string, Held>) : this.holdersByKey
    const ats: number[] = []
    const items: Deadline[] = []
    const restore = (key: string, holder: Holder) => {
      if (holder.fence > this.fenceCounter) this.fenceCounter = holder.fence
      // (Already the holder's own when restoredHolders() made it.)
      if (holder.key !== key) holder.key = key
      holder.expiresAt = leaseEnd(now, holder.leaseMs)
      ats.push(holder.expiresAt)
      items.push(holder)
    }
    for (const [key, saved] of holders as Map<string, Held>) {
      const first = firstOf(saved)
      if (first === undefined) {
        if (adopt) holdersByKey.delete(key)
        continue
      }
      const limit = first.limit ?? 1
      if (limit > 1) this.limits.set(key, limit)
      else this.limits.delete(key)
      if (Array.isArray(saved)) for (const holder of saved) restore(key, holder)
      else restore(key, saved)
      if (!adopt) holdersByKey.set(key, saved)
    }
    this.holdersByKey = holdersByKey
    this.deadlines.pushAll(ats, items)
  }

  private grant(key: string, owner: string, leaseMs: number, now: number, mode: AcquireMode, to?: WaiterRef, attempt?: string, session = to?.session): Holder {
    const holder: Holder = {
      key,
      session,
      token: this.newToken(),
      fence: ++this.fenceCounter,
      owner,
      leaseMs,
      expiresAt: leaseEnd(now, leaseMs),
      since: this.clock.wall(),
    }
    // Only when there is one (most grants have neither): a million held locks, 16 MB.
    if (to) holder.origin = {session: to.session, wid: to.wid}
    if (attempt !== undefined) holder.attempt = attempt
    if (mode.shared) holder.shared = true
    if (mode.limit > 1) holder.limit = mode.limit
    const holders = this.holdersByKey.get(key)
    // A new name's one holder is the map's value itself; a second makes the array (an empty
    // one grown by push() would reserve room for 16).
    if (!holders) {
      this.holdersByKey.set(key, holder)
      if (mode.limit > 1) this.limits.set(key, mode.limit)
    } else if (Array.isArray(holders)) {
      holders.push(holder)
    } else {
      this.holdersByKey.set(key, [holders, holder])
    }
    this.deadlines.push(holder.expiresAt, holder)
    this.markDirty(key, holder.token)
    this.events.push({type: 'granted', key, holder, to})
    return holder
  }

  private extend(key: string, holder: Holder, leaseMs: number, now: number): void {
    if (leaseMs !== holder.leaseMs) this.markDirty(key, holder.token)
    holder.leaseMs = leaseMs
    holder.expiresAt = leaseEnd(now, leaseMs)
    this.deadlines.push(holder.expiresAt, holder)
    this.events.push({type: 'renewed', key, holder})
  }

  private releaseHolder(key: string, holder: Holder, force: boolean, by?: string): void {
    this.events.push({type: 'released', key, holder, force, by})
    this.removeHolder(key, holder, this.clock.now())
  }

  /** The holder is gone: waiters at the head of the queue that now fit get the lock. */
  private removeHolder(key: string, holder: Holder, now: number): void {
    const holders = this.holdersByKey.get(key)!
    if (Array.isArray(holders)) holders.splice(holders.indexOf(holder), 1)
    // A single holder leaves an empty array (waiters may be granted into it), or no name at all.
    else if (this.queueOf(key).length > 0) this.holdersByKey.set(key, [])
    else this.holdersByKey.delete(key)
    this.markDirty(key, holder.token)
    this.pump(key, now)
  }

  /**
   * Grant the head of the queue while it fits beside the holders (strict FIFO: the first that
   * does not fit stops everyone behind it); drop the name when nobody holds or waits.
   */
  private pump(key: string, now: number): void {
    if (!this.holdersByKey.has(key)) {
      this.limits.delete(key)
      return
    }
    const limit = this.limitOf(key)
    // The queue's array itself: removeWaiter takes its head out of it (and the array out of
    // `queues` once it is empty). The holders are read again each time: a grant may replace a
    // single holder by an array.
    const queue = this.queueOf(key)
    for (let next = queue[0]; next && fits(this.holdersByKey.get(key)!, limit, next.shared); next = queue[0]) {
      this.removeWaiter(next, 'granted', false)
      this.grant(key, next.owner, next.leaseMs, now, {limit, shared: next.shared}, next, next.attempt)
    }
    if (countOf(this.holdersByKey.get(key)!) === 0 && queue.length === 0) {
      this.holdersByKey.delete(key)
      this.limits.delete(key)
    }
  }

  /** The name's limit: N for a semaphore of N, else 1. */
  private limitOf(key: string): number {
    return this.limits.size === 0 ? 1 : (this.limits.get(key) ?? 1)
  }

  /** The name's queue, oldest first (the shared empty one when nobody waits). */
  private queueOf(key: string): Waiter[] {
    return this.queues.size === 0 ? NO_WAITERS : (this.queues.get(key) ?? NO_WAITERS)
  }

  private view(key: string, held: Held): LockView {
    const holders = holdersOf(held)
    return {key, holder: holders[0] ?? null, holders, waiters: this.queueOf(key).length, limit: this.limitOf(key)}
  }

  /** `pump`: grant whoever fits now that this waiter is gone (not while a batch is removed). */
  private removeWaiter(waiter: Waiter, reason: 'granted' | 'cancelled' | 'timeout' | 'disconnected', pump = true): void {
    const queue = this.queues.get(waiter.key)
    if (queue) {
      const index = queue.indexOf(waiter)
      if (index >= 0) queue.splice(index, 1)
      if (queue.length === 0) this.queues.delete(waiter.key)
    }
    if (waiter.attempt !== undefined && this.waitersByAttempt.get(waiter.attempt) === waiter) this.waitersByAttempt.delete(waiter.attempt)
    const bySession = this.waitersBySession.get(waiter.session)
    bySession?.delete(waiter.wid)
    if (bySession?.size === 0) this.waitersBySession.delete(waiter.session)
    this.waiterCount--
    this.events.push({type: 'dequeued', key: waiter.key, waiter: {session: waiter.session, wid: waiter.wid}, reason})
    if (pump) this.pump(waiter.key, this.clock.now())
  }

  private isLive(item: Deadline, at: number): boolean {
    if (isHolder(item)) return holds(this.holdersByKey.get(item.key), item) && item.expiresAt === at
    return this.waitersBySession.get(item.session)?.get(item.wid) === item
  }

  /** Is this acquire queued now? */
  isWaiting(ref: WaiterRef): boolean {
    return this.waitersBySession.get(ref.session)?.has(ref.wid) ?? false
  }

  /** How many acquires of this connection are queued. */
  waitingOf(session: string): number {
    return this.waitersBySession.get(session)?.size ?? 0
  }

  /** Queue length of a key now. */
  waitersOf(key: string): number {
    return this.queueOf(key).length
  }

  /** Position (1-based) of a waiter in its queue, or 0 if it is not queued. */
  positionOf(ref: WaiterRef, key: string): number {
    return this.queueOf(key).findIndex((w) => w.session === ref.session && w.wid === ref.wid) + 1
  }

  /** The oldest holder of a key, or null when nobody holds it. */
  holderOf(key: string): Holder | null {
    const held = this.holdersByKey.get(key)
    return held === undefined ? null : (firstOf(held) ?? null)
  }
}

/**
 * When a lease ends, in whole milliseconds: a small integer is stored unboxed (a million leases
 * and their heap entries, ~30 MB less), and rounding up only makes the server honour a lease a
 * fraction of a millisecond longer — the safe side, the client counts from its send.
 */
function leaseEnd(now: number, leaseMs: number): number {
  return Math.ceil(now + leaseMs)
}

/**
 * Does a request fit beside the holders now? A semaphore: fewer holders than its limit. A
 * lock: nobody holds it, or (shared) only shared grants hold it.
 */
function fits(held: Held, limit: number, shared: boolean): boolean {
  if (limit > 1) return countOf(held) < limit
  if (!Array.isArray(held)) return shared && held.shared === true
  return held.length === 0 || (shared && held.every((h) => h.shared === true))
}

function persisted(holder: Holder): PersistedHolder {
  const saved: PersistedHolder = {token: holder.token, fence: holder.fence, owner: holder.owner, leaseMs: holder.leaseMs, since: holder.since}
  if (holder.attempt !== undefined) saved.attempt = holder.attempt
  if (holder.shared) saved.shared = true
  if (holder.limit !== undefined) saved.limit = holder.limit
  return saved
}
