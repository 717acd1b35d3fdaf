import type {GrantInfo, HolderInfo, LockInfo} from '../protocol/messages.js'
import {formatMs} from '../client/errors.js'
import {holdersOf} from '../client/holders.js'
import {printable} from '../util/printable.js'
import {shellQuote} from '../util/shell.js'

export {formatMs, holdersOf, printable, shellQuote}

/** The JSON shape of a grant, as `lock --json` and `renew --json` print it. */
/**
 * A grant as JSON. `leaseRestMs`: the lease left as the client counts it, from the send time of
 * the request, so `expiresAt` is never later than the server's expiry (receive time + the
 * server's lease left would be, by the answer's travel time).
 */
export function grantJson(grant: GrantInfo, leaseRestMs: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    key: grant.key,
    token: grant.token,
    fence: grant.fence,
    leaseMs: grant.leaseMs,
    owner: grant.owner,
    since: new Date(grant.since).toISOString(),
    expiresAt: new Date(Date.now() + Math.max(0, leaseRestMs)).toISOString(),
    ...extra,
  }
}

export function holderJson(holder: HolderInfo | null): Record<string, unknown> | null {
  if (!holder) return null
  return {
    owner: holder.owner,
    fence: holder.fence,
    leaseMs: holder.leaseMs,
    leaseLeftMs: holder.leaseLeftMs,
    // 0 = unknown (locks taken by etcdctl or Go's Mutex carry no metadata).
    since: holder.since ? new Date(holder.since).toISOString() : null,
  }
}

/** How a holder holds: `exclusive`, `shared`, or `limit=N` for one of a semaphore's N. */
export function modeOf(lock: LockInfo, holder: HolderInfo): string {
  if (lock.limit !== undefined && lock.limit > 1) return `limit=${lock.limit}`
  return holder.shared ? 'shared' : 'exclusive'
}

/** A lock in --json: its oldest holder as `holder` (as before semaphores), every one in `holders`. */
export function lockJson(lock: LockInfo): Record<string, unknown> {
  const holders = holdersOf(lock)
  return {
    key: lock.key,
    holder: holderJson(lock.holder),
    holders: holders.map((h) => ({...holderJson(h), mode: modeOf(lock, h)})),
    limit: lock.limit ?? 1,
    waiters: lock.waiters,
  }
}

export function ordinal(n: number): string {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th')
  return `${n}${suffix}`
}

/** "3m ago" style age of a wall-clock time. */
export function age(sinceMs: number, now = Date.now()): string {
  if (!sinceMs) return '?'
  return `${formatMs(Math.max(0, now - sinceMs))} ago`
}
