import {randomBytes, createHash} from 'node:crypto'
import {chmodSync, existsSync, realpathSync, statSync, unlinkSync} from 'node:fs'
import {createConnection, createServer, type Server, type Socket} from 'node:net'
import {dirname} from 'node:path'
import type {Packr} from 'msgpackr/pack'
import {ErrorCode} from '../protocol/errors.js'
import {createCodec, DEFAULT_MAX_FRAME, encodeFrame, FrameDecoder, MIN_PEER_FRAME} from '../protocol/framing.js'
import {PROTOCOL_VERSION, type LockEvent, type Push, type Request, type Response, type ServerInfo, type ServerMessage} from '../protocol/messages.js'
import {attemptProblem, keyProblem, leaseProblem, ownerProblem, tokenProblem, waitProblem} from '../protocol/validate.js'
import {DurableLog} from './durable-log.js'
import {LockTable, systemClock, type Clock, type TableEvent} from './lock-table.js'
import {makeDirectories} from '../util/fs.js'
import {VERSION} from '../version.js'

export interface LockServerOptions {
  /** TCP addresses to listen on, e.g. {host: '127.0.0.1', port: 7070}; port 0 picks one. */
  listen?: {host: string; port: number}[]
  /** Unix socket path to listen on. */
  socket?: string
  /** Directory for the durable log; without one the server keeps state in memory only. */
  dataDir?: string
  maxFrame?: number
  /** Exit after this long with no connections and no held locks (the embedded server). */
  idleExitMs?: number
  clock?: Clock
  /** Where operator messages go (recovery notes, shutdown). */
  log?: (line: string) => void
  snapshotBytes?: number
  /**
   * Stop when the unix socket file is removed or replaced (the embedded lockd): clients find it
   * only through that file, and an unreachable lockd would still hold the data directory, so
   * no new one could start.
   */
  exitWhenSocketRemoved?: boolean
  /** Connections beyond this many are refused with a LIMIT error (default 10,000). */
  maxConnections?: number
  /** Waiting acquires one connection may have at once (default 10,000). */
  maxWaitersPerConnection?: number
}

export const DEFAULT_MAX_CONNECTIONS = 10_000
export const DEFAULT_MAX_WAITERS_PER_CONNECTION = 10_000

/** lockd could not start; the message says why in one line. Exit code 1 from the CLI. */
export class ServerStartError extends Error {
  readonly exitCode = 1
}

/** A listener refused to start because another lockd already owns the resource. */
export class AlreadyRunningError extends ServerStartError {}

const HELLO_TIMEOUT_MS = 10_000
const MAX_OUTPUT_BUFFER = 16 * 1024 * 1024

interface Subscription {
  conn: Connection
  sub: number
  key?: string
  prefix?: string
}

interface Connection {
  session: string
  subscriptions: Map<number, Subscription>
  socket: Socket
  codec: Packr
  decoder: FrameDecoder
  greeted: boolean
  helloTimer?: NodeJS.Timeout
  /**
   * Largest frame the peer accepts, as its hello says. A peer whose hello does not say (a client
   * from before answers came in parts) gets every answer whole, as it always did.
   */
  peerMaxFrame: number | null
}

/**
 * Upper bound of one encoded LockInfo: a 512-byte key, a 256-character owner (up to 3 bytes a
 * UTF-16 unit), numbers and field names. Answers with many locks are cut into parts of
 * `(frame limit - slack) / this` locks, so no part can exceed the peer's frame limit.
 */
const MAX_LOCK_INFO_BYTES = 512 + 256 * 3 + 256
const PART_SLACK_BYTES = 4096

export class LockServer {
  readonly table: LockTable
  private readonly clock: Clock
  private readonly servers: Server[] = []
  private readonly connections = new Map<string, Connection>()
  /** Watchers of one key, and watchers of prefixes (few; scanned per event). */
  private readonly keyWatchers = new Map<string, Set<Subscription>>()
  private readonly prefixWatchers = new Set<Subscription>()
  /** Queued acquires that asked for position updates, by key. */
  private readonly progressWaiters = new Map<string, Map<string, {conn: Connection; wid: number; position: number}>>()
  private log: DurableLog | null = null
  private dirMutex: Server | null = null
  private timer: NodeJS.Timeout | null = null
  private timerAt = Number.POSITIVE_INFINITY
  private idleTimer: NodeJS.Timeout | null = null
  private sessionCounter = 0
  /** Messages produced since the last batch boundary; released once their log records are durable. */
  private outgoing: {conn: Connection; message: ServerMessage}[] = []
  private releaseChain: Promise<void> = Promise.resolve()
  private commitsInFlight = 0
  private readonly serverId = randomBytes(8).toString('hex')
  private readonly startedAt = Date.now()
  private closing: Promise<void> | null = null
  private socketInode: number | null = null
  private closedResolve!: () => void
  /** Resolves when the server has stopped (close() or idle exit). */
  readonly closed: Promise<void> = new Promise((resolve) => (this.closedResolve = resolve))
  readonly addresses: {tcp: {host: string; port: number}[]; socket?: string} = {tcp: []}

  constructor(private readonly options: LockServerOptions = {}) {
    this.clock = options.clock ?? systemClock
    this.table = new LockTable(this.clock)
  }

  private say(line: string): void {
    this.options.log?.(line)
  }

  async start(): Promise<this> {
    const {dataDir} = this.options
    try {
      if (dataDir) {
        try {
          makeDirectories(dataDir)
        } catch (error) {
          const {code, path} = error as NodeJS.ErrnoException
          throw new ServerStartError(`--data-dir: cannot create ${path ?? dataDir}: ${code ?? (error as Error).message}`)
        }
        this.dirMutex = await claimDataDir(dataDir)
        const {log, state} = await DurableLog.open(dataDir, () => this.table.snapshot(), {
          snapshotBytes: this.options.snapshotBytes,
        })
        this.log = log
        for (const note of state.notes) this.say(`lockd: ${note}`)
        this.table.recover(state.fence, state.holders)
        log.recovered()
        if (state.holders.size > 0) {
          this.say(`lockd: recovered ${state.holders.size} held lock(s); each keeps its whole lease from now`)
        }
      }
      for (const address of this.options.listen ?? []) {
        const server = await listenAs(`--listen ${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`, this.newServer(), {host: address.host, port: address.port})
        const bound = server.address() as {address: string; port: number}
        this.addresses.tcp.push({host: bound.address, port: bound.port})
      }
      if (this.options.socket) {
        await this.listenUnix(this.options.socket)
        this.addresses.socket = this.options.socket
      }
    } catch (error) {
      await this.close()
      throw error
    }
    this.scheduleTick()
    this.checkIdle()
    return this
  }

  info(): ServerInfo {
    return {
      server: 'lockd',
      version: VERSION,
      protocol: PROTOCOL_VERSION,
      serverId: this.serverId,
      pid: process.pid,
      startedAt: this.startedAt,
      locks: this.table.size,
      waiters: this.table.waiters,
      connections: this.connections.size,
      durable: this.log !== null,
    }
  }

  /** Stop listening, let pending log writes finish, drop connections, release the data dir. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.timer) clearTimeout(this.timer)
      if (this.idleTimer) clearTimeout(this.idleTimer)
      // net.Server#close waits for open connections, so stop accepting first, let acks that are
      // waiting for the log go out, then drop the connections, then wait for the listeners.
      const listenersClosed = Promise.all(this.servers.map((s) => new Promise((resolve) => s.close(resolve))))
      await this.releaseChain.catch(() => {})
      for (const conn of this.connections.values()) conn.socket.destroy()
      this.connections.clear()
      await listenersClosed
      await this.log?.close()
      // Remove our socket file, but not one that a newer lockd has put in its place.
      if (this.addresses.socket && this.socketInode !== null) {
        try {
          if (statSync(this.addresses.socket).ino === this.socketInode) unlinkSync(this.addresses.socket)
        } catch {}
      }
      await new Promise((resolve) => (this.dirMutex ? this.dirMutex.close(resolve) : resolve(undefined)))
      this.closedResolve()
    })()
    return this.closing
  }

  private newServer(): Server {
    const server = createServer({noDelay: true}, (socket) => this.accept(socket))
    this.servers.push(server)
    return server
  }

  private async listenUnix(path: string): Promise<void> {
    makeDirectories(dirname(path))
    if (existsSync(path)) {
      // Another server answering there owns it; a file nobody answers on is a leftover.
      if (await answers(path)) throw new AlreadyRunningError(`another server is listening on ${path}`)
      unlinkSync(path)
    }
    await listenAs(`--socket ${path}`, this.newServer(), {path})
    chmodSync(path, 0o600)
    const inode = statSync(path).ino
    this.socketInode = inode
    if (this.options.exitWhenSocketRemoved) {
      const check = setInterval(() => {
        let now: number | null = null
        try {
          now = statSync(path).ino
        } catch {}
        if (now === inode || this.closing) return
        clearInterval(check)
        this.say(`lockd: ${path} was removed or replaced; exiting`)
        void this.close()
      }, 1000)
      check.unref()
    }
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy()
      return
    }
    socket.setNoDelay(true)
    const codec = createCodec()
    const conn: Connection = {
      session: `s${++this.sessionCounter}`,
      socket,
      codec,
      decoder: new FrameDecoder(codec, this.options.maxFrame ?? DEFAULT_MAX_FRAME),
      greeted: false,
      subscriptions: new Map(),
      peerMaxFrame: null,
    }
    conn.helloTimer = setTimeout(() => this.fail(conn, ErrorCode.PROTOCOL, 'no hello within 10s'), HELLO_TIMEOUT_MS)
    conn.helloTimer.unref()
    const maxConnections = this.options.maxConnections ?? DEFAULT_MAX_CONNECTIONS
    if (this.connections.size >= maxConnections) {
      // Refused before it costs anything; the client reports the message (exit 4).
      socket.on('error', () => {})
      socket.end(encodeFrame(codec, {t: 'error', code: ErrorCode.LIMIT, msg: `lockd has ${maxConnections} connections, its limit (--max-connections); try again later`}))
      setTimeout(() => socket.destroy(), 1000).unref()
      return
    }
    this.connections.set(conn.session, conn)
    this.checkIdle()
    socket.on('data', (chunk) => this.onData(conn, chunk))
    socket.on('error', () => {})
    socket.on('close', () => this.onClose(conn))
  }

  private onData(conn: Connection, chunk: Buffer): void {
    let messages: unknown[]
    try {
      messages = conn.decoder.push(chunk)
    } catch (error) {
      this.fail(conn, ErrorCode.PROTOCOL, (error as Error).message)
      return
    }
    for (const message of messages) {
      if (conn.socket.destroyed) break
      this.handleMessage(conn, message)
    }
    this.endBatch()
  }

  /** One message from a peer: the hello, then requests (docs/protocol.md). */
  private handleMessage(conn: Connection, message: unknown): void {
    if (typeof message !== 'object' || message === null || Array.isArray(message)) {
      this.fail(conn, ErrorCode.PROTOCOL, 'a message must be a map')
      return
    }
    const m = message as Record<string, unknown>
    if (!conn.greeted) {
      if (m.t !== 'hello') {
        this.fail(conn, ErrorCode.PROTOCOL, 'the first message must be hello')
        return
      }
      if (m.v !== PROTOCOL_VERSION) {
        this.fail(conn, ErrorCode.PROTOCOL, `protocol version ${String(m.v)} is not supported (this lockd speaks ${PROTOCOL_VERSION})`)
        return
      }
      conn.greeted = true
      clearTimeout(conn.helloTimer)
      if (typeof m.maxFrame === 'number' && Number.isInteger(m.maxFrame)) conn.peerMaxFrame = Math.max(MIN_PEER_FRAME, m.maxFrame)
      this.send(conn, {
        t: 'hello',
        v: PROTOCOL_VERSION,
        server: 'lockd',
        version: VERSION,
        serverId: this.serverId,
        maxFrame: this.options.maxFrame ?? DEFAULT_MAX_FRAME,
      })
      return
    }
    if (m.t !== 'req' || typeof m.id !== 'number' || !Number.isInteger(m.id)) {
      this.fail(conn, ErrorCode.PROTOCOL, 'a request needs t = "req" and an integer id')
      return
    }
    // An id names a waiting acquire (cancel, grant pushes) or a watch (event pushes) for as long
    // as it lives: a second request reusing it would make one of them unreachable, a ghost.
    if (this.table.isWaiting({session: conn.session, wid: m.id}) || conn.subscriptions.has(m.id)) {
      this.fail(conn, ErrorCode.PROTOCOL, `request id ${m.id} is already in use by a waiting acquire or a watch on this connection`)
      return
    }
    let response: Omit<Response, 't' | 'id'>
    try {
      response = this.execute(conn, m as unknown as Request)
    } catch (error) {
      response = {code: ErrorCode.INTERNAL, msg: (error as Error).message}
    }
    // Events of this request go out before the next request runs: a watch that follows in the
    // same batch then sees them in its snapshot, not twice.
    this.dispatchEvents(this.table.drainEvents())
    this.sendResponse(conn, m.id, response)
  }

  /**
   * Send an answer; one with more locks than fit in the peer's frame limit goes as the response
   * with the first part (`more: true`) and `part` pushes carrying the request id, the last with
   * `more: false`. They are queued together, so nothing else on the connection comes between.
   */
  private sendResponse(conn: Connection, id: number, response: Omit<Response, 't' | 'id'>): void {
    const locks = response.locks
    const perPart = conn.peerMaxFrame === null ? Number.POSITIVE_INFINITY : Math.floor((conn.peerMaxFrame - PART_SLACK_BYTES) / MAX_LOCK_INFO_BYTES)
    if (!locks || locks.length <= perPart) {
      this.send(conn, {t: 'res', id, ...response})
      return
    }
    this.send(conn, {t: 'res', id, ...response, locks: locks.slice(0, perPart), more: true})
    for (let from = perPart; from < locks.length; from += perPart) {
      this.send(conn, {t: 'push', ev: 'part', id, locks: locks.slice(from, from + perPart), more: from + perPart < locks.length})
    }
  }

  private execute(conn: Connection, request: Request): Omit<Response, 't' | 'id'> {
    const bad = (msg: string) => ({code: ErrorCode.BAD_INPUT, msg})
    if (request.op !== 'info' && request.op !== 'ping' && request.op !== 'list' && request.op !== 'watch' && request.op !== 'unwatch') {
      const problem = keyProblem(request.key)
      if (problem) return bad(problem)
    }
    switch (request.op) {
      case 'acquire': {
        const problem =
          leaseProblem(request.leaseMs) ??
          waitProblem(request.waitMs) ??
          ownerProblem(request.owner) ??
          (request.token === undefined || request.token === null ? null : tokenProblem(request.token)) ??
          (request.attempt === undefined || request.attempt === null ? null : attemptProblem(request.attempt))
        if (problem) return bad(problem)
        const maxWaiters = this.options.maxWaitersPerConnection ?? DEFAULT_MAX_WAITERS_PER_CONNECTION
        if (request.waitMs !== 0 && this.table.waitingOf(conn.session) >= maxWaiters && this.table.holderOf(request.key) !== null) {
          return {code: ErrorCode.LIMIT, msg: `this connection already has ${maxWaiters} waiting acquires, lockd's limit (--max-waiters-per-connection)`}
        }
        const result = this.table.acquire({
          key: request.key,
          leaseMs: request.leaseMs,
          waitMs: request.waitMs,
          owner: request.owner,
          token: request.token ?? undefined,
          attempt: request.attempt ?? undefined,
          from: {session: conn.session, wid: request.id},
        })
        if (result.kind === 'granted') return {code: 'OK', grant: result.grant}
        if (result.kind === 'held') return {code: ErrorCode.LOCK_HELD, msg: `held by ${result.holder.owner}`, holder: result.holder}
        if (request.progress === true) {
          let waiting = this.progressWaiters.get(request.key)
          if (!waiting) this.progressWaiters.set(request.key, (waiting = new Map()))
          waiting.set(`${conn.session}:${request.id}`, {conn, wid: request.id, position: result.position})
        }
        return {code: 'QUEUED', position: result.position, holder: result.holder}
      }
      case 'cancel': {
        if (typeof request.wid !== 'number') return bad('cancel needs the wid of the acquire')
        return {code: 'OK', released: this.table.cancel({session: conn.session, wid: request.wid}, request.key).released}
      }
      case 'release': {
        if (!request.force) {
          const problem = tokenProblem(request.token)
          if (problem) return bad(problem)
        }
        const result = this.table.release(request.key, request.token, request.force === true, conn.session)
        if (!result.ok) return {code: ErrorCode.NOT_HOLDER, msg: request.force ? 'the lock is not held' : 'the token does not hold the lock'}
        return {code: 'OK', released: true, holder: this.table.holderInfo(result.holder)}
      }
      case 'renew': {
        const problem = tokenProblem(request.token) ?? (request.leaseMs === undefined ? null : leaseProblem(request.leaseMs))
        if (problem) return bad(problem)
        const result = this.table.renew(request.key, request.token, request.leaseMs ?? undefined, conn.session)
        if (!result.ok) return {code: ErrorCode.NOT_HOLDER, msg: 'the token does not hold the lock'}
        return {code: 'OK', grant: this.table.grantInfo(request.key, result.holder)}
      }
      case 'check': {
        const problem = tokenProblem(request.token)
        if (problem) return bad(problem)
        const holder = this.table.check(request.key, request.token)
        if (!holder) return {code: ErrorCode.NOT_HOLDER, msg: 'the token does not hold the lock'}
        return {code: 'OK', holder: this.table.holderInfo(holder)}
      }
      case 'inspect':
        return {code: 'OK', lock: this.table.inspect(request.key)}
      case 'list': {
        if (typeof request.prefix !== 'string') return bad('list needs a prefix string')
        const limit = typeof request.limit === 'number' && request.limit > 0 ? request.limit : Number.POSITIVE_INFINITY
        const {locks, total} = this.table.list(request.prefix, limit)
        return {code: 'OK', locks, total}
      }
      case 'info':
        return {code: 'OK', info: this.info()}
      case 'watch': {
        const subscription: Subscription = {conn, sub: request.id}
        if (typeof request.key === 'string') {
          const problem = keyProblem(request.key)
          if (problem) return bad(problem)
          subscription.key = request.key
          let set = this.keyWatchers.get(request.key)
          if (!set) this.keyWatchers.set(request.key, (set = new Set()))
          set.add(subscription)
          conn.subscriptions.set(request.id, subscription)
          const lock = this.table.inspect(request.key)
          return {code: 'OK', sub: request.id, locks: lock ? [lock] : [], total: lock ? 1 : 0}
        }
        if (typeof request.prefix !== 'string') return bad('watch needs a key or a prefix')
        subscription.prefix = request.prefix
        this.prefixWatchers.add(subscription)
        conn.subscriptions.set(request.id, subscription)
        const {locks, total} = this.table.list(request.prefix)
        return {code: 'OK', sub: request.id, locks, total}
      }
      case 'unwatch': {
        const subscription = conn.subscriptions.get(request.sub)
        if (subscription) this.unsubscribe(subscription)
        return {code: 'OK'}
      }
      case 'ping':
        return {code: 'OK'}
      default:
        return bad(`unknown operation ${JSON.stringify((request as {op: unknown}).op)}`)
    }
  }

  /** Queue a message; it leaves once every log record written before it is durable. */
  private send(conn: Connection, message: ServerMessage): void {
    this.outgoing.push({conn, message})
  }

  /**
   * End of a batch of work: turn table events into pushes, log the changed keys, and release
   * this batch's messages after the commit (or at once when nothing changed and nothing is
   * in flight, which keeps reads and refusals fast).
   */
  private endBatch(): void {
    this.dispatchEvents(this.table.drainEvents())
    const outgoing = this.outgoing
    this.outgoing = []
    const changes = this.table.drainChanges()
    if (changes.length > 0 && this.log) {
      const fence = this.table.lastFence
      this.log.append(
        changes.map((c) => ({key: c.key, holder: c.holder, fence})),
        fence,
      )
      const commit = this.log.commit()
      this.commitsInFlight++
      this.releaseChain = this.releaseChain
        .then(() => commit)
        .then(
          () => {
            this.commitsInFlight--
            this.deliver(outgoing)
          },
          (error: Error) => this.logFailed(error),
        )
    } else if (this.commitsInFlight > 0) {
      // Keep per-connection order behind messages still waiting for their commit.
      this.releaseChain = this.releaseChain.then(() => this.deliver(outgoing))
    } else {
      this.deliver(outgoing)
    }
    this.scheduleTick()
    this.checkIdle()
  }

  private deliver(outgoing: {conn: Connection; message: ServerMessage}[]): void {
    const touched = new Set<Connection>()
    for (const {conn, message} of outgoing) {
      if (conn.socket.destroyed) continue
      if (!touched.has(conn)) {
        touched.add(conn)
        conn.socket.cork()
      }
      conn.socket.write(this.encode(conn, message))
    }
    for (const conn of touched) {
      conn.socket.uncork()
      // A peer that never reads its pushes must not make the server hold unbounded memory.
      if (conn.socket.writableLength > MAX_OUTPUT_BUFFER) conn.socket.destroy()
    }
  }

  /** Encode under the peer's limit; an answer that still does not fit fails alone, not the connection. */
  private encode(conn: Connection, message: ServerMessage): Buffer {
    try {
      return encodeFrame(conn.codec, message, conn.peerMaxFrame ?? Number.MAX_SAFE_INTEGER)
    } catch (error) {
      if (message.t !== 'res') throw error
      return encodeFrame(conn.codec, {t: 'res', id: message.id, code: ErrorCode.INTERNAL, msg: `the answer is too large for this connection: ${(error as Error).message}`})
    }
  }

  private logFailed(error: Error): void {
    // Memory is now ahead of disk: acknowledging anything else could hand out a grant that a
    // restart forgets. Stop serving.
    this.say(`lockd: ${error.message}; stopping`)
    process.exitCode = 1
    void this.close()
  }

  private unsubscribe(subscription: Subscription): void {
    subscription.conn.subscriptions.delete(subscription.sub)
    if (subscription.key !== undefined) {
      const set = this.keyWatchers.get(subscription.key)
      set?.delete(subscription)
      if (set?.size === 0) this.keyWatchers.delete(subscription.key)
    } else {
      this.prefixWatchers.delete(subscription)
    }
  }

  /** The watch event a table event means, if any (renewals and hand-off dequeues are not). */
  private lockEvent(event: TableEvent): LockEvent | null {
    const waiters = this.table.waitersOf(event.key)
    switch (event.type) {
      case 'granted':
        return {type: 'acquired', key: event.key, owner: event.holder.owner, fence: event.holder.fence, waiters}
      case 'released':
        return {type: 'released', key: event.key, owner: event.holder.owner, fence: event.holder.fence, waiters, force: event.force}
      case 'expired':
        return {type: 'expired', key: event.key, owner: event.holder.owner, fence: event.holder.fence, waiters}
      case 'queued':
        return {type: 'queued', key: event.key, waiters}
      case 'dequeued':
        return event.reason === 'granted' ? null : {type: 'dequeued', key: event.key, waiters, reason: event.reason}
      default:
        return null
    }
  }

  private publish(event: TableEvent): void {
    if (this.keyWatchers.size === 0 && this.prefixWatchers.size === 0) return
    const exact = this.keyWatchers.get(event.key)
    let lockEvent: LockEvent | null | undefined
    const targets: Subscription[] = exact ? [...exact] : []
    for (const subscription of this.prefixWatchers) if (event.key.startsWith(subscription.prefix!)) targets.push(subscription)
    if (targets.length === 0) return
    lockEvent ??= this.lockEvent(event)
    if (!lockEvent) return
    for (const subscription of targets) this.send(subscription.conn, {t: 'push', ev: 'lock', sub: subscription.sub, event: lockEvent})
  }

  /** Tell waiters that asked for it their new place in the queue (and the holder). */
  private updatePositions(key: string): void {
    const waiting = this.progressWaiters.get(key)
    if (!waiting) return
    const holder = this.table.holderOf(key)
    for (const [id, waiter] of waiting) {
      const position = this.table.positionOf({session: waiter.conn.session, wid: waiter.wid}, key)
      if (position === 0) {
        waiting.delete(id) // granted, gone, or gave up
      } else if (position !== waiter.position) {
        waiter.position = position
        this.send(waiter.conn, {t: 'push', ev: 'position', wid: waiter.wid, key, position, holder})
      }
    }
    if (waiting.size === 0) this.progressWaiters.delete(key)
  }

  private dispatchEvents(events: TableEvent[]): void {
    for (const event of events) {
      if (event.type === 'dequeued') this.updatePositions(event.key)
      this.publish(event)
      let push: Push | undefined
      let session: string | undefined
      if (event.type === 'granted' && event.to) {
        session = event.to.session
        push = {t: 'push', ev: 'granted', wid: event.to.wid, grant: this.table.grantInfo(event.key, event.holder)}
      } else if (event.type === 'wait_timeout') {
        session = event.waiter.session
        push = {t: 'push', ev: 'wait_timeout', wid: event.waiter.wid, key: event.key}
      } else if ((event.type === 'expired' || (event.type === 'released' && event.by !== event.holder.session)) && event.holder.session) {
        // The holder's connection learns at once that its grant is over (docs/semantics.md).
        session = event.holder.session
        const reason = event.type === 'expired' ? 'expired' : event.force ? 'forced' : 'released'
        push = {t: 'push', ev: 'ended', key: event.key, token: event.holder.token, fence: event.holder.fence, reason}
      }
      if (push && session) {
        const conn = this.connections.get(session)
        if (conn) this.send(conn, push)
      }
    }
  }

  private scheduleTick(): void {
    const next = this.table.nextDeadline()
    if (next === undefined || this.closing) return
    if (this.timer && next >= this.timerAt) return
    if (this.timer) clearTimeout(this.timer)
    this.timerAt = next
    // +1 ms: timers may fire a hair early relative to performance.now().
    this.timer = setTimeout(() => {
      this.timer = null
      this.timerAt = Number.POSITIVE_INFINITY
      this.table.tick()
      this.endBatch()
    }, Math.max(0, Math.ceil(next - this.clock.now())) + 1)
  }

  private onClose(conn: Connection): void {
    clearTimeout(conn.helloTimer)
    if (!this.connections.delete(conn.session)) return
    for (const subscription of [...conn.subscriptions.values()]) this.unsubscribe(subscription)
    this.table.dropSession(conn.session)
    this.endBatch()
  }

  /** Protocol violation: tell the peer why, then close only this connection. */
  private fail(conn: Connection, code: ErrorCode, msg: string): void {
    if (conn.socket.destroyed) return
    try {
      conn.socket.end(encodeFrame(conn.codec, {t: 'error', code, msg}, Number.MAX_SAFE_INTEGER))
    } catch {}
    conn.socket.destroySoon()
    setTimeout(() => conn.socket.destroy(), 1000).unref()
    this.onClose(conn)
  }

  private checkIdle(): void {
    const idleMs = this.options.idleExitMs
    if (!idleMs || this.closing) return
    const idle = this.connections.size === 0 && this.table.size === 0
    if (!idle) {
      if (this.idleTimer) clearTimeout(this.idleTimer)
      this.idleTimer = null
      return
    }
    if (this.idleTimer) return
    this.idleTimer = setTimeout(() => {
      this.say('lockd: idle, exiting')
      void this.close()
    }, idleMs)
  }
}

function listen(server: Server, options: {host?: string; port?: number; path?: string}): Promise<Server> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(options, () => {
      server.off('error', reject)
      resolve(server)
    })
  })
}

/** listen(), with a failure (address in use, no permission) as a one-line start-up error. */
async function listenAs(what: string, server: Server, options: {host?: string; port?: number; path?: string}): Promise<Server> {
  try {
    return await listen(server, options)
  } catch (error) {
    const {code} = error as NodeJS.ErrnoException
    const why = code === 'EADDRINUSE' ? 'address already in use' : code === 'EACCES' ? 'permission denied' : code === 'EADDRNOTAVAIL' ? 'no such local address' : (error as Error).message
    throw new ServerStartError(`${what}: ${why}${code ? ` (${code})` : ''}`)
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({path})
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/**
 * One lockd per data directory. The claim is a Linux abstract socket named after the directory:
 * the kernel frees it when the process dies, so a crash leaves no stale lock file and two
 * servers racing to start cannot both win.
 */
async function claimDataDir(dataDir: string): Promise<Server | null> {
  if (process.platform !== 'linux') return null
  const id = createHash('sha256').update(realpathSync(dataDir)).digest('hex').slice(0, 32)
  const server = createServer((s) => s.destroy())
  try {
    return await listen(server, {path: `\0lockctl-lockd-${id}`})
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new AlreadyRunningError(`another lockd is using the data directory ${dataDir}`)
    }
    throw error
  }
}
