import {uptime} from 'node:os'

/**
 * The clock a client counts its leases on: milliseconds that go on while the machine sleeps.
 *
 * performance.now() is CLOCK_MONOTONIC, which stops while the system is suspended (a laptop lid
 * closed, `systemctl suspend`). The lock service's clock runs on meanwhile — another machine's,
 * or etcd's — so after a suspend of 10 minutes a client counting on performance.now() went on
 * believing in a 60 s lease that had ended long before, for up to its whole length
 * (docs/semantics.md, "Checking a lease"). This clock adds the time spent suspended, as
 * CLOCK_BOOTTIME counts it (Linux's /proc/uptime, which os.uptime() reads at 10 ms).
 *
 * Reading the boot clock costs ~5 µs, too much for every request; Date.now() costs nothing and
 * jumps ahead of the monotonic clock by the suspended time as the system resumes (the kernel
 * moves the wall clock on too). So the boot clock is read only when the wall clock has gone
 * ahead of the monotonic one since the last reading; a wall clock stepped forward (NTP, `date
 * -s`) reads the boot clock and finds no suspend. Counting a suspend a little long is the safe
 * side (the lease ends here a little early), so each is rounded up by the boot clock's step.
 *
 * A service on this machine (lockd over a unix socket: the embedded one, or a local server)
 * counts its leases on the same monotonic clock, stopped by the same suspend: its client counts
 * none either (`countsSuspends: false`), so a laptop that slept does not end a `hold` whose
 * lock lockd still holds. Over TCP the service may be anywhere, even behind a port on
 * localhost (an ssh tunnel).
 *
 * Elsewhere than Linux, os.uptime() counts from the boot time by the wall clock (whole seconds
 * on macOS): a wall clock stepped ahead is then taken for a suspend (the safe side).
 */
export interface LeaseClockSources {
  /** Monotonic milliseconds (performance.now()). */
  monotonic(): number
  /** Wall-clock milliseconds (Date.now()). */
  wall(): number
  /** Milliseconds since boot, suspended time included (CLOCK_BOOTTIME). */
  boot(): number
}

const systemSources: LeaseClockSources = {
  monotonic: () => performance.now(),
  wall: () => Date.now(),
  boot: () => uptime() * 1000,
}

/** How far the wall clock must go ahead of the monotonic clock before the boot clock is read. */
const WALL_AHEAD_MS = 50
/** /proc/uptime's step: a boot-clock difference below twice this is noise, not a suspend. */
const BOOT_STEP_MS = 10

export class LeaseClock {
  /** Time spent suspended since this clock was made (rounded up). */
  private suspendedMs = 0
  private wallAhead = 0
  private bootAhead = 0
  private readonly sources: LeaseClockSources
  private readonly countsSuspends: boolean

  constructor(
    options: {
      sources?: LeaseClockSources
      /** False: the service counts on this machine's monotonic clock too (see above). */
      countsSuspends?: boolean
    } = {},
  ) {
    this.sources = options.sources ?? systemSources
    this.countsSuspends = options.countsSuspends ?? true
    // (Only a clock that counts suspends reads the wall and boot clocks, here or ever.)
    if (!this.countsSuspends) return
    const monotonic = this.sources.monotonic()
    this.wallAhead = this.sources.wall() - monotonic
    this.bootAhead = this.sources.boot() - monotonic
  }

  /** Milliseconds, never going back, that include every suspend since this clock was made. */
  now(): number {
    const monotonic = this.sources.monotonic()
    if (!this.countsSuspends) return monotonic
    const wallAhead = this.sources.wall() - monotonic
    if (wallAhead - this.wallAhead > WALL_AHEAD_MS) {
      const bootAhead = this.sources.boot() - monotonic
      const suspended = bootAhead - this.bootAhead
      if (suspended > 2 * BOOT_STEP_MS) {
        this.suspendedMs += suspended + BOOT_STEP_MS
        this.bootAhead = bootAhead
      }
    }
    // Also after a step back: the next suspend is measured from here.
    this.wallAhead = wallAhead
    return monotonic + this.suspendedMs
  }
}
