import type {Socket} from 'node:net'

/**
 * Sockets that have not yet said anything of their own — a TLS connection in its handshake, an
 * HTTP connection before its first request — with when each was accepted, oldest first. When a
 * listener has no room for more, the one silent longest (for at least `afterMs`) is closed to
 * make room, as lockd closes a connection that has sent no hello (docs/protocol.md, "hello"):
 * sockets that never speak must not keep everyone else out until a timeout ends them.
 */
export class SilentSockets<K> {
  private readonly since = new Map<K, {socket: Socket; at: number}>()

  constructor(
    private readonly afterMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** A new socket, silent so far, under `key`; forgotten when it closes. */
  add(key: K, socket: Socket): void {
    this.since.set(key, {socket, at: this.now()})
    socket.once('close', () => this.spoke(key, socket))
  }

  /** It said something (or closed): it is not silent any more. `socket`: only if it is still that one. */
  spoke(key: K, socket?: Socket): void {
    if (socket === undefined || this.since.get(key)?.socket === socket) this.since.delete(key)
  }

  /** The one silent longest, if it has been for `afterMs`: forgotten here, for the caller to close (lockd says why first). */
  takeOldest(): {key: K; socket: Socket} | undefined {
    // (A Map iterates in insertion order: the first entry is the oldest.)
    for (const [key, {socket, at}] of this.since) {
      if (this.now() - at < this.afterMs) return undefined
      this.since.delete(key)
      return {key, socket}
    }
    return undefined
  }

  /** Close the socket silent longest, if it has been for `afterMs`. Answers whether one was closed. */
  closeOldest(): boolean {
    const oldest = this.takeOldest()
    oldest?.socket.destroy()
    return oldest !== undefined
  }
}
