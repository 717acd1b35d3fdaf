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
