/** Small async helpers shared by the client's waiting, watching and renewing code. */

import {atDeadline} from '../util/timers.js'

/** An unbounded FIFO of values with an async take; `close` wakes a taker with `undefined`. */
export class AsyncQueue<T> {
  private readonly items: T[] = []
  private waiter: ((value: T | undefined) => void) | null = null
  private closed = false

  push(item: T): void {
    if (this.closed) return
    if (this.waiter) {
      const waiter = this.waiter
      this.waiter = null
      waiter(item)
    } else {
      this.items.push(item)
    }
  }

  take(): Promise<T | undefined> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift())
    if (this.closed) return Promise.resolve(undefined)
    return new Promise((resolve) => (this.waiter = resolve))
  }

  close(): void {
    this.closed = true
    this.waiter?.(undefined)
    this.waiter = null
  }
}

/** Reconnect delay: exponential with jitter, capped, so many watchers do not return in step. */
export function backoffDelay(attempt: number, baseMs = 100, maxMs = 5000): number {
  const exp = Math.min(maxMs, baseMs * 2 ** attempt)
  return exp / 2 + Math.random() * (exp / 2)
}

/** Sleep that ends early when the signal aborts; leaves no listener behind either way. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      cancel()
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const cancel = atDeadline(performance.now() + ms, done)
    if (signal?.aborted) done()
    else signal?.addEventListener('abort', done, {once: true})
  })
}

/**
 * `promise`, or null as soon as `signal` aborts (whichever comes first); leaves no listener
 * behind. For an answer that is only worth waiting for while the caller still waits.
 */
export async function unlessAborted<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T | null> {
  if (!signal) return promise
  if (signal.aborted) return null
  let onAbort = () => {}
  const aborted = new Promise<null>((resolve) => {
    onAbort = () => resolve(null)
    signal.addEventListener('abort', onAbort, {once: true})
  })
  try {
    return await Promise.race([promise, aborted])
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

/** How long past a wait's end one try may still answer (a queued wait's own timeout comes then). */
export const ANSWER_GRACE_MS = 500

/**
 * The signal for one try of a wait that ends at `deadline`: aborted with `outer`, or a moment
 * after the deadline. A service that hangs instead of answering (etcd without a leader, a paused
 * lockd) must not stretch `--wait 3s` by a whole request deadline (`--timeout`, 5s). `overran()`
 * says whether the deadline did it; `done()` disarms the timer once the try has ended.
 */
export function tryUntil(deadline: number, outer?: AbortSignal): {signal: AbortSignal; overran: () => boolean; done: () => void} {
  const controller = new AbortController()
  let overran = false
  const onOuter = () => controller.abort(outer?.reason)
  if (outer?.aborted) onOuter()
  else outer?.addEventListener('abort', onOuter, {once: true})
  // (atDeadline: a wait of up to 30 days is longer than one timer holds.)
  const cancel = atDeadline(deadline + ANSWER_GRACE_MS, () => {
    overran = true
    controller.abort()
  })
  return {
    signal: controller.signal,
    overran: () => overran,
    done: () => {
      cancel()
      outer?.removeEventListener('abort', onOuter)
    },
  }
}
