import {ErrorCode} from '../../protocol/errors.js'
import {WAIT_FOREVER, type GrantInfo, type HolderInfo, type LockInfo, type Push, type ServerResponse} from '../../protocol/messages.js'
import type {AcquireRequest, AcquireResult, ConnectionState, LockBackend} from '../backend.js'
import {
  AbortedError,
  BadInputError,
  ClosedError,
  LockError,
  LimitError,
  LockHeldError,
  mayPass,
  NotPermittedError,
  NotHolderError,
  ProtocolError,
  quoteKey,
  ServerError,
  UnreachableError,
  WaitTimeoutError,
} from '../errors.js'
import {ConnectionStateEmitter} from '../connection-state.js'
import {LockdConnection} from './lockd-connection.js'
import {atDeadline} from '../../util/timers.js'
import {LeaseClock} from '../lease-clock.js'
import {AsyncQueue, backoffDelay, sleep, unlessAborted} from '../async.js'
import type {WatchOptions, WatchTarget, WatchUpdate} from '../watch.js'
import type {LockEvent} from '../../protocol/messages.js'
import {printable} from '../../util/printable.js'

/** Names per page of a long list: ~60 ms of lockd's time each with a million names held. */
const LIST_PAGE = 20_000

interface WaitSlot {
  key: string
  onPosition?: (info: {position: number; holder: HolderInfo | null}) => void
  settle(outcome: {grant: GrantInfo} | {timeout: true} | {error: Error}): void
  /** Set once the caller gave up: a grant that still arrives is released at once. */
  abandoned: boolean
}

export interface LockdBackendOptions {
  label: string
  /** Opens a fresh connection (the embedded mode starts lockd here when it is not running). */
  open: () => Promise<LockdConnection>
  /**
   * lockd runs on this machine (a unix socket): its leases stop with this machine's monotonic
   * clock while it is suspended, so ours need not count the suspend either (lease-clock.ts).
   */
  sameMachine?: boolean
}

export class LockdBackend implements LockBackend {
  readonly kind = 'lockd'
  readonly label: string
  readonly leaseClock: LeaseClock
  private connection: LockdConnection | null = null
  private connecting: Promise<LockdConnection> | null = null
  private readonly slots = new Map<number, WaitSlot>()
  /** Live watch subscriptions by the id of their watch request. */
  private readonly watchers = new Map<number, {connection: LockdConnection; onEvent(event: LockEvent): void; onLost(reason: string): void}>()
  private readonly states = new ConnectionStateEmitter()
  /** Grants this process holds, by token: told when lockd says one ended by another hand. */
  private readonly grantWatchers = new Map<string, (reason: string) => void>()
  private closed = false

  constructor(private readonly options: LockdBackendOptions) {
    this.label = options.label
    this.leaseClock = new LeaseClock({countsSuspends: !options.sameMachine})
  }

  onStateChange(listener: (state: ConnectionState) => void): () => void {
    return this.states.on(listener)
  }

  stateChanges(signal?: AbortSignal): AsyncGenerator<ConnectionState> {
    return this.states.changes(signal)
  }

  /** The live connection, opened on first use and again after it was lost. */
  private async connect(): Promise<LockdConnection> {
    if (this.closed) throw new ClosedError()
    if (this.connection && !this.connection.closed) return this.connection
    this.connecting ??= this.options.open().then(
      (connection) => {
        this.connecting = null
        if (this.closed) {
          connection.close()
          throw new ClosedError()
        }
        this.connection = connection
        connection.onPush = (push) => this.onPush(connection, push)
        connection.onClose = (error) => this.onConnectionLost(connection, error)
        this.states.set('connected')
        return connection
      },
      (error) => {
        this.connecting = null
        throw error
      },
    )
    return this.connecting
  }

  private onConnectionLost(connection: LockdConnection, error: Error): void {
    if (this.connection === connection) this.connection = null
    // lockd drops the waiters of a closed connection, so every wait on it has ended.
    for (const slot of this.slots.values()) slot.settle({error})
    this.slots.clear()
    for (const [sub, watcher] of this.watchers) {
      if (watcher.connection !== connection) continue
      this.watchers.delete(sub)
      watcher.onLost(error.message)
    }
    if (!this.closed) this.states.set('suspended')
  }

  private onPush(connection: LockdConnection, push: Push): void {
    if (push.ev === 'lock') {
      this.watchers.get(push.sub)?.onEvent(push.event)
      return
    }
    if (push.ev === 'part') return // the connection assembles parts of answers
    if (push.ev === 'ended') {
      const why =
        push.reason === 'expired' ? 'its lease expired on the server' : push.reason === 'forced' ? 'it was force-released (unlock --force)' : 'it was released with its token by another client'
      this.grantWatchers.get(push.token)?.(why)
      return
    }
    const slot = this.slots.get(push.wid)
    if (push.ev === 'granted') {
      if (!slot || slot.abandoned) {
        // Nobody wants this grant any more: give it back so the lock does not sit idle.
        void connection.request({op: 'release', key: push.grant.key, token: push.grant.token}).catch(() => {})
        return
      }
      slot.settle({grant: push.grant})
    } else if (push.ev === 'wait_timeout') {
      slot?.settle({timeout: true})
    } else if (push.ev === 'position' && slot && !slot.abandoned) {
      slot.onPosition?.({position: push.position, holder: push.holder})
    }
  }

  async acquire(request: AcquireRequest): Promise<AcquireResult> {
    const sentAt = performance.now()
    const connection = await this.connect()
    if ((request.limit !== undefined || request.shared) && !connection.server?.features?.includes('semaphores')) {
      // An older lockd would ignore them and grant an exclusive lock.
      throw new BadInputError(`${this.label} does not know semaphores or shared locks (an older lockd): upgrade it, or take a plain lock`)
    }
    let settle!: WaitSlot['settle']
    const outcome = new Promise<Parameters<WaitSlot['settle']>[0]>((resolve) => (settle = resolve))
    const slot: WaitSlot = {key: request.key, settle, abandoned: false, onPosition: request.onQueued}
    const sent = connection.start(
      {
        op: 'acquire',
        key: request.key,
        leaseMs: request.leaseMs,
        waitMs: request.waitMs,
        owner: request.owner,
        ...(request.token ? {token: request.token} : {}),
        ...(request.attempt ? {attempt: request.attempt} : {}),
        ...(request.limit !== undefined ? {limit: request.limit} : {}),
        ...(request.shared ? {shared: true} : {}),
        ...(request.onQueued ? {progress: true} : {}),
      },
      {signal: request.signal},
    )
    const wid = sent.id
    // Registered before any answer or push can be read: a grant push never finds no slot.
    this.slots.set(wid, slot)
    let response: ServerResponse<'acquire'>
    try {
      response = await sent.response
    } catch (error) {
      this.slots.delete(wid)
      // No answer in time on a connection still open: lockd may grant it after we gave up, to a
      // token nobody would know, held for its whole lease. lockd runs a connection's requests in
      // order, so this cancel comes after the acquire and releases whatever it got (or leaves
      // the queue). Not awaited: the caller is told at once, as before.
      if (!connection.closed) connection.start({op: 'cancel', key: request.key, wid, reason: 'timeout'}).response.catch(() => {})
      throw error
    }
    if (response.code === 'OK') {
      this.slots.delete(wid)
      return {grant: response.grant, queued: false}
    }
    if (response.code !== 'QUEUED') {
      this.slots.delete(wid)
      throw responseError(request.key, response, request.limit)
    }

    request.onQueued?.({position: response.position, holder: response.holder})
    let holder: HolderInfo | null = response.holder
    const giveUp = new Promise<{giveUp: 'timeout' | 'abort'}>((resolve) => {
      if (request.waitMs !== WAIT_FOREVER) {
        const cancel = atDeadline(sentAt + request.waitMs, () => resolve({giveUp: 'timeout'}))
        void outcome.finally(cancel)
      }
      if (request.signal) {
        const onAbort = () => resolve({giveUp: 'abort'})
        // Aborted while the acquire was on its way: the event has fired already.
        if (request.signal.aborted) onAbort()
        request.signal.addEventListener('abort', onAbort, {once: true})
        void outcome.finally(() => request.signal!.removeEventListener('abort', onAbort))
      }
    })
    const first = await Promise.race([outcome, giveUp])
    if ('grant' in first) {
      this.slots.delete(wid)
      return {grant: first.grant, queued: true}
    }
    if ('error' in first) throw first.error
    if ('giveUp' in first) {
      // Leave the queue. If the grant crossed our cancel, lockd releases it on the cancel, and a
      // grant push still in flight finds the slot abandoned and is released too.
      slot.abandoned = true
      settle({timeout: true})
      // The slot stays until the cancel is answered: a grant push that crossed it is released.
      // (The connection gone: lockd drops the waiters of a closed connection.)
      const cancelling = connection.request({op: 'cancel', key: request.key, wid, reason: first.giveUp === 'timeout' ? 'timeout' : 'cancelled'}).finally(() => this.slots.delete(wid))
      cancelling.catch(() => {})
      // An abort is answered at once: lockd runs the cancel after the acquire whenever it
      // answers (a paused lockd held `lock --wait 3s` for the cancel's whole request deadline).
      if (first.giveUp === 'abort') throw new AbortedError(`stopped waiting for ${quoteKey(request.key)}`)
      // The wait ran out: who holds the lock now, for the message, while the caller still waits.
      const cancelled = await unlessAborted(cancelling, request.signal).catch(() => null)
      if (cancelled?.code === 'OK' && !cancelled.released) {
        holder = (await unlessAborted(this.inspect(request.key), request.signal).catch(() => null))?.holder ?? holder
      }
    } else {
      this.slots.delete(wid)
    }
    throw new WaitTimeoutError(request.key, performance.now() - sentAt, holder)
  }

  async release(key: string, token: string | undefined, force: boolean): Promise<HolderInfo> {
    const connection = await this.connect()
    const response = await connection.request({op: 'release', key, ...(token ? {token} : {}), force})
    // A forced release of a free lock: say that, not "the token does not hold it".
    if (force && response.code === ErrorCode.NOT_HOLDER) throw new NotHolderError(key, `${quoteKey(key)} is not held`)
    if (response.code !== 'OK') throw responseError(key, response)
    return response.holder
  }

  async renew(key: string, token: string, leaseMs?: number): Promise<GrantInfo> {
    const connection = await this.connect()
    const response = await connection.request({op: 'renew', key, token, ...(leaseMs ? {leaseMs} : {})})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.grant
  }

  async check(key: string, token: string): Promise<HolderInfo> {
    const connection = await this.connect()
    const response = await connection.request({op: 'check', key, token})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.holder
  }

  async inspect(key: string) {
    const connection = await this.connect()
    const response = await connection.request({op: 'inspect', key})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.lock
  }

  /**
   * A long list is read a page at a time (LIST_PAGE names, each page after the last name of the
   * one before) from a lockd that can: lockd answers one request at a time, and building a
   * million names' answer in one go held everyone else up for ~2 s. The pages are read at
   * different moments: each name is as it was when its page was read.
   */
  async list(prefix: string, limitAsked?: number) {
    const limit = limitAsked || undefined // 0: no limit, as before pages
    const connection = await this.connect()
    const paged = connection.server?.features?.includes('list-after') === true
    const locks: LockInfo[] = []
    let after: string | undefined
    for (;;) {
      const want = limit === undefined ? LIST_PAGE : Math.min(LIST_PAGE, limit - locks.length)
      const page = paged ? want : limit
      const response = await connection.request({op: 'list', prefix, ...(page ? {limit: page} : {}), ...(after === undefined ? {} : {after})})
      if (response.code !== 'OK') throw responseError(prefix, response)
      for (const lock of response.locks) locks.push(lock)
      const done = !paged || response.locks.length < want || (limit !== undefined && locks.length >= limit)
      // A name released while the pages were read may leave total below the names seen.
      if (done) return {locks, total: Math.max(response.total, locks.length)}
      after = locks[locks.length - 1].key
    }
  }

  async info(): Promise<Record<string, unknown>> {
    const connection = await this.connect()
    const response = await connection.request({op: 'info'})
    if (response.code !== 'OK') throw responseError('', response)
    return {endpoint: this.label, ...response.info}
  }

  async *watch(target: WatchTarget, options: WatchOptions = {}): AsyncGenerator<WatchUpdate> {
    const {signal} = options
    const queue = new AsyncQueue<WatchUpdate | {type: 'lost'; reason: string}>()
    const onAbort = () => queue.close()
    signal?.addEventListener('abort', onAbort, {once: true})
    let resync = false
    let attempt = 0
    try {
      while (!signal?.aborted) {
        let connection: LockdConnection
        let sub: number
        try {
          connection = await this.connect()
          const sent = connection.start({op: 'watch', ...(target.key !== undefined ? {key: target.key} : {prefix: target.prefix})})
          sub = sent.id
          // Registered before the answer (and the events after it) can be read.
          this.watchers.set(sub, {
            connection,
            onEvent: (event) => queue.push({type: 'event', event}),
            onLost: (reason) => queue.push({type: 'lost', reason}),
          })
          const response = await sent.response
          if (response.code !== 'OK') {
            this.watchers.delete(sub)
            throw responseError(target.key ?? target.prefix ?? '', response)
          }
          yield {type: 'snapshot', locks: response.locks, resync}
        } catch (error) {
          // The first attempt reports an unreachable service; later ones keep trying, also
          // while lockd is at its connection limit (a restarted lockd that all its clients
          // reconnect to at once): that refusal ended the watch.
          if (!resync || options.reconnect === false || !mayPass(error)) throw error
          await sleep(backoffDelay(attempt++), signal)
          continue
        }
        attempt = 0
        resync = true
        for (;;) {
          const update = await queue.take()
          if (update === undefined) {
            this.watchers.delete(sub)
            if (!connection.closed) void connection.request({op: 'unwatch', sub}).catch(() => {})
            return
          }
          if (update.type === 'lost') {
            yield {type: 'disconnected', reason: update.reason}
            if (options.reconnect === false) return
            await sleep(backoffDelay(attempt++), signal)
            break
          }
          yield update
        }
      }
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  watchGrant(_key: string, token: string, onEnded: (reason: string) => void): () => void {
    this.grantWatchers.set(token, onEnded)
    return () => {
      if (this.grantWatchers.get(token) === onEnded) this.grantWatchers.delete(token)
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.connection?.close()
    this.connection = null
    this.states.set('closed')
  }
}

/** A refusal (or an answer the caller did not expect) as the typed error it means. */
function responseError(key: string, response: ServerResponse, limit?: number): LockError {
  if (response.code === ErrorCode.LOCK_HELD) return new LockHeldError(key, response.holder, limit)
  // (The server's words, one line without control characters: a peer may not be lockd.)
  const msg = printable('msg' in response ? response.msg : response.code)
  switch (response.code) {
    case ErrorCode.NOT_HOLDER:
      return new NotHolderError(key) // the same words as the etcd backend's
    case ErrorCode.BAD_INPUT:
      return new BadInputError(`lockd refused the request: ${msg}`)
    case ErrorCode.PROTOCOL:
      return new ProtocolError(msg)
    case ErrorCode.UNREACHABLE:
      return new UnreachableError(msg)
    case ErrorCode.LIMIT:
      return new LimitError(`lockd: ${msg}`)
    case ErrorCode.NOT_PERMITTED:
      return new NotPermittedError(`lockd refused: ${msg}`)
    default:
      return new ServerError(`lockd: ${msg}`)
  }
}
