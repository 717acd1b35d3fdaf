import {hostname, userInfo} from 'node:os'
import {keyProblem, leaseProblem, modeProblem} from '../protocol/validate.js'
import type {ConnectionState, GrantInfo, HolderInfo, LockBackend, LockInfo} from './backend.js'
import {LockdBackend} from './backends/lockd.js'
import {LockdConnection} from './backends/lockd-connection.js'
import {AutoRenewalLock, type AutoRenewalLockOptions} from './auto-renewal-lock.js'
import {checkOwner, checkToken, DistributedLock, type DistributedLockOptions} from './distributed-lock.js'
import {connectEmbedded, embeddedPaths, stateDir} from './embedded.js'
import {describeEndpoint, parseEndpoint, type Endpoint} from './endpoint.js'
import {BadInputError, quoteKey} from './errors.js'
import {anyTlsFile, readTlsFiles} from './tls-files.js'
import type {WatchOptions, WatchTarget, WatchUpdate} from './watch.js'

export interface ConnectOptions {
  /**
   * Where the lock service is: `unix:///path`, `lockd://host:port`, `etcd://h1:2379,h2:2379`.
   * Omitted: the per-user local lockd, if `embedded` asks for it.
   */
  endpoints?: string
  /**
   * With no `endpoints`: use the per-user local lockd, and start it in the background when it
   * is not running (the CLI's default). A library never spawns a server unless asked to.
   * `daemonEntry`: the script that runs it (default: this package's `server/daemon.js`; a
   * bundled CLI passes its own).
   */
  embedded?: boolean | {daemonEntry?: string}
  /** Owner recorded with grants, shown by status. Default `user@host:pid`. */
  owner?: string
  /** Deadline of each request. Default 5000 ms. */
  requestTimeoutMs?: number
  /** Deadline of connecting. Default 3000 ms. */
  connectTimeoutMs?: number
  /** State directory of the embedded lockd. Default $XDG_STATE_HOME/lockctl. */
  stateDir?: string
  /**
   * TLS and authentication, for lockd and etcd alike: PEM files (`cacert` verifies the server and
   * switches to TLS; `cert` and `key` are a client certificate), a user and its password.
   */
  credentials?: Credentials
  /** The former name of `credentials`. */
  etcd?: Credentials
}

export interface Credentials {
  cacert?: string
  cert?: string
  key?: string
  user?: string
  password?: string
}

export function defaultOwner(): string {
  let user = 'unknown'
  try {
    user = userInfo().username
  } catch {}
  return `${user}@${hostname()}:${process.pid}`
}

/**
 * A connection to a lock service. Creates lock objects, and offers the stateless operations a
 * later process needs when all it has is a key and a token (`lockctl unlock`, `renew`).
 */
export class LockClient {
  readonly owner: string

  constructor(
    readonly backend: LockBackend,
    owner: string,
  ) {
    this.owner = owner
  }

  get endpoint(): string {
    return this.backend.label
  }

  /** `onLost`: called when the service ends a grant of this lock by another hand (docs/semantics.md, "Loss"). */
  createLock(key: string, options: {owner?: string} & DistributedLockOptions = {}): DistributedLock {
    checkKey(key)
    if (options.owner) checkOwner(options.owner)
    return new DistributedLock(key, this.backend, options.owner ?? this.owner, {onLost: options.onLost, limit: options.limit, shared: options.shared})
  }

  /**
   * A counting semaphore: at most `limit` holders of `key` at once, each with its own token,
   * lease and fence, granted in FIFO order. The same DistributedLock API (tryLock, unlock...);
   * for one that renews itself, createAutoRenewalLock(key, {limit}).
   */
  createSemaphore(key: string, options: {limit: number; owner?: string} & Omit<DistributedLockOptions, 'limit' | 'shared'>): DistributedLock {
    return this.createLock(key, {...options, shared: false})
  }

  /**
   * A lock that keeps itself held: acquires through the fair queue, renews at half the lease,
   * reports onAcquired / onLost, and acquires again after a loss until closed.
   */
  createAutoRenewalLock(key: string, options: Omit<AutoRenewalLockOptions, 'owner'> & {owner?: string}): AutoRenewalLock {
    checkKey(key)
    if (options.owner) checkOwner(options.owner)
    const problem = modeProblem(options.limit, options.shared)
    if (problem) throw new BadInputError(problem)
    return new AutoRenewalLock(key, this.backend, {...options, owner: options.owner ?? this.owner})
  }

  /** Release with a token; with force, whoever holds it. Throws NotHolderError. */
  release(key: string, token: string | undefined, options: {force?: boolean} = {}): Promise<HolderInfo> {
    checkKey(key)
    if (!options.force) checkToken(token ?? '')
    return this.backend.release(key, token, options.force === true)
  }

  /** Extend a grant known by its token, optionally to a new lease length. Throws NotHolderError. */
  renew(key: string, token: string, leaseMs?: number): Promise<GrantInfo> {
    checkKey(key)
    checkToken(token)
    if (leaseMs !== undefined) {
      const problem = leaseProblem(leaseMs)
      if (problem) throw new BadInputError(problem)
    }
    return this.backend.renew(key, token, leaseMs)
  }

  /** Who holds `key`, if `token` holds it now. Throws NotHolderError otherwise. */
  check(key: string, token: string): Promise<HolderInfo> {
    checkKey(key)
    checkToken(token)
    return this.backend.check(key, token)
  }

  inspect(key: string): Promise<LockInfo | null> {
    checkKey(key)
    return this.backend.inspect(key)
  }

  list(prefix = '', limit?: number): Promise<{locks: LockInfo[]; total: number}> {
    return this.backend.list(prefix, limit)
  }

  info(): Promise<Record<string, unknown>> {
    return this.backend.info()
  }

  /**
   * Watch one key or every key under a prefix: yields the current state first, then events in
   * order, and after a reconnect a fresh state marked `resync`.
   */
  watch(target: WatchTarget, options: WatchOptions = {}): AsyncIterable<WatchUpdate> {
    if (target.key !== undefined) checkKey(target.key)
    return this.backend.watch(target, options)
  }

  onStateChange(listener: (state: ConnectionState) => void): () => void {
    return this.backend.onStateChange(listener)
  }

  /**
   * The connection's state as it changes (connected, suspended, closed), as nats.js's
   * `status()`: `for await (const state of client.status({signal}))`. Ends when the client
   * closes or the signal aborts; the listener goes away with the loop.
   */
  status(options: {signal?: AbortSignal} = {}): AsyncIterable<ConnectionState> {
    return this.backend.stateChanges(options.signal)
  }

  close(): Promise<void> {
    return this.backend.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

export function checkKey(key: string): void {
  const problem = keyProblem(key)
  if (problem) throw new BadInputError(`key ${quoteKey(key)}: ${problem}`)
}

/**
 * Connect to a lock service. Nothing goes over the network here: the connection is opened by
 * the first operation, so a bad endpoint is reported then (UnreachableError) and a malformed
 * one right here (BadInputError).
 */
export async function connect(options: ConnectOptions = {}): Promise<LockClient> {
  const owner = options.owner ?? defaultOwner()
  checkOwner(owner)
  const connection = {
    connectTimeoutMs: options.connectTimeoutMs ?? 3000,
    requestTimeoutMs: options.requestTimeoutMs ?? 5000,
  }
  const endpoints = options.endpoints?.trim()
  if (!endpoints) {
    if (!options.embedded) throw new BadInputError('no endpoint: pass endpoints (lockd://, unix://, etcd://), or embedded: true for the per-user local lockd')
    const paths = embeddedPaths(options.stateDir ?? stateDir())
    const label = `local lockd (unix://${paths.socket})`
    const daemonEntry = typeof options.embedded === 'object' ? options.embedded.daemonEntry : undefined
    return new LockClient(new LockdBackend({label, open: () => connectEmbedded(paths, {...connection, label}, daemonEntry), sameMachine: true}), owner)
  }
  const endpoint: Endpoint = parseEndpoint(endpoints)
  const label = describeEndpoint(endpoint)
  switch (endpoint.kind) {
    case 'unix':
    case 'tcp': {
      const credentials = options.credentials ?? options.etcd ?? {}
      const auth = lockdAuth(label, credentials)
      const tls = endpoint.kind === 'tcp' && (endpoint.tls || anyTlsFile(credentials)) ? readTlsFiles(credentials) : undefined
      const target = endpoint.kind === 'unix' ? {path: endpoint.path} : {host: endpoint.host, port: endpoint.port, tls}
      return new LockClient(new LockdBackend({label, open: () => LockdConnection.connect(target, {...connection, label, auth}), sameMachine: endpoint.kind === 'unix'}), owner)
    }
    case 'etcd': {
      const etcd = options.credentials ?? options.etcd ?? {}
      if (etcd.user !== undefined && etcd.password === undefined) throw new BadInputError(`${label}: --user needs a password ($LOCKCTL_PASSWORD)`)
      const {createEtcdBackend} = await import('./backends/etcd/backend.js')
      const backend = await createEtcdBackend({
        hosts: endpoint.hosts,
        secure: endpoint.tls,
        label,
        tls: {cacert: etcd.cacert, cert: etcd.cert, key: etcd.key},
        auth: etcd.user === undefined ? undefined : {username: etcd.user, password: etcd.password!},
        requestTimeoutMs: connection.requestTimeoutMs,
        connectTimeoutMs: connection.connectTimeoutMs,
      })
      return new LockClient(backend, owner)
    }
  }
}

function lockdAuth(label: string, credentials: Credentials): {user: string; password: string} | undefined {
  if (credentials.user === undefined) return undefined
  if (credentials.password === undefined) throw new BadInputError(`${label}: --user needs a password ($LOCKCTL_PASSWORD)`)
  return {user: credentials.user, password: credentials.password}
}
