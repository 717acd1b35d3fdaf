import type {GrantInfo, HolderInfo} from '../protocol/messages.js'
import {formatMs} from '../client/errors.js'

export {formatMs}

/** Quote for POSIX sh, so `eval "$(lockctl lock k --export)"` is safe with any key. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`
}

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

export function ordinal(n: number): string {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th')
  return `${n}${suffix}`
}

/** "3m ago" style age of a wall-clock time. */
export function age(sinceMs: number, now = Date.now()): string {
  if (!sinceMs) return '?'
  return `${formatMs(Math.max(0, now - sinceMs))} ago`
}
