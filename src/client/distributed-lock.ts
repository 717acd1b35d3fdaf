import {WAIT_FOREVER, type GrantInfo, type HolderInfo} from '../protocol/messages.js'
import {attemptProblem, leaseProblem, modeProblem, ownerProblem, tokenProblem, waitProblem} from '../protocol/validate.js'
import type {LockBackend} from './backend.js'
import {BadInputError, BusyError, ClosedError, ErrorCode, LeaseLostError, LockError, NotHolderError, quoteKey} from './errors.js'

export interface TryLockOptions {
  /** Lease length; the lock is ours for this long after the request was sent. Default 60 s. */
  leaseMs?: number
  /** 0 = try once (default), N ms in the fair queue, or Infinity / -1 for forever. */
  waitMs?: number
  signal?: AbortSignal
  onQueued?: (info: {position: number; holder: HolderInfo | null}) => void
  /**
   * Pass the same random id (16-64 URL-safe characters) when retrying one acquisition after a
   * connection error: a grant made to it whose answer was lost is returned instead of being
   * left to expire while we queue behind it. AutoRenewalLock does this by itself.
   */
  attempt?: string
}

export const DEFAULT_LEASE_MS = 60_000

export interface DistributedLockOptions {
  /**
   * Called, once per grant, when the service says the grant ended by another hand: it expired
   * on the server, was force-released, or released with its token elsewhere. The lock object
   * already holds nothing when this runs. Not called for our own unlock() or close().
   */
  onLost?: (reason: LeaseLostError) => void
  /**
   * A semaphore of this many holders (default 1: a lock); every user of the name must ask with
   * the same limit (docs/semantics.md, "Semaphores and shared locks").
   */
  limit?: number
  /** A shared (read) grant of a lock: beside other shared grants, never an exclusive one. */
  shared?: boolean
}

type State = 'unlocked' | 'locked' | 'closed'

/**
 * One lock on one key, modelled on Dongting's DistributedLock: tryLock with a lease and a wait,
 * updateLease, isHeldByCurrentClient, unlock, close. The lease is counted from the moment the
 * request was sent, so this object stops believing it holds the lock before the server stops
 * honouring it. One operation at a time: a second concurrent one fails with BusyError.
 */
export class DistributedLock {
  private state: State = 'unlocked'
  private deadline = 0
  private grant: GrantInfo | null = null
  private busy = false
  private stopWatchingGrant: (() => void) | null = null
  /** Aborted by close(): an acquire in flight gives up its wait at once. */
  private readonly closeAbort = new AbortController()

  constructor(
    readonly key: string,
    private readonly backend: LockBackend,
    private readonly owner: string,
    private readonly options: DistributedLockOptions = {},
  ) {
    const problem = modeProblem(options.limit, options.shared)
    if (problem) throw new BadInputError(problem)
  }

  /** The token of the current grant (undefined when not held). */
  get token(): string | undefined {
    return this.grant?.token
  }

  /** The fencing token of the current grant (undefined when not held). */
  get fence(): number | undefined {
    return this.grant?.fence
  }

  /** The last grant, as the server described it. */
  get info(): GrantInfo | null {
    return this.grant
  }

  isHeldByCurrentClient(): boolean {
    return this.state === 'locked' && this.backend.leaseClock.now() < this.deadline
  }

  leaseRestMillis(): number {
    return this.state === 'locked' ? Math.max(0, Math.floor(this.deadline - this.backend.leaseClock.now())) : 0
  }

  /** Like acquire(), but answers false instead of throwing when the lock is held or the wait ran out. */
  async tryLock(options: TryLockOptions = {}): Promise<boolean> {
    try {
      await this.acquire(options)
      return true
    } catch (error) {
      if (error instanceof LockError && (error.code === ErrorCode.LOCK_HELD || error.code === ErrorCode.WAIT_TIMEOUT)) return false
      throw error
    }
  }

  /**
   * Acquire (or, when already held, re-acquire with our token, which renews the lease).
   * Throws LockHeldError, WaitTimeoutError, AbortedError, UnreachableError.
   */
  async acquire(options: TryLockOptions = {}): Promise<GrantInfo> {
    const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS
    const waitMs = options.waitMs === undefined ? 0 : options.waitMs === Number.POSITIVE_INFINITY ? WAIT_FOREVER : options.waitMs
    const problem = leaseProblem(leaseMs) ?? waitProblem(waitMs) ?? (options.attempt === undefined ? null : attemptProblem(options.attempt))
    if (problem) throw new BadInputError(problem)
    return this.exclusive(async () => {
      const sentAt = this.backend.leaseClock.now()
      let result
      try {
        result = await this.backend.acquire({
          key: this.key,
          leaseMs,
          waitMs,
          owner: this.owner,
          token: this.isHeldByCurrentClient() ? this.grant!.token : undefined,
          attempt: options.attempt,
          ...(this.options.limit !== undefined && this.options.limit > 1 ? {limit: this.options.limit} : {}),
          ...(this.options.shared ? {shared: true} : {}),
          signal: options.signal ? AbortSignal.any([options.signal, this.closeAbort.signal]) : this.closeAbort.signal,
          onQueued: options.onQueued,
        })
      } catch (error) {
        if (this.state === 'closed') throw new ClosedError(`the lock object for ${quoteKey(this.key)}`)
        throw error
      }
      const {grant, queued, leaseFrom} = result
      if (this.state === 'closed') {
        // Closed while the grant was on its way: give it back; a closed lock never holds.
        await this.backend.release(this.key, grant.token, false).catch(() => {})
        throw new ClosedError(`the lock object for ${quoteKey(this.key)}`)
      }
      // A pushed grant was made at some unknown moment after we sent: sentAt + lease is the
      // only safe deadline, unless the backend knows when the server's lease last (re)started
      // (later: a waiter's lease kept alive; earlier: a shared session lease it could not renew).
      this.hold(grant, (leaseFrom ?? sentAt) + leaseMs)
      if (queued && this.leaseRestMillis() < leaseMs / 2) {
        // The wait ate half of it: renew now to start a full lease. If that fails the grant is
        // still ours until the deadline; throwing it away would leave it held on the server
        // (nobody would release it) while the caller queues again behind everyone else.
        try {
          await this.renewNow(leaseMs)
        } catch (error) {
          // The service let the grant go before its catch-up renewal came (this process was
          // paused, or the grant's push was slow): granted and lost, not "the token does not hold".
          if (error instanceof LockError && error.code === ErrorCode.NOT_HOLDER) {
            throw new LeaseLostError(this.key, 'granted after the wait, but its lease ran out before this client could renew it (was the process paused?)')
          }
          if (!this.isHeldByCurrentClient()) {
            const {token} = this.grant!
            this.drop()
            await this.backend.release(this.key, token, false).catch(() => {})
            throw error
          }
        }
      }
      return this.grant!
    })
  }

  /** Extend the lease to `leaseMs` (default: the current length) from now. */
  async updateLease(leaseMs?: number): Promise<GrantInfo> {
    if (leaseMs !== undefined) {
      const problem = leaseProblem(leaseMs)
      if (problem) throw new BadInputError(problem)
    }
    return this.exclusive(() => this.renewNow(leaseMs ?? this.grant?.leaseMs ?? DEFAULT_LEASE_MS))
  }

  private async renewNow(leaseMs: number): Promise<GrantInfo> {
    if (this.state !== 'locked' || !this.grant) throw new NotHolderError(this.key, `${quoteKey(this.key)} is not held by this lock object`)
    const sentAt = this.backend.leaseClock.now()
    const {token} = this.grant
    try {
      const grant = await this.backend.renew(this.key, token, leaseMs)
      // Ended while the renewal was out — close(), or the service's word that it ended (an etcd
      // watch event can overtake the renewal's answer): it stays ended, never held again here.
      if (this.state !== 'locked' || this.grant?.token !== token) throw new NotHolderError(this.key, `${quoteKey(this.key)} ended while its renewal was on the way`)
      this.hold(grant, sentAt + leaseMs)
      return grant
    } catch (error) {
      // "Not the holder" ends the grant here and now (Dongting keeps believing until its deadline).
      if (error instanceof LockError && error.code === ErrorCode.NOT_HOLDER) this.drop()
      throw error
    }
  }

  /** Release the lock. Throws NotHolderError if the server says we no longer held it. */
  async unlock(): Promise<void> {
    return this.exclusive(async () => {
      if (this.state !== 'locked' || !this.grant) throw new NotHolderError(this.key, `${quoteKey(this.key)} is not held by this lock object`)
      const {token} = this.grant
      this.drop()
      await this.backend.release(this.key, token, false)
    })
  }

  /**
   * Release if held and refuse any further operation; an acquire in flight gives up, and a grant
   * that still arrives is released. Idempotent. Never throws: resolves false when a grant it held
   * could not be given back (the service did not answer), which the service then holds until
   * its lease runs out; else true.
   */
  async close(): Promise<boolean> {
    if (this.state === 'closed') return true
    const token = this.state === 'locked' ? this.grant?.token : undefined
    this.state = 'closed'
    this.grant = null
    this.deadline = 0
    this.stopWatchingGrant?.()
    this.stopWatchingGrant = null
    this.closeAbort.abort()
    if (!token) return true
    // "Not the holder": the grant had ended there already, so nothing is left held.
    return this.backend.release(this.key, token, false).then(
      () => true,
      (error: unknown) => error instanceof NotHolderError,
    )
  }

  private hold(grant: GrantInfo, deadline: number): void {
    // Only someone who listens needs the service to say when a grant ends (a watch on etcd).
    if (grant.token !== this.grant?.token && this.options.onLost) {
      this.stopWatchingGrant?.()
      const {token} = grant
      this.stopWatchingGrant = this.backend.watchGrant(this.key, token, (reason) => this.ended(token, reason))
    }
    this.grant = grant
    this.deadline = deadline
    this.state = 'locked'
  }

  /** The service says the grant ended by another hand: it is over here too, at once. */
  private ended(token: string, reason: string): void {
    if (this.state !== 'locked' || this.grant?.token !== token) return
    this.drop()
    this.options.onLost?.(new LeaseLostError(this.key, reason))
  }

  private drop(): void {
    if (this.state === 'locked') this.state = 'unlocked'
    this.stopWatchingGrant?.()
    this.stopWatchingGrant = null
    this.grant = null
    this.deadline = 0
  }

  private async exclusive<T>(operation: () => Promise<T>): Promise<T> {
    if (this.state === 'closed') throw new ClosedError(`the lock object for ${quoteKey(this.key)}`)
    if (this.busy) throw new BusyError(this.key)
    this.busy = true
    try {
      return await operation()
    } finally {
      this.busy = false
    }
  }
}

export function checkToken(token: string): void {
  const problem = tokenProblem(token)
  if (problem) throw new BadInputError(problem)
}

export function checkOwner(owner: string): void {
  const problem = ownerProblem(owner)
  if (problem) throw new BadInputError(problem)
}
