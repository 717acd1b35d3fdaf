import {randomBytes} from 'node:crypto'
import {WAIT_FOREVER, type GrantInfo, type HolderInfo} from '../protocol/messages.js'
import {leaseProblem, waitProblem} from '../protocol/validate.js'
import type {ConnectionState, LockBackend} from './backend.js'
import {DistributedLock} from './distributed-lock.js'
import {BadInputError, ErrorCode, LeaseLostError, LockError, noAnswerWithin, quoteKey} from './errors.js'
import {sleep, tryUntil} from './async.js'
import {deadlineSignal} from './deadline-signal.js'

export const DEFAULT_RETRY_MILLIS = [1000, 10_000, 30_000, 60_000]

/** The longest the watchdog sleeps between looks at the lease (armWatchdog). */
const WATCHDOG_STEP_MS = 1000

export interface AutoRenewalLockOptions {
  /** Lease of each grant; renewed at half of it. */
  leaseMs: number
  /** Delays between failed renewals (and failed acquires); the last one repeats. */
  retryMillis?: number[]
  /**
   * How long the *first* acquisition may take (default forever), time spent unable to reach
   * the service included. When it runs out the lock gives up: `ready` rejects (LockHeldError
   * or WaitTimeoutError if the service answered, else the last error, e.g. UnreachableError)
   * and the lock closes. After a loss it always waits again, forever.
   */
  waitMs?: number
  /**
   * Acquire again after a loss (default true). `hold` with a command turns it off: the
   * command was started with the lost grant's token and fence, which a new grant would not
   * change, so the run ends with the loss instead.
   */
  reacquire?: boolean
  owner: string
  /** A semaphore of this many holders (see DistributedLockOptions.limit). */
  limit?: number
  /** Shared grants of a lock (see DistributedLockOptions.shared). */
  shared?: boolean
  /** Fires on every new grant, with its fence. Strictly alternates with onLost. */
  onAcquired?: (grant: GrantInfo) => void
  /** Fires once per grant that is lost (lease gone as the client counts it, or "not the holder"). */
  onLost?: (reason: LeaseLostError) => void
  /** Connection state as the backend reports it. */
  onStateChange?: (state: ConnectionState) => void
  /**
   * An acquisition failed for a reason other than the lock being held; it is retried after
   * `delayMs` (the backoff, cut to what is left of the first acquisition's waitMs).
   */
  onRetry?: (error: Error, delayMs: number) => void
  /** Called while waiting in the queue: our place and the holder. */
  onQueued?: (info: {position: number; holder: HolderInfo | null}) => void
  /** Aborting it closes the lock (releasing it if held). */
  signal?: AbortSignal
}

type Phase = 'acquiring' | 'held' | 'closed'

/**
 * A lock that keeps itself held: modelled on Dongting's AutoRenewalLock, with the sharp edges
 * filed off (docs/semantics.md, "Auto-renewal"):
 *  - acquires through the fair queue (a pushed grant, no polling), renews at half the lease;
 *  - a failed renewal is retried with backoff, each delay clamped to the lease that is left, so
 *    a short lease still gets several tries;
 *  - when the lease is gone as the client counts it (from the send time of the last successful
 *    renewal), or a renewal is answered "not the holder", onLost fires and acquiring starts again;
 *  - onAcquired / onLost strictly alternate and never repeat;
 *  - `signal` aborts when the current grant is lost, for user code to stop its work.
 */
export class AutoRenewalLock {
  private phase: Phase = 'acquiring'
  /** A fresh lock object per grant: a stale in-flight renewal can never revive a lost grant. */
  private current: DistributedLock | null = null
  private generation = 0
  private renewTimer: NodeJS.Timeout | null = null
  private watchdog: NodeJS.Timeout | null = null
  private retryIndex = 0
  /** The acquire in flight, which close() waits for (aborted, it ends at once; a grant still on its way is given back). */
  private acquiring: Promise<unknown> | null = null
  private acquireAbort = new AbortController()
  private grantAbort: AbortController | null = null
  private lastError: Error | null = null
  private unsubscribe: () => void
  private readyResolve!: (grant: GrantInfo) => void
  private readyReject!: (error: Error) => void
  private firstAcquisition = true
  /** Resolves at the first grant; rejects if the first acquisition gave up or the lock was closed first. */
  readonly ready: Promise<GrantInfo>

  constructor(
    readonly key: string,
    private readonly backend: LockBackend,
    private readonly options: AutoRenewalLockOptions,
  ) {
    const problem = leaseProblem(options.leaseMs) ?? (options.waitMs === undefined ? null : waitProblem(options.waitMs))
    if (problem) throw new BadInputError(problem)
    if (options.retryMillis && (options.retryMillis.length === 0 || options.retryMillis.some((d) => !(d > 0)))) {
      throw new BadInputError('retryMillis must be a non-empty list of positive delays')
    }
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve
      this.readyReject = reject
    })
    this.ready.catch(() => {}) // observed by whoever awaits it; never an unhandled rejection
    this.unsubscribe = backend.onStateChange((state) => options.onStateChange?.(state))
    if (options.signal?.aborted) {
      void this.close()
    } else {
      options.signal?.addEventListener('abort', () => void this.close(), {once: true})
      void this.acquireLoop()
    }
  }

  get fence(): number | undefined {
    return this.phase === 'held' ? this.current?.fence : undefined
  }

  get token(): string | undefined {
    return this.phase === 'held' ? this.current?.token : undefined
  }

  isHeldByCurrentClient(): boolean {
    return this.phase === 'held' && (this.current?.isHeldByCurrentClient() ?? false)
  }

  /**
   * The check to make right before each protected action: true only while the lease, counted
   * from the send time of the last successful acquire or renewal, has not run out. Synchronous
   * and true to the clock at the moment it is called, however late timers are (a paused
   * process): when the lease has run out it also ends the grant here and now (onLost, signal).
   */
  isHeld(): boolean {
    this.checkDeadline()
    return this.isHeldByCurrentClient()
  }

  /** The lease ran out as we count it, and no timer has noticed yet: lose the grant now. */
  private checkDeadline(): void {
    const lock = this.current
    if (this.phase !== 'held' || !lock || lock.isHeldByCurrentClient()) return
    this.lose(new LeaseLostError(this.key, this.lastError ? `the lease ran out before it could be renewed (${this.lastError.message})` : 'the lease ran out'))
  }

  leaseRestMillis(): number {
    return this.phase === 'held' ? (this.current?.leaseRestMillis() ?? 0) : 0
  }

  /**
   * Aborts when the current grant is lost or the lock is closed; already aborted when not
   * held. Its `aborted`, `reason` and `throwIfAborted()` check the lease's deadline when read,
   * so they are true even if no timer has run since the lease ran out (a paused process).
   */
  get signal(): AbortSignal {
    return this.grantSignal ?? AbortSignal.abort(new LeaseLostError(this.key, 'not held'))
  }

  private grantSignal: AbortSignal | null = null

  private get retryMillis(): number[] {
    return this.options.retryMillis ?? DEFAULT_RETRY_MILLIS
  }

  private nextRetryDelay(): number {
    const delays = this.retryMillis
    const delay = delays[Math.min(this.retryIndex, delays.length - 1)]
    this.retryIndex++
    return delay
  }

  private async acquireLoop(): Promise<void> {
    // One id for every retry of this acquisition: if a grant was made as a connection dropped,
    // the retry gets it back instead of queueing behind it. A later acquisition gets a new id.
    const attemptId = randomBytes(16).toString('base64url')
    const first = this.firstAcquisition
    // The first acquisition's wait bounds everything, retries while unreachable included.
    const bounded = first && this.options.waitMs !== undefined && this.options.waitMs !== WAIT_FOREVER
    const deadline = bounded ? performance.now() + this.options.waitMs! : Number.POSITIVE_INFINITY
    while (this.phase === 'acquiring') {
      const generation = ++this.generation
      const lock: DistributedLock = new DistributedLock(this.key, this.backend, this.options.owner, {
        limit: this.options.limit,
        shared: this.options.shared,
        onLost: (reason) => {
          if (this.current === lock && this.phase === 'held') this.lose(reason)
        },
      })
      const waitMs = bounded ? Math.max(0, Math.floor(deadline - performance.now())) : WAIT_FOREVER
      // Given up a moment after the wait's end if the service does not answer (tryUntil).
      const thisTry = bounded ? tryUntil(deadline, this.acquireAbort.signal) : null
      try {
        const attempt = lock.acquire({
          leaseMs: this.options.leaseMs,
          waitMs,
          attempt: attemptId,
          signal: thisTry?.signal ?? this.acquireAbort.signal,
          onQueued: this.options.onQueued,
        })
        this.acquiring = attempt
        const grant = await attempt
        if (this.phase !== 'acquiring' || generation !== this.generation) {
          await lock.close() // closed while the grant was on its way: give it back
          return
        }
        this.retryIndex = 0
        this.firstAcquisition = false
        this.current = lock
        this.phase = 'held'
        this.grantAbort = new AbortController()
        this.grantSignal = deadlineSignal(this.grantAbort, () => this.checkDeadline())
        this.armWatchdog()
        // Half the lease, or sooner when the grant came with less left (a renewal right after
        // a long wait may have failed: the grant is kept, and renewed while it is still valid).
        this.scheduleRenewal(Math.min(this.options.leaseMs, lock.leaseRestMillis()) / 2)
        this.readyResolve(grant)
        this.options.onAcquired?.(grant)
        return
      } catch (caught) {
        if (this.phase !== 'acquiring') return
        // The service did not answer by the wait's end: the wait ends with the last error, or this one.
        const error = thisTry?.overran() ? (this.lastError ?? noAnswerWithin(this.key, this.options.waitMs!)) : caught
        const code = (error as LockError).code
        const left = deadline - performance.now()
        const gaveUp = bounded && (code === ErrorCode.LOCK_HELD || code === ErrorCode.WAIT_TIMEOUT || left <= 0)
        // Bad input and refused credentials (a wrong password, a missing role) are the same on
        // every try: retrying them would leave `hold` "suspended" forever instead of exit 2 or 6.
        if (gaveUp || code === ErrorCode.BAD_INPUT || code === ErrorCode.NOT_PERMITTED) {
          this.readyReject(error as Error)
          await this.close()
          return
        }
        // Unreachable, protocol trouble, a server error: try again after the backoff (within
        // the first acquisition's wait, when it has one; a last try comes at its end).
        this.lastError = error as Error
        const delay = Math.min(this.nextRetryDelay(), left)
        this.options.onRetry?.(error as Error, delay)
        await sleep(delay, this.acquireAbort.signal)
      } finally {
        thisTry?.done()
        this.acquiring = null
      }
    }
  }

  private scheduleRenewal(delayMs: number): void {
    if (this.renewTimer) clearTimeout(this.renewTimer)
    this.renewTimer = setTimeout(() => void this.renew(), Math.max(0, delayMs))
  }

  /**
   * Fires `lost` when the lease runs out as we count it, whatever renewals are doing. It looks
   * at least every WATCHDOG_STEP_MS: a timer counts on the monotonic clock, which stops while
   * the machine is suspended, and the lease clock does not (lease-clock.ts), so after a resume
   * a timer set for the deadline would fire as late as the suspend was long.
   */
  private armWatchdog(): void {
    if (this.watchdog) clearTimeout(this.watchdog)
    const lock = this.current
    if (!lock) return
    this.watchdog = setTimeout(
      () => {
        if (this.current !== lock || this.phase !== 'held') return
        if (lock.isHeldByCurrentClient()) {
          this.armWatchdog() // renewed meanwhile
          return
        }
        this.checkDeadline()
      },
      Math.min(lock.leaseRestMillis() + 1, WATCHDOG_STEP_MS),
    )
  }

  private async renew(): Promise<void> {
    const lock = this.current
    if (!lock || this.phase !== 'held') return
    try {
      await lock.updateLease(this.options.leaseMs)
      if (this.current !== lock || this.phase !== 'held') return
      this.retryIndex = 0
      this.lastError = null
      this.armWatchdog()
      this.scheduleRenewal(this.options.leaseMs / 2)
    } catch (error) {
      if (this.current !== lock || this.phase !== 'held') return
      if ((error as LockError).code === ErrorCode.NOT_HOLDER) {
        this.lose(new LeaseLostError(this.key, 'the server says this client is not the holder any more (force-released or expired)'))
        return
      }
      this.lastError = error as Error
      const rest = lock.leaseRestMillis()
      // Retry before the lease is gone: a delay longer than what is left would waste the grant.
      const delay = Math.min(this.nextRetryDelay(), Math.max(rest / 2, 50))
      this.options.onRetry?.(error as Error, delay)
      if (rest > 0) this.scheduleRenewal(delay)
    }
  }

  private lose(reason: LeaseLostError): void {
    const lock = this.current
    this.stopTimers()
    this.current = null
    this.phase = this.options.reacquire === false ? 'closed' : 'acquiring'
    this.grantAbort?.abort(reason)
    this.grantAbort = null
    this.grantSignal = null
    // Give back whatever the server may still think we hold (harmless if it is gone).
    if (lock) void lock.close()
    this.options.onLost?.(reason)
    if (this.phase === 'acquiring') void this.acquireLoop()
  }

  private stopTimers(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer)
    if (this.watchdog) clearTimeout(this.watchdog)
    this.renewTimer = null
    this.watchdog = null
  }

  private closing: Promise<boolean> | null = null

  /**
   * Stop renewing and release if held (`release: false` leaves the grant to run out its lease).
   * Aborts `signal` first, then waits for an in-flight renewal, then releases. Idempotent.
   * Resolves false when a grant it held could not be given back (the service did not answer:
   * it holds the grant until its lease runs out), else true.
   */
  close(options: {release?: boolean} = {}): Promise<boolean> {
    this.closing ??= (async () => {
      const wasHeld = this.phase === 'held'
      this.phase = 'closed'
      this.stopTimers()
      // Whoever works under the signal stops first: from here on the lock may be released.
      this.grantAbort?.abort(new LeaseLostError(this.key, 'closed'))
      this.grantAbort = null
      this.grantSignal = null
      this.acquireAbort.abort()
      await this.acquiring?.catch(() => {})
      const lock = this.current
      this.current = null
      this.unsubscribe()
      this.readyReject(new LockError(ErrorCode.CLOSED, `the auto-renewing lock on ${quoteKey(this.key)} was closed`))
      // Released by its token at once, without waiting for a renewal in flight: a service that
      // does not answer would hold close() (and a lost or finished hold's exit) for the
      // renewal's whole request deadline. The renewal's late answer changes nothing.
      if (lock && wasHeld && options.release !== false) return lock.close()
      return true
    })()
    return this.closing
  }
}
