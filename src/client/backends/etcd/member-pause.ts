/**
 * etcd3's policy for one member (its `faultHandling.host`): after `failures` recoverable
 * failures in a row, calls to the member are refused at once for `pauseMs` (the pool then asks
 * another member, or the call fails as unreachable); after the pause every call goes through
 * again, and the first failure pauses it anew.
 *
 * Not cockatiel's circuit breaker, which etcd3 uses by default: half-open, it lets one call
 * through and makes every other call wait for that one. etcd3 sends that call's own retry —
 * after etcd refused its auth token (a member restarted, or the token's --auth-token-ttl ran
 * out while the client was idle) — through the same policy, so the retry waited for the call
 * it belonged to, for ever, and so did every call and stream of the client after it: after one
 * etcd outage a waiter never heard of its turn, and its keepalives never answered.
 */
export interface MemberPausePolicy {
  /** etcd3 calls only this. Never waits for another call. */
  execute<T>(fn: () => PromiseLike<T> | T): Promise<T>
}

export interface MemberPauseOptions {
  /** A failure that counts (etcd3's isRecoverableError: the member did not answer). */
  counts(error: unknown): boolean
  /** The error a call gets while the member is paused (a cockatiel BrokenCircuitError, which etcd3 and mapEtcdError recognise). */
  refusal(): Error
  failures: number
  pauseMs: number
  now?: () => number
}

export function memberPause(options: MemberPauseOptions): MemberPausePolicy {
  const now = options.now ?? (() => performance.now())
  let inARow = 0
  let pausedUntil = Number.NEGATIVE_INFINITY
  return {
    async execute<T>(fn: () => PromiseLike<T> | T): Promise<T> {
      if (now() < pausedUntil) throw options.refusal()
      try {
        const result = await fn()
        inARow = 0
        return result
      } catch (error) {
        // Not reset by a pause: once it ends, one more failure pauses again.
        if (options.counts(error) && ++inARow >= options.failures) pausedUntil = now() + options.pauseMs
        throw error
      }
    },
  }
}
