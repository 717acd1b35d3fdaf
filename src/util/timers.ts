/**
 * The longest delay a Node timer keeps: a longer one fires after 1 ms, with only a warning
 * (TimeoutOverflowWarning). `lock --wait 30d` (waits may last 30 days, docs/protocol.md) gave up
 * after 6 ms.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Calls `fn` once performance.now() has reached `deadline`, however far away that is: a delay
 * longer than one timer can hold is waited out in steps. Answers a function that cancels it.
 */
export function atDeadline(deadline: number, fn: () => void): () => void {
  let timer: NodeJS.Timeout
  const arm = () => {
    const left = deadline - performance.now()
    timer = left > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(fn, Math.max(0, left))
  }
  arm()
  return () => clearTimeout(timer)
}
