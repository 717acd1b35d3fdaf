import {ErrorCode} from '../protocol/errors.js'
import type {Answer, AnswerTo, Op, Request, RequestOf, ServerInfo} from '../protocol/messages.js'
import {attemptProblem, keyProblem, leaseProblem, modeProblem, ownerProblem, tokenProblem, waitProblem} from '../protocol/validate.js'
import {describeLimit} from '../protocol/limits.js'
import {RECENT_GRANTS, sharedOwner, type Connection} from './connection.js'
import type {Holder, LockTable} from './lock-table.js'
import type {Subscriptions} from './subscriptions.js'
import {grantInfo, holderInfo, lockInfo} from './wire.js'

export type {Answer}

export interface HandlerContext {
  table: LockTable
  subscriptions: Subscriptions
  /** The table clock's reading, for lease-left figures. */
  now(): number
  info(): ServerInfo
  maxWaitersPerConnection: number
  /** Names held at once (--max-locks): a new name past it is refused, held ones still serve. */
  maxLocks: number
  /** Why a new name or a wait is refused for want of heap now (heap-guard.ts), or null. */
  heapRefusal(): string | null
  /** May this connection force-release a lock it does not hold? */
  mayForce(conn: Connection): boolean
}

/**
 * Watches one connection may have at once. Each costs lockd memory and a share of every event
 * (a prefix watch is checked against each), and its snapshot when it starts: a client that
 * watched in a loop without unwatching slowed every lock operation for everyone, without end.
 */
export const MAX_WATCHES_PER_CONNECTION = 1000

const optional = <T>(value: T | undefined | null, problem: (v: T) => string | null): string | null => (value === undefined || value === null ? null : problem(value))

/**
 * What each operation must carry, checked before it runs: the server cannot trust its peers
 * (docs/protocol.md, "Requests and responses"). One validator per op, so a new op is not
 * accepted until it says what it needs.
 */
const VALIDATORS: {[O in Op]: (request: RequestOf<O>) => string | null} = {
  acquire: (r) =>
    keyProblem(r.key) ??
    leaseProblem(r.leaseMs) ??
    waitProblem(r.waitMs) ??
    ownerProblem(r.owner) ??
    optional(r.token, tokenProblem) ??
    optional(r.attempt, attemptProblem) ??
    modeProblem(r.limit, r.shared),
  cancel: (r) => keyProblem(r.key) ?? (typeof r.wid === 'number' && Number.isInteger(r.wid) ? null : 'cancel needs the wid of the acquire'),
  release: (r) => keyProblem(r.key) ?? (r.force === true ? null : tokenProblem(r.token)),
  renew: (r) => keyProblem(r.key) ?? tokenProblem(r.token) ?? optional(r.leaseMs, leaseProblem),
  check: (r) => keyProblem(r.key) ?? tokenProblem(r.token),
  inspect: (r) => keyProblem(r.key),
  list: (r) => (typeof r.prefix === 'string' ? optional(r.after, keyProblem) : 'list needs a prefix string'),
  watch: (r) => (typeof r.key === 'string' ? keyProblem(r.key) : typeof r.prefix === 'string' ? null : 'watch needs a key or a prefix'),
  unwatch: (r) => (typeof r.sub === 'number' ? null : 'unwatch needs the sub of the watch'),
  info: () => null,
  ping: () => null,
}

/**
 * Is this an operation lockd has? Asked of the table's own keys: `hasOwnProperty` or
 * `constructor` as an op found Object.prototype's functions (an INTERNAL answer, or the request
 * itself as the message), and a metric label per op name sent would grow without bound.
 */
export function isOp(op: unknown): op is Op {
  return typeof op === 'string' && Object.hasOwn(VALIDATORS, op)
}

/** An op that is not one, for the refusal (JSON.stringify throws on a BigInt, which msgpack's int64 decodes to). */
const describeOp = (op: unknown): string => (typeof op === 'string' ? JSON.stringify(op.slice(0, 64)) : `of type ${op === null ? 'null' : typeof op}`)

/** Run one request against the table; the answer, never an exception for bad input. */
export function handleRequest(ctx: HandlerContext, conn: Connection, request: Request): Answer {
  if (!isOp(request.op)) return {code: ErrorCode.BAD_INPUT, msg: `unknown operation ${describeOp((request as {op: unknown}).op)}`}
  const validate = VALIDATORS[request.op] as (r: RequestOf<Op>) => string | null
  const problem = validate(request)
  if (problem) return {code: ErrorCode.BAD_INPUT, msg: problem}
  return answer(ctx, conn, request)
}

/** Each op's answer is of that op's type (protocol/messages.ts, Answers). */
function answer(ctx: HandlerContext, conn: Connection, request: Request): Answer {
  const {table} = ctx
  switch (request.op) {
    case 'acquire': {
      const newName = !table.isHeld(request.key)
      if (request.waitMs !== 0 && table.waitingOf(conn.session) >= ctx.maxWaitersPerConnection && !newName) {
        return {code: ErrorCode.LIMIT, msg: `this connection already has ${ctx.maxWaitersPerConnection} waiting acquires, lockd's limit (--max-waiters-per-connection)`}
      }
      if (newName && table.size >= ctx.maxLocks) {
        return {code: ErrorCode.LIMIT, msg: `lockd holds ${table.size} locks, its limit (--max-locks): release some, or raise the limit`}
      }
      // Past half the heap, nothing that makes the table grow without bound is taken: a new
      // name, or a place in a queue. Renewals, releases and a try of a held name go on.
      const heap = newName || request.waitMs !== 0 ? ctx.heapRefusal() : null
      if (heap !== null) return {code: ErrorCode.LIMIT, msg: heap}
      const result = table.acquire({
        key: request.key,
        leaseMs: request.leaseMs,
        waitMs: request.waitMs,
        owner: sharedOwner(conn, request.owner),
        token: request.token ?? undefined,
        attempt: request.attempt ?? undefined,
        from: {session: conn.session, wid: request.id},
        limit: request.limit ?? undefined,
        shared: request.shared ?? undefined,
      })
      if (result.kind === 'mismatch') {
        return {code: ErrorCode.BAD_INPUT, msg: `${JSON.stringify(request.key)} is ${describeLimit(result.limit)}; asked as ${describeLimit(request.limit ?? 1)}`}
      }
      const now = ctx.now()
      if (result.kind === 'granted') {
        if (!result.reentrant) rememberGrant(conn, request.id, result.grant)
        return {code: 'OK', grant: grantInfo(request.key, result.grant, now)}
      }
      if (result.kind === 'held') return {code: ErrorCode.LOCK_HELD, msg: `held by ${result.holder.owner}`, holder: holderInfo(result.holder, now)}
      if (request.progress === true) ctx.subscriptions.followPosition(conn, request.key, request.id, result.position)
      return {code: 'QUEUED', position: result.position, holder: holderInfo(result.holder, now)}
    }
    case 'cancel': {
      // A wait the client gave up because its time ran out shows in watch as a timeout.
      if (table.cancel({session: conn.session, wid: request.wid}, request.key, request.reason === 'timeout' ? 'timeout' : 'cancelled').released) return {code: 'OK', released: true}
      // Granted at once, but the client had given up before the answer came.
      const granted = conn.recentGrants.get(request.wid)
      if (granted === undefined || granted.key !== request.key) return {code: 'OK', released: false}
      conn.recentGrants.delete(request.wid)
      return {code: 'OK', released: table.release(granted.key, granted.token, false, conn.session).ok}
    }
    case 'release': {
      if (request.force === true && !ctx.mayForce(conn)) {
        return {code: ErrorCode.NOT_PERMITTED, msg: `${conn.user === null ? 'an anonymous client' : `user ${JSON.stringify(conn.user)}`} may not force-release a lock it does not hold (lockd --admin)`}
      }
      const result = table.release(request.key, request.token, request.force === true, conn.session)
      if (!result.ok) return {code: ErrorCode.NOT_HOLDER, msg: request.force ? 'the lock is not held' : 'the token does not hold the lock'}
      return {code: 'OK', released: true, holder: holderInfo(result.holder, ctx.now())}
    }
    case 'renew': {
      const result = table.renew(request.key, request.token, request.leaseMs ?? undefined, conn.session)
      if (!result.ok) return {code: ErrorCode.NOT_HOLDER, msg: 'the token does not hold the lock'}
      return {code: 'OK', grant: grantInfo(request.key, result.holder, ctx.now())}
    }
    case 'check': {
      const holder = table.check(request.key, request.token)
      if (!holder) return {code: ErrorCode.NOT_HOLDER, msg: 'the token does not hold the lock'}
      return {code: 'OK', holder: holderInfo(holder, ctx.now())}
    }
    case 'inspect': {
      const view = table.inspect(request.key)
      return {code: 'OK', lock: view ? lockInfo(view, ctx.now()) : null}
    }
    case 'list': {
      const limit = typeof request.limit === 'number' && request.limit > 0 ? request.limit : Number.POSITIVE_INFINITY
      const {locks, total} = table.list(request.prefix, limit, request.after ?? undefined)
      const now = ctx.now()
      return {code: 'OK', locks: locks.map((view) => lockInfo(view, now)), total}
    }
    case 'watch': {
      if (conn.subscriptions.size >= MAX_WATCHES_PER_CONNECTION) {
        return {code: ErrorCode.LIMIT, msg: `this connection already has ${MAX_WATCHES_PER_CONNECTION} watches, lockd's limit: unwatch one first`}
      }
      const target = typeof request.key === 'string' ? {key: request.key} : {prefix: request.prefix!}
      ctx.subscriptions.watch(conn, request.id, target)
      return {code: 'OK', sub: request.id, ...ctx.subscriptions.snapshot(target)}
    }
    case 'unwatch':
      ctx.subscriptions.unwatch(conn, request.sub)
      return {code: 'OK'}
    case 'info':
      return {code: 'OK', info: ctx.info()}
    case 'ping':
      return {code: 'OK'} satisfies AnswerTo<'ping'>
  }
}

function rememberGrant(conn: Connection, wid: number, holder: Holder): void {
  const grants = conn.recentGrants
  grants.set(wid, holder)
  if (grants.size > RECENT_GRANTS) grants.delete(grants.keys().next().value as number)
}
