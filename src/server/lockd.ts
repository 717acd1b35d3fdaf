import {randomBytes} from 'node:crypto'
import type {Server, Socket} from 'node:net'
import type {SecureContextOptions, TLSSocket} from 'node:tls'
import {ErrorCode} from '../protocol/errors.js'
import {DEFAULT_MAX_FRAME, encodeFrame} from '../protocol/framing.js'
import {PROTOCOL_VERSION, type Request, type ServerInfo, type ServerMessage} from '../protocol/messages.js'
import {megabytes} from '../util/bytes.js'
import {VERSION} from '../version.js'
import {PasswordCheck} from './auth.js'
import {fullCollection} from './full-collection.js'
import {HeapGuard, readHeap} from './heap-guard.js'
import {IdleCollector} from './idle-collector.js'
import {LoginQuota} from './login-quota.js'
import {SilentSockets} from './silent-sockets.js'
import {DEFAULT_OUTPUT_BUDGET, OutputBudget} from './output-budget.js'
import {newConnection, peerOf, type Connection} from './connection.js'
import {connectionLimits, descriptorUse, FILES_RESERVE, METRICS_CONNECTIONS, type ConnectionLimits} from './descriptors.js'
import {DurableLog} from './durable-log.js'
import {openTo} from '../util/fs.js'
import {makeDirectoriesOrStartError, ServerStartError, unreadableAsStartError} from './errors.js'
import {handleRequest, isOp, type HandlerContext} from './handlers.js'
import {greet} from './handshake.js'
import {claimDataDir, Listeners, listenError} from './listeners.js'
import {LockTable, systemClock, type Clock, type TableEvent} from './lock-table.js'
import type {ServerMetrics} from './metrics.js'
import {Outbox} from './outbox.js'
import {Subscriptions} from './subscriptions.js'
import {MAX_TIMER_MS} from '../util/timers.js'
import {certificateDatesProblem, readServerTls, type ServerTlsPaths} from './tls-files.js'

export {AlreadyRunningError, ServerStartError} from './errors.js'

export interface LockServerOptions {
  /** TCP addresses to listen on, e.g. {host: '127.0.0.1', port: 7070}; port 0 picks one. */
  listen?: {host: string; port: number}[]
  /** Unix socket path to listen on. */
  socket?: string
  /** Directory for the durable log; without one the server keeps state in memory only. */
  dataDir?: string
  /**
   * A one-time repair (docs/recovery.md): forget every lock in `dataDir` (its files are moved
   * aside), keeping fences above every one handed out before.
   */
  forgetAllLocks?: boolean
  maxFrame?: number
  /** Exit after this long with no connections and no held locks (the embedded server). */
  idleExitMs?: number
  clock?: Clock
  /** Where operator messages go (recovery notes, shutdown). */
  log?: (line: string) => void
  /** Start a snapshot once the log is this big (docs/recovery.md, "Snapshots"; default 16 MiB). */
  snapshotBytes?: number
  /** Locks per slice of a snapshot (default 2,000). */
  snapshotSlice?: number
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
  /** Names held at once; an acquire of another name is refused with LIMIT (default 5,000,000). */
  maxLocks?: number
  /** TLS on every TCP listener (PEM files); `clientCa`: require client certificates it signed. */
  tls?: ServerTlsPaths
  /** Clients must authenticate with a user of this file (NAME:HASH lines; docs/protocol.md). */
  authFile?: string
  /** Users who may force-release a lock they do not hold (docs/protocol.md, "Authentication"). */
  admins?: string[]
  /** Permission bits of the unix socket (default 0600). */
  socketMode?: number
  /** Serve /metrics and /healthz here. */
  metrics?: {host: string; port: number}
  /** Output unread by their peers that all connections together may leave (default 512 MiB; output-budget.ts). */
  outputBudget?: number
}

export const DEFAULT_MAX_CONNECTIONS = 10_000
export const DEFAULT_MAX_WAITERS_PER_CONNECTION = 10_000
/**
 * A lockd that ran out of heap would not start again either: recovery needs at least the memory
 * the table had. ~400 bytes a lock at peak: 5M locks stay well inside Node's heap limit (4 GB
 * with pointer compression, ~2 GB on a small machine), restart included (docs/protocol.md).
 */
export const DEFAULT_MAX_LOCKS = 5_000_000

const HELLO_TIMEOUT_MS = 10_000
/** The largest frame a connection may send before its hello is done: a hello, its password included, is far smaller. */
const HELLO_MAX_FRAME = 16 * 1024
/** How long a connection that has sent nothing keeps its place when lockd is at its connection limit. */
const SILENT_EVICTION_MS = 1000

/**
 * lockd: wires the lock table to its connections. Listeners accept sockets; each connection is
 * greeted (handshake), its requests run (handlers) against the table; what the table did
 * becomes pushes (subscriptions) and log records; the outbox lets answers and pushes leave once
 * their records are durable. Timers expire leases and waits at the table's next deadline.
 */
export class LockServer {
  readonly table: LockTable
  private readonly clock: Clock
  private readonly listeners = new Listeners(
    (socket) => this.accept(socket),
    () => this.dropped(),
    // A TLS connection is this connection before its hello: the same times apply to its handshake.
    {timeoutMs: HELLO_TIMEOUT_MS, evictAfterMs: SILENT_EVICTION_MS},
  )
  private readonly connections = new Map<string, Connection>()
  /** Connections that have sent no whole message yet (forgotten as they close), oldest first. */
  private readonly silent = new SilentSockets<Connection>(SILENT_EVICTION_MS)
  private readonly subscriptions: Subscriptions
  private readonly handlers: HandlerContext
  private outbox: Outbox = new Outbox(null, () => {})
  private log: DurableLog | null = null
  private dirMutex: Server | null = null
  private timer: NodeJS.Timeout | null = null
  private timerAt = Number.POSITIVE_INFINITY
  private idleTimer: NodeJS.Timeout | null = null
  private sessionCounter = 0
  private readonly serverId = randomBytes(8).toString('hex')
  private readonly startedAt = Date.now()
  private closing: Promise<void> | null = null
  private passwords: PasswordCheck | null = null
  private readonly logins = new LoginQuota()
  private metrics: ServerMetrics | null = null
  private connectionLimits: ConnectionLimits = {sockets: Number.POSITIVE_INFINITY, served: DEFAULT_MAX_CONNECTIONS, boundByFiles: null, files: null}
  private closedResolve!: () => void
  /** Resolves when the server has stopped (close() or idle exit). */
  readonly closed: Promise<void> = new Promise((resolve) => (this.closedResolve = resolve))

  constructor(private readonly options: LockServerOptions = {}) {
    this.clock = options.clock ?? systemClock
    this.outputBudget = new OutputBudget(options.outputBudget ?? DEFAULT_OUTPUT_BUDGET, () => this.connections.values())
    // Only a lockd with a log needs to know what changed in each batch.
    this.table = new LockTable(this.clock, {tracksChanges: Boolean(options.dataDir)})
    this.subscriptions = new Subscriptions(
      this.table,
      () => this.clock.now(),
      (session) => this.connections.get(session),
    )
    this.handlers = {
      table: this.table,
      subscriptions: this.subscriptions,
      now: () => this.clock.now(),
      info: () => this.info(),
      maxWaitersPerConnection: options.maxWaitersPerConnection ?? DEFAULT_MAX_WAITERS_PER_CONNECTION,
      maxLocks: options.maxLocks ?? DEFAULT_MAX_LOCKS,
      heapRefusal: () => this.heapGuard.refusal(),
      mayForce: (conn) => this.mayForce(conn),
    }
  }

  private readonly outputBudget: OutputBudget
  private outputCheck: NodeJS.Timeout | null = null
  /** Messages taken from clients: the idle collector's sign that lockd is busy. */
  private messagesTaken = 0
  /** V8's full collection, where it can be had (full-collection.ts). */
  private readonly collect = fullCollection()
  private readonly idleCollector = this.collect && new IdleCollector({collect: this.collect, heapUsed: () => readHeap().used, activity: () => this.messagesTaken})
  private idleCheck: NodeJS.Timeout | null = null

  /** New names and waits refused past half the heap limit: a lockd out of heap dies (heap-guard.ts). */
  private readonly heapGuard = new HeapGuard(
    (full, {used, limit}) => {
      const state = `${megabytes(used)} MB of its ${megabytes(limit)} MB heap`
      this.say(
        full
          ? `lockd: warning: ${state} in use, past half: new names and waits are refused (LIMIT) until locks are released; renewals and releases go on`
          : `lockd: ${state} in use, under half again: new names and waits are taken`,
      )
    },
    {collect: this.collect ?? undefined},
  )

  /**
   * Who may force-release a lock it does not hold: with --admin, only those users (by password
   * or client certificate); without, anyone, unless clients must log in (then nobody).
   */
  private mayForce(conn: Connection): boolean {
    const admins = this.options.admins ?? []
    if (admins.length === 0) return !this.passwords
    return conn.user !== null && admins.includes(conn.user)
  }

  /** The listen address of --metrics (port 0 picks one). */
  get metricsPort(): number | undefined {
    return this.metrics?.port
  }

  get addresses(): {tcp: {host: string; port: number}[]; socket?: string} {
    return this.listeners.addresses
  }

  private say(line: string): void {
    this.options.log?.(line)
  }

  /**
   * Secrets every user of the machine may read: served, with a warning (at start and on SIGHUP).
   * The auth file's hashes invite offline guessing; the TLS key lets anyone pose as this lockd.
   */
  private warnOfOpenSecrets(): void {
    const secrets = [
      ...(this.options.authFile ? [{path: this.options.authFile, what: 'the password hashes in'}] : []),
      ...(this.options.tls ? [{path: this.options.tls.key, what: "lockd's TLS private key"}] : []),
    ]
    for (const {path, what} of secrets) {
      const open = openTo(path)
      if (open?.read) this.say(`lockd: warning: every user can read ${what} ${path} (mode ${open.mode}): chmod o-r ${path} (600 or 640)`)
    }
  }

  /** A certificate in force that clients refuse, or soon will (at start and on SIGHUP). */
  private warnOfCertificateDates(context: SecureContextOptions | undefined): void {
    if (!this.options.tls || !context?.cert) return
    const cert = Array.isArray(context.cert) ? context.cert[0] : context.cert
    const problem = certificateDatesProblem(cert, this.options.tls.cert, Date.now())
    if (problem) this.say(`lockd: warning: ${problem}`)
  }

  async start(): Promise<this> {
    const {dataDir} = this.options
    try {
      if (this.options.authFile) this.passwords = new PasswordCheck(this.options.authFile)
      this.warnOfOpenSecrets()
      if (this.options.metrics) {
        const {ServerMetrics} = await import('./metrics.js')
        this.metrics = await ServerMetrics.start(this.options.metrics, {
          locks: () => this.table.size,
          waiters: () => this.table.waiters,
          connections: () => this.connections.size,
          logBytes: () => this.log?.bytes ?? 0,
          healthy: () => !this.closing,
        }).catch((error: NodeJS.ErrnoException) => {
          throw listenError(`--metrics ${this.options.metrics!.host}:${this.options.metrics!.port}`, error)
        })
      }
      if (dataDir) await this.recover(dataDir)
      this.outbox = new Outbox(this.log, (error) => this.logFailed(error))
      const tls = this.options.tls ? {...this.secureContext(), requestCert: Boolean(this.options.tls.clientCa)} : undefined
      this.warnOfCertificateDates(tls)
      for (const address of this.options.listen ?? []) await this.listeners.listenTcp(address, tls)
      if (this.options.socket) {
        const onRemoved = this.options.exitWhenSocketRemoved
          ? () => {
              if (this.closing) return
              this.say(`lockd: ${this.options.socket} was removed or replaced; exiting`)
              void this.close()
            }
          : undefined
        await this.listeners.listenUnix(this.options.socket, {onRemoved, mode: this.options.socketMode})
      }
      this.limitConnections()
    } catch (error) {
      await this.close()
      throw error
    }
    this.scheduleTick()
    this.checkIdle()
    this.heapGuard.start()
    this.outputCheck = setInterval(() => this.enforceOutputBudget(), 250)
    this.outputCheck.unref()
    const collector = this.idleCollector
    if (collector) {
      this.idleCheck = setInterval(() => this.collectIfQuiet(collector), 1000)
      this.idleCheck.unref()
    }
    return this
  }

  /** A burst's garbage, collected once lockd is quiet (idle-collector.ts), and said in the log. */
  private collectIfQuiet(collector: IdleCollector): void {
    const began = performance.now()
    const collected = collector.check()
    if (!collected) return
    this.say(`lockd: quiet after a burst: collected garbage, heap in use ${megabytes(collected.before)} -> ${megabytes(collected.after)} MB (${Math.round(performance.now() - began)} ms)`)
  }

  /** Peers that stopped reading, closed when together they leave more unread than the budget. */
  private enforceOutputBudget(): void {
    const {closed, bytes} = this.outputBudget.enforce()
    if (closed === 0) return
    this.say(
      `lockd: closed ${closed} connection(s) that left ${megabytes(bytes)} MB of output unread: all connections together may leave ${megabytes(this.options.outputBudget ?? DEFAULT_OUTPUT_BUDGET)} MB`,
    )
  }

  /**
   * Connections get what the open-file limit leaves after lockd's own files (descriptors.ts;
   * docs/protocol.md, "Connections and the open-file limit"), said at start when that is fewer than
   * --max-connections.
   */
  private limitConnections(): void {
    const maxConnections = this.options.maxConnections ?? DEFAULT_MAX_CONNECTIONS
    const limits = connectionLimits(maxConnections, descriptorUse(), FILES_RESERVE + (this.metrics ? METRICS_CONNECTIONS : 0))
    if (limits.served < 1) {
      throw new ServerStartError(`the open-file limit (${limits.boundByFiles}) leaves lockd no descriptors for connections: raise it (ulimit -n, or LimitNOFILE= in a systemd unit)`)
    }
    if (limits.boundByFiles !== null) {
      this.say(
        `lockd: warning: the open-file limit (${limits.boundByFiles}) leaves room for ${limits.served} connections, fewer than --max-connections (${maxConnections}): raise it (ulimit -n, or LimitNOFILE= in a systemd unit) or lower --max-connections`,
      )
    }
    this.connectionLimits = limits
    this.listeners.capSockets(limits.sockets)
  }

  /** Files of the data directory removed while lockd runs: see DurableLog.checkFiles. */
  private checkDataDir(): void {
    if (!this.log || this.closing) return
    try {
      this.log.checkFiles()
    } catch (error) {
      this.logFailed(new Error(`cannot write the lock log in ${this.options.dataDir}: ${(error as Error).message}`))
    }
  }

  /** Connections closed unanswered for want of descriptors, counted and said at most once a minute. */
  private droppedConnections = 0
  private fileCheck: NodeJS.Timeout | null = null
  private dropReport: NodeJS.Timeout | null = null

  private dropped(): void {
    this.droppedConnections++
    if (this.dropReport) return
    const report = (): void => {
      const count = this.droppedConnections
      this.dropReport = null
      if (count === 0) return
      this.droppedConnections = 0
      const limit = this.connectionLimits.files === null ? '' : ` (${this.connectionLimits.files})`
      this.say(`lockd: closed ${count} new connection(s) unanswered: the open-file limit${limit} leaves no descriptor for more; raise it (ulimit -n, LimitNOFILE=)`)
      this.dropReport = setTimeout(report, 60_000)
      this.dropReport.unref()
    }
    report()
  }

  /** Claim the data directory and rebuild the table from it (docs/recovery.md). */
  private async recover(dataDir: string): Promise<void> {
    makeDirectoriesOrStartError('--data-dir', dataDir)
    const {log, state} = await unreadableAsStartError(dataDir, async () => {
      this.dirMutex = await claimDataDir(dataDir)
      if (this.options.forgetAllLocks) {
        const forgotten = DurableLog.forgetAllLocks(dataDir)
        this.say(
          forgotten
            ? `lockd: --forget-all-locks: every lock of ${dataDir} is forgotten (its ${forgotten.moved} file(s) moved to ${forgotten.aside}); fences go on above ${forgotten.fence}. Holders that still believe they hold are not told: leave this flag out of the next start`
            : `lockd: --forget-all-locks: ${dataDir} held no locks to forget`,
        )
      }
      return DurableLog.open(
        dataDir,
        {locks: () => this.table.heldLocks(), fence: () => this.table.lastFence},
        {
          snapshotBytes: this.options.snapshotBytes,
          snapshotSlice: this.options.snapshotSlice,
          onSnapshotFailed: (error) => this.say(`lockd: a snapshot of ${dataDir} could not be written (${error.message}); the log keeps everything, the next one is tried as it grows`),
          onFlush: this.metrics ? (seconds) => this.metrics?.observeFsync(seconds) : undefined,
          restorer: this.table.restorer(),
          onFilesRewritten: (missing) =>
            this.say(`lockd: ${missing} was removed while lockd ran; writing ${dataDir} again from memory: a fence mark, a new log, and a snapshot of the ${this.table.size} held lock(s)`),
        },
      )
    })
    this.log = log
    this.fileCheck = setInterval(() => this.checkDataDir(), 1000)
    this.fileCheck.unref()
    for (const note of state.notes) this.say(`lockd: ${note}`)
    const names = state.holders.size
    let grants = 0
    for (const holders of state.holders.values()) grants += Array.isArray(holders) ? holders.length : 1
    this.table.recoverRestored(state.fence, state.holders)
    log.recovered()
    if (names > 0) {
      // A semaphore's or shared lock's several grants are each a holder that keeps its lease.
      const several = grants > names ? ` (${grants} grants)` : ''
      this.say(`lockd: recovered ${names} held lock(s)${several}; each keeps its whole lease from now`)
    }
  }

  /** The TLS files, read and checked now (at start, and again on SIGHUP). */
  private secureContext(): SecureContextOptions {
    return this.options.tls ? readServerTls(this.options.tls) : {}
  }

  /**
   * SIGHUP: read the auth file and the TLS files again. All or nothing: every file is read and
   * checked before any is put in force, so one that cannot be read leaves the whole previous
   * configuration in force (as the line says), not new users beside old certificates.
   */
  reload(): void {
    let users: Map<string, string> | undefined
    let tls: SecureContextOptions | undefined
    try {
      users = this.passwords?.readAgain()
      tls = this.options.tls ? this.secureContext() : undefined
    } catch (error) {
      this.say(`lockd: reload failed, keeping the previous configuration: ${(error as Error).message}`)
      return
    }
    if (this.passwords && users) {
      const {users: count, revoked} = this.passwords.replace(users)
      // A removed user, or one whose password changed, keeps no connection opened with the
      // old password: an SRE who takes someone's access away means now, not at their next
      // connect. Their grants stay until their leases end, as after any disconnect.
      let closed = 0
      for (const conn of [...this.connections.values()]) {
        if (conn.user === null || !revoked.has(conn.user)) continue
        this.fail(conn, ErrorCode.NOT_PERMITTED, `user ${JSON.stringify(conn.user)} was removed from the auth file or given a new password: connect again with valid credentials`)
        closed++
      }
      this.say(`lockd: reloaded ${this.options.authFile}: ${count} user(s)${closed ? `; closed ${closed} connection(s) of removed or changed users` : ''}`)
    }
    if (tls) {
      this.listeners.setSecureContext(tls)
      this.say(`lockd: reloaded the TLS certificate and key`)
      this.warnOfCertificateDates(tls)
    }
    this.warnOfOpenSecrets()
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
      if (this.dropReport) clearTimeout(this.dropReport)
      if (this.fileCheck) clearInterval(this.fileCheck)
      if (this.outputCheck) clearInterval(this.outputCheck)
      if (this.idleCheck) clearInterval(this.idleCheck)
      this.heapGuard.stop()
      // net.Server#close waits for open connections, so stop accepting first, let acks that are
      // waiting for the log go out, then drop the connections, then wait for the listeners.
      const listenersClosed = this.listeners.close()
      await this.outbox.drained()
      for (const conn of this.connections.values()) conn.socket.destroy()
      this.connections.clear()
      await listenersClosed
      await this.log?.close()
      await this.metrics?.close()
      this.listeners.removeSocketFile()
      await new Promise((resolve) => (this.dirMutex ? this.dirMutex.close(resolve) : resolve(undefined)))
      this.closedResolve()
    })()
    return this.closing
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy()
      return
    }
    socket.setNoDelay(true)
    socket.on('error', () => {})
    // Frames no larger than a hello needs until the hello is done (password included): a peer
    // nobody knows yet cannot make lockd hold a megabyte for it (10,000 such connections had it
    // buffer ~10 GB of half-sent frames, past what the machine had).
    const conn = newConnection(socket, `s${++this.sessionCounter}`, Math.min(HELLO_MAX_FRAME, this.maxFrame))
    const {served, boundByFiles} = this.connectionLimits
    // At the limit, a connection that has sent nothing for a while makes room: idle sockets
    // (a scan, a flood, a client that hung before its hello) held every place for 10 s each and
    // kept every real client out (LIMIT, exit 4).
    if (this.connections.size >= served) this.closeOldestSilent()
    if (this.connections.size >= served) {
      // Refused before it costs anything; the client reports the message (exit 4).
      const limit = boundByFiles === null ? 'its limit (--max-connections)' : `all that its open-file limit (${boundByFiles}) leaves room for`
      socket.end(encodeFrame(conn.codec, {t: 'error', code: ErrorCode.LIMIT, msg: `lockd has ${served} connections, ${limit}; try again later`}))
      setTimeout(() => socket.destroy(), 1000).unref()
      return
    }
    // A client certificate (required with --tls-client-ca) names its user by its CN.
    const peer = (socket as TLSSocket).authorized ? (socket as TLSSocket).getPeerCertificate() : null
    const cn: unknown = peer?.subject?.CN
    if (typeof cn === 'string') conn.user = cn
    conn.helloTimer = setTimeout(() => this.fail(conn, ErrorCode.PROTOCOL, 'no hello within 10s'), HELLO_TIMEOUT_MS)
    conn.helloTimer.unref()
    this.silent.add(conn, socket)
    this.connections.set(conn.session, conn)
    this.checkIdle()
    socket.on('data', (chunk) => this.onData(conn, chunk))
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
      this.handleSafely(conn, message)
    }
    this.endBatch()
  }

  /**
   * The hello of a server with users: check the password (scrypt, off the event loop) while
   * the connection's later messages wait; then run them in order.
   */
  private authenticate(conn: Connection, hello: Record<string, unknown>, reply: ServerMessage): void {
    // A login checked before, or being checked now, costs nothing more; any other needs a place (login-quota.ts).
    const place = this.passwords!.needsScrypt(hello.user, hello.password) ? this.logins.admit(conn.socket.remoteAddress ?? 'the Unix socket') : {done: () => {}}
    if ('refused' in place) {
      this.fail(conn, ErrorCode.LIMIT, place.refused)
      return
    }
    conn.held = []
    // Nothing more is read until the password is checked: what the peer sends meanwhile waits in
    // the kernel (TCP stops the peer when that is full), not in lockd's memory. `held` keeps only
    // what came in the same read as the hello.
    conn.socket.pause()
    const user = hello.user
    this.passwords!.check(user, hello.password)
      .then((ok) => {
        place.done()
        if (conn.socket.destroyed) return
        if (!ok) {
          // (At most 64 characters of the name: a guesser's 16 KB "name" is not 16 KB of log a try.)
          const guess = typeof user === 'string' && typeof hello.password === 'string' ? (user.length > 64 ? `${user.slice(0, 64)}…` : user) : null
          const why = guess !== null ? `authentication failed for user ${JSON.stringify(guess)}` : 'lockd requires a user and a password (--user, and $LOCKCTL_PASSWORD or the prompt)'
          // One line per wrong password, with where it came from: what an SRE (or fail2ban)
          // watches for guessing. Each cost a scrypt, which bounds how fast they come; a hello
          // without credentials is refused at once and not logged (a loop of them would flood the
          // log). The name is JSON-quoted: a peer's control characters stay out of the log.
          if (guess !== null) this.say(`lockd: refused a login from ${peerOf(conn.socket)}: ${why}`)
          this.fail(conn, ErrorCode.NOT_PERMITTED, why)
          return
        }
        conn.user = user as string
        this.greeted(conn)
        this.outbox.send(conn, reply)
        const held = conn.held ?? []
        conn.held = null
        for (const message of held) {
          if (conn.socket.destroyed) break
          this.handleSafely(conn, message)
        }
        this.endBatch()
        conn.socket.resume()
      })
      .catch((error: Error) => {
        // A bug here (or scrypt failing on a machine out of memory) fails that login in one
        // line, never lockd: an unhandled rejection would end the process.
        place.done()
        this.say(`lockd: internal error checking a login (a bug: please report it): ${error.message}`)
        this.fail(conn, ErrorCode.INTERNAL, 'lockd could not check the password (an internal error: it is in its log); try again')
      })
  }

  /** The hello is done (its password checked): the connection's frames may be as large as lockd's limit. */
  private greeted(conn: Connection): void {
    conn.greeted = true
    conn.decoder.maxFrame = this.maxFrame
  }

  private get maxFrame(): number {
    return this.options.maxFrame ?? DEFAULT_MAX_FRAME
  }

  /**
   * One message, and no exception out of it: a peer's message that found a bug (a hello whose
   * `v` was a map with a `toString` key threw in a template string) costs that connection, said
   * in one line, never lockd and everyone else's locks (it was an uncaught exception).
   */
  private handleSafely(conn: Connection, message: unknown): void {
    try {
      this.handleMessage(conn, message)
    } catch (error) {
      this.say(`lockd: internal error on a message from a connection (a bug: please report it): ${(error as Error).message}; closed that connection`)
      this.fail(conn, ErrorCode.INTERNAL, "lockd could not handle this message (an internal error: it is in lockd's log); connect again")
    }
  }

  /**
   * At the connection limit: close the connection that has been silent longest (no whole
   * message since it was accepted), if it has been for SILENT_EVICTION_MS. A client sends its
   * hello at once; one that has not in that time is not about to.
   */
  private closeOldestSilent(): void {
    const oldest = this.silent.takeOldest()
    if (oldest) this.fail(oldest.key, ErrorCode.PROTOCOL, `no hello within ${SILENT_EVICTION_MS / 1000}s while lockd is at its connection limit: closed to make room`)
  }

  /** One message from a peer: the hello, then requests (docs/protocol.md). */
  private handleMessage(conn: Connection, message: unknown): void {
    this.messagesTaken++
    this.silent.spoke(conn)
    if (typeof message !== 'object' || message === null || Array.isArray(message)) {
      this.fail(conn, ErrorCode.PROTOCOL, 'a message must be a map')
      return
    }
    const m = message as Record<string, unknown>
    if (conn.held) {
      conn.held.push(m) // the hello's password is being checked
      return
    }
    if (!conn.greeted) {
      const greeting = greet(conn, m, {server: 'lockd', version: VERSION, serverId: this.serverId, maxFrame: this.maxFrame, features: ['semaphores', 'list-after']})
      if ('refuse' in greeting) {
        this.fail(conn, ErrorCode.PROTOCOL, greeting.refuse)
      } else if (this.passwords) {
        this.authenticate(conn, m, greeting.reply)
      } else {
        this.greeted(conn)
        this.outbox.send(conn, greeting.reply)
      }
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
    const receivedAt = performance.now()
    let answer
    try {
      answer = handleRequest(this.handlers, conn, m as unknown as Request)
    } catch (error) {
      answer = {code: ErrorCode.INTERNAL, msg: (error as Error).message}
    }
    // Events of this request go out before the next request runs: a watch that follows in the
    // same batch then sees them in its snapshot, not twice.
    this.outbox.sendAll(this.subscriptions.messagesFor(this.drainEvents()))
    const metrics = this.metrics
    const op = isOp(m.op) ? m.op : 'unknown'
    this.outbox.sendResponse(conn, m.id, answer, metrics ? () => metrics.observeRequest(op, (performance.now() - receivedAt) / 1000) : undefined)
  }

  /** The table's events since the last call, counted for the metrics. */
  private drainEvents(): TableEvent[] {
    const events = this.table.drainEvents()
    this.metrics?.countEvents(events)
    return events
  }

  /** End of a batch of work: pushes for what happened, log records for what changed, then delivery. */
  private endBatch(): void {
    this.outbox.sendAll(this.subscriptions.messagesFor(this.drainEvents()))
    const fence = this.table.lastFence
    this.outbox.endBatch(
      this.table.drainChanges().map((c) => ({key: c.key, holders: c.holders, changed: c.changed, fence})),
      fence,
    )
    this.scheduleTick()
    this.checkIdle()
  }

  private logFailed(error: Error): void {
    // Memory is now ahead of disk: acknowledging anything else could hand out a grant that a
    // restart forgets. Stop serving.
    this.say(`lockd: ${error.message}; stopping`)
    process.exitCode = 1
    void this.close()
  }

  private scheduleTick(): void {
    const next = this.table.nextDeadline()
    if (next === undefined || this.closing) return
    if (this.timer && next >= this.timerAt) return
    if (this.timer) clearTimeout(this.timer)
    this.timerAt = next
    // +1 ms: timers may fire a hair early relative to performance.now().
    this.timer = setTimeout(
      () => {
        this.timer = null
        this.timerAt = Number.POSITIVE_INFINITY
        this.table.tick()
        this.endBatch()
      },
      // (At most the longest a timer holds: a later deadline is looked at again then.)
      Math.min(MAX_TIMER_MS, Math.max(0, Math.ceil(next - this.clock.now())) + 1),
    )
  }

  private onClose(conn: Connection): void {
    clearTimeout(conn.helloTimer)
    if (!this.connections.delete(conn.session)) return
    this.subscriptions.dropConnection(conn)
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
