import type {IKeyValue} from 'etcd3'
import type {HolderInfo} from '../../../protocol/messages.js'
import {leaseProblem, modeProblem, ownerProblem} from '../../../protocol/validate.js'
import {NotHolderError, quoteKey} from '../../errors.js'

/**
 * The key layout of etcd's own lock recipe (Go's `concurrency.Mutex`, `etcdctl lock`): a lock
 * NAME is the keys `NAME/<lease id in hex>`, each attached to that lease; the holder is the key
 * with the lowest create revision. lockctl's tokens name one such key and its create revision.
 *
 * Semaphores and shared locks keep that layout: the value says the key's mode, and a key holds
 * the name when it fits behind every key with a lower create revision (fitsBehind). A key with
 * an empty value (etcdctl, Go) is an exclusive lock's, and every key blocks an etcdctl waiter,
 * which waits for all lower revisions to go.
 */

export interface Token {
  /** The key's suffix: the hex id of the lease it was created with. */
  suffix: string
  revision: string
}

/** What lockctl stores in a key's value (etcd's recipe leaves it empty). */
export interface LockValue {
  owner?: string
  leaseMs?: number
  /** Wall-clock ms of the grant (of the queueing, until the waiter updates it when granted). */
  since?: number
  /** A semaphore's limit (absent: 1, a lock). */
  limit?: number
  /** A shared grant of a lock. */
  shared?: boolean
}

/** How a key holds its name: a semaphore of `limit`, or a lock taken `shared` or exclusively. */
export interface KeyMode {
  limit: number
  shared: boolean
}

export function modeOfKey(kv: IKeyValue): KeyMode & {foreign: boolean} {
  const value = parseLockValue(kv)
  const limit = Number.isSafeInteger(value.limit) && value.limit! > 1 ? value.limit! : 1
  return {limit, shared: limit === 1 && value.shared === true, foreign: kv.value.length === 0}
}

/**
 * Does a key of mode `mine` hold its name with `ahead` (every key of lower create revision)
 * before it? An exclusive key: nobody ahead. A shared key: only shared keys ahead. One of a
 * semaphore of N: fewer than N ahead, all of the same semaphore. Strict FIFO as in lockd (a key
 * that would fit beside the holders still waits behind a waiter), and monotone: keys ahead only
 * ever go away, so a key that holds keeps holding until it is deleted.
 */
export function fitsBehind(mine: KeyMode, ahead: KeyMode[]): boolean {
  if (mine.limit > 1) return ahead.length < mine.limit && ahead.every((a) => a.limit === mine.limit)
  if (mine.shared) return ahead.every((a) => a.limit === 1 && a.shared)
  return ahead.length === 0
}

/** Which of a name's keys (oldest first) hold it: fitsBehind for each, in one pass. */
export function holdingKeys(keys: KeyMode[]): boolean[] {
  let allShared = true
  // The limit every key so far has, or null once two differ.
  let sameLimit: number | null = null
  return keys.map((key, i) => {
    const holds = key.limit > 1 ? i < key.limit && (i === 0 || sameLimit === key.limit) : key.shared ? allShared : i === 0
    allShared &&= key.limit === 1 && key.shared
    sameLimit = i === 0 || sameLimit === key.limit ? key.limit : null
    return holds
  })
}

const TOKEN = /^e1\.([0-9a-f]{1,16})\.(\d{1,19})$/

export function parseToken(token: string, key: string): Token {
  const match = TOKEN.exec(token)
  if (!match) throw new NotHolderError(key, `the token is not an etcd lock token of lockctl (${quoteKey(key)})`)
  return {suffix: match[1], revision: match[2]}
}

export function makeToken(suffix: string, revision: string): string {
  return `e1.${suffix}.${revision}`
}

export const hex = (id: string): string => BigInt(id).toString(16)
export const buf = (s: string): Buffer => Buffer.from(s, 'utf8')

/** The end of the range of keys that start with `prefix` (etcd's "prefix" range). */
export function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix, 'utf8')
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++
      return end.subarray(0, i + 1)
    }
  }
  return Buffer.from([0])
}

/** The lock name a waiter key belongs to, if it is one (`NAME/<hex>`). */
export function lockNameOf(waiterKey: string): string | null {
  const slash = waiterKey.lastIndexOf('/')
  if (slash <= 0 || !/^[0-9a-f]{1,16}$/.test(waiterKey.slice(slash + 1))) return null
  return waiterKey.slice(0, slash)
}

/**
 * What a key's value says, each field taken only when it is what lockctl writes. Anyone with
 * write access to etcd can put anything there (etcdctl, another program, a damaged value): a
 * value of `null` made every `status`, `lock` and `watch` of the name fail with a stack trace
 * (exit 70), and an owner that was not a string, or a `since` past any date, made `status` fail.
 * An owner with control characters (a terminal's escape sequences) is not shown either.
 */
export function parseLockValue(kv: IKeyValue): LockValue {
  let parsed: unknown
  try {
    parsed = kv.value.length ? JSON.parse(kv.value.toString('utf8')) : {}
  } catch {
    return {}
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return {}
  const raw = parsed as Record<string, unknown>
  const value: LockValue = {}
  if (ownerProblem(raw.owner) === null) value.owner = raw.owner as string
  if (leaseProblem(raw.leaseMs) === null) value.leaseMs = raw.leaseMs as number
  if (typeof raw.since === 'number' && Number.isSafeInteger(raw.since) && raw.since >= 0 && raw.since <= MAX_DATE_MS) value.since = raw.since
  if (raw.limit != null && modeProblem(raw.limit, undefined) === null) value.limit = raw.limit as number
  if (raw.shared === true) value.shared = true
  return value
}

/** The last millisecond a Date can show (ECMAScript's time range). */
const MAX_DATE_MS = 8.64e15

/** What a waiter key's value says about its owner (lease left is not in it). */
export function describeKey(kv: IKeyValue): Omit<HolderInfo, 'leaseLeftMs'> {
  const value = parseLockValue(kv)
  return {
    // etcdctl lock and Go's Mutex leave the value empty: name the holder by its lease.
    owner: value.owner ?? `etcd lease ${hex(kv.lease)}`,
    fence: Number(kv.create_revision),
    leaseMs: value.leaseMs ?? 0,
    since: value.since ?? 0,
    ...(value.shared === true && !(Number(value.limit) > 1) ? {shared: true} : {}),
  }
}

/** Sort waiter keys by create revision, oldest (the holder) first. */
export function byCreateRevision(a: IKeyValue, b: IKeyValue): number {
  const x = BigInt(a.create_revision)
  const y = BigInt(b.create_revision)
  return x < y ? -1 : x > y ? 1 : 0
}
