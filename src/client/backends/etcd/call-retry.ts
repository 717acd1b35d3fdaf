/**
 * etcd3's policy for a whole call (its `faultHandling.global`): a call that failed in a way worth
 * another try (etcd3's isRecoverableError) is tried again, at most `attempts` times in all; each
 * try goes to the next member of the pool's shuffle, so a try again is a fail-over.
 *
 * Not etcd3's default (three more tries whatever the failure), under which one request to a
 * member that hangs took four request deadlines: `lockctl lock` against a stopped etcd, or a port
 * where something silent listens, gave up after 20 s with `--timeout 5s`. A try that ran into its
 * deadline is made again at most once per member, plus once: the members may have been electing
 * a leader (a member answers nothing meanwhile; under load an election outlasted a 3 s
 * deadline). A one-member cluster that hangs fails after two deadlines; a paused member among
 * healthy ones costs one, then another member answers.
 */
export interface CallRetryPolicy {
  /** etcd3 calls only this. */
  execute<T>(fn: () => PromiseLike<T> | T): Promise<T>
}

export interface CallRetryOptions {
  /** A failure worth another try (etcd3's isRecoverableError). */
  retryable(error: unknown): boolean
  /** A failure that spent its whole deadline (gRPC's DEADLINE_EXCEEDED). */
  timedOut(error: unknown): boolean
  /** Members in the pool: one more than this many tries may spend a deadline. */
  members: number
  /** Tries in all (etcd3's default: 4). */
  attempts: number
}

export function callRetry(options: CallRetryOptions): CallRetryPolicy {
  return {
    async execute<T>(fn: () => PromiseLike<T> | T): Promise<T> {
      let deadlines = 0
      for (let attempt = 1; ; attempt++) {
        try {
          return await fn()
        } catch (error) {
          if (!options.retryable(error) || attempt >= options.attempts) throw error
          if (options.timedOut(error) && ++deadlines > options.members) throw error
        }
      }
    },
  }
}
