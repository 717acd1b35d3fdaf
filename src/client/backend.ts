import type {AcquireArgs, GrantInfo, HolderInfo, LockInfo} from '../protocol/messages.js'
import type {LeaseClock} from './lease-clock.js'
import type {WatchOptions, WatchTarget, WatchUpdate} from './watch.js'

export type {GrantInfo, HolderInfo, LockInfo}

/** Atomix's connection states: suspended = cannot reach the service long enough that a lease may have run out. */
export type ConnectionState = 'connected' | 'suspended' | 'closed'

/**
 * One acquire, as the client asks a backend for it: the wire's acquire (key, lease, wait, owner,
 * token, attempt — declared once, in protocol/messages.ts) plus what stays in the client.
 */
export interface AcquireRequest extends Omit<AcquireArgs, 'progress'> {
  signal?: AbortSignal
  /**
   * Called when the request had to queue, and again whenever our place changes: our place
   * (1 = next) and the current holder.
   */
  onQueued?: (info: {position: number; holder: HolderInfo | null}) => void
}

export interface AcquireResult {
  grant: GrantInfo
  /** True when the grant came after waiting in the queue (pushed), false when immediate. */
  queued: boolean
  /**
   * A `leaseClock.now()` moment no later than the last (re)start of the server's lease, when
   * the backend knows it (etcd keeps its session leases alive itself, so it knows when it last
   * did: later than the send for a waiter, possibly earlier for a shared lease it could not
   * renew). The grant is safe until then + leaseMs; without it, until the send + leaseMs.
   */
  leaseFrom?: number
}

/**
 * What a lock service must do for lockctl. lockd implements it now; the etcd backend will
 * implement the same contract, so the client and the CLI never ask which one they talk to.
 * Errors are the typed LockError classes of ./errors.
 */
export interface LockBackend {
  readonly kind: 'lockd' | 'etcd'
  /** The endpoint, as shown to users. */
  readonly label: string
  /** What leases are counted on, here and by the locks made on this backend (suspends included). */
  readonly leaseClock: LeaseClock
  acquire(request: AcquireRequest): Promise<AcquireResult>
  /** Release with the token (or any holder with force); returns who held it. */
  release(key: string, token: string | undefined, force: boolean): Promise<HolderInfo>
  renew(key: string, token: string, leaseMs?: number): Promise<GrantInfo>
  /** Who holds the lock, if `token` holds it now; NotHolderError otherwise. No side effect. */
  check(key: string, token: string): Promise<HolderInfo>
  inspect(key: string): Promise<LockInfo | null>
  list(prefix: string, limit?: number): Promise<{locks: LockInfo[]; total: number}>
  info(): Promise<Record<string, unknown>>
  /**
   * Events of one key or a prefix: a snapshot first, then events in order; after a reconnect a
   * fresh snapshot marked `resync` (events in between may have been missed). Throws
   * UnreachableError if the service cannot be reached at the start.
   */
  watch(target: WatchTarget, options?: WatchOptions): AsyncIterable<WatchUpdate>
  onStateChange(listener: (state: ConnectionState) => void): () => void
  /** The same changes as an async iterable; ends at `closed` or when the signal aborts. */
  stateChanges(signal?: AbortSignal): AsyncGenerator<ConnectionState>
  /**
   * Call `onEnded` as soon as the service says the grant of `token` is over by another hand
   * (expired, force-released, released from elsewhere). lockd pushes it to the holder's
   * connection; on etcd the holder watches its own key. Returns the unsubscribe.
   */
  watchGrant(key: string, token: string, onEnded: (reason: string) => void): () => void
  close(): Promise<void>
}
