import {AsyncQueue} from './async.js'
import type {ConnectionState} from './backend.js'

/**
 * A backend's connection state (Atomix's CONNECTED / SUSPENDED / CLOSED), told once per change
 * to listeners, and as an async iterable (nats.js's `status()`), for both backends alike.
 */
export class ConnectionStateEmitter {
  private current: ConnectionState | null = null
  private readonly listeners = new Set<(state: ConnectionState) => void>()

  get state(): ConnectionState | null {
    return this.current
  }

  /** A new state; the same state again is not a change and is not told. */
  set(state: ConnectionState): void {
    if (state === this.current) return
    this.current = state
    for (const listener of [...this.listeners]) listener(state)
  }

  on(listener: (state: ConnectionState) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /**
   * The changes from now on, until `closed` (which ends it), the signal aborts, or the loop
   * stops; the listener goes away with the iterator.
   */
  async *changes(signal?: AbortSignal): AsyncGenerator<ConnectionState> {
    const queue = new AsyncQueue<ConnectionState>()
    const off = this.on((state) => {
      queue.push(state)
      if (state === 'closed') queue.close()
    })
    const onAbort = () => queue.close()
    signal?.addEventListener('abort', onAbort, {once: true})
    try {
      if (this.current === 'closed') return
      for (let state = await queue.take(); state !== undefined; state = await queue.take()) yield state
    } finally {
      off()
      signal?.removeEventListener('abort', onAbort)
    }
  }
}
