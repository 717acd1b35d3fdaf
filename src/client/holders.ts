import type {HolderInfo, LockInfo} from '../protocol/messages.js'

/** Every holder of a lock, oldest first (a lock with one holder, or an older lockd, sends only `holder`). */
export function holdersOf(lock: LockInfo | null): HolderInfo[] {
  if (!lock) return []
  return lock.holders ?? (lock.holder ? [lock.holder] : [])
}
