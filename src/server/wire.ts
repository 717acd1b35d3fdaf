import type {GrantInfo, HolderInfo, LockInfo} from '../protocol/messages.js'
import type {Holder, ListedHolder, LockView} from './lock-table.js'

/** The lock table's own types as the wire shows them. `now`: the table clock's reading. */

export function holderInfo(holder: ListedHolder, now: number): HolderInfo {
  const info: HolderInfo = {owner: holder.owner, fence: holder.fence, leaseMs: holder.leaseMs, leaseLeftMs: Math.max(0, Math.round(holder.expiresAt - now)), since: holder.since}
  // (Set, not spread in: a watch snapshot makes one of these for each of a million locks.)
  if (holder.shared) info.shared = true
  return info
}

/** A grant as handed to its new owner: with the token. */
export function grantInfo(key: string, holder: Holder, now: number): GrantInfo {
  return {key, token: holder.token, ...holderInfo(holder, now)}
}

export function lockInfo(view: LockView<ListedHolder>, now: number): LockInfo {
  const info: LockInfo = {key: view.key, holder: view.holder ? holderInfo(view.holder, now) : null, waiters: view.waiters}
  // Only when there are several: a list of 100k plain locks stays as large as it was.
  if (view.holders.length > 1) info.holders = view.holders.map((h) => holderInfo(h, now))
  if (view.limit > 1) info.limit = view.limit
  return info
}
