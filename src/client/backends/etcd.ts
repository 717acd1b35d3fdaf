import {readFileSync} from 'node:fs'
// Types only: the etcd3 module itself is imported lazily (it costs ~200 ms to load).
import type {Etcd3, IKeyValue, IRequestOp, Watcher} from 'etcd3'
import {WAIT_FOREVER, type GrantInfo, type HolderInfo, type LockInfo} from '../../protocol/messages.js'
import type {AcquireRequest, AcquireResult, ConnectionState, LockBackend} from '../backend.js'
import {AbortedError, BadInputError, ErrorCode, LockError, LockHeldError, NotHolderError, ServerError, UnreachableError, WaitTimeoutError} from '../errors.js'
import {AsyncQueue, sleep} from '../async.js'
import type {LockEvent, WatchOptions, WatchTarget, WatchUpdate} from '../watch.js'

/**
 * Locks on an etcd v3 cluster, laid out exactly like etcd's own recipe (Go's
 * `concurrency.Mutex`, used by `etcdctl lock`): a waiter is the key `KEY/<lease id in hex>`
 * attached to its own lease, and the holder is the key with the lowest create revision under
 * `KEY/`. So lockctl, `etcdctl lock` and Go programs exclude each other on the same name.
 *
 * - fence = create revision of the holder's key (strictly increasing per key, cluster-wide);
 * - a waiter watches only the deletion of the key just ahead of it;
 * - the token carries what a later process needs: the key's suffix (the id of the lease it was
 *   created with) and its create revision (`e1.<suffix hex>.<revision>`); the current lease is
 *   read from the key, so the token stays valid when `renew --lease` moves the key to a new lease;
 * - owner metadata is JSON in the value (etcd's recipe leaves it empty).
 */

export interface EtcdTlsOptions {
  /** Paths to PEM files. */
  cacert?: string
  cert?: string
  key?: string
}

export interface EtcdBackendOptions {
  hosts: {host: string; port: number}[]
  secure: boolean
  label: string
  tls?: EtcdTlsOptions
  auth?: {username: string; password: string}
  requestTimeoutMs: number
  connectTimeoutMs: number
}

interface Token {
  suffix: string
  revision: string
}

interface LockValue {
  owner?: string
  leaseMs?: number
  since?: number
}

const TOKEN = /^e1\.([0-9a-f]{1,16})\.(\d{1,19})$/

function parseToken(token: string, key: string): Token {
  const match = TOKEN.exec(token)
  if (!match) throw new NotHolderError(key, `the token is not an etcd lock token of lockctl (${JSON.stringify(key)})`)
  return {suffix: match[1], revision: match[2]}
}

function makeToken(suffix: string, revision: string): string {
  return `e1.${suffix}.${revision}`
}

const hex = (id: string) => BigInt(id).toString(16)
const buf = (s: string) => Buffer.from(s, 'utf8')

/** The end of the range of keys that start with `prefix` (etcd's "prefix" range). */
function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix, 'utf8')
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++
      return end.subarray(0, i + 1)
    }
  }
  return Buffer.from([0])
}

/** The lock name a waiter key belongs to, if it is one (`NAME/<hex>`). */
function lockNameOf(waiterKey: string): string | null {
  const slash = waiterKey.lastIndexOf('/')
  if (slash <= 0 || !/^[0-9a-f]{1,16}$/.test(waiterKey.slice(slash + 1))) return null
  return waiterKey.slice(0, slash)
}

/** What a waiter key's value says about its owner (lease left is not in it). */
function parseValue(kv: IKeyValue): Omit<HolderInfo, 'leaseLeftMs'> {
  let value: LockValue = {}
  try {
    value = kv.value.length ? (JSON.parse(kv.value.toString('utf8')) as LockValue) : {}
  } catch {}
  return {
    // etcdctl lock and Go's Mutex leave the value empty: name the holder by its lease.
    owner: value.owner ?? `etcd lease ${hex(kv.lease)}`,
    fence: Number(kv.create_revision),
    leaseMs: value.leaseMs ?? 0,
    since: value.since ?? 0,
  }
}

/** Events that take a lock from `before` to `after`. */
function diffLocks(key: string, before: LockInfo | null, after: LockInfo | null): LockEvent[] {
  const events: LockEvent[] = []
  const oldHolder = before?.holder ?? null
  const newHolder = after?.holder ?? null
  const waiters = after?.waiters ?? 0
  const sameHolder = oldHolder && newHolder && oldHolder.fence === newHolder.fence
  if (oldHolder && !sameHolder) events.push({type: 'released', key, owner: oldHolder.owner, fence: oldHolder.fence, waiters})
  if (newHolder && !sameHolder) events.push({type: 'acquired', key, owner: newHolder.owner, fence: newHolder.fence, waiters})
  if (sameHolder) {
    const was = before?.waiters ?? 0
    if (waiters > was) events.push({type: 'queued', key, waiters})
    if (waiters < was) events.push({type: 'dequeued', key, waiters})
  }
  return events
}

export async function createEtcdBackend(options: EtcdBackendOptions): Promise<EtcdBackend> {
  const {Etcd3} = await import('etcd3')
  const read = (path: string | undefined, what: string) => {
    if (!path) return undefined
    try {
      return readFileSync(path)
    } catch (error) {
      throw new BadInputError(`--${what}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
    }
  }
  const rootCertificate = read(options.tls?.cacert, 'cacert')
  const certChain = read(options.tls?.cert, 'cert')
  const privateKey = read(options.tls?.key, 'key')
  const secure = options.secure || Boolean(rootCertificate)
  const client = new Etcd3({
    hosts: options.hosts.map((h) => `${secure ? 'https' : 'http'}://${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`),
    credentials: secure ? {rootCertificate: rootCertificate ?? Buffer.alloc(0), certChain, privateKey} : undefined,
    auth: options.auth,
    dialTimeout: options.connectTimeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : {deadline: Date.now() + options.requestTimeoutMs}),
  })
  return new EtcdBackend(client, options)
}

export class EtcdBackend implements LockBackend {
  readonly kind = 'etcd'
  readonly label: string
  private readonly listeners = new Set<(state: ConnectionState) => void>()
  private state: ConnectionState | null = null
  private closed = false

  constructor(
    private readonly client: Etcd3,
    private readonly options: EtcdBackendOptions,
  ) {
    this.label = options.label
  }

  onStateChange(listener: (state: ConnectionState) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return
    this.state = state
    for (const listener of this.listeners) listener(state)
  }

  /** Run one etcd call, turning its errors into lockctl's typed errors. */
  private async call<T>(what: string, operation: () => Promise<T>): Promise<T> {
    try {
      const result = await operation()
      this.setState('connected')
      return result
    } catch (error) {
      const mapped = this.mapError(what, error as Error)
      if (mapped.code === 'UNREACHABLE') this.setState('suspended')
      throw mapped
    }
  }

  private mapError(what: string, error: Error): LockError {
    if (error instanceof LockError) return error
    const name = error.constructor?.name ?? error.name
    // gRPC messages carry a status prefix and resolver notes nobody needs to read.
    const detail = error.message.split('\n')[0].replace(/^\d+ [A-Z_]+: /, '').replace(/\.? ?Resolution note:.*$/, '')
    if (/Unavailable|DeadlineExceeded|ConnectFailed|Cancelled|BrokenCircuit|ClientClosed/.test(name) || /ECONNREFUSED|UNAVAILABLE|No connection established/i.test(detail)) {
      return new UnreachableError(`${this.label}: ${what}: no etcd member answered (${detail})`, {cause: error})
    }
    if (/Authentication|PermissionDenied|InvalidAuthToken|Unauthenticated/.test(name)) {
      return new BadInputError(`${this.label}: ${what}: etcd refused the credentials (${detail})`)
    }
    return new ServerError(`${this.label}: ${what}: ${detail}`)
  }

  private async grantLease(leaseMs: number): Promise<string> {
    const ttl = Math.ceil(leaseMs / 1000)
    const response = await this.call('lease grant', () => this.client.leaseClient.leaseGrant({TTL: ttl}))
    if (response.error) throw new ServerError(`${this.label}: lease grant: ${response.error}`)
    return response.ID
  }

  /**
   * Revoke a lease. With `ttlMs`, when etcd does not answer, keep trying in the background (every
   * 500 ms, without holding the process open) until it does or the lease would have expired
   * anyway: the waiter key of a failed acquire would otherwise sit in the queue, or even hold
   * the lock with nobody knowing, for a whole lease.
   */
  private async revoke(lease: string, ttlMs = 0): Promise<void> {
    const until = performance.now() + ttlMs
    const attempt = async (): Promise<boolean> => {
      try {
        await this.client.leaseClient.leaseRevoke({ID: lease})
        return true
      } catch (error) {
        // Already gone (expired, or revoked by a force release): nothing left to do.
        return (error as Error).constructor?.name === 'EtcdLeaseInvalidError'
      }
    }
    if ((await attempt()) || ttlMs <= 0) return
    const retry = () => {
      if (this.closed || performance.now() >= until) return
      setTimeout(() => void attempt().then((done) => done || retry()), 500).unref()
    }
    retry()
  }

  /** One keepalive; answers the TTL left in seconds (0 = the lease is gone). */
  private async keepaliveOnce(lease: string): Promise<number> {
    return this.call('lease keepalive', async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive()
      try {
        const answer = new Promise<number>((resolve, reject) => {
          stream.on('data', (response: {TTL: string}) => resolve(Number(response.TTL)))
          stream.on('error', reject)
          stream.on('end', () => resolve(0))
        })
        stream.write({ID: lease})
        const timeout = new Promise<never>((_, reject) =>
          setTimeout(() => reject(new UnreachableError(`${this.label}: lease keepalive: no answer within ${this.options.requestTimeoutMs}ms`)), this.options.requestTimeoutMs).unref(),
        )
        return await Promise.race([answer, timeout])
      } finally {
        stream.end()
      }
    })
  }

  private async leaseLeftMs(lease: string): Promise<{leftMs: number; grantedMs: number}> {
    if (lease === '0') return {leftMs: 0, grantedMs: 0}
    const response = await this.call('lease ttl', () => this.client.leaseClient.leaseTimeToLive({ID: lease}))
    return {leftMs: Math.max(0, Number(response.TTL) * 1000), grantedMs: Number(response.grantedTTL) * 1000}
  }

  private async holderInfo(kv: IKeyValue): Promise<HolderInfo> {
    const {leftMs, grantedMs} = await this.leaseLeftMs(kv.lease)
    const info = parseValue(kv)
    return {...info, leaseMs: info.leaseMs || grantedMs, leaseLeftMs: leftMs}
  }

  /** Waiter keys of one lock, oldest (the holder) first. */
  private async waitersOf(key: string, options: {maxCreateRevision?: string; newestFirst?: boolean; limit?: number} = {}): Promise<IKeyValue[]> {
    return (await this.readWaiters(key, options)).kvs
  }

  /** waitersOf, with the store revision the read saw (a watch that follows starts after it). */
  private async readWaiters(
    key: string,
    options: {maxCreateRevision?: string; newestFirst?: boolean; limit?: number} = {},
  ): Promise<{kvs: IKeyValue[]; revision: string}> {
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
    const {key, leaseMs, waitMs, owner} = request
    if (request.token) {
      // Reentrant: the current grant's token renews and succeeds at once.
      const grant = await this.renew(key, request.token, leaseMs).catch((error: LockError) => {
        if (error.code === 'NOT_HOLDER') return null
        throw error
      })
      if (grant) return {grant, queued: false}
    }
    if (request.signal?.aborted) throw new AbortedError()
    const startedAt = performance.now()
    const lease = await this.grantLease(leaseMs)
    // The lease started no earlier than the grant request was sent.
    const leaseFrom = startedAt
    const suffix = hex(lease)
    const myKey = `${key}/${suffix}`
    const since = Date.now()
    const value = JSON.stringify({owner, leaseMs, since} satisfies LockValue)
    let revision: string
    try {
      const first: IRequestOp = {request_range: {key: buf(`${key}/`), range_end: prefixEnd(`${key}/`), sort_target: 'Create', sort_order: 'Ascend', limit: 1}}
      const txn = await this.call('txn', () =>
        this.client.kv.txn({
          compare: [{key: buf(myKey), result: 'Equal', target: 'Create', create_revision: 0}],
          success: [{request_put: {key: buf(myKey), value: buf(value), lease}}, first],
          failure: [{request_range: {key: buf(myKey)}}, first],
        }),
      )
      revision = txn.succeeded ? txn.header.revision : txn.responses[0].response_range.kvs[0].create_revision
      const grant: GrantInfo = {key, token: makeToken(suffix, revision), owner, fence: Number(revision), leaseMs, leaseLeftMs: leaseMs, since}
      // The transaction also read the oldest key under KEY/: if it is ours, we hold the lock.
      // (A key of a longer lock name, "KEY/x/...", sorts by its own revision: check then.)
      const oldest = txn.responses[1].response_range.kvs[0]
      if (oldest?.create_revision === revision) return {grant, queued: false, leaseFrom}
      if (waitMs === 0) {
        const ahead = await this.waitersOf(key, {maxCreateRevision: String(BigInt(revision) - 1n), newestFirst: true, limit: 1})
        if (ahead.length === 0) return {grant, queued: false, leaseFrom}
        const holder = await this.holderInfo((await this.waitersOf(key, {limit: 1}))[0] ?? ahead[0])
        await this.giveUp(myKey, revision, lease, leaseMs)
        throw new LockHeldError(key, holder)
      }
      // From here on our key is our place in the queue: waitForTurn keeps it through etcd
      // trouble until the wait's end (it also finds the lock free if the key ahead just went).
      const keptAliveFrom = await this.waitForTurn(key, myKey, revision, lease, leaseMs, waitMs, startedAt, request.signal, request.onQueued)
      return {grant: {...grant, leaseLeftMs: leaseMs}, queued: true, leaseFrom: keptAliveFrom}
    } catch (error) {
      // Any failure after the lease exists: leave no key and no lease behind.
      if (!(error instanceof LockHeldError)) await this.giveUp(myKey, undefined, lease, leaseMs)
      throw error
    }
  }

  /**
   * Wait until no key with a lower create revision is left: each round watches only the
   * deletion of the key just ahead (no herd on release). The lease is kept alive meanwhile.
   * Answers the send time of the last keepalive etcd confirmed: the lease is good from then.
   */
  private async waitForTurn(
    key: string,
    myKey: string,
    revision: string,
    lease: string,
    leaseMs: number,
    waitMs: number,
    startedAt: number,
    signal?: AbortSignal,
    onQueued?: AcquireRequest['onQueued'],
  ): Promise<number> {
    let lastPosition = -1
    const deadline = waitMs === WAIT_FOREVER ? Number.POSITIVE_INFINITY : startedAt + waitMs
    let keptAliveFrom = startedAt
    const keepAlive = async (): Promise<void> => {
      const sentAt = performance.now()
      if ((await this.keepaliveOnce(lease)) > 0) keptAliveFrom = Math.max(keptAliveFrom, sentAt)
    }
    const keepalive = setInterval(() => void keepAlive().catch(() => {}), Math.max(500, (Math.ceil(leaseMs / 1000) * 1000) / 3))
    try {
      for (;;) {
        let predecessor: IKeyValue | undefined
        let readAt: string
        try {
          const {kvs: ahead, revision: seen} = await this.readWaiters(key, {maxCreateRevision: String(BigInt(revision) - 1n), newestFirst: true, limit: 1})
          readAt = seen
          if (ahead.length === 0) {
            // Nobody ahead: ours, but only if our key survived (an outage longer than the lease
            // would have expired it, and then "nobody ahead" means nothing).
            const mine = await this.call('range', () => this.client.kv.range({key: buf(myKey)}))
            if (mine.kvs[0]?.create_revision !== revision) {
              throw new UnreachableError(`${this.label}: lost our place in the queue for ${JSON.stringify(key)} (its lease expired while etcd was unreachable)`)
            }
            // Start the grant on a fresh lease where we can; if etcd does not answer now, the
            // last keepalive it confirmed still counts.
            await keepAlive().catch(() => {})
            return keptAliveFrom
          }
          predecessor = ahead[0]
          if (onQueued) {
            // Tell the caller its place (1 = next) first, and again whenever it changes.
            const all = await this.waitersOf(key)
            const position = all.findIndex((kv) => kv.create_revision === revision)
            if (position !== lastPosition) onQueued({position, holder: all[0] ? await this.holderInfo(all[0]).catch(() => null) : null})
            lastPosition = position
          }
        } catch (error) {
          // A member going away mid-wait (unreachable, or a stream reset mid-call): keep our place
          // and ask the others, until the wait's end. Refused credentials will not get better.
          const retryable = error instanceof LockError && (error.code === ErrorCode.UNREACHABLE || error.code === ErrorCode.INTERNAL)
          if (signal?.aborted) throw new AbortedError(`stopped waiting for ${JSON.stringify(key)}`)
          if (!retryable || performance.now() >= deadline || /lost our place/.test((error as Error).message)) throw error
          await sleep(200, signal)
          continue
        }
        let watcher: Watcher | null = null
        let timer: NodeJS.Timeout | null = null
        let onAbort: (() => void) | null = null
        try {
          const outcome = await new Promise<'deleted' | 'timeout' | 'aborted' | 'no watch'>((resolve) => {
            if (signal) {
              onAbort = () => resolve('aborted')
              if (signal.aborted) return resolve('aborted')
              signal.addEventListener('abort', onAbort, {once: true})
            }
            if (deadline !== Number.POSITIVE_INFINITY) timer = setTimeout(() => resolve('timeout'), Math.max(0, deadline - performance.now()))
            // Normally only the key just ahead (no herd on release); a caller that follows its
            // place in the queue (a spinner) watches every waiter of the lock instead.
            const builder = this.client.watch()
            // From just after the read above: nothing is missed and nothing seen is replayed.
            ;(onQueued ? builder.prefix(`${key}/`) : builder.key(predecessor.key))
              .startRevision(String(BigInt(readAt) + 1n))
              .create()
              .then((w) => {
                watcher = w
                w.on('delete', () => resolve('deleted'))
                // The watcher reconnects by itself after a member fails; on a hard error look again.
                w.on('error', () => resolve('deleted'))
                // No watch now (the member went away as it was set up): our key stays, look again.
              }, () => resolve('no watch'))
          })
          if (outcome === 'deleted') continue
          if (outcome === 'no watch') {
            await sleep(200, signal)
            continue
          }
          const holder = (await this.waitersOf(key, {limit: 1}).catch(() => []))[0]
          if (outcome === 'aborted') throw new AbortedError(`stopped waiting for ${JSON.stringify(key)}`)
          throw new WaitTimeoutError(key, performance.now() - startedAt, holder ? await this.holderInfo(holder).catch(() => null) : null)
        } finally {
          if (timer) clearTimeout(timer)
          if (onAbort) signal?.removeEventListener('abort', onAbort)
          // Not awaited: cancelling waits for the member's answer, which a hung member never sends.
          void (watcher as Watcher | null)?.cancel().catch(() => {})
        }
      }
    } finally {
      clearInterval(keepalive)
    }
  }

  /** Delete our waiter key (only if it is still ours) and revoke its lease (retried: see revoke). */
  private async giveUp(myKey: string, revision: string | undefined, lease: string, leaseMs: number): Promise<void> {
    try {
      if (revision) {
        await this.client.kv.txn({
          compare: [{key: buf(myKey), result: 'Equal', target: 'Create', create_revision: revision}],
          success: [{request_delete_range: {key: buf(myKey)}}],
          failure: [],
        })
      }
    } catch {}
    await this.revoke(lease, Math.ceil(leaseMs / 1000) * 1000)
  }

  /** Our key, if the token still holds the lock (its key exists with its create revision). */
  private async ownKey(key: string, token: string): Promise<{kv: IKeyValue; parsed: Token}> {
    const parsed = parseToken(token, key)
    const response = await this.call('range', () => this.client.kv.range({key: buf(`${key}/${parsed.suffix}`)}))
    const kv = response.kvs[0]
    if (!kv || kv.create_revision !== parsed.revision) throw new NotHolderError(key)
    return {kv, parsed}
  }

  async renew(key: string, token: string, leaseMs?: number): Promise<GrantInfo> {
    const {kv, parsed} = await this.ownKey(key, token)
    const info = await this.holderInfo(kv)
    const wantedTtl = leaseMs === undefined ? undefined : Math.ceil(leaseMs / 1000)
    const currentTtl = Math.round(info.leaseMs / 1000)
    if (wantedTtl === undefined || wantedTtl === Math.ceil(info.leaseMs / 1000) || wantedTtl === currentTtl) {
      const ttl = await this.keepaliveOnce(kv.lease)
      if (ttl <= 0) throw new NotHolderError(key, `the lease of the token has expired (${JSON.stringify(key)})`)
      const length = leaseMs ?? info.leaseMs
      return {key, token, owner: info.owner, fence: info.fence, leaseMs: length, leaseLeftMs: length, since: info.since}
    }
    // A new length: a new lease attached to the same key, guarded by the create revision (the
    // fence and the queue position stay), then the old lease revoked.
    const lease = await this.grantLease(leaseMs!)
    const value = JSON.stringify({...JSON.parse(kv.value.toString('utf8') || '{}'), leaseMs} satisfies LockValue)
    const txn = await this.call('txn', () =>
      this.client.kv.txn({
        compare: [
          {key: kv.key, result: 'Equal', target: 'Create', create_revision: parsed.revision},
          {key: kv.key, result: 'Equal', target: 'Mod', mod_revision: kv.mod_revision},
        ],
        success: [{request_put: {key: kv.key, value: buf(value), lease}}],
        failure: [],
      }),
    )
    if (!txn.succeeded) {
      await this.revoke(lease)
      throw new NotHolderError(key)
    }
    await this.revoke(kv.lease)
    return {key, token, owner: info.owner, fence: info.fence, leaseMs: leaseMs!, leaseLeftMs: leaseMs!, since: info.since}
  }

  /**
   * One guarded delete (the key goes only if it is still the grant the token names), then the
   * lease is revoked in the background: once the key is gone the lock is free, and the revoke
   * only tidies up a lease that would expire anyway.
   */
  async release(key: string, token: string | undefined, force: boolean): Promise<HolderInfo> {
    let target: {key: Buffer; revision: string}
    if (force) {
      const holder = (await this.waitersOf(key, {limit: 1}))[0]
      if (!holder) throw new NotHolderError(key, `${JSON.stringify(key)} is not held`)
      target = {key: holder.key, revision: holder.create_revision}
    } else {
      const parsed = parseToken(token ?? '', key)
      target = {key: buf(`${key}/${parsed.suffix}`), revision: parsed.revision}
    }
    const txn = await this.call('txn', () =>
      this.client.kv.txn({
        compare: [{key: target.key, result: 'Equal', target: 'Create', create_revision: target.revision}],
        success: [{request_delete_range: {key: target.key, prev_kv: true}}],
        failure: [],
      }),
    )
    const previous = txn.succeeded ? txn.responses[0].response_delete_range.prev_kvs[0] : undefined
    if (!previous) throw new NotHolderError(key)
    void this.revoke(previous.lease)
    return {...parseValue(previous), leaseLeftMs: 0}
  }

  async check(key: string, token: string): Promise<HolderInfo> {
    const {kv} = await this.ownKey(key, token)
    const info = await this.holderInfo(kv)
    if (info.leaseLeftMs <= 0) throw new NotHolderError(key)
    return info
  }

  async inspect(key: string): Promise<LockInfo | null> {
    const waiters = await this.waitersOf(key)
    if (waiters.length === 0) return null
    return {key, holder: await this.holderInfo(waiters[0]), waiters: waiters.length - 1}
  }

  async list(prefix: string, limit = 10_000): Promise<{locks: LockInfo[]; total: number}> {
    const response = await this.call('range', () =>
      this.client.kv.range(prefix ? {key: buf(prefix), range_end: prefixEnd(prefix)} : {key: Buffer.from([0]), range_end: Buffer.from([0])}),
    )
    const byLock = new Map<string, IKeyValue[]>()
    for (const kv of response.kvs) {
      const name = lockNameOf(kv.key.toString('utf8'))
      if (name === null || !name.startsWith(prefix)) continue
      const list = byLock.get(name) ?? []
      list.push(kv)
      byLock.set(name, list)
    }
    const names = [...byLock.keys()].sort()
    const locks = await Promise.all(
      names.slice(0, limit).map(async (name) => {
        const kvs = byLock.get(name)!.sort((a, b) => (BigInt(a.create_revision) < BigInt(b.create_revision) ? -1 : 1))
        return {key: name, holder: await this.holderInfo(kvs[0]), waiters: kvs.length - 1}
      }),
    )
    return {locks, total: names.length}
  }

  async info(): Promise<Record<string, unknown>> {
    const [status, members] = await Promise.all([
      this.call('status', () => this.client.maintenance.status()),
      this.call('member list', () => this.client.cluster.memberList({})),
    ])
    const leader = members.members.find((m) => m.ID === status.leader)
    return {
      server: 'etcd',
      version: status.version,
      endpoint: this.label,
      leader: leader?.name ?? status.leader,
      members: members.members.map((m) => ({name: m.name, id: m.ID, clientURLs: m.clientURLs})),
      raftTerm: Number(status.raftTerm),
    }
  }

  /**
   * etcd's watch on the waiter keys, translated to lockd's events: after each change the lock is
   * read again and compared with what was last reported (holder gone: released; new holder:
   * acquired; queue longer or shorter: queued / dequeued). etcd cannot tell an expiry from a
   * release, so both are reported as released. After a reconnect a fresh snapshot is yielded
   * with resync = true.
   */
  async *watch(target: WatchTarget, options: WatchOptions = {}): AsyncGenerator<WatchUpdate> {
    const {signal} = options
    const names = (waiterKey: string) => {
      const name = lockNameOf(waiterKey)
      if (name === null) return null
      if (target.key !== undefined) return name === target.key ? name : null
      return name.startsWith(target.prefix) ? name : null
    }
    const queue = new AsyncQueue<{kind: 'changed'; name: string} | {kind: 'disconnected'} | {kind: 'connected'}>()
    const builder = this.client.watch()
    const watcher = await this.call('watch', () => (target.key !== undefined ? builder.prefix(`${target.key}/`) : builder.prefix(target.prefix)).create())
    const onAbort = () => queue.close()
    signal?.addEventListener('abort', onAbort, {once: true})
    const onChange = (kv: IKeyValue) => {
      const name = names(kv.key.toString('utf8'))
      if (name !== null) queue.push({kind: 'changed', name})
    }
    watcher.on('put', onChange)
    watcher.on('delete', onChange)
    watcher.on('disconnected', () => queue.push({kind: 'disconnected'}))
    watcher.on('connected', () => queue.push({kind: 'connected'}))
    const known = new Map<string, LockInfo>()
    const snapshot = async (): Promise<LockInfo[]> => {
      const locks = target.key !== undefined ? [await this.inspect(target.key)].filter((l): l is LockInfo => l !== null) : (await this.list(target.prefix)).locks
      known.clear()
      for (const lock of locks) known.set(lock.key, lock)
      return locks
    }
    try {
      yield {type: 'snapshot', locks: await snapshot(), resync: false}
      let disconnected = false
      for (;;) {
        const item = await queue.take()
        if (item === undefined) return
        if (item.kind === 'disconnected') {
          if (!disconnected) yield {type: 'disconnected', reason: 'the etcd watch stream was interrupted'}
          disconnected = true
          if (options.reconnect === false) return
          continue
        }
        if (item.kind === 'connected') {
          if (disconnected) yield {type: 'snapshot', locks: await snapshot(), resync: true}
          disconnected = false
          continue
        }
        const before = known.get(item.name) ?? null
        const after = await this.inspect(item.name).catch(() => before)
        if (after) known.set(item.name, after)
        else known.delete(item.name)
        for (const event of diffLocks(item.name, before, after)) yield {type: 'event', event}
      }
    } finally {
      signal?.removeEventListener('abort', onAbort)
      void watcher.cancel().catch(() => {}) // not awaited: a hung member never answers it
    }
  }

  /** The holder watches its own key: its deletion (by anyone, or its lease expiring) ends the grant. */
  watchGrant(key: string, token: string, onEnded: (reason: string) => void): () => void {
    let parsed: Token
    try {
      parsed = parseToken(token, key)
    } catch {
      return () => {}
    }
    let stopped = false
    let watcher: Watcher | null = null
    // From the key's creation on: a deletion that came before the watch was set up is replayed.
    this.client
      .watch()
      .key(`${key}/${parsed.suffix}`)
      .startRevision(parsed.revision)
      .create()
      .then(
        (w) => {
          watcher = w
          if (stopped) void w.cancel().catch(() => {})
          w.on('delete', () => {
            if (!stopped) onEnded('its key was deleted (released by another client, or its etcd lease expired)')
          })
        },
        () => {}, // no watch: renewals still find out, at half the lease
      )
    return () => {
      stopped = true
      // Not awaited: a hung member never answers a cancel.
      void (watcher)?.cancel().catch(() => {})
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.client.close()
    this.setState('closed')
  }
}
