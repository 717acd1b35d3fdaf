import type {Etcd3} from 'etcd3'
import type {LockError} from '../../errors.js'
import {UnreachableError} from '../../errors.js'
import type {LeaseClock} from '../../lease-clock.js'
import {hex} from './keys.js'

/**
 * A session is one etcd lease of this client, as in etcd's own recipe (Go's
 * `concurrency.Session`): the keys of its locks and waits are named after it (`NAME/<lease hex>`)
 * and live on it, so acquiring needs no lease of its own (one write round trip) and a retried
 * put finds its own key instead of making a second one.
 *
 * A session holds at most one key per lock name (two lock objects of one client on one name
 * use two sessions, so that they exclude each other). Sessions are grouped by TTL (the lease
 * length rounded up to seconds). They are kept alive only on demand — a renewal, a wait — so a
 * grant still ends a lease after its last renewal, as on lockd; a client's locks of one TTL
 * share that keepalive (docs/semantics.md, "etcd").
 */
export interface Session {
  readonly id: string
  readonly hex: string
  readonly ttlSec: number
  /** Lock names with a key (held or queued) on this lease. */
  readonly names: Set<string>
  /** leaseClock.now() at the send of the last grant or keepalive etcd confirmed. */
  aliveFrom: number
  /** Waits that keep it alive (see keepAliveWhileWaiting). */
  waits: number
  keepalive: NodeJS.Timeout | null
}

interface PendingKeepalive {
  resolve(ttl: number): void
  reject(error: Error): void
}

/** Below this much lease left, a session is not reused: a new lease is cheaper than a race. */
const REUSE_MARGIN_MS = 1000
/** After a failed keepalive of a waiting session, try again this soon (another member answers). */
const KEEPALIVE_RETRY_MS = 300

export class SessionPool {
  private readonly sessions = new Map<number, Session[]>()
  private stream: Awaited<ReturnType<Etcd3['leaseClient']['leaseKeepAlive']>> | null = null
  private opening: Promise<NonNullable<SessionPool['stream']>> | null = null
  private readonly pending = new Map<string, PendingKeepalive[]>()
  private closed = false

  constructor(
    private readonly client: Etcd3,
    private readonly call: <T>(what: string, operation: () => Promise<T>) => Promise<T>,
    private readonly label: string,
    private readonly requestTimeoutMs: number,
    /** What `aliveFrom` is counted on (the backend's, which its locks count their leases on). */
    private readonly leaseClock: LeaseClock,
  ) {}

  /**
   * A session of `ttlSec` with no key for `name` yet, now marked as having one. A known-alive
   * session is reused (no round trip); otherwise a lease is granted. `fresh`: just granted,
   * alive from `aliveFrom`.
   */
  async take(name: string, ttlSec: number): Promise<{session: Session; fresh: boolean}> {
    const now = this.leaseClock.now()
    const list = this.sessions.get(ttlSec) ?? []
    const reusable = list.find((s) => !s.names.has(name) && s.aliveFrom + ttlSec * 1000 - REUSE_MARGIN_MS > now)
    if (reusable) {
      reusable.names.add(name)
      return {session: reusable, fresh: false}
    }
    const sentAt = this.leaseClock.now()
    const response = await this.call('lease grant', () => this.client.leaseClient.leaseGrant({TTL: ttlSec}))
    const session: Session = {id: response.ID, hex: hex(response.ID), ttlSec, names: new Set([name]), aliveFrom: sentAt, waits: 0, keepalive: null}
    // Sessions past their lease are dropped as new ones come.
    const alive = list.filter((s) => s.names.size > 0 || s.aliveFrom + ttlSec * 1000 > now)
    alive.push(session)
    this.sessions.set(ttlSec, alive)
    return {session, fresh: true}
  }

  /** `name`'s key on this session is gone (released, given up): the session may serve it again. */
  free(session: Session, name: string): void {
    session.names.delete(name)
  }

  /** The lease is gone (expired, revoked): never use this session again. */
  forget(session: Session): void {
    const list = this.sessions.get(session.ttlSec)
    if (list)
      this.sessions.set(
        session.ttlSec,
        list.filter((s) => s !== session),
      )
    if (session.keepalive) clearInterval(session.keepalive)
    session.keepalive = null
  }

  /** The session of this lease id, if it is one of ours. */
  byId(id: string): Session | undefined {
    for (const list of this.sessions.values()) {
      const found = list.find((s) => s.id === id)
      if (found) return found
    }
    return undefined
  }

  /**
   * One keepalive of any lease over the client's one keepalive stream; answers the TTL etcd
   * gives it (0: the lease is gone). Updates the session's `aliveFrom` when it is one of ours.
   */
  async keepalive(leaseId: string): Promise<number> {
    const sentAt = this.leaseClock.now()
    const ttl = await this.call(
      'lease keepalive',
      () =>
        new Promise<number>((resolve, reject) => {
          let settled = false
          const entry: PendingKeepalive = {
            resolve: (value) => {
              settled = true
              clearTimeout(timer)
              resolve(value)
            },
            reject: (error) => {
              settled = true
              clearTimeout(timer)
              reject(error)
            },
          }
          // Counted from before the stream is open: its opening waits on etcd3 too, and a
          // keepalive must answer within the deadline whatever etcd3 does.
          const timer = setTimeout(() => {
            const error = new UnreachableError(`${this.label}: lease keepalive: no answer within ${this.requestTimeoutMs}ms`)
            // A member that does not answer: drop the stream (or its opening), so the next keepalive asks another.
            this.resetStream(error)
            entry.reject(error)
          }, this.requestTimeoutMs)
          timer.unref()
          this.openStream().then(
            (stream) => {
              if (settled) return
              const queue = this.pending.get(leaseId) ?? []
              queue.push(entry)
              this.pending.set(leaseId, queue)
              stream.write({ID: leaseId})
            },
            (error: Error) => entry.reject(error),
          )
        }),
    )
    const session = this.byId(leaseId)
    if (session) {
      if (ttl > 0) session.aliveFrom = Math.max(session.aliveFrom, sentAt)
      else this.forget(session)
    }
    return ttl
  }

  /**
   * Keep the session alive while a wait on it lasts (its key is our place in the queue): every
   * third of the TTL, and after a failure again within a fraction of a second, so that a member
   * failing costs no place as long as another member answers. Returns the stop.
   */
  keepAliveWhileWaiting(session: Session): () => void {
    session.waits++
    if (!session.keepalive) {
      let inFlight = false
      let lastTry = 0
      let failing = false
      const interval = Math.max(500, (session.ttlSec * 1000) / 3)
      session.keepalive = setInterval(
        () => {
          const now = performance.now()
          if (inFlight || now - lastTry < (failing ? KEEPALIVE_RETRY_MS : interval)) return
          inFlight = true
          lastTry = now
          this.keepalive(session.id)
            .then(
              () => (failing = false),
              () => (failing = true),
            )
            .finally(() => (inFlight = false))
        },
        Math.min(KEEPALIVE_RETRY_MS, interval),
      )
      session.keepalive.unref()
    }
    let stopped = false
    return () => {
      if (stopped) return
      stopped = true
      session.waits--
      if (session.waits === 0 && session.keepalive) {
        clearInterval(session.keepalive)
        session.keepalive = null
      }
    }
  }

  /** Revoke the sessions that hold nothing; leave the others to run out their lease (a `lockctl lock` that exits). */
  async close(): Promise<void> {
    this.closed = true
    const idle: Session[] = []
    for (const list of this.sessions.values()) {
      for (const session of list) {
        if (session.keepalive) clearInterval(session.keepalive)
        if (session.names.size === 0) idle.push(session)
      }
    }
    this.sessions.clear()
    this.resetStream(new UnreachableError(`${this.label}: closed`))
    // Not awaited for long: a hung member must not hold the process.
    await Promise.race([Promise.all(idle.map((s) => this.client.leaseClient.leaseRevoke({ID: s.id}).catch(() => {}))), new Promise((resolve) => setTimeout(resolve, 500).unref())])
  }

  private async openStream(): Promise<NonNullable<SessionPool['stream']>> {
    if (this.stream) return this.stream
    if (this.opening) return this.opening
    const opening: Promise<NonNullable<SessionPool['stream']>> = this.client.leaseClient.leaseKeepAlive().then(
      (stream) => {
        // Given up on (resetStream) while it opened: a later opening serves.
        if (this.opening !== opening) {
          stream.end()
          throw new UnreachableError(`${this.label}: the lease keepalive stream opened too late`)
        }
        this.opening = null
        if (this.closed) {
          stream.end()
          throw new UnreachableError(`${this.label}: closed`)
        }
        this.stream = stream
        stream.on('data', (response: {ID: string; TTL: string}) => {
          const queue = this.pending.get(response.ID)
          const entry = queue?.shift()
          if (queue?.length === 0) this.pending.delete(response.ID)
          entry?.resolve(Number(response.TTL))
        })
        const broken = (error?: Error) => {
          if (this.stream !== stream) return
          this.resetStream(error ?? new UnreachableError(`${this.label}: the lease keepalive stream ended`))
        }
        stream.on('error', (error: Error) => broken(error))
        stream.on('end', () => broken())
        return stream
      },
      (error: Error) => {
        if (this.opening === opening) this.opening = null
        throw error
      },
    )
    this.opening = opening
    return opening
  }

  /** Drop the stream, or give up on its opening; every keepalive waiting on it fails with `error`. */
  private resetStream(error: Error | LockError): void {
    const stream = this.stream
    this.stream = null
    this.opening = null
    for (const queue of this.pending.values()) for (const entry of queue) entry.reject(error)
    this.pending.clear()
    try {
      stream?.end()
    } catch {}
  }
}
