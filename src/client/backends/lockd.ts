import {ErrorCode} from '../../protocol/errors.js'
import {WAIT_FOREVER, type GrantInfo, type HolderInfo, type Push, type Response} from '../../protocol/messages.js'
import type {AcquireRequest, AcquireResult, ConnectionState, LockBackend} from '../backend.js'
import {
  AbortedError,
  BadInputError,
  ClosedError,
  LockError,
  LockHeldError,
  NotHolderError,
  ProtocolError,
  ServerError,
  UnreachableError,
  WaitTimeoutError,
} from '../errors.js'
import {LockdConnection} from './lockd-connection.js'

interface WaitSlot {
  key: string
  settle(outcome: {grant: GrantInfo} | {timeout: true} | {error: Error}): void
  /** Set once the caller gave up: a grant that still arrives is released at once. */
  abandoned: boolean
}

export interface LockdBackendOptions {
  label: string
  /** Opens a fresh connection (the embedded mode starts lockd here when it is not running). */
  open: () => Promise<LockdConnection>
}

export class LockdBackend implements LockBackend {
  readonly kind = 'lockd'
  readonly label: string
  private connection: LockdConnection | null = null
  private connecting: Promise<LockdConnection> | null = null
  private readonly slots = new Map<number, WaitSlot>()
  private readonly listeners = new Set<(state: ConnectionState) => void>()
  private closed = false

  constructor(private readonly options: LockdBackendOptions) {
    this.label = options.label
  }

  onStateChange(listener: (state: ConnectionState) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  private emit(state: ConnectionState): void {
    for (const listener of this.listeners) listener(state)
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
        this.emit('connected')
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
    if (!this.closed) this.emit('suspended')
  }

  private onPush(connection: LockdConnection, push: Push): void {
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
    }
  }

  async acquire(request: AcquireRequest): Promise<AcquireResult> {
    const sentAt = performance.now()
    const connection = await this.connect()
    const wid = connection.peekNextId()
    let settle!: WaitSlot['settle']
    const outcome = new Promise<Parameters<WaitSlot['settle']>[0]>((resolve) => (settle = resolve))
    const slot: WaitSlot = {key: request.key, settle, abandoned: false}
    // Registered before sending: a grant push can never find no slot.
    this.slots.set(wid, slot)
    let response: Response
    try {
      response = await connection.request(
        {
          op: 'acquire',
          key: request.key,
          leaseMs: request.leaseMs,
          waitMs: request.waitMs,
          owner: request.owner,
          ...(request.token ? {token: request.token} : {}),
        },
        {signal: request.signal},
      )
    } catch (error) {
      this.slots.delete(wid)
      throw error
    }
    if (response.code === 'OK') {
      this.slots.delete(wid)
      return {grant: response.grant!, queued: false}
    }
    if (response.code !== 'QUEUED') {
      this.slots.delete(wid)
      if (response.code === ErrorCode.LOCK_HELD) throw new LockHeldError(request.key, response.holder ?? null)
      throw responseError(request.key, response)
    }

    request.onQueued?.({position: response.position ?? 0, holder: response.holder ?? null})
    let holder: HolderInfo | null = response.holder ?? null
    const giveUp = new Promise<{giveUp: 'timeout' | 'abort'}>((resolve) => {
      if (request.waitMs !== WAIT_FOREVER) {
        const left = request.waitMs - (performance.now() - sentAt)
        const timer = setTimeout(() => resolve({giveUp: 'timeout'}), Math.max(0, left))
        void outcome.finally(() => clearTimeout(timer))
      }
      if (request.signal) {
        const onAbort = () => resolve({giveUp: 'abort'})
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
      try {
        const cancelled = await connection.request({op: 'cancel', key: request.key, wid})
        if (cancelled.code === 'OK' && !cancelled.released) {
          holder = (await this.inspect(request.key).catch(() => null))?.holder ?? holder
        }
      } catch {
        // The connection is gone, and lockd drops the waiters of a closed connection.
      } finally {
        this.slots.delete(wid)
      }
      if (first.giveUp === 'abort') throw new AbortedError(`stopped waiting for ${JSON.stringify(request.key)}`)
    } else {
      this.slots.delete(wid)
    }
    throw new WaitTimeoutError(request.key, performance.now() - sentAt, holder)
  }

  async release(key: string, token: string | undefined, force: boolean): Promise<HolderInfo> {
    const connection = await this.connect()
    const response = await connection.request({op: 'release', key, ...(token ? {token} : {}), force})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.holder as HolderInfo
  }

  async renew(key: string, token: string, leaseMs?: number): Promise<GrantInfo> {
    const connection = await this.connect()
    const response = await connection.request({op: 'renew', key, token, ...(leaseMs ? {leaseMs} : {})})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.grant!
  }

  async check(key: string, token: string): Promise<HolderInfo> {
    const connection = await this.connect()
    const response = await connection.request({op: 'check', key, token})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.holder as HolderInfo
  }

  async inspect(key: string) {
    const connection = await this.connect()
    const response = await connection.request({op: 'inspect', key})
    if (response.code !== 'OK') throw responseError(key, response)
    return response.lock ?? null
  }

  async list(prefix: string, limit?: number) {
    const connection = await this.connect()
    const response = await connection.request({op: 'list', prefix, ...(limit ? {limit} : {})})
    if (response.code !== 'OK') throw responseError(prefix, response)
    return {locks: response.locks ?? [], total: response.total ?? 0}
  }

  async info(): Promise<Record<string, unknown>> {
    const connection = await this.connect()
    const response = await connection.request({op: 'info'})
    if (response.code !== 'OK') throw responseError('', response)
    return {endpoint: this.label, ...response.info}
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.connection?.close()
    this.connection = null
    this.emit('closed')
  }
}

function responseError(key: string, response: Response): LockError {
  const msg = response.msg ?? response.code
  switch (response.code) {
    case ErrorCode.NOT_HOLDER:
      return new NotHolderError(key, `${msg} (${JSON.stringify(key)})`)
    case ErrorCode.LOCK_HELD:
      return new LockHeldError(key, response.holder ?? null)
    case ErrorCode.BAD_INPUT:
      return new BadInputError(`lockd refused the request: ${msg}`)
    case ErrorCode.PROTOCOL:
      return new ProtocolError(msg)
    case ErrorCode.UNREACHABLE:
      return new UnreachableError(msg)
    default:
      return new ServerError(`lockd: ${msg}`)
  }
}
