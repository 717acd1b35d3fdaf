import {LockError, quoteKey} from '../client/errors.js'
import {ErrorCode} from '../protocol/errors.js'

/**
 * The fence of the grant of `key` that this process runs under, from its environment: `hold KEY
 * -- CMD` gives CMD LOCKCTL_KEY and LOCKCTL_FENCE, and so does `eval "$(lockctl lock KEY
 * --export)"` to the script that runs it. Null when the environment names another key, or none,
 * and for a semaphore of more than 1 (`limit`): waiting behind one's own slot may end, as
 * another slot frees.
 */
export function ownGrantFence(key: string, limit = 1, env: NodeJS.ProcessEnv = process.env): number | null {
  if (limit > 1 || env.LOCKCTL_KEY !== key || env.LOCKCTL_TOKEN === undefined) return null
  const fence = Number(env.LOCKCTL_FENCE)
  return Number.isSafeInteger(fence) && fence > 0 ? fence : null
}

/**
 * Queued behind the grant this process runs under (a `hold KEY` inside the command of a `hold
 * KEY`): that hold renews until this process ends, so the wait would never end (and after a
 * `lock --export`, it would wait for its own lease to run out). Refused at once, as "held"
 * (exit 1, or --conflict-exit-code), with what to do instead.
 */
export class OwnGrantWaitError extends LockError {
  constructor(
    readonly key: string,
    readonly fence: number,
  ) {
    super(
      ErrorCode.LOCK_HELD,
      `${quoteKey(key)} is already held by the grant this process runs under (fence ${fence}: LOCKCTL_KEY and LOCKCTL_FENCE in its environment, set by hold or lock --export); it would be waiting for itself: use that grant, or unlock it first`,
    )
  }
}
