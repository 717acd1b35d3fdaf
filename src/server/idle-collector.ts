/**
 * A full garbage collection once lockd has gone quiet after a burst (docs/memory.md). V8
 * collects its old generation when that grows past a limit set at its last collection, never
 * because the process went idle: a lockd that took a million locks and then only waited kept the
 * burst's garbage (~150 MB of heap; its live heap was ~110 MB) in its RSS for as long as it ran.
 * Collected and compacted, most of it is given back (RSS ~390 -> ~250 MB).
 *
 * A full collection stops everything for a moment (~0.1-0.2 s with a million locks), so only when no
 * request has come for two checks in a row (1-2 s), and only when the heap in use has grown well
 * past the least seen in use since the last collection (not at every quiet moment of a lockd at
 * rest).
 */
export interface IdleCollectorOptions {
  collect: () => void
  /** Bytes of heap in use now. */
  heapUsed: () => number
  /** A count that moves with every request: unchanged between two checks, lockd was quiet. */
  activity: () => number
}

/** Checks this many in a row without a request. */
const QUIET_CHECKS = 2
/** Growth since the last collection below which nothing is worth a pause. */
const MIN_GROWTH = 32 * 1024 * 1024

export class IdleCollector {
  private lastActivity = Number.NaN
  private quiet = 0
  /** The least heap in use seen since the last collection (or since lockd started). */
  private baseline: number

  constructor(private readonly options: IdleCollectorOptions) {
    this.baseline = options.heapUsed()
  }

  /** Called every second or so: the heap in use before and after, when it collected. */
  check(): {before: number; after: number} | null {
    const activity = this.options.activity()
    const used = this.options.heapUsed()
    // (What V8 collects by itself lowers it: growth is counted from what was last seen in use.)
    this.baseline = Math.min(this.baseline, used)
    this.quiet = activity === this.lastActivity ? this.quiet + 1 : 0
    this.lastActivity = activity
    if (this.quiet < QUIET_CHECKS) return null
    // Half again the baseline, and at least MIN_GROWTH: worth a pause.
    if (used - this.baseline < Math.max(MIN_GROWTH, this.baseline / 2)) return null
    this.options.collect()
    this.baseline = this.options.heapUsed()
    return {before: used, after: this.baseline}
  }
}
