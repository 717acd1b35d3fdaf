import type {Op} from './messages.js'

/**
 * What the client checks of every message a server sends before it uses one: the shapes of
 * docs/protocol.md, field by field. Whatever answers on a lockd:// address is a peer the client
 * cannot trust to be lockd (a wrong port, another program, a lockd of a version with a bug): a
 * frame holding `nil` threw out of the socket's handler (a stack trace, exit 1), and an answer
 * without its fields came out as "lockd: undefined". Each check returns what is wrong (with the
 * field's path) or null; extra fields are let through (a newer lockd may add some).
 */

type Check = (value: unknown, path: string) => string | null

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

const str: Check = (value, path) => (typeof value === 'string' ? null : `${path} is not a string`)
const whole: Check = (value, path) => (Number.isSafeInteger(value) ? null : `${path} is not a whole number`)
const finite: Check = (value, path) => (typeof value === 'number' && Number.isFinite(value) ? null : `${path} is not a number`)
const bool: Check = (value, path) => (typeof value === 'boolean' ? null : `${path} is not true or false`)
const optional =
  (check: Check): Check =>
  (value, path) =>
    value === undefined ? null : check(value, path)
const nullable =
  (check: Check): Check =>
  (value, path) =>
    value === null ? null : check(value, path)
const oneOf =
  (...values: string[]): Check =>
  (value, path) =>
    typeof value === 'string' && values.includes(value) ? null : `${path} is none of ${values.join(', ')}`
const listOf =
  (check: Check): Check =>
  (value, path) => {
    if (!Array.isArray(value)) return `${path} is not a list`
    for (let i = 0; i < value.length; i++) {
      const problem = check(value[i], `${path}[${i}]`)
      if (problem) return problem
    }
    return null
  }
const fields =
  (shape: Record<string, Check>): Check =>
  (value, path) => {
    if (!isRecord(value)) return `${path} is not a map`
    for (const name in shape) {
      const problem = shape[name](value[name], `${path}.${name}`)
      if (problem) return problem
    }
    return null
  }

const HOLDER = {owner: str, fence: whole, leaseMs: whole, leaseLeftMs: finite, since: finite, shared: optional(bool)}
const holderInfo = fields(HOLDER)
const grantInfo = fields({...HOLDER, key: str, token: str})
const lockInfo = fields({key: str, holder: nullable(holderInfo), holders: optional(listOf(holderInfo)), limit: optional(whole), waiters: whole})
const locks = listOf(lockInfo)
const lockEvent = fields({
  type: oneOf('acquired', 'released', 'expired', 'queued', 'dequeued'),
  key: str,
  owner: optional(str),
  fence: optional(whole),
  waiters: whole,
  force: optional(bool),
  reason: optional(str),
})
const serverInfo = fields({
  server: str,
  version: str,
  protocol: whole,
  serverId: str,
  pid: whole,
  startedAt: finite,
  locks: whole,
  waiters: whole,
  connections: whole,
  durable: bool,
})

/** The fields of each operation's `OK` answer (the `code` and `id` are checked for all). */
const OK_ANSWERS: Record<Op, Record<string, Check>> = {
  acquire: {grant: grantInfo},
  cancel: {released: bool},
  release: {released: bool, holder: holderInfo},
  renew: {grant: grantInfo},
  check: {holder: holderInfo},
  inspect: {lock: nullable(lockInfo)},
  list: {locks, total: whole},
  info: {info: serverInfo},
  ping: {},
  watch: {sub: whole, locks, total: whole},
  unwatch: {},
}

const PUSHES: Record<string, Check> = {
  granted: fields({wid: whole, grant: grantInfo}),
  wait_timeout: fields({wid: whole, key: str}),
  position: fields({wid: whole, key: str, position: whole, holder: nullable(holderInfo)}),
  lock: fields({sub: whole, event: lockEvent}),
  ended: fields({key: str, token: str, fence: whole, reason: str}),
  part: fields({id: whole, locks, more: bool}),
}

const HELLO_REPLY = fields({v: whole, server: optional(str), version: optional(str), serverId: optional(str), maxFrame: optional(whole), features: optional(listOf(str))})
const ERROR = fields({code: str, msg: str})

/** What is wrong with a message as a whole (not a map, no known `t`), or with a hello, push or error. */
export function serverMessageProblem(message: unknown): string | null {
  if (!isRecord(message)) return `a message is ${message === null ? 'nil' : Array.isArray(message) ? 'a list' : `a ${typeof message}`}, not a map`
  switch (message.t) {
    case 'hello':
      return HELLO_REPLY(message, 'hello')
    case 'res':
      return whole(message.id, 'res.id') ?? str(message.code, 'res.code') ?? optional(bool)(message.more, 'res.more')
    case 'push': {
      const check = typeof message.ev === 'string' && Object.hasOwn(PUSHES, message.ev) ? PUSHES[message.ev] : null
      // A push of a kind this client does not know is from a newer lockd: ignored, as before.
      return check ? check(message, `push ${message.ev as string}`) : null
    }
    case 'error':
      return ERROR(message, 'error')
    default:
      return typeof message.t === 'string' ? `a message of unknown type ${JSON.stringify(message.t)}` : `a message whose type (t) is not a string`
  }
}

/** What is wrong with the answer to `op` (a `res` that passed serverMessageProblem). */
export function answerProblem(op: Op, answer: Record<string, unknown>): string | null {
  const {code} = answer
  const path = `the answer to ${op}`
  if (code === 'OK') return fields(OK_ANSWERS[op])(answer, path)
  if (op === 'acquire' && code === 'QUEUED') return fields({position: whole, holder: holderInfo})(answer, path)
  if (op === 'acquire' && code === 'LOCK_HELD') return fields({holder: holderInfo, msg: optional(str)})(answer, path)
  return str(answer.msg, `${path}.msg`)
}
