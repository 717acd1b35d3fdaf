/**
 * An AbortSignal that is true to a deadline at the moment it is read.
 *
 * A timer that aborts a signal at a lease's deadline runs late whenever the process was paused
 * (SIGSTOP, a long GC, a laptop lid): user code resumed by its own timer would read
 * `signal.aborted === false` after the lease is gone. This signal checks the deadline itself in
 * `aborted`, `reason` and `throwIfAborted()`, and aborts on the spot when it has passed, so a
 * check right before a protected action tells the truth (docs/semantics.md, "Checking a lease").
 */

// The prototype's own accessors, called with the signal as `this` below.
/* eslint-disable @typescript-eslint/unbound-method */
const abortedOf = Object.getOwnPropertyDescriptor(AbortSignal.prototype, 'aborted')!.get!
const reasonOf = Object.getOwnPropertyDescriptor(AbortSignal.prototype, 'reason')!.get!
const throwIfAbortedOf = AbortSignal.prototype.throwIfAborted
/* eslint-enable @typescript-eslint/unbound-method */

/**
 * The controller's signal, with reads that first call `check`: `check` aborts the controller
 * (synchronously) when the deadline has passed.
 */
export function deadlineSignal(controller: AbortController, check: () => void): AbortSignal {
  const signal = controller.signal
  const checked = () => {
    if (!abortedOf.call(signal)) check()
  }
  Object.defineProperties(signal, {
    aborted: {
      get() {
        checked()
        return abortedOf.call(signal)
      },
    },
    reason: {
      get() {
        checked()
        return reasonOf.call(signal)
      },
    },
    throwIfAborted: {
      value() {
        checked()
        throwIfAbortedOf.call(signal)
      },
    },
  })
  return signal
}
