import {randomBytes} from 'node:crypto'
import {WAIT_FOREVER, type GrantInfo} from '../protocol/messages.js'
import {backoffDelay, sleep, tryUntil} from './async.js'
import type {DistributedLock, TryLockOptions} from './distributed-lock.js'
import {AbortedError, LockError, mayPass, noAnswerWithin, quoteKey} from './errors.js'

/**
 * One acquisition whose wait (`waitMs`) bounds everything, time spent unable to reach the
 * service included, as `hold`'s first acquisition (docs/semantics.md, "Waiting"): a lockd
 * restarting, or refusing for its connection limit, no longer ends `lock --wait 10m` at once
 * with exit 4. Every try carries one attempt id, so a grant made as a connection dropped is
 * answered to the next try instead of being left held by a token nobody has. With no wait (try
 * once) it is one try. When the wait runs out, the last answer stands: held (exit 1), or the
 * last error (unreachable: exit 4).
 */
export async function acquireWithin(lock: DistributedLock, options: TryLockOptions & {onRetry?: (error: LockError, delayMs: number) => void}): Promise<GrantInfo> {
  const {onRetry, ...acquire} = options
  const waitMs = acquire.waitMs ?? 0
  if (waitMs === 0) return lock.acquire(acquire)
  const forever = waitMs === WAIT_FOREVER || waitMs === Number.POSITIVE_INFINITY
  const deadline = forever ? Number.POSITIVE_INFINITY : performance.now() + waitMs
  const attempt = acquire.attempt ?? randomBytes(16).toString('base64url')
  let lastError: LockError | null = null
  for (let tries = 0; ; tries++) {
    // Given up a moment after the wait's end if the service does not answer (tryUntil).
    const thisTry = forever ? null : tryUntil(deadline, acquire.signal)
    try {
      return await lock.acquire({...acquire, attempt, signal: thisTry?.signal ?? acquire.signal, waitMs: forever ? WAIT_FOREVER : Math.max(0, Math.floor(deadline - performance.now()))})
    } catch (error) {
      if (thisTry?.overran() && !acquire.signal?.aborted) throw lastError ?? noAnswerWithin(lock.key, waitMs)
      const left = deadline - performance.now()
      if (!(error instanceof LockError) || !mayPass(error) || left <= 0 || acquire.signal?.aborted) throw error
      lastError = error
      const delayMs = Math.min(backoffDelay(tries, 200, 2000), left)
      onRetry?.(error, delayMs)
      await sleep(delayMs, acquire.signal)
      if (acquire.signal?.aborted) throw new AbortedError(`stopped waiting for ${quoteKey(lock.key)}`)
    } finally {
      thisTry?.done()
    }
  }
}
