import {WAIT_FOREVER} from '../protocol/messages.js'
import {DeadlineHeap} from './deadline-heap.js'
import {FirstKeys} from './first-keys.js'
import {HolderColumns} from './holder-columns.js'
import type {Restorer} from './log-format.js'
import {TokenSource} from './tokens.js'

/**
 * The lock table: keys, holders, FIFO waiters and the fencing counter. Pure state: no sockets,
 * no timers, no I/O. Time comes from an injected clock and the server calls `tick()` at
 * `nextDeadline()`, so every rule here is testable with a fake clock.
 */

export interface Clock {
  /** Monotonic milliseconds: leases and waits are measured with this. */
  now(): number
  /** Wall-clock milliseconds: only for display (`since`). */
  wall(): number
}

export const systemClock: Clock = {
  now: () => performance.now(),
  wall: () => Date.now(),
}

/** Identifies one waiting acquire: the connection (session) and the id of its acquire request. */
export interface WaiterRef {
  session: string
  wid: number
}

/**
 * One grant as the table hands it out: a copy of its slot in HolderColumns at that moment
 * (changing it changes nothing in the table, and later changes do not show in it).
 */
export interface Holder {
  /** The key it holds. */
  key: string
  token: string
  fence: number
  owner: string
  leaseMs: number
  expiresAt: number
  since: number
  /** Set when the grant came from the queue, so a late `cancel` from that waiter releases it. */
  origin?: WaiterRef
  /** The acquire attempt the grant answers (AcquireArgs.attempt): asking again returns it. */
  attempt?: string
  /**
   * The connection that took or last renewed this grant: it is told at once when the grant
   * ends by anything but its own hand (expiry, a forced release, a release from elsewhere).
   * Not persisted: after a restart it is set again by the holder's next renewal.
   */
  session?: string
  /** A shared (read) grant: it holds beside other shared grants, never beside an exclusive one. */
  shared?: boolean
  /** The name's limit when it is a semaphore (more than 1); absent for a lock. */
  limit?: number
}

interface Waiter extends WaiterRef {
  key: string
  owner: string
  leaseMs: number
  deadline: number
  attempt?: string
  shared: boolean
}

/** What the table did, in order; the server turns these into acks, pushes and log records. */
export type TableEvent =
  | {type: 'granted'; key: string; holder: Holder; to?: WaiterRef}
  /** `by`: the connection that asked (absent for releases the table makes itself). */
  | {type: 'released'; key: string; holder: Holder; force: boolean; by?: string}
  | {type: 'expired'; key: string; holder: Holder}
  | {type: 'renewed'; key: string; holder: Holder}
  | {type: 'queued'; key: string; waiter: WaiterRef; position: number}
  | {type: 'dequeued'; key: string; waiter: WaiterRef; reason: 'granted' | 'cancelled' | 'timeout' | 'disconnected'}
  | {type: 'wait_timeout'; key: string; waiter: WaiterRef}

/** `holder`: the grant that stands in the way (the oldest holder), for messages and spinners. */
export type AcquireResult =
  | {kind: 'granted'; grant: Holder; reentrant: boolean}
  | {kind: 'held'; holder: Holder}
  | {kind: 'queued'; position: number; holder: Holder}
  /** The name is held or awaited with another limit: the request is refused, not mixed in. */
  | {kind: 'mismatch'; limit: number}

/**
 * A holder as `list` shows it: what status and watch show of it, no more. Not its token, which
 * only the holder is told; a watch snapshot of a million names makes one for each.
 */
export type ListedHolder = Pick<Holder, 'owner' | 'fence' | 'leaseMs' | 'expiresAt' | 'since' | 'shared'>

/**
 * One key as `inspect` (holders with their tokens) and `list` (without: ListedHolder) show it;
 * the server turns it into the wire's LockInfo, which has no token either.
 */
export interface LockView<H extends ListedHolder = Holder> {
  key: string
  /** The oldest holder (what a client that knows of one holder only shows). */
  holder: H | null
  holders: H[]
  waiters: number
  limit: number
}

export type TokenResult = {ok: true; holder: Holder} | {ok: false}

/**
 * What the table hands to persistence for one key ("key K now looks like this"). The log's
 * LoggedHolder has the same shape on purpose: the log owns its on-disk format, the table its
 * state, and the server passes one to the other.
 */
export interface PersistedHolder {
  token: string
  fence: number
  owner: string
  leaseMs: number
  since: number
  attempt?: string
  shared?: boolean
  limit?: number
}

/** The options of one acquire that decide whether it fits beside the holders. */
export interface AcquireMode {
  /** 1 (a lock) or N (a semaphore of N). */
  limit: number
  shared: boolean
}

/** What the deadline heap holds: a grant's slot (its lease) or a waiter (its wait). */
type Deadline = number | Waiter
const isHolderSlot = (item: Deadline): item is number => typeof item === 'number'

/**
 * A name's grants as the table keeps them: the one grant's slot (a plain lock, by far the most
 * names: no array around it), or an array of slots in grant order once a name has had several
 * holders or is between holders (empty only while a change is under way).
 */
type Held = number | number[]

const countOf = (held: Held): number => (typeof held === 'number' ? 1 : held.length)
const firstOf = (held: Held): number | undefined => (typeof held === 'number' ? held : held[0])
const slotsOf = (held: Held | undefined): readonly number[] => (held === undefined ? [] : typeof held === 'number' ? [held] : held)
/** The first slot (in grant order) that matches, or -1. */
const findIn = (held: Held | undefined, match: (slot: number) => boolean): number => {
  if (held === undefined) return -1
  if (typeof held === 'number') return match(held) ? held : -1
  for (const slot of held) if (match(slot)) return slot
  return -1
}

/** The waiters of a name nobody waits for: shared (most names), replaced by an array of their own on the first waiter. */
const NO_WAITERS: Waiter[] = Object.freeze([]) as unknown as Waiter[]

export interface LockTableOptions {
  newToken?: () => string
  /**
   * Keep the changed names for drainChanges (default: yes). An in-memory lockd logs nothing:
   * without it, no set of changed tokens per name and batch (~1 KB of garbage per lock+unlock).
   */
  tracksChanges?: boolean
}

/**
 * A name's state is its grants in the order they were made (`holdersByKey`), its FIFO queue
 * (`queues`, only while anyone waits) and its limit — 1 for a lock (one exclusive holder, or any
 * number of shared ones), N for a semaphore of N (`limits`, only for N > 1). The limit is fixed
 * while the name has holders or waiters (docs/semantics.md, "Semaphores and shared locks").
 * Most names are plain locks nobody waits for: their whole state is the map's value, the slot of
 * their one grant in `grants` (a number: no object, no array).
 */
export class LockTable {
  /** Every name anyone holds or waits for (an empty array only while a change is under way). */
  private holdersByKey = new Map<string, Held>()
  private readonly grants = new HolderColumns()
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

  /** Grants held, over every name (a semaphore's or shared lock's each count). */
  get grantCount(): number {
    return this.grants.live
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
    if (holders !== undefined && (args.token !== undefined || args.attempt !== undefined)) {
      const tokenIs = args.token === undefined ? undefined : this.grants.tokenIs(args.token)
      const same = findIn(holders, (slot) => tokenIs?.(slot) === true || (args.attempt !== undefined && this.grants.attemptOf(slot) === args.attempt))
      if (same >= 0) {
        this.grants.setSession(same, args.from.session)
        return {kind: 'granted', grant: this.extend(args.key, same, args.leaseMs, now), reentrant: true}
      }
    }
    const namedLimit = holders !== undefined ? this.limitOf(args.key) : limit
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
    if (holders === undefined || (this.queueOf(args.key).length === 0 && this.fits(holders, limit, shared))) {
      const granted = this.grant(args.key, args.owner, args.leaseMs, now, {limit, shared}, undefined, args.attempt, args.from.session)
      return {kind: 'granted', grant: granted, reentrant: false}
    }
    // An entry always has a holder: a name with waiters and no holder grants at once (pump).
    const blocking = this.grants.view(firstOf(holders)!)
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
    const slot = findIn(this.holdersByKey.get(key), (s) => {
      const origin = this.grants.originOf(s)
      return origin !== undefined && origin.session === ref.session && origin.wid === ref.wid
    })
    if (slot >= 0) {
      this.releaseHolder(key, slot, false, ref.session)
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
      const slot = token === undefined ? -1 : findIn(holders, this.grants.tokenIs(token))
      if (slot < 0) return {ok: false}
      return {ok: true, holder: this.releaseHolder(key, slot, false, by)}
    }
    if (holders === undefined || countOf(holders) === 0) return {ok: false}
    // (A copy: each release takes its slot out of the name's array.)
    const all = [...slotsOf(holders)]
    const released = all.map((slot) => this.releaseHolder(key, slot, true, by))
    return {ok: true, holder: released[0]}
  }

  /** `by`: the connection renewing becomes the one told if the grant ends. */
  renew(key: string, token: string, leaseMs?: number, by?: string): TokenResult {
    const slot = this.slotOf(key, token)
    if (slot < 0) return {ok: false}
    if (by !== undefined) this.grants.setSession(slot, by)
    return {ok: true, holder: this.extend(key, slot, leaseMs ?? this.grants.leaseOf(slot), this.clock.now())}
  }

  /** The holder if `token` holds `key` now, else null. Changes nothing. */
  check(key: string, token: string): Holder | null {
    const slot = this.slotOf(key, token)
    return slot < 0 ? null : this.grants.view(slot)
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
      if (isHolderSlot(due)) {
        // Stale entries (the grant renewed or gone) are skipped here. A slot given to a later
        // grant whose lease ends at the same millisecond is that grant's own deadline: due too.
        if (!this.isLive(due, at)) continue
        const key = this.grants.keyOf(due)
        this.events.push({type: 'expired', key, holder: this.grants.view(due)})
        this.removeHolder(key, due, now)
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
    return holders === undefined ? null : this.view(key, holders)
  }

  list(prefix: string, limit = Number.POSITIVE_INFINITY, after?: string): {locks: LockView<ListedHolder>[]; total: number} {
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
    return {
      locks: first.sorted().map((key) => {
        const held = this.holdersByKey.get(key)!
        const holders = typeof held === 'number' ? [this.grants.listed(held)] : held.map((slot) => this.grants.listed(slot))
        return {key, holder: holders[0] ?? null, holders, waiters: this.queueOf(key).length, limit: this.limitOf(key)}
      }),
      total,
    }
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
      changes.push({key, holders: this.persistedOf(this.holdersByKey.get(key)), changed: typeof tokens === 'string' ? [tokens] : [...tokens]})
    }
    this.dirty.clear()
    return changes
  }

  /** The grant's token changed the name (granted, re-leased or gone). */
  private markDirty(key: string, slot: number): void {
    if (!this.tracksChanges) return
    const token = this.grants.tokenOf(slot)
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
    for (const [key, held] of this.holdersByKey) if (countOf(held) > 0) yield {key, holders: this.persistedOf(held)}
  }

  /**
   * What DurableLog.open restores each holder it reads with: straight into this table's columns,
   * keeping the slot (no object per holder outlives its decoding, and each owner's name is kept
   * once: decoded, every grant had its own copy). Then recoverRestored() takes the map of slots.
   */
  restorer(): Restorer<number> {
    const owners = new Map<string, string>()
    return {
      restore: (key, saved) => {
        let {owner} = saved
        const known = owners.get(owner)
        if (known !== undefined) owner = known
        // (The first few thousand owners only: a table with an owner per lock would gain nothing.)
        else if (owners.size < 4096) owners.set(owner, owner)
        // The lease is set by recoverRestored, counted from then.
        return this.grants.add({
          key,
          token: saved.token,
          fence: saved.fence,
          owner,
          leaseMs: saved.leaseMs,
          expiresAt: 0,
          since: saved.since,
          session: undefined,
          attempt: saved.attempt,
          shared: saved.shared,
          limit: saved.limit,
        })
      },
      tokenOf: (slot) => this.grants.tokenOf(slot),
      fenceOf: (slot) => this.grants.fenceOf(slot),
      drop: (slot) => this.grants.free(slot),
    }
  }

  /**
   * Rebuild state after a restart from what restorer() made. A recovered holder gets its whole
   * lease again, counted from now: its owner may have renewed just before the crash and still
   * believes it holds, and the old monotonic clock is gone, so nothing shorter is safe.
   * An empty table takes `recovered` over as its own map (the caller reads nothing from it
   * afterwards): setting a million names again cost about a second of a restart.
   */
  recoverRestored(fence: number, recovered: Map<string, number | number[]>): void {
    const now = this.clock.now()
    this.fenceCounter = Math.max(this.fenceCounter, fence)
    const adopt = this.holdersByKey.size === 0
    const ats: number[] = []
    const items: Deadline[] = []
    // (forEach: no entry array per name, and the map's entries are read in the order they lie.)
    recovered.forEach((held, key) => {
      const first = firstOf(held)
      // (An empty array would be a name nobody holds or waits for.)
      if (first === undefined) {
        if (adopt) recovered.delete(key)
        return
      }
      if (!adopt) for (const slot of slotsOf(this.holdersByKey.get(key))) this.grants.free(slot)
      const limit = this.grants.limitOf(first)
      if (limit > 1) this.limits.set(key, limit)
      else if (!adopt) this.limits.delete(key)
      for (const slot of slotsOf(held)) {
        const slotFence = this.grants.fenceOf(slot)
        if (slotFence > this.fenceCounter) this.fenceCounter = slotFence
        const expiresAt = leaseEnd(now, this.grants.leaseOf(slot))
        this.grants.setLease(slot, this.grants.leaseOf(slot), expiresAt)
        ats.push(expiresAt)
        items.push(slot)
      }
      if (!adopt) this.holdersByKey.set(key, held)
    })
    if (adopt) this.holdersByKey = recovered
    this.deadlines.pushAll(ats, items)
  }

  /** recoverRestored() from holders as objects (as the log keeps them decoded). */
  recover(fence: number, holders: Map<string, PersistedHolder | PersistedHolder[]>): void {
    const restorer = this.restorer()
    const slots = new Map<string, number | number[]>()
    for (const [key, saved] of holders) slots.set(key, Array.isArray(saved) ? saved.map((holder) => restorer.restore(key, holder)) : restorer.restore(key, saved))
    this.recoverRestored(fence, slots)
  }

  private grant(key: string, owner: string, leaseMs: number, now: number, mode: AcquireMode, to?: WaiterRef, attempt?: string, session = to?.session): Holder {
    const slot = this.grants.add({
      key,
      token: this.newToken(),
      fence: ++this.fenceCounter,
      owner,
      leaseMs,
      expiresAt: leaseEnd(now, leaseMs),
      since: this.clock.wall(),
      session,
      origin: to,
      attempt,
      shared: mode.shared,
      limit: mode.limit > 1 ? mode.limit : undefined,
    })
    const holders = this.holdersByKey.get(key)
    // A new name's one grant is the map's value itself; a second makes the array.
    if (holders === undefined) {
      this.holdersByKey.set(key, slot)
      if (mode.limit > 1) this.limits.set(key, mode.limit)
    } else if (typeof holders === 'number') {
      this.holdersByKey.set(key, [holders, slot])
    } else {
      holders.push(slot)
    }
    const holder = this.grants.view(slot)
    this.deadlines.push(holder.expiresAt, slot)
    this.markDirty(key, slot)
    this.events.push({type: 'granted', key, holder, to})
    return holder
  }

  private extend(key: string, slot: number, leaseMs: number, now: number): Holder {
    if (leaseMs !== this.grants.leaseOf(slot)) this.markDirty(key, slot)
    const expiresAt = leaseEnd(now, leaseMs)
    this.grants.setLease(slot, leaseMs, expiresAt)
    this.deadlines.push(expiresAt, slot)
    const holder = this.grants.view(slot)
    this.events.push({type: 'renewed', key, holder})
    return holder
  }

  /** Answers the grant as it was when released. */
  private releaseHolder(key: string, slot: number, force: boolean, by?: string): Holder {
    const holder = this.grants.view(slot)
    this.events.push({type: 'released', key, holder, force, by})
    this.removeHolder(key, slot, this.clock.now())
    return holder
  }

  /** The grant is gone: waiters at the head of the queue that now fit get the lock. */
  private removeHolder(key: string, slot: number, now: number): void {
    const holders = this.holdersByKey.get(key)!
    if (typeof holders !== 'number') holders.splice(holders.indexOf(slot), 1)
    // A single holder leaves an empty array (waiters may be granted into it), or no name at all.
    else if (this.queueOf(key).length > 0) this.holdersByKey.set(key, [])
    else this.holdersByKey.delete(key)
    this.markDirty(key, slot)
    // Freed before anyone is granted: the next grant may take this very slot.
    this.grants.free(slot)
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
    for (let next = queue[0]; next && this.fits(this.holdersByKey.get(key)!, limit, next.shared); next = queue[0]) {
      this.removeWaiter(next, 'granted', false)
      this.grant(key, next.owner, next.leaseMs, now, {limit, shared: next.shared}, next, next.attempt)
    }
    if (countOf(this.holdersByKey.get(key)!) === 0 && queue.length === 0) {
      this.holdersByKey.delete(key)
      this.limits.delete(key)
    }
  }

  /**
   * Does a request fit beside the holders now? A semaphore: fewer holders than its limit. A
   * lock: nobody holds it, or (shared) only shared grants hold it.
   */
  private fits(held: Held, limit: number, shared: boolean): boolean {
    if (limit > 1) return countOf(held) < limit
    if (typeof held === 'number') return shared && this.grants.isShared(held)
    return held.length === 0 || (shared && held.every((slot) => this.grants.isShared(slot)))
  }

  /** The slot of the grant `token` of `key`, or -1. */
  private slotOf(key: string, token: string): number {
    const held = this.holdersByKey.get(key)
    return held === undefined ? -1 : findIn(held, this.grants.tokenIs(token))
  }

  private persistedOf(held: Held | undefined): PersistedHolder[] {
    return slotsOf(held).map((slot) => this.grants.persisted(slot))
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
    const holders = slotsOf(held).map((slot) => this.grants.view(slot))
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

  /** Is the heap's entry still a deadline: a live grant whose lease ends then, or a waiter still queued? */
  private isLive(item: Deadline, at: number): boolean {
    if (isHolderSlot(item)) return this.grants.isLive(item) && this.grants.endOf(item) === at
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

  /** Does anyone hold the key now? (holderOf without making the holder's view.) */
  isHeld(key: string): boolean {
    const held = this.holdersByKey.get(key)
    return held !== undefined && countOf(held) > 0
  }

  /** The oldest holder of a key, or null when nobody holds it. */
  holderOf(key: string): Holder | null {
    const held = this.holdersByKey.get(key)
    const slot = held === undefined ? undefined : firstOf(held)
    return slot === undefined ? null : this.grants.view(slot)
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
