import {createConnection, isIP, type Socket} from 'node:net'
import type {ConnectionOptions as TlsOptions} from 'node:tls'
import type {Packr} from 'msgpackr/pack'
import {createCodec, DEFAULT_MAX_FRAME, encodeFrame, FrameDecoder} from '../../protocol/framing.js'
import {PROTOCOL_VERSION, type HelloReply, type LockInfo, type Op, type Push, type RequestOf, type ServerResponse} from '../../protocol/messages.js'
import {ErrorCode} from '../../protocol/errors.js'
import {answerProblem, serverMessageProblem} from '../../protocol/server-messages.js'
import {AbortedError, LimitError, NotPermittedError, ProtocolError, UnreachableError} from '../errors.js'
import {describeTlsError} from '../tls-errors.js'
import {printable} from '../../util/printable.js'

/** A unix socket, or TCP (with `tls`: TLS, verified against `ca`, or the system's CAs). */
export type SocketTarget = {path: string} | {host: string; port: number; tls?: Pick<TlsOptions, 'ca' | 'cert' | 'key'>}

type Transport = 'unix' | 'tcp' | 'tls'

export interface ConnectionOptions {
  /** Give up connecting (and the hello) after this long. */
  connectTimeoutMs: number
  /** Default deadline of a request. */
  requestTimeoutMs: number
  maxFrame?: number
  /** How the target is named in error messages. */
  label: string
  /** Sent in the hello to a lockd that requires users (docs/protocol.md, "Authentication"). */
  auth?: {user: string; password: string}
}

interface Pending {
  /** The operation asked: its answer is checked against that operation's shape. */
  op: Op
  resolve(response: ServerResponse): void
  reject(error: Error): void
  timer: NodeJS.Timeout
  /** An answer that comes in parts: what arrived so far. */
  partial?: {response: ServerResponse; locks: LockInfo[]}
}

/**
 * One msgpack-framed connection to lockd: hello, request ids, per-request deadlines, pushes.
 * When it closes, every pending request fails with UnreachableError and `onClose` fires once.
 */
export class LockdConnection {
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private closedError: Error | null = null
  private readonly codec: Packr = createCodec()
  onPush: (push: Push) => void = () => {}
  onClose: (error: Error) => void = () => {}
  server: HelloReply | null = null

  private constructor(
    private readonly socket: Socket,
    private readonly options: ConnectionOptions,
    /** What carries it: says what a peer that closes without a word probably is. */
    private readonly transport: Transport,
    /** A client certificate was offered: a TLS server that closes at once probably refused it. */
    private readonly clientCertificate = false,
  ) {}

  static async connect(target: SocketTarget, options: ConnectionOptions): Promise<LockdConnection> {
    // node:tls costs a few ms to load: only lockds:// endpoints pay it (docs/startup.md).
    const connectTls = 'host' in target && target.tls ? (await import('node:tls')).connect : null
    return new Promise((resolve, reject) => {
      const socket =
        'host' in target && target.tls && connectTls
          ? connectTls({host: target.host, port: target.port, ...target.tls, ...(isIP(target.host) ? {} : {servername: target.host})})
          : createConnection(target as never)
      socket.setNoDelay(true)
      const connection = new LockdConnection(socket, options, 'path' in target ? 'unix' : target.tls ? 'tls' : 'tcp', 'host' in target && target.tls?.cert !== undefined)
      let connected = false
      const timer = setTimeout(() => {
        socket.destroy()
        // Connected and silent: a lockd that is stopped (SIGSTOP, a debugger), or a port where
        // something else listens and waits for what it speaks (HTTP, gRPC: etcd's port).
        const why = connected
          ? `connected, but no answer to lockd's hello within ${options.connectTimeoutMs}ms: is lockd what listens there, and is it running?`
          : `no answer within ${options.connectTimeoutMs}ms`
        reject(new UnreachableError(`${options.label}: ${why}`))
      }, options.connectTimeoutMs)
      const onError = (error: NodeJS.ErrnoException) => {
        clearTimeout(timer)
        reject(new UnreachableError(`${options.label}: ${describeSocketError(error)}`, {cause: error}))
      }
      socket.once('error', onError)
      socket.once('host' in target && target.tls ? 'secureConnect' : 'connect', () => {
        connected = true
        connection.attach()
        connection.hello().then(
          (hello) => {
            clearTimeout(timer)
            socket.off('error', onError)
            connection.server = hello
            resolve(connection)
          },
          (error: Error) => {
            clearTimeout(timer)
            socket.destroy()
            reject(error)
          },
        )
      })
    })
  }

  get closed(): boolean {
    return this.closedError !== null
  }

  private attach(): void {
    const decoder = new FrameDecoder(this.codec, this.options.maxFrame ?? DEFAULT_MAX_FRAME)
    // The first bytes the peer sent: what to show when it is not lockd at all (SSH, HTTP...).
    let firstBytes: Buffer | null = null
    this.socket.on('data', (chunk) => {
      firstBytes ??= Buffer.from(chunk.subarray(0, FIRST_BYTES_SHOWN))
      let messages: unknown[]
      try {
        messages = decoder.push(chunk)
      } catch (error) {
        // Before lockd's hello reply, bytes that do not frame are another program's.
        const why = this.server === null && this.helloWaiter !== null ? notLockd(firstBytes) : (error as Error).message
        this.shutdown(new ProtocolError(`${this.options.label}: ${why}`))
        return
      }
      for (const message of messages) {
        if (this.closedError) return
        const problem = serverMessageProblem(message)
        if (problem) {
          this.shutdown(new ProtocolError(`${this.options.label}: ${unusable(problem)}`))
          return
        }
        this.dispatch(message as Record<string, unknown>)
      }
    })
    this.socket.on('error', (error: NodeJS.ErrnoException) => this.shutdown(new UnreachableError(`${this.options.label}: ${describeSocketError(error)}`, {cause: error})))
    this.socket.on('close', () =>
      this.shutdown(new UnreachableError(`${this.options.label}: ${this.closedWithoutAWord() ? closedBeforeHello(this.transport, this.clientCertificate) : 'connection lost'}`)),
    )
  }

  private helloWaiter: ((reply: HelloReply) => void) | null = null

  /** Closed by the peer before it said anything (lockd answers every hello, even a refusal). */
  private closedWithoutAWord(): boolean {
    return this.helloWaiter !== null && this.socket.bytesRead === 0
  }

  private hello(): Promise<HelloReply> {
    return new Promise((resolve, reject) => {
      this.helloWaiter = resolve
      this.onClose = reject
      const auth = this.options.auth
      this.write({t: 'hello', v: PROTOCOL_VERSION, client: 'lockctl', maxFrame: this.options.maxFrame ?? DEFAULT_MAX_FRAME, ...(auth ? {user: auth.user, password: auth.password} : {})})
    })
  }

  /** A message that passed serverMessageProblem. */
  private dispatch(message: Record<string, unknown>): void {
    switch (message.t) {
      case 'hello': {
        const waiter = this.helloWaiter
        this.helloWaiter = null
        this.onClose = () => {}
        waiter?.(message as unknown as HelloReply)
        return
      }
      case 'res': {
        const response = message as unknown as ServerResponse
        const pending = this.pending.get(response.id)
        if (!pending) return // the request already timed out
        if (response.more) pending.partial = {response, locks: 'locks' in response ? [...response.locks] : []}
        else this.settle(response.id, pending, response)
        return
      }
      case 'push': {
        const push = message as unknown as Push
        if (push.ev === 'part') {
          const pending = this.pending.get(push.id)
          if (!pending?.partial) return // timed out meanwhile
          pending.partial.locks.push(...push.locks)
          if (!push.more) this.settle(push.id, pending, {...pending.partial.response, locks: pending.partial.locks, more: false} as ServerResponse)
          return
        }
        this.onPush(push)
        return
      }
      case 'error': {
        const why = `${this.options.label}: server closed the connection: ${printable(message.msg as string)}`
        this.shutdown(message.code === ErrorCode.LIMIT ? new LimitError(why) : message.code === ErrorCode.NOT_PERMITTED ? new NotPermittedError(why) : new ProtocolError(why))
        return
      }
      // (No other type gets here: serverMessageProblem refused it.)
    }
  }

  private settle(id: number, pending: Pending, response: ServerResponse): void {
    const problem = answerProblem(pending.op, response as unknown as Record<string, unknown>)
    // An answer without the fields its operation has: the peer is broken, so is the connection.
    if (problem) {
      this.shutdown(new ProtocolError(`${this.options.label}: ${unusable(problem)}`))
      return
    }
    this.pending.delete(id)
    clearTimeout(pending.timer)
    pending.resolve(response)
  }

  request<O extends Op>(body: RequestOf<O>, options: {timeoutMs?: number; signal?: AbortSignal} = {}): Promise<ServerResponse<O>> {
    return this.start(body, options).response
  }

  /**
   * Send a request and say its id at once: a waiter is named by the id of its acquire, and a
   * watch by the id of its watch request, in the pushes that follow. The caller registers the
   * id before it awaits: answers and pushes are read in later I/O callbacks, never before.
   */
  start<O extends Op>(body: RequestOf<O>, options: {timeoutMs?: number; signal?: AbortSignal} = {}): {id: number; response: Promise<ServerResponse<O>>} {
    const id = this.nextId++
    if (this.closedError) return {id, response: Promise.reject(this.closedError)}
    if (options.signal?.aborted) return {id, response: Promise.reject(new AbortedError())}
    const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs
    const response = new Promise<ServerResponse<O>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new UnreachableError(`${this.options.label}: no answer to ${body.op} within ${timeoutMs}ms`))
      }, timeoutMs)
      // Answers are matched to requests by id: this one is the answer to `body.op`.
      this.pending.set(id, {op: body.op, resolve, reject, timer})
      try {
        this.write({t: 'req', id, ...body})
      } catch (error) {
        this.pending.delete(id)
        clearTimeout(timer)
        reject(error instanceof Error ? error : new ProtocolError(String(error)))
      }
    })
    return {id, response}
  }

  private write(message: unknown): void {
    this.socket.write(encodeFrame(this.codec, message, this.options.maxFrame ?? DEFAULT_MAX_FRAME))
  }

  close(): void {
    this.shutdown(new UnreachableError(`${this.options.label}: connection closed`))
  }

  private shutdown(error: Error): void {
    if (this.closedError) return
    this.closedError = error
    this.socket.destroy()
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer)
      pending.reject(error)
    }
    this.pending.clear()
    this.onClose(error)
  }
}

/** How many of a peer's first bytes a "not lockd" error shows. */
const FIRST_BYTES_SHOWN = 24

/**
 * A peer whose first bytes are not a lockd frame: what it sent, as text when it is text (an SSH
 * banner, an HTTP answer), in hex when not.
 */
function notLockd(first: Buffer | null): string {
  const bytes = first ?? Buffer.alloc(0)
  const text = bytes.toString('latin1')
  const shown = /^[\x20-\x7e\r\n\t]+$/.test(text) ? JSON.stringify(text) : bytes.toString('hex').replace(/(..)(?!$)/g, '$1 ')
  return `what answers there is not lockd (it began ${shown}): is the address right?`
}

/** A message that does not have lockd's shape. */
function unusable(problem: string): string {
  return `sent a message lockctl cannot use (${problem}): is lockd what listens there, and of a version this lockctl knows?`
}

/**
 * Why a peer may close a new connection without a word: a TLS server sent a plain client's hello
 * (it drops what is not a TLS handshake), a lockd with no descriptors left for one more
 * connection (it closes those as it accepts them, and says so in its log), or something that is
 * not lockd listens there.
 */
function closedBeforeHello(transport: Transport, clientCertificate: boolean): string {
  if (transport === 'tcp') return 'closed before answering the hello (if it serves TLS, use lockds:// or --cacert; if not, it may have no room for more connections: see its log)'
  // Over TLS 1.3 a server that refuses a client certificate closes after the handshake, without an alert.
  if (transport === 'tls' && clientCertificate)
    return "closed before answering the hello: lockd refused this client's certificate (is it signed by the CA of lockd's --tls-client-ca, and still valid?)"
  return 'closed before answering the hello (is lockd listening there, with room for more connections?)'
}

function describeSocketError(error: NodeJS.ErrnoException): string {
  const tls = describeTlsError(error, 'lockd', 'lockd://')
  if (tls) return tls
  switch (error.code) {
    case 'ECONNREFUSED':
      return 'connection refused (is lockd running?)'
    case 'ENOENT':
      return 'no socket there (is lockd running?)'
    case 'EACCES':
      return 'permission denied'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'host not found'
    case 'ECONNRESET':
    case 'EPIPE':
      return 'connection lost'
    default:
      // OpenSSL's texts end in a newline: the error stays one line.
      return error.message.trim().split('\n')[0]
  }
}
