import type {LockEvent, ServerMessage} from '../protocol/messages.js'
import type {Connection, Subscription} from './connection.js'
import type {LockTable, TableEvent} from './lock-table.js'
import {grantInfo, holderInfo, lockInfo} from './wire.js'

/** A message for a connection; `sent` is called once it has been written. */
export type Outgoing = {conn: Connection; message: ServerMessage; sent?: () => void}

/**
 * Who wants to hear about what: watchers of a key or a prefix, and waiters that asked for their
 * place in the queue. Turns the table's events into the pushes they mean (docs/protocol.md,
 * "Pushes"), including the grant, wait-timeout and `ended` pushes to waiters and holders.
 */
export class Subscriptions {
  /** Watchers of one key, and watchers of prefixes (few; scanned per event). */
  private readonly keyWatchers = new Map<string, Set<Subscription>>()
  private readonly prefixWatchers = new Set<Subscription>()
  /** Queued acquires that asked for position updates, by key. */
  private readonly progressWaiters = new Map<string, Map<string, {conn: Connection; wid: number; position: number}>>()

  constructor(
    private readonly table: LockTable,
    private readonly now: () => number,
    /** The live connection of a session, if any. */
    private readonly connectionOf: (session: string) => Connection | undefined,
  ) {}

  watch(conn: Connection, sub: number, target: {key: string} | {prefix: string}): void {
    const subscription: Subscription = {conn, sub, ...target}
    if ('key' in target) {
      let set = this.keyWatchers.get(target.key)
      if (!set) this.keyWatchers.set(target.key, (set = new Set()))
      set.add(subscription)
    } else {
      this.prefixWatchers.add(subscription)
    }
    conn.subscriptions.set(sub, subscription)
  }

  unwatch(conn: Connection, sub: number): void {
    const subscription = conn.subscriptions.get(sub)
    if (!subscription) return
    conn.subscriptions.delete(sub)
    if (subscription.key !== undefined) {
      const set = this.keyWatchers.get(subscription.key)
      set?.delete(subscription)
      if (set?.size === 0) this.keyWatchers.delete(subscription.key)
    } else {
      this.prefixWatchers.delete(subscription)
    }
  }

  dropConnection(conn: Connection): void {
    for (const sub of [...conn.subscriptions.keys()]) this.unwatch(conn, sub)
  }

  /** A queued acquire that wants to hear its place as it changes. */
  followPosition(conn: Connection, key: string, wid: number, position: number): void {
    let waiting = this.progressWaiters.get(key)
    if (!waiting) this.progressWaiters.set(key, (waiting = new Map()))
    waiting.set(`${conn.session}:${wid}`, {conn, wid, position})
  }

  /** The messages a batch of table events means, in order. */
  messagesFor(events: TableEvent[]): Outgoing[] {
    const out: Outgoing[] = []
    for (const event of events) {
      if (event.type === 'dequeued') this.updatePositions(event.key, out)
      this.publish(event, out)
      const push = this.directPush(event)
      if (push) {
        const conn = this.connectionOf(push.session)
        if (conn) out.push({conn, message: push.message})
      }
    }
    return out
  }

  /** Pushes to one connection: a waiter's grant or timeout, a holder's grant that ended. */
  private directPush(event: TableEvent): {session: string; message: ServerMessage} | null {
    if (event.type === 'granted' && event.to) {
      return {session: event.to.session, message: {t: 'push', ev: 'granted', wid: event.to.wid, grant: grantInfo(event.key, event.holder, this.now())}}
    }
    if (event.type === 'wait_timeout') {
      return {session: event.waiter.session, message: {t: 'push', ev: 'wait_timeout', wid: event.waiter.wid, key: event.key}}
    }
    const endedByAnother = event.type === 'expired' || (event.type === 'released' && event.by !== event.holder.session)
    if (endedByAnother && event.holder.session) {
      // The holder's connection learns at once that its grant is over (docs/semantics.md, "Loss").
      const reason = event.type === 'expired' ? 'expired' : event.force ? 'forced' : 'released'
      return {session: event.holder.session, message: {t: 'push', ev: 'ended', key: event.key, token: event.holder.token, fence: event.holder.fence, reason}}
    }
    return null
  }

  private publish(event: TableEvent, out: Outgoing[]): void {
    if (this.keyWatchers.size === 0 && this.prefixWatchers.size === 0) return
    const exact = this.keyWatchers.get(event.key)
    const targets: Subscription[] = exact ? [...exact] : []
    for (const subscription of this.prefixWatchers) if (event.key.startsWith(subscription.prefix!)) targets.push(subscription)
    if (targets.length === 0) return
    const lockEvent = this.lockEvent(event)
    if (!lockEvent) return
    for (const subscription of targets) out.push({conn: subscription.conn, message: {t: 'push', ev: 'lock', sub: subscription.sub, event: lockEvent}})
  }

  /** The watch event a table event means, if any (renewals and hand-off dequeues are not). */
  private lockEvent(event: TableEvent): LockEvent | null {
    const waiters = this.table.waitersOf(event.key)
    switch (event.type) {
      case 'granted':
        return {type: 'acquired', key: event.key, owner: event.holder.owner, fence: event.holder.fence, waiters}
      case 'released':
        return {type: 'released', key: event.key, owner: event.holder.owner, fence: event.holder.fence, waiters, force: event.force}
      case 'expired':
        return {type: 'expired', key: event.key, owner: event.holder.owner, fence: event.holder.fence, waiters}
      case 'queued':
        return {type: 'queued', key: event.key, waiters}
      case 'dequeued':
        return event.reason === 'granted' ? null : {type: 'dequeued', key: event.key, waiters, reason: event.reason}
      default:
        return null
    }
  }

  /** Tell waiters that asked for it their new place in the queue (and the holder). */
  private updatePositions(key: string, out: Outgoing[]): void {
    const waiting = this.progressWaiters.get(key)
    if (!waiting) return
    const holderNow = this.table.holderOf(key)
    const holder = holderNow ? holderInfo(holderNow, this.now()) : null
    for (const [id, waiter] of waiting) {
      const position = this.table.positionOf({session: waiter.conn.session, wid: waiter.wid}, key)
      if (position === 0) {
        waiting.delete(id) // granted, gone, or gave up
      } else if (position !== waiter.position) {
        waiter.position = position
        out.push({conn: waiter.conn, message: {t: 'push', ev: 'position', wid: waiter.wid, key, position, holder}})
      }
    }
    if (waiting.size === 0) this.progressWaiters.delete(key)
  }

  /** A watch's snapshot. */
  snapshot(target: {key: string} | {prefix: string}): {locks: ReturnType<typeof lockInfo>[]; total: number} {
    const now = this.now()
    if ('key' in target) {
      const view = this.table.inspect(target.key)
      return {locks: view ? [lockInfo(view, now)] : [], total: view ? 1 : 0}
    }
    const {locks, total} = this.table.list(target.prefix)
    return {locks: locks.map((v) => lockInfo(v, now)), total}
  }
}
