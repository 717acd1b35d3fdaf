import type {ErrorCode} from './errors.js'

/**
 * Bumped only for a change an older peer would misread (docs/protocol.md, "Hello and
 * versioning"); the server refuses a hello with another version.
 */
export const PROTOCOL_VERSION = 1

/** `waitMs` value that means "wait forever". */
export const WAIT_FOREVER = -1

/** What a holder looks like to anyone (no token: tokens prove ownership and are never listed). */
export interface HolderInfo {
  owner: string
  fence: number
  leaseMs: number
  /** Lease left as the server counts it at the time of the answer. */
  leaseLeftMs: number
  /** Wall-clock ms when this grant was made. */
  since: number
  /** A shared grant (absent: exclusive, or a semaphore's). */
  shared?: boolean
}

/** A grant as handed to its new owner. */
export interface GrantInfo extends HolderInfo {
  key: string
  token: string
}

export interface LockInfo {
  key: string
  /** The oldest holder: what a client that knows of one holder only shows. */
  holder: HolderInfo | null
  /** Every holder, oldest first, when there are several (a semaphore's or shared lock's); else absent. */
  holders?: HolderInfo[]
  /** A semaphore's limit (absent or 1: a lock). */
  limit?: number
  waiters: number
}

/** A change to a watched lock, as lockd pushes it. `waiters` is the queue length after it. */
export interface LockEvent {
  type: 'acquired' | 'released' | 'expired' | 'queued' | 'dequeued'
  key: string
  /** Holder after `acquired`; the holder that went away for `released` / `expired`. */
  owner?: string
  fence?: number
  waiters: number
  /** released: whether it was an admin force-release. */
  force?: boolean
  /** dequeued: why the waiter left (cancelled, timeout, disconnected). */
  reason?: string
}

export interface ServerInfo {
  server: 'lockd'
  version: string
  protocol: number
  serverId: string
  pid: number
  startedAt: number
  locks: number
  waiters: number
  connections: number
  durable: boolean
}

export interface AcquireArgs {
  key: string
  leaseMs: number
  /** 0 = try once, N = wait up to N ms in the FIFO queue, WAIT_FOREVER. */
  waitMs: number
  /** Token of the current grant: acquiring with it succeeds at once and renews (reentrancy). */
  token?: string
  owner: string
  /** While queued, push our place in the queue whenever it changes (for a spinner). */
  progress?: boolean
  /**
   * A random id the client keeps while it retries one acquisition over new connections. If the
   * lock was already granted to this id (the grant was made as the old connection dropped, so
   * its push was lost), the grant is answered again, renewed; if this id is still queued from a
   * connection lockd has not yet seen drop, the new request takes over its place in the queue.
   */
  attempt?: string
  /**
   * A semaphore of this many holders (default 1: a lock). Every holder and waiter of a name
   * asks with the same limit; another is refused (BAD_INPUT). Needs the `semaphores` feature.
   */
  limit?: number
  /** A shared grant of a lock (limit 1): beside other shared ones, never an exclusive one. */
  shared?: boolean
}

export type RequestBody =
  | ({op: 'acquire'} & AcquireArgs)
  /** Give up the wait started by request `wid`; releases the grant if it was already made. */
  | {op: 'cancel'; key: string; wid: number; reason?: 'cancelled' | 'timeout'}
  | {op: 'release'; key: string; token?: string; force?: boolean}
  | {op: 'renew'; key: string; token: string; leaseMs?: number}
  /** Does this token hold the lock now? No side effect (unlike renew). */
  | {op: 'check'; key: string; token: string}
  | {op: 'inspect'; key: string}
  /**
   * The first `limit` names under `prefix` in key order; `after`: only names after it (the next
   * page of a larger list; needs the `list-after` feature). `total`: every name under `prefix`.
   */
  | {op: 'list'; prefix: string; limit?: number; after?: string}
  | {op: 'info'}
  | {op: 'ping'}
  /** Subscribe to events of one key or of every key under a prefix; the answer has a snapshot. */
  | {op: 'watch'; key?: string; prefix?: string}
  | {op: 'unwatch'; sub: number}

export type Request = {t: 'req'; id: number} & RequestBody

export interface Hello {
  t: 'hello'
  v: number
  client?: string
  /** Largest frame this client accepts; the server cuts large answers into parts under it. */
  maxFrame?: number
}

export interface HelloReply {
  t: 'hello'
  v: number
  server: 'lockd'
  version: string
  serverId: string
  /** Largest frame this server accepts. */
  maxFrame?: number
  /**
   * What this server does beyond version 1's first form (docs/protocol.md, "Features"):
   * `semaphores` — acquire's `limit` and `shared`. A client does not send those to a server
   * that does not announce it (it would ignore them and grant an exclusive lock).
   * `list-after` — list's `after`: a long list is read a page at a time.
   */
  features?: string[]
}

export type ResultCode = 'OK' | 'QUEUED' | ErrorCode

export type Op = RequestBody['op']
/** The request body of one operation. */
export type RequestOf<O extends Op> = Extract<RequestBody, {op: O}>

/** A refusal: any operation can get one (bad input, not the holder, not permitted, a limit...). */
export interface Refusal {
  code: Exclude<ErrorCode, 'LOCK_HELD'>
  msg: string
}

/** What each operation answers when it does not fail (docs/protocol.md, "Requests and responses"). */
export interface Answers {
  acquire:
    | {code: 'OK'; grant: GrantInfo}
    /** Our place in the queue (1 = next) and who holds the lock now. */
    | {code: 'QUEUED'; position: number; holder: HolderInfo}
    | {code: 'LOCK_HELD'; msg: string; holder: HolderInfo}
  cancel: {code: 'OK'; released: boolean}
  release: {code: 'OK'; released: true; holder: HolderInfo}
  renew: {code: 'OK'; grant: GrantInfo}
  check: {code: 'OK'; holder: HolderInfo}
  inspect: {code: 'OK'; lock: LockInfo | null}
  list: {code: 'OK'; locks: LockInfo[]; total: number}
  info: {code: 'OK'; info: ServerInfo}
  ping: {code: 'OK'}
  /** `sub`: the id that event pushes carry (the id of the watch request). */
  watch: {code: 'OK'; sub: number; locks: LockInfo[]; total: number}
  unwatch: {code: 'OK'}
}

/** The answer to one operation, as the server builds it. */
export type AnswerTo<O extends Op> = Answers[O] | Refusal
/** Any answer (the server's handler returns one of these). */
export type Answer = {[O in Op]: AnswerTo<O>}[Op]

/**
 * The response frame: the answer with the request's id. `more`: its `locks` continue in `part`
 * pushes with this id (docs/protocol.md, "Answers in parts").
 */
export type ServerResponse<O extends Op = Op> = {t: 'res'; id: number; more?: boolean} & AnswerTo<O>

/** Server-initiated messages; `wid` is the id of the acquire request that queued. */
export type Push =
  | {t: 'push'; ev: 'granted'; wid: number; grant: GrantInfo}
  | {t: 'push'; ev: 'wait_timeout'; wid: number; key: string}
  | {t: 'push'; ev: 'position'; wid: number; key: string; position: number; holder: HolderInfo | null}
  | {t: 'push'; ev: 'lock'; sub: number; event: LockEvent}
  /**
   * To the connection that holds (took or last renewed) a grant: it ended by another hand —
   * its lease expired, it was force-released, or released with its token from elsewhere.
   */
  | {t: 'push'; ev: 'ended'; key: string; token: string; fence: number; reason: 'expired' | 'forced' | 'released'}
  /** More `locks` of the answer to request `id`; `more: false` on the last part. */
  | {t: 'push'; ev: 'part'; id: number; locks: LockInfo[]; more: boolean}

export type ServerMessage = HelloReply | ServerResponse | Push | {t: 'error'; code: ErrorCode; msg: string}
