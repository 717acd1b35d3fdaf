import {anyTlsFile, readTlsFiles, type TlsFilePaths} from '../../tls-files.js'
// Types only: etcd3 itself is imported lazily (it costs ~200 ms to load).
import type {Etcd3, IKeyValue, IOptions, IRequestOp, Watcher} from 'etcd3'
import {WAIT_FOREVER, type GrantInfo, type HolderInfo, type LockInfo} from '../../../protocol/messages.js'
import {backoffDelay, sleep, unlessAborted} from '../../async.js'
import {atDeadline} from '../../../util/timers.js'
import {LeaseClock} from '../../lease-clock.js'
import type {AcquireRequest, AcquireResult, ConnectionState, LockBackend} from '../../backend.js'
import {AbortedError, BadInputError, ErrorCode, LockError, LockHeldError, NotHolderError, quoteKey, UnreachableError, WaitTimeoutError} from '../../errors.js'
import type {WatchOptions, WatchTarget, WatchUpdate} from '../../watch.js'
import {ConnectionStateEmitter} from '../../connection-state.js'
import {diagnoseTls} from './diagnose.js'
import {forgetLogin, isLeaseGone, isOldAuthRevision, isTransient, mapEtcdError, type EtcdErrorTypes} from './errors.js'
import {buf, byCreateRevision, describeKey, fitsBehind, holdingKeys, lockNameOf, makeToken, modeOfKey, parseLockValue, parseToken, prefixEnd, type KeyMode, type LockValue} from './keys.js'
import {describeLimit} from '../../../protocol/limits.js'
import {memberPause} from './member-pause.js'
import {callRetry} from './call-retry.js'
import {SessionPool, type Session} from './sessions.js'
import {watchLocks} from './watch.js'

/**
 * Locks on an etcd v3 cluster, laid out exactly like etcd's own recipe (keys.ts), so lockctl,
 * `etcdctl lock` and Go programs exclude each other on the same name; keys live on this
 * client's session leases (sessions.ts). docs/semantics.md ("etcd") says what differs from lockd.
 *
 * Round trips: acquiring a free lock is one txn (put our key, read the head of the queue), a
 * release one guarded delete, a renewal one keepalive (with a read of our key beside it).
 * A waiter watches only the key just ahead of it, or — when it follows its place in the queue —
 * the deletions under the lock's name, counting its place from the events without reading.
 */

export interface EtcdBackendOptions {
  hosts: {host: string; port: number}[]
  secure: boolean
  label: string
  /** Paths to PEM files. */
  tls?: TlsFilePaths
  auth?: {username: string; password: string}
  requestTimeoutMs: number
  connectTimeoutMs: number
}

/** Our key is gone while we waited: its lease ran out while no member could keep it alive. */
export class QueuePlaceLostError extends UnreachableError {}

/** A connection is reported suspended only when no etcd call succeeded for this long. */
const SUSPEND_AFTER_MS = 2000
/** The longest pause before re-opening a broken watch stream. */
const WATCH_BACKOFF_MAX_MS = 2000
/** How long a member that failed 3 calls in a row is skipped. */
const MEMBER_PAUSE_MS = 1000
/** A key given up is looked for this many times after its put's answer was lost (giveUp). */
const GIVE_UP_LOOKS = 3
const GIVE_UP_RETRY_MS = 500
/** The longest close() waits for keys given up to be deleted. */
const CLOSE_CLEANUP_MS = 3000
/**
 * How long the TLS question after a first failure may take: a TLS server answers a handshake in
 * milliseconds; a silent one added its whole wait (2 s) to a command that had already waited
 * out its deadline.
 */
const TLS_DIAGNOSIS_MS = 1000
/** Tries of one call in all, as etcd3's default retry makes them (three more after the first). */
const CALL_ATTEMPTS = 4
/** list(): lease look-ups in flight at once. */
const LIST_CONCURRENCY = 16

export async function createEtcdBackend(options: EtcdBackendOptions): Promise<EtcdBackend> {
  const [etcd3, {isBrokenCircuitError, ExponentialBackoff, BrokenCircuitError}] = await Promise.all([import('etcd3'), import('cockatiel')])
  // (etcd3 types the policy as a cockatiel IPolicy; it only calls execute().)
  type HostPolicy = ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>
  const pausePolicy = () =>
    memberPause({counts: (error) => etcd3.isRecoverableError(error as Error), refusal: () => new BrokenCircuitError(), failures: 3, pauseMs: MEMBER_PAUSE_MS}) as unknown as HostPolicy
  type GlobalPolicy = NonNullable<IOptions['faultHandling']>['global']
  const retryPolicy = (members: number) =>
    callRetry({
      retryable: (error) => etcd3.isRecoverableError(error as Error),
      timedOut: (error) => error instanceof etcd3.GRPCDeadlineExceededError,
      members,
      attempts: CALL_ATTEMPTS,
    }) as unknown as GlobalPolicy
  const files = readTlsFiles(options.tls ?? {})
  const secure = options.secure || anyTlsFile(options.tls ?? {})
  const urlOf = (h: {host: string; port: number}) => `${secure ? 'https' : 'http'}://${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`
  const credentials = secure ? {rootCertificate: files.ca ?? Buffer.alloc(0), certChain: files.cert, privateKey: files.key} : undefined
  const oneEndpoint = (h: {host: string; port: number}, timeoutMs: number) =>
    new etcd3.Etcd3({
      hosts: [urlOf(h)],
      credentials,
      auth: options.auth,
      dialTimeout: timeoutMs,
      defaultCallOptions: () => ({deadline: Date.now() + timeoutMs}),
      faultHandling: {host: pausePolicy, global: retryPolicy(1)},
    })
  const newClient = () =>
    new etcd3.Etcd3({
      hosts: options.hosts.map(urlOf),
      credentials,
      auth: options.auth,
      dialTimeout: options.connectTimeoutMs,
      defaultCallOptions: (context) => (context.isStream ? {} : {deadline: Date.now() + options.requestTimeoutMs}),
      // A waiter must see its turn soon after a failover: etcd3's default backoff for re-opening
      // the watch stream grows to 30 s. Its timer also keeps the process alive after close().
      // (etcd3 types this with an older cockatiel's IBackoff; it only calls next() and reads duration.)
      faultHandling: {
        watchBackoff: new ExponentialBackoff({initialDelay: 100, maxDelay: WATCH_BACKOFF_MAX_MS}) as unknown as NonNullable<NonNullable<IOptions['faultHandling']>['watchBackoff']>,
        // A member that failed 3 calls in a row is skipped for a while: 1 s here, not etcd3's 5 s,
        // in which every call to a one-member cluster failed at once even after it came back (a
        // give-up's delete among them: its key would stay, held by nobody, for its lease). And
        // not etcd3's circuit breaker, which could hang the whole client (member-pause.ts).
        host: pausePolicy,
        // A call that ran into its deadline is tried again only on another member (call-retry.ts).
        global: retryPolicy(options.hosts.length),
      },
    })
  return new EtcdBackend(
    newClient(),
    options,
    {etcd3, isBrokenCircuitError},
    () => diagnoseTls(options.hosts[0], secure, files, Math.min(options.connectTimeoutMs, TLS_DIAGNOSIS_MS)),
    oneEndpoint,
    newClient,
  )
}

export class EtcdBackend implements LockBackend {
  readonly kind = 'etcd'
  readonly label: string
  readonly leaseClock = new LeaseClock()
  private readonly states = new ConnectionStateEmitter()
  private suspendTimer: NodeJS.Timeout | null = null
  private closed = false
  private readonly sessions: SessionPool
  /** Some call has succeeded: from then on a failure is an outage, never a TLS mistake. */
  private answered = false
  /** Deletions of keys of acquires that gave up, still being retried (giveUp). */
  private readonly cleanups = new Set<Promise<void>>()
  /** Until when close() lets those retries go on. */
  private closeDeadline = 0
  private tlsHint: Promise<string | undefined> | null = null
  /** The question "does any answering member know a leader?" while it is being asked. */
  private leaderHint: Promise<string | undefined> | null = null

  constructor(
    private readonly client: Etcd3,
    private readonly options: EtcdBackendOptions,
    private readonly types: EtcdErrorTypes,
    /** Why the first member does not answer, if TLS is why (diagnose.ts). */
    private readonly diagnoseTls: () => Promise<string | undefined>,
    /** A client of one endpoint alone, for `status`'s question "which endpoints answer?". */
    private readonly oneEndpoint: (host: {host: string; port: number}, timeoutMs: number) => Etcd3,
    /** Another client like `client`: for new watches once one was cancelled on it (renewWatchClient). */
    private readonly newClient: () => Etcd3,
  ) {
    this.label = options.label
    this.watchClient = client
    this.sessions = new SessionPool(client, (what, operation) => this.call(what, operation), this.label, options.requestTimeoutMs, this.leaseClock)
  }

  /** The client whose stream carries new watches: `client`, until a watch is cancelled on it. */
  private watchClient: Etcd3
  private watchClientSince = Number.NEGATIVE_INFINITY
  /** Clients watches were moved away from: kept open for the watches still on them, until close(). */
  private readonly retiredWatchClients: Etcd3[] = []

  /**
   * etcd cancelled a watch as it was created (`error`: the cancellation). etcd3 then creates no
   * other watch on that client: the cancelled one stays first in its queue of watches to create,
   * and every later one waits behind it, for ever. And the commonest cause is one etcd3 does not
   * mend: etcd forgot the token the watch stream was opened with (a member restarted or was
   * killed, with etcd's default simple tokens, which each member keeps in memory; or the
   * token's --auth-token-ttl ran out). etcd3 logs in again for a call, but it opens its watch
   * stream again with the old token. So a waiter never saw its turn come and a `watch` stopped,
   * after one restart of an etcd with users. New watches go to a new client, which logs in again
   * and opens a stream of its own. At most once a second; the old client stays open for the
   * watches that still work on it.
   */
  private renewWatchClient(): void {
    if (this.closed || performance.now() - this.watchClientSince < 1000) return
    this.retiredWatchClients.push(this.watchClient)
    this.watchClient = this.newClient()
    this.watchClientSince = performance.now()
    this.watchClientGeneration++
    // Other waits of this client whose watches were on the old one: when its stream reopens,
    // etcd3 makes them again behind the cancelled one, and they wait there for ever. Each looks
    // again and watches on the new client.
    for (const moved of [...this.watchClientMoved]) moved()
  }

  /** Waits under way (waitForChange) and watches: told to look again when watches move to a new client. */
  private readonly watchClientMoved = new Set<() => void>()
  /** How many times watches moved to a new client. */
  private watchClientGeneration = 0

  onStateChange(listener: (state: ConnectionState) => void): () => void {
    return this.states.on(listener)
  }

  stateChanges(signal?: AbortSignal): AsyncGenerator<ConnectionState> {
    return this.states.changes(signal)
  }

  /**
   * Run one etcd call, turning its errors into lockctl's typed errors. One member failing while
   * others answer is not an outage: the state turns suspended only when no call has succeeded
   * for a while.
   */
  private async call<T>(what: string, operation: () => Promise<T>): Promise<T> {
    const startedAt = performance.now()
    try {
      const result = await operation().catch((error: Error) => {
        if (!isOldAuthRevision(error) || !forgetLogin(this.client)) throw error
        // etcd refuses every token issued before a change of its users or roles (with JWT
        // tokens, which clusters of several members use): a login again serves, as etcd's Go
        // client does. etcd3 logs in again only for "invalid auth token": without this, every
        // call of a long-lived client failed from the first `etcdctl user add` on — a holder
        // lost its lock at its lease's end. etcd refused before doing anything: asked again.
        return operation()
      })
      this.answered = true
      if (this.suspendTimer) clearTimeout(this.suspendTimer)
      this.suspendTimer = null
      this.states.set('connected')
      return result
    } catch (error) {
      let mapped = mapEtcdError(this.types, this.label, what, error as Error, this.options.auth !== undefined)
      if (mapped.code === ErrorCode.UNREACHABLE && !(error instanceof LockError)) {
        // TLS: asked once per client, before the first success (it cannot break after one).
        // The leader: asked when the call ran into its deadline (a cluster without a leader
        // answers nothing; a member that is merely down fails at once, and the others serve),
        // one question at a time, as a cluster loses and regains its leader.
        // Both questions at once: the call has waited out its deadline already.
        if (!this.answered) this.tlsHint ??= this.diagnoseTls()
        const ranOut = performance.now() - startedAt >= this.options.requestTimeoutMs * 0.9
        if (ranOut) this.leaderHint ??= this.quorumHint().finally(() => (this.leaderHint = null))
        const tls = this.answered ? undefined : await this.tlsHint
        const hint = tls ?? (ranOut ? await this.leaderHint : undefined)
        if (hint) mapped = new UnreachableError(`${this.label}: ${what}: ${hint}`, {cause: error})
      }
      if (mapped.code === ErrorCode.UNREACHABLE && !this.suspendTimer && this.states.state !== 'suspended' && !this.closed) {
        this.suspendTimer = setTimeout(() => {
          this.suspendTimer = null
          if (!this.closed) this.states.set('suspended')
        }, SUSPEND_AFTER_MS)
        this.suspendTimer.unref()
      }
      throw mapped
    }
  }

  private async leaseLeft(lease: string): Promise<{leftMs: number; grantedMs: number}> {
    if (lease === '0') return {leftMs: 0, grantedMs: 0}
    const response = await this.call('lease ttl', () => this.client.leaseClient.leaseTimeToLive({ID: lease}))
    return {leftMs: Math.max(0, Number(response.TTL) * 1000), grantedMs: Number(response.grantedTTL) * 1000}
  }

  private async holderInfo(kv: IKeyValue, leases?: Map<string, Promise<{leftMs: number; grantedMs: number}>>): Promise<HolderInfo> {
    let left = leases?.get(kv.lease)
    if (!left) {
      left = this.leaseLeft(kv.lease)
      leases?.set(kv.lease, left)
    }
    const {leftMs, grantedMs} = await left
    const info = describeKey(kv)
    return {...info, leaseMs: info.leaseMs || grantedMs, leaseLeftMs: leftMs}
  }

  /** Waiter keys of one lock, oldest (the holder) first, with the store revision the read saw. */
  private async readWaiters(key: string, options: {maxCreateRevision?: string; newestFirst?: boolean; limit?: number} = {}): Promise<{kvs: IKeyValue[]; revision: string}> {
    const prefix = `${key}/`
    const response = await this.call('range', () =>
      this.client.kv.range({
        key: buf(prefix),
        range_end: prefixEnd(prefix),
        sort_target: 'Create',
        sort_order: options.newestFirst ? 'Descend' : 'Ascend',
        max_create_revision: options.maxCreateRevision,
      }),
    )
    // Keys of locks whose names extend this one ("deploy/x/...") are not waiters of "deploy".
    const kvs = response.kvs.filter((kv) => lockNameOf(kv.key.toString('utf8')) === key)
    return {kvs: options.limit ? kvs.slice(0, options.limit) : kvs, revision: response.header.revision}
  }

  async acquire(request: AcquireRequest): Promise<AcquireResult> {
    const {key, leaseMs} = request
    if (request.token) {
      // Reentrant: the current grant's token renews and succeeds at once.
      const grant = await this.renew(key, request.token, leaseMs).catch((error: LockError) => {
        if (error.code === ErrorCode.NOT_HOLDER) return null
        throw error
      })
      if (grant) return {grant, queued: false}
    }
    if (request.signal?.aborted) throw new AbortedError()
    const startedAt = performance.now()
    for (let attempt = 0; ; attempt++) {
      // Given up at once on an abort: nothing is written yet, and a session that comes later is
      // given back to the pool, unused. An etcd without a leader held an aborted `hold --wait
      // 2s` for the lease grant's whole request deadline.
      const taking = this.sessions.take(key, Math.ceil(leaseMs / 1000))
      const taken = await unlessAborted(taking, request.signal)
      if (taken === null) {
        taking.then(({session}) => this.sessions.free(session, key)).catch(() => {})
        throw new AbortedError(`stopped waiting for ${quoteKey(key)}`)
      }
      const {session, fresh} = taken
      try {
        return await this.acquireOn(session, fresh, request, startedAt)
      } catch (error) {
        // The session's lease ran out just before our put: forget it, and try on a new one.
        if (attempt < 2 && isLeaseGone(this.types, error)) {
          this.sessions.forget(session)
          continue
        }
        throw error
      }
    }
  }

  private async acquireOn(session: Session, fresh: boolean, request: AcquireRequest, startedAt: number): Promise<AcquireResult> {
    const {key, leaseMs, waitMs, owner} = request
    const myKey = `${key}/${session.hex}`
    const since = Date.now()
    const mode = modeOf(request)
    const plain = mode.limit === 1 && !mode.shared
    const value: LockValue = {owner, leaseMs, since, ...(mode.limit > 1 ? {limit: mode.limit} : {}), ...(mode.shared ? {shared: true} : {})}
    // A reused session is kept alive in the same round trip as the put, unless etcd confirmed
    // it a moment ago; the grant counts from the send of whichever keepalive (or grant) etcd
    // last confirmed, so a skipped one costs the grant at most that moment of its lease.
    const recentlyAlive = this.leaseClock.now() - session.aliveFrom < Math.min(1000, leaseMs / 10)
    const keptAlive =
      fresh || recentlyAlive
        ? Promise.resolve()
        : this.sessions.keepalive(session.id).then(
            () => {},
            () => {},
          )
    let revision: string | undefined
    try {
      const head: IRequestOp = {request_range: {key: buf(`${key}/`), range_end: prefixEnd(`${key}/`), sort_target: 'Create', sort_order: 'Ascend', limit: 1}}
      const txn = await this.call('txn', () =>
        this.client.kv.txn({
          compare: [{key: buf(myKey), result: 'Equal', target: 'Create', create_revision: 0}],
          success: [{request_put: {key: buf(myKey), value: buf(JSON.stringify(value)), lease: session.id}}, head],
          // Our key is there already: a put retried after its answer was lost. It is our place.
          failure: [{request_range: {key: buf(myKey)}}, head],
        }),
      )
      revision = txn.succeeded ? txn.header.revision : txn.responses[0].response_range.kvs[0].create_revision
      await keptAlive
      const grant: GrantInfo = {key, token: makeToken(session.hex, revision), owner, fence: Number(revision), leaseMs, leaseLeftMs: leaseMs, since}
      // The transaction also read the oldest key under KEY/: if it is ours, we hold the lock.
      // (A key of a longer lock name, "KEY/x/...", sorts by its own revision: check then.)
      if (txn.responses[1].response_range.kvs[0]?.create_revision === revision) return {grant, queued: false, leaseFrom: session.aliveFrom}
      // A lock needs only the key just ahead; a semaphore or shared lock, every key ahead.
      const ahead = (await this.readWaiters(key, {maxCreateRevision: String(BigInt(revision) - 1n), newestFirst: true, limit: plain ? 1 : undefined})).kvs
      const refused = ahead.map(modeOfKey).find((other) => !other.foreign && other.limit !== mode.limit)
      if (refused) {
        await this.giveUp(session, key, revision)
        throw new BadInputError(`${quoteKey(key)} is ${describeLimit(refused.limit)}; asked as ${describeLimit(mode.limit)}`)
      }
      if (holdsBehind(mode, ahead)) return {grant, queued: false, leaseFrom: session.aliveFrom}
      if (waitMs === 0) {
        const holder = await this.holderInfo((await this.readWaiters(key, {limit: 1})).kvs[0] ?? ahead[0]).catch(() => null)
        await this.giveUp(session, key, revision)
        throw new LockHeldError(key, holder, mode.limit)
      }
      // From here on our key is our place in the queue: waitForTurn keeps it through etcd
      // trouble until the wait's end.
      const leaseFrom = await this.waitForTurn(session, key, revision, waitMs, startedAt, request)
      // Granted now: the value says so (status shows when the holder got the lock, not when it queued).
      const grantedAt = Date.now()
      await this.call('txn', () =>
        this.client.kv.txn({
          compare: [{key: buf(myKey), result: 'Equal', target: 'Create', create_revision: revision!}],
          success: [{request_put: {key: buf(myKey), value: buf(JSON.stringify({...value, since: grantedAt})), lease: session.id}}],
          failure: [],
        }),
      ).catch(() => {}) // only the display of `since` depends on it
      return {grant: {...grant, since: grantedAt}, queued: true, leaseFrom}
    } catch (error) {
      // Any failure after our key may exist: leave no key behind (a LockHeldError already gave up).
      if (!(error instanceof LockHeldError)) await this.giveUp(session, key, revision)
      throw error
    }
  }

  /**
   * Wait until no key with a lower create revision is left. The session is kept alive
   * meanwhile (a member failing costs no place while another answers). Answers the moment the
   * grant's lease counts from: the send of the last keepalive etcd confirmed.
   */
  private async waitForTurn(session: Session, key: string, revision: string, waitMs: number, startedAt: number, request: AcquireRequest): Promise<number> {
    const {signal, onQueued} = request
    const myKey = `${key}/${session.hex}`
    const mode = modeOf(request)
    const plain = mode.limit === 1 && !mode.shared
    const deadline = waitMs === WAIT_FOREVER ? Number.POSITIVE_INFINITY : startedAt + waitMs
    const stopKeepalive = this.sessions.keepAliveWhileWaiting(session)
    let lastPosition = -1
    try {
      for (;;) {
        let ahead: IKeyValue[]
        let readAt: string
        try {
          // Following our place, or a semaphore's or shared lock's turn, needs every key ahead
          // (read once per wake-up); a lock's turn, the one just ahead.
          const read = await this.readWaiters(key, {maxCreateRevision: String(BigInt(revision) - 1n), newestFirst: true, limit: onQueued || !plain ? undefined : 1})
          ahead = read.kvs
          readAt = read.revision
          if (holdsBehind(mode, ahead)) {
            // Nobody ahead: ours, but only if our key survived (an outage longer than the lease
            // would have expired it, and then "nobody ahead" means nothing).
            const mine = await this.call('range', () => this.client.kv.range({key: buf(myKey)}))
            if (mine.kvs[0]?.create_revision !== revision) {
              throw new QueuePlaceLostError(
                `${this.label}: lost our place in the queue for ${quoteKey(key)} (its lease expired before it could be kept alive: no etcd member answered, or this process was paused)`,
              )
            }
            // Start the grant on a fresh keepalive where we can; else the last one etcd confirmed counts.
            await this.sessions.keepalive(session.id).catch(() => {})
            return session.aliveFrom
          }
        } catch (error) {
          // A member going away mid-wait (unreachable, or a stream reset mid-call): keep our place
          // and ask the others, until the wait's end. Refused credentials will not get better.
          if (signal?.aborted) throw new AbortedError(`stopped waiting for ${quoteKey(key)}`)
          if (!isTransient(error) || error instanceof QueuePlaceLostError || performance.now() >= deadline) throw error
          await sleep(200, signal)
          continue
        }
        const onPosition = onQueued
          ? (position: number, holder: HolderInfo | null) => {
              if (position === lastPosition) return
              lastPosition = position
              onQueued({position, holder})
            }
          : undefined
        const outcome = await this.waitForChange(key, mode, ahead, readAt, deadline, signal, onPosition)
        if (outcome === 'changed') continue
        if (outcome === 'no watch') {
          await sleep(200, signal)
          continue
        }
        const holder = (await this.readWaiters(key, {limit: 1}).catch(() => ({kvs: []}))).kvs[0]
        if (outcome === 'aborted') throw new AbortedError(`stopped waiting for ${quoteKey(key)}`)
        throw new WaitTimeoutError(key, performance.now() - startedAt, holder ? await this.holderInfo(holder).catch(() => null) : null)
      }
    } finally {
      stopKeepalive()
    }
  }

  /**
   * Sleep until the keys ahead (`ahead`, newest first, as read at `readAt`) may all be gone: a
   * watch on the key just ahead, or — to report our place — on the deletions under the name,
   * counted locally (no read per release, so no herd).
   */
  private async waitForChange(
    key: string,
    mode: KeyMode,
    ahead: IKeyValue[],
    readAt: string,
    deadline: number,
    signal: AbortSignal | undefined,
    onPosition?: (position: number, holder: HolderInfo | null) => void,
  ): Promise<'changed' | 'timeout' | 'aborted' | 'no watch'> {
    const plain = mode.limit === 1 && !mode.shared
    // Deletions under the name when we follow our place or wait for a semaphore's or shared
    // lock's turn (any key ahead going may be it); else only the key just ahead.
    const following = onPosition !== undefined || !plain
    const remaining = new Map(ahead.map((kv) => [kv.key.toString('utf8'), kv]))
    const report = async (fetchHolder: boolean) => {
      if (!onPosition) return
      const sorted = [...remaining.values()].sort(byCreateRevision)
      const oldest = sorted[0]
      // The first report reads the holder's lease; later ones name the new holder without a
      // read (it has just been granted: its lease is whole).
      const holder = oldest ? (fetchHolder ? await this.holderInfo(oldest).catch(() => null) : {...describeKey(oldest), leaseLeftMs: parseLockValue(oldest).leaseMs ?? 0}) : null
      // 1 = next: the keys ahead that hold the name do not count.
      onPosition(sorted.length - holdingKeys(sorted.map(modeOfKey)).filter(Boolean).length + 1, holder)
    }
    await report(true)
    let watcher: Watcher | null = null
    let cancelTimer: (() => void) | null = null
    let onAbort: (() => void) | null = null
    let moved: (() => void) | null = null
    let over = false
    try {
      return await new Promise<'changed' | 'timeout' | 'aborted' | 'no watch'>((resolve) => {
        if (signal) {
          onAbort = () => resolve('aborted')
          if (signal.aborted) return resolve('aborted')
          signal.addEventListener('abort', onAbort, {once: true})
        }
        if (deadline !== Number.POSITIVE_INFINITY) cancelTimer = atDeadline(deadline, () => resolve('timeout'))
        moved = () => resolve('changed')
        this.watchClientMoved.add(moved)
        const builder = this.watchClient.watch()
        // From just after the read: nothing is missed and nothing seen is replayed.
        const justAhead = ahead[0].key.toString('utf8')
        ;(following ? builder.prefix(`${key}/`) : builder.key(justAhead))
          .startRevision(String(BigInt(readAt) + 1n))
          .create()
          .then(
            (w) => {
              // The wait ended (timeout, abort) before the watch was set up: nobody cancels it
              // later, and a watcher left attached keeps etcd3 re-opening streams forever.
              if (over) return void w.cancel().catch(() => {})
              watcher = w
              w.on('delete', (kv: IKeyValue) => {
                if (!remaining.delete(kv.key.toString('utf8'))) return
                // Counted here, without a read: read again only once it may be our turn.
                if (holdsBehind(mode, [...remaining.values()])) resolve('changed')
                else void report(false)
              })
              // The watcher reconnects by itself after a member fails; on a hard error look again.
              w.on('error', () => {
                this.renewWatchClient()
                resolve('changed')
              })
            },
            // No watch now (the member went away as it was set up): our key stays, look again.
            () => {
              this.renewWatchClient()
              resolve('no watch')
            },
          )
      })
    } finally {
      over = true
      if (moved) this.watchClientMoved.delete(moved)
      ;(cancelTimer as (() => void) | null)?.()
      if (onAbort) signal?.removeEventListener('abort', onAbort)
      // Not awaited: cancelling waits for the member's answer, which a hung member never sends.
      void (watcher as Watcher | null)?.cancel().catch(() => {})
    }
  }

  /**
   * Leave the queue (or give the lock back): delete our key — guarded by its create revision
   * when known, else by its lease. When etcd does not answer, keep trying in the background
   * until it does: other waits of this client may keep the session lease alive, and the key
   * would then sit in the queue. The session serves the name again once the key is gone.
   */
  private async giveUp(session: Session, key: string, revision: string | undefined): Promise<void> {
    const myKey = buf(`${key}/${session.hex}`)
    // The put's answer never came (no revision): it may still land after etcd answers a delete.
    // A session that holds nothing else is revoked instead, which also fails such a late put.
    const revoke = revision === undefined && session.names.size === 1 && session.names.has(key)
    if (revoke) this.sessions.forget(session)
    const compare = revision
      ? {key: myKey, result: 'Equal' as const, target: 'Create' as const, create_revision: revision}
      : {key: myKey, result: 'Equal' as const, target: 'Lease' as const, lease: session.id}
    // 'absent': no key of ours was found, though a late put may still make one: looked for again.
    const attempt = async (): Promise<'done' | 'absent' | 'failed'> => {
      try {
        if (revoke) {
          await this.client.leaseClient.leaseRevoke({ID: session.id})
          return 'done'
        }
        const txn = await this.client.kv.txn({compare: [compare], success: [{request_delete_range: {key: myKey}}], failure: []})
        this.sessions.free(session, key)
        return txn.succeeded || revision !== undefined ? 'done' : 'absent'
      } catch (error) {
        if (isLeaseGone(this.types, error)) return 'done'
        return 'failed'
      }
    }
    let absent = 0
    const settled = (outcome: 'done' | 'absent' | 'failed') => outcome === 'done' || (outcome === 'absent' && ++absent >= GIVE_UP_LOOKS)
    if (revision !== undefined && settled(await attempt())) return
    // Retried in the background until etcd answers; close() waits a while for these, so that a
    // one-shot CLI that gave up leaves no key behind to hold the lock, by a token nobody has,
    // for its whole lease. A put whose answer never came is not waited for here: etcd did not
    // answer it, and the caller is told that at once, not one request deadline later.
    const retries = (async () => {
      if (revision === undefined && settled(await attempt())) return
      while (!this.closed || performance.now() < this.closeDeadline) {
        await new Promise((resolve) => setTimeout(resolve, GIVE_UP_RETRY_MS).unref())
        if (settled(await attempt())) return
      }
    })()
    this.cleanups.add(retries)
    void retries.finally(() => this.cleanups.delete(retries))
  }

  /** Our key, if the token still holds the lock (its key exists with its create revision). */
  private async ownKey(key: string, token: string): Promise<IKeyValue> {
    const parsed = parseToken(token, key)
    const response = await this.call('range', () => this.client.kv.range({key: buf(`${key}/${parsed.suffix}`)}))
    const kv = response.kvs[0]
    if (!kv || kv.create_revision !== parsed.revision) throw new NotHolderError(key)
    return kv
  }

  /**
   * A keepalive of the key's lease (sent beside the read of our key, so one round trip), or,
   * with a new length, a new lease attached to the same key in a transaction guarded by its
   * create revision: the fence, the place and the token stay. The old lease is left to run
   * out — it may be a session carrying other keys.
   */
  async renew(key: string, token: string, leaseMs?: number): Promise<GrantInfo> {
    const parsed = parseToken(token, key)
    const namedLease = BigInt(`0x${parsed.suffix}`).toString()
    const keepalive = this.sessions.keepalive(namedLease).catch((error: Error) => error)
    const kv = await this.ownKey(key, token)
    let ttl = kv.lease === namedLease ? await keepalive : await this.sessions.keepalive(kv.lease).catch((error: Error) => error)
    if (ttl instanceof Error) throw ttl
    if (ttl <= 0) throw new NotHolderError(key, `the lease of the token has expired (${quoteKey(key)})`)
    const info = describeKey(kv)
    const wantedTtl = leaseMs === undefined ? ttl : Math.ceil(leaseMs / 1000)
    if (wantedTtl !== ttl) {
      const response = await this.call('lease grant', () => this.client.leaseClient.leaseGrant({TTL: wantedTtl}))
      const value = JSON.stringify({...parseLockValue(kv), leaseMs} satisfies LockValue)
      const txn = await this.call('txn', () =>
        this.client.kv.txn({
          compare: [{key: kv.key, result: 'Equal', target: 'Create', create_revision: parsed.revision}],
          success: [{request_put: {key: kv.key, value: buf(value), lease: response.ID}}],
          failure: [],
        }),
      )
      if (!txn.succeeded) {
        void this.client.leaseClient.leaseRevoke({ID: response.ID}).catch(() => {})
        throw new NotHolderError(key)
      }
      ttl = wantedTtl
    }
    const length = leaseMs ?? (info.leaseMs || ttl * 1000)
    return {key, token, owner: info.owner, fence: info.fence, leaseMs: length, leaseLeftMs: length, since: info.since}
  }

  /** One guarded delete: the key goes only if it is still the grant the token names. */
  async release(key: string, token: string | undefined, force: boolean): Promise<HolderInfo> {
    let target: {key: Buffer; revision: string}
    if (force) {
      const {kvs} = await this.readWaiters(key)
      const holding = holdingKeys(kvs.map(modeOfKey))
      const holders = kvs.filter((_, i) => holding[i])
      if (holders.length === 0) throw new NotHolderError(key, `${quoteKey(key)} is not held`)
      // Every holder: an admin breaking a semaphore or shared lock frees it whole, as lockd does.
      const released = await Promise.all(holders.map((kv) => this.deleteIfSame(kv.key, kv.create_revision)))
      const first = released.find((kv) => kv !== undefined)
      if (!first) throw new NotHolderError(key)
      return {...describeKey(first), leaseLeftMs: 0}
    } else {
      const parsed = parseToken(token ?? '', key)
      target = {key: buf(`${key}/${parsed.suffix}`), revision: parsed.revision}
    }
    const previous = await this.deleteIfSame(target.key, target.revision)
    if (!previous) throw new NotHolderError(key)
    return {...describeKey(previous), leaseLeftMs: 0}
  }

  /** Delete a waiter key if it is still the one created at `revision`; answers what was deleted. */
  private async deleteIfSame(key: Buffer, revision: string): Promise<IKeyValue | undefined> {
    const txn = await this.call('txn', () =>
      this.client.kv.txn({
        compare: [{key, result: 'Equal', target: 'Create', create_revision: revision}],
        success: [{request_delete_range: {key, prev_kv: true}}],
        failure: [],
      }),
    )
    const previous = txn.succeeded ? txn.responses[0].response_delete_range.prev_kvs[0] : undefined
    if (!previous) return undefined
    const name = lockNameOf(previous.key.toString('utf8'))
    const session = this.sessions.byId(previous.lease)
    if (session && name !== null) this.sessions.free(session, name)
    return previous
  }

  async check(key: string, token: string): Promise<HolderInfo> {
    const info = await this.holderInfo(await this.ownKey(key, token))
    if (info.leaseLeftMs <= 0) throw new NotHolderError(key)
    return info
  }

  async inspect(key: string): Promise<LockInfo | null> {
    const {kvs} = await this.readWaiters(key)
    if (kvs.length === 0) return null
    return this.lockInfo(key, kvs)
  }

  /** A name's keys (oldest first) as lockd shows a lock: its holders, limit and waiters. */
  private async lockInfo(key: string, kvs: IKeyValue[], leases?: Map<string, Promise<{leftMs: number; grantedMs: number}>>): Promise<LockInfo> {
    const modes = kvs.map(modeOfKey)
    const holding = holdingKeys(modes)
    const holders = await Promise.all(kvs.filter((_, i) => holding[i]).map((kv) => this.holderInfo(kv, leases)))
    const info: LockInfo = {key, holder: holders[0] ?? null, waiters: kvs.length - holders.length}
    if (holders.length > 1) info.holders = holders
    if (modes[0].limit > 1) info.limit = modes[0].limit
    return info
  }

  async list(prefix: string, limit = Number.POSITIVE_INFINITY): Promise<{locks: LockInfo[]; total: number}> {
    const response = await this.call('range', () => this.client.kv.range(prefix ? {key: buf(prefix), range_end: prefixEnd(prefix)} : {key: Buffer.from([0]), range_end: Buffer.from([0])}))
    const byLock = new Map<string, IKeyValue[]>()
    for (const kv of response.kvs) {
      const name = lockNameOf(kv.key.toString('utf8'))
      if (name === null || !name.startsWith(prefix)) continue
      const list = byLock.get(name) ?? []
      list.push(kv)
      byLock.set(name, list)
    }
    const names = [...byLock.keys()].sort().slice(0, limit)
    // One look-up per lease, not per lock (a client's locks share its session lease), a few at a time.
    const leases = new Map<string, Promise<{leftMs: number; grantedMs: number}>>()
    const locks: LockInfo[] = []
    for (let from = 0; from < names.length; from += LIST_CONCURRENCY) {
      const batch = names.slice(from, from + LIST_CONCURRENCY)
      locks.push(
        ...(await Promise.all(
          batch.map(async (name) => {
            return this.lockInfo(name, byLock.get(name)!.sort(byCreateRevision), leases)
          }),
        )),
      )
    }
    return {locks, total: byLock.size}
  }

  async info(): Promise<Record<string, unknown>> {
    const [status, members] = await Promise.all([this.call('status', () => this.client.maintenance.status()), this.call('member list', () => this.client.cluster.memberList({}))])
    const leader = members.members.find((m) => m.ID === status.leader)
    return {
      server: 'etcd',
      version: status.version,
      endpoint: this.label,
      leader: leader?.name ?? status.leader,
      members: members.members.map((m) => ({name: m.name, id: m.ID, clientURLs: m.clientURLs})),
      raftTerm: Number(status.raftTerm),
      // Which of the endpoints given answer, and as which member: with a member down the
      // cluster still serves, and this is where an SRE sees which one. The endpoints, not the
      // members' advertised URLs, which a client behind NAT or a proxy may not reach.
      endpoints: await this.endpointHealth(new Map(members.members.map((m) => [m.ID, m.name]))),
    }
  }

  private async endpointHealth(names: Map<string, string>): Promise<{endpoint: string; member: string | null; answering: boolean}[]> {
    return (await this.askEachEndpoint()).map(({endpoint, member, answering}) => ({endpoint, member: member === null ? null : (names.get(member) ?? member), answering}))
  }

  /**
   * Each endpoint alone, for its member's own status (which needs no quorum): whether it
   * answers, as which member (its id), and whether it knows a leader.
   */
  private async askEachEndpoint(timeoutMs = Math.min(this.options.requestTimeoutMs, 1000)): Promise<{endpoint: string; member: string | null; answering: boolean; hasLeader: boolean}[]> {
    return Promise.all(
      this.options.hosts.map(async (host) => {
        const endpoint = `${host.host}:${host.port}`
        const one = this.oneEndpoint(host, timeoutMs)
        try {
          const answer = await one.maintenance.status()
          return {endpoint, member: answer.header.member_id, answering: true, hasLeader: answer.leader !== '0'}
        } catch {
          return {endpoint, member: null, answering: false, hasLeader: false}
        } finally {
          one.close()
        }
      }),
    )
  }

  /**
   * Why calls fail while some member answers: a cluster without a leader (a majority of its
   * members down or cut off) refuses every read and write, and the failure names only the
   * members that are down ("no etcd member answered ... ECONNREFUSED"), not the one that is up.
   */
  private async quorumHint(): Promise<string | undefined> {
    // (Half a second: the failing call has waited out its deadline already.)
    const endpoints = await this.askEachEndpoint(Math.min(this.options.requestTimeoutMs, 500))
    const answering = endpoints.filter((e) => e.answering)
    if (answering.length === 0 || answering.some((e) => e.hasLeader)) return undefined
    return `etcd has no leader: ${answering.length} of ${endpoints.length} endpoint(s) answer, and none knows a leader (a majority of the cluster's members must be up and reach each other)`
  }

  /**
   * The holder watches its own key: its deletion (by anyone, or its lease expiring) ends the
   * grant. etcd ends a watch that resumes at a revision compacted meanwhile (a member failed
   * over while auto-compaction ran, or the grant came after a long wait): the key is then read,
   * and watched again from just after that read, so a forced release is still told at once
   * instead of at the next renewal.
   */
  watchGrant(key: string, token: string, onEnded: (reason: string) => void): () => void {
    let parsed
    try {
      parsed = parseToken(token, key)
    } catch {
      return () => {}
    }
    const ownKey = buf(`${key}/${parsed.suffix}`)
    const deleted = 'its key was deleted (released by another client, or its etcd lease expired)'
    let stopped = false
    const watchers = new Set<Watcher>()
    /** From the key's creation first, which a grant after a long wait may find compacted. */
    let refusals = 0
    /** Each look makes the watch anew; a watch that a later look overtook is cancelled as it comes. */
    let looks = 0
    const dropWatchers = () => {
      // Not awaited: a hung member never answers a cancel.
      for (const w of watchers) void w.cancel().catch(() => {})
      watchers.clear()
    }
    const watchFrom = (revision: string, look: number) => {
      this.watchClient
        .watch()
        .key(ownKey.toString('utf8'))
        .startRevision(revision)
        .create()
        .then(
          (w) => {
            if (stopped || look !== looks) {
              void w.cancel().catch(() => {})
              return
            }
            watchers.add(w)
            w.on('delete', () => {
              if (!stopped) onEnded(deleted)
            })
            w.on('error', () => {
              if (stopped || look !== looks) return
              this.renewWatchClient() // if watches moved, `moved` below has looked again already
              if (look === looks) void lookAgain()
            })
          },
          // Refused (from the key's creation, which was compacted; or a token etcd forgot):
          // again, from now, on a new client, after a pause that grows while it is refused.
          // (Renewals find out anyway, at half the lease.)
          () => {
            if (stopped || look !== looks) return
            this.renewWatchClient()
            if (look === looks) setTimeout(() => void (look === looks && lookAgain()), backoffDelay(refusals++)).unref()
          },
        )
    }
    const lookAgain = async () => {
      const look = ++looks
      dropWatchers()
      const read = await this.call('range', () => this.client.kv.range({key: ownKey})).catch(() => null)
      if (stopped || look !== looks) return
      if (!read) {
        // Unreadable now (renewals would find out, at half the lease): again after a pause.
        setTimeout(() => void (look === looks && !stopped && lookAgain()), backoffDelay(refusals++)).unref()
        return
      }
      const kv = read.kvs[0]
      if (!kv || kv.create_revision !== parsed.revision) return onEnded(deleted)
      watchFrom(String(BigInt(read.header.revision) + 1n), look)
    }
    // Watches moved to a new client (one was cancelled on this one): ours, made on the old
    // client, may wait there behind the cancelled one for ever, and a forced release would be
    // heard of only at the next renewal. It is made again on the new client.
    const moved = () => {
      if (!stopped) void lookAgain()
    }
    this.watchClientMoved.add(moved)
    // From the key's creation on: a deletion that came before the watch was set up is replayed.
    watchFrom(parsed.revision, looks)
    return () => {
      stopped = true
      this.watchClientMoved.delete(moved)
      dropWatchers()
    }
  }

  watch(target: WatchTarget, options: WatchOptions = {}): AsyncGenerator<WatchUpdate> {
    return watchLocks(
      {
        watchPrefix: (prefix) =>
          this.call('watch', () => this.watchClient.watch().prefix(prefix).create()).then(
            // (After the watch's own listeners: it says why it ended before the move is told.)
            (watcher) => watcher.on('error', () => queueMicrotask(() => this.renewWatchClient())),
            (error: unknown) => {
              this.renewWatchClient()
              throw error
            },
          ),
        inspect: (key) => this.inspect(key),
        list: (prefix) => this.list(prefix),
        watchClientGeneration: () => this.watchClientGeneration,
        onWatchClientMoved: (listener) => {
          this.watchClientMoved.add(listener)
          return () => this.watchClientMoved.delete(listener)
        },
      },
      target,
      options,
    )
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.suspendTimer) clearTimeout(this.suspendTimer)
    // Keys of acquires that gave up, not yet deleted (etcd did not answer): a while longer.
    this.closeDeadline = performance.now() + CLOSE_CLEANUP_MS
    if (this.cleanups.size > 0) await Promise.race([Promise.all(this.cleanups), new Promise((resolve) => setTimeout(resolve, CLOSE_CLEANUP_MS).unref())])
    await this.sessions.close()
    for (const retired of this.retiredWatchClients) if (retired !== this.client) retired.close()
    if (this.watchClient !== this.client) this.watchClient.close()
    this.client.close()
    this.states.set('closed')
  }
}

/** The mode of one acquire (a lock taken exclusively unless it says otherwise). */
function modeOf(request: AcquireRequest): KeyMode {
  const limit = request.limit ?? 1
  return {limit, shared: limit === 1 && request.shared === true}
}

/** Does a key of `mode` hold its name behind these keys (any order)? */
function holdsBehind(mode: KeyMode, ahead: IKeyValue[]): boolean {
  return fitsBehind(mode, ahead.map(modeOfKey))
}
