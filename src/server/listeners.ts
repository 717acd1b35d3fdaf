import {createHash} from 'node:crypto'
import {chmodSync, lstatSync, realpathSync, statSync, unlinkSync, type Stats} from 'node:fs'
import {createConnection, createServer, type Server, type Socket} from 'node:net'
import {createServer as createTlsServer, type SecureContextOptions, type Server as TlsServer} from 'node:tls'
import {dirname} from 'node:path'
import {AlreadyRunningError, makeDirectoriesOrStartError, ServerStartError} from './errors.js'
import {socketPathProblem} from '../util/fs.js'
import {peerOf} from './connection.js'
import {SilentSockets} from './silent-sockets.js'

/**
 * lockd's listening sockets: TCP addresses and a unix socket (with its permission bits, and a
 * watch that notices the socket file being removed). Accepted sockets go to `onSocket`.
 */
export class Listeners {
  private readonly servers: Server[] = []
  private readonly secureServers: TlsServer[] = []
  private socketInode: number | null = null
  private socketWatch: NodeJS.Timeout | null = null
  readonly addresses: {tcp: {host: string; port: number}[]; socket?: string} = {tcp: []}
  /** Sockets open now by listener, and how many all may hold at once (capSockets). */
  private readonly openBy = new Map<Server, number>()
  private socketCap = Number.POSITIVE_INFINITY
  /**
   * TCP sockets of TLS listeners still in their handshake, by peer address, with when each was
   * accepted (oldest first). lockd sees a TLS connection only once its handshake is done, so its
   * rule for silent connections (closed at the limit to make room) cannot reach these: a flood
   * of sockets that never began TLS held every descriptor for Node's 120 s handshake timeout,
   * and kept every client out (exit 4) all that time.
   */
  private readonly handshaking: SilentSockets<string>

  /**
   * `onDrop`: a connection was closed as it was accepted, for want of descriptors (capSockets).
   * `handshakes`: how long a TLS handshake may take (lockd's time for a hello), and how long a
   * socket still in its handshake keeps its descriptor when all are taken (lockd's time before
   * a silent connection makes room).
   */
  constructor(
    private readonly onSocket: (socket: Socket) => void,
    private readonly onDrop: () => void = () => {},
    private readonly handshakes: {timeoutMs: number; evictAfterMs: number} = {timeoutMs: 10_000, evictAfterMs: 1000},
  ) {
    this.handshaking = new SilentSockets(handshakes.evictAfterMs)
  }

  /**
   * At most `cap` sockets open at once, across every listener (descriptors.ts): one more is
   * closed by Node as it is accepted, before TLS or anything else costs a thing. Kept exact by
   * giving each listener, as sockets come and go, its own open sockets plus the room left.
   */
  capSockets(cap: number): void {
    this.socketCap = cap
    this.updateCaps()
  }

  private countSockets(server: Server): void {
    this.openBy.set(server, 0)
    server.on('drop', () => {
      // Room for the next one, if a handshake has stalled long enough to give its place up.
      this.handshaking.closeOldest()
      this.onDrop()
    })
    // (A TLS listener's 'connection' is the TCP socket, before its handshake; it closes with it.)
    server.on('connection', (socket: Socket) => {
      this.openBy.set(server, this.openBy.get(server)! + 1)
      socket.once('close', () => {
        this.openBy.set(server, this.openBy.get(server)! - 1)
        this.updateCaps()
      })
      this.updateCaps()
    })
  }

  private openSockets(): number {
    let open = 0
    for (const count of this.openBy.values()) open += count
    return open
  }

  private updateCaps(): void {
    if (this.socketCap === Number.POSITIVE_INFINITY) return
    const room = Math.max(0, this.socketCap - this.openSockets())
    // (Node reads 0 as "no limit": -1 takes none.)
    for (const [server, count] of this.openBy) server.maxConnections = count + room || -1
  }

  /**
   * Listen on a TCP address; with `tls`, TLS on it (`requestCert`: client certificates signed
   * by `ca` are required; the handshake refuses any other).
   */
  async listenTcp(address: {host: string; port: number}, tls?: SecureContextOptions & {requestCert: boolean}): Promise<void> {
    const name = `--listen ${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`
    const server = await listenAs(name, tls ? this.newSecureServer(tls) : this.newServer(), {host: address.host, port: address.port})
    const bound = server.address() as {address: string; port: number}
    this.addresses.tcp.push({host: bound.address, port: bound.port})
  }

  /**
   * Listen on a unix socket. A file there that nobody answers on is a leftover and is replaced;
   * one that answers belongs to another server. `onRemoved`: called once if the file is later
   * removed or replaced (the embedded lockd then exits: nobody could find it any more).
   */
  async listenUnix(path: string, options: {mode?: number; onRemoved?: () => void} = {}): Promise<void> {
    const tooLong = socketPathProblem(path)
    if (tooLong) throw new ServerStartError(`--socket ${path}: ${tooLong}: choose a shorter one`)
    // Its directories as any (0700): under the socket's umask below they came out 0600, which
    // their owner cannot enter unless root, and the socket could then not be made in them.
    makeDirectoriesOrStartError(`--socket ${path}`, dirname(path))
    // Only a socket nobody answers on is taken over. Anything else there is refused: lockd
    // removed whatever it found (`--socket /etc/hosts` deleted the file), and a directory failed
    // with a stack trace.
    const there = lstatOrNull(path)
    if (there) {
      if (!there.isSocket())
        throw new ServerStartError(`--socket ${path}: ${kindOf(there)} is there, not a socket; lockd replaces only a socket no server answers on: choose another path, or move it away`)
      if (await answers(path)) throw new AlreadyRunningError(`another server is listening on ${path}`)
      try {
        unlinkSync(path)
      } catch (error) {
        throw new ServerStartError(`--socket ${path}: cannot remove the stale socket: ${(error as Error).message}`)
      }
    }
    // Permission bits at creation: no moment in which the socket is more open than asked.
    const umask = process.umask(0o777 & ~(options.mode ?? 0o600))
    try {
      await listenAs(`--socket ${path}`, this.newServer(), {path})
    } finally {
      process.umask(umask)
    }
    chmodSync(path, options.mode ?? 0o600)
    const inode = statSync(path).ino
    this.socketInode = inode
    this.addresses.socket = path
    const onRemoved = options.onRemoved
    if (onRemoved) {
      this.socketWatch = setInterval(() => {
        let now: number | null = null
        try {
          now = statSync(path).ino
        } catch {}
        if (now === inode) return
        if (this.socketWatch) clearInterval(this.socketWatch)
        this.socketWatch = null
        onRemoved()
      }, 1000)
      this.socketWatch.unref()
    }
  }

  /** Stop accepting; resolves once every listener has closed (after its connections are gone). */
  close(): Promise<void> {
    if (this.socketWatch) clearInterval(this.socketWatch)
    return Promise.all(this.servers.map((s) => new Promise((resolve) => s.close(resolve)))).then(() => {})
  }

  /** Remove our socket file, but not one that a newer lockd has put in its place. */
  removeSocketFile(): void {
    const path = this.addresses.socket
    if (!path || this.socketInode === null) return
    try {
      if (statSync(path).ino === this.socketInode) unlinkSync(path)
    } catch {}
  }

  /** New certificates (SIGHUP) for every TLS listener; connections made from now on use them. */
  setSecureContext(tls: SecureContextOptions): void {
    for (const server of this.secureServers) server.setSecureContext(tls)
  }

  private newServer(): Server {
    const server = createServer({noDelay: true}, (socket) => this.onSocket(socket))
    this.servers.push(server)
    this.countSockets(server)
    return server
  }

  private newSecureServer(tls: SecureContextOptions & {requestCert: boolean}): Server {
    const options = {...tls, rejectUnauthorized: tls.requestCert, noDelay: true, handshakeTimeout: this.handshakes.timeoutMs}
    const server = createTlsServer(options, (socket) => {
      // (Its peer names it: the same for the TCP socket and the TLS socket made of it.)
      this.handshaking.spoke(peerOf(socket))
      this.onSocket(socket)
    })
    // A client that fails the handshake (wrong CA, no certificate, not TLS at all, too slow) is dropped.
    server.on('tlsClientError', (_error, socket) => socket.destroy())
    this.servers.push(server)
    this.countSockets(server)
    // (After countSockets' own listener: the count includes this socket.)
    server.on('connection', (socket: Socket) => {
      this.handshaking.add(peerOf(socket), socket)
      // It took the last descriptor: the next one would be closed unanswered, so a handshake
      // that has stalled makes room now.
      if (this.openSockets() >= this.socketCap) this.handshaking.closeOldest()
    })
    this.secureServers.push(server)
    return server
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
    throw listenError(what, error as NodeJS.ErrnoException)
  }
}

/** A listen() that failed (address in use, no permission), as a one-line start-up error naming the flag. */
export function listenError(what: string, error: NodeJS.ErrnoException): ServerStartError {
  const {code} = error
  const why = code === 'EADDRINUSE' ? 'address already in use' : code === 'EACCES' ? 'permission denied' : code === 'EADDRNOTAVAIL' ? 'no such local address' : error.message
  return new ServerStartError(`${what}: ${why}${code ? ` (${code})` : ''}`)
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path)
  } catch {
    return null
  }
}

/** What a path that is not a socket holds, for the refusal. */
function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory'
  if (stats.isFile()) return 'a file'
  if (stats.isSymbolicLink()) return 'a symbolic link'
  return 'something'
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
 * servers racing to start cannot both win. Close the returned server to give the claim up.
 */
export async function claimDataDir(dataDir: string): Promise<Server | null> {
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
