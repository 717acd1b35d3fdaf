import {connect as netConnect, type Socket} from 'node:net'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {connect} from '../../src/client/index.js'
import {createCodec, encodeFrame, FrameDecoder} from '../../src/protocol/framing.js'
import {hashPassword} from '../../src/server/auth.js'
import {eventually, startLockd, tempDir, type LockdProcess} from '../helpers/processes.js'
import {rng} from '../helpers/random.js'

/**
 * Randomized bad input (seeded, bounded; LOCKCTL_PROTOCOL_SEEDS=1,2,3 replays or adds seeds):
 * raw connections send lockd well-framed requests whose fields are valid, of the wrong type or
 * out of range, or absent, beside hellos and frames of random bytes, while connections drop.
 * What must hold, whatever was sent (docs/protocol.md, "Requests and responses"):
 * - lockd stays up and says nothing of an internal error;
 * - every request on a connection that keeps to the envelope (t = "req", a fresh integer id) gets
 *   exactly one answer, never INTERNAL or PROTOCOL, its message a string; the connection stays;
 * - no fence is handed out with two tokens, and no name has more holders than its mode allows;
 * - a well-behaved client is served throughout.
 * It found: an op named after Object.prototype's functions (`hasOwnProperty`) answered INTERNAL,
 * or `constructor` the request itself as the message; a hello whose `v` was a map with a
 * `toString` key threw out of lockd (it exited, every lock's holder with it).
 */

const SEEDS = (process.env.LOCKCTL_PROTOCOL_SEEDS ?? '1,2,3').split(',').map(Number)
const REQUESTS_PER_SEED = 600
const KEYS = ['fz/a', 'fz/b', 'fz/é', 'fz/sem', 'fz/rw']
const ATTEMPTS = ['attempt-aaaaaaaaaaaaaaaa', 'attempt-bbbbbbbbbbbbbbbb', 'attempt-cccccccccccccccc']
const OPS = ['acquire', 'acquire', 'acquire', 'acquire', 'release', 'release', 'renew', 'check', 'cancel', 'cancel', 'inspect', 'list', 'watch', 'unwatch', 'info', 'ping']
const JUNK_OPS = ['hasOwnProperty', 'constructor', 'toString', '__proto__', 'valueOf', 'nope', '', 'ACQUIRE']
/** Values of the wrong type or out of range for any field. */
const JUNK: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  2 ** 53,
  -0,
  1e300,
  2n ** 63n - 1n,
  -(2n ** 63n),
  '',
  'x',
  'a'.repeat(600),
  '\u0000',
  '-yK',
  [],
  [1, 'a'],
  {},
  {toString: 1},
  {valueOf: 1, toString: 2},
  'hasOwnProperty',
  '__proto__',
  Buffer.from([1, 2, 3]),
  new Date(0),
]
/** The answers a request may get; INTERNAL (a bug) and PROTOCOL (the connection dropped) may not. */
const ANSWER_CODES = new Set(['OK', 'QUEUED', 'BAD_INPUT', 'LOCK_HELD', 'NOT_HOLDER'])
/** With users and no --admin, nobody may force a release. */
const ANSWER_CODES_WITH_USERS = new Set([...ANSWER_CODES, 'NOT_PERMITTED'])

/** A message for a failure's text (JSON.stringify throws on a BigInt). */
const show = (value: unknown): string => JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))

interface Peer {
  socket: Socket
  messages: Record<string, unknown>[]
  closedByServer: boolean
  nextId: number
  sent: Map<number, Record<string, unknown>>
  /** Ids of its requests (for cancel and unwatch). */
  ids: number[]
}

function openPeerWith(port: number, hello: Record<string, unknown>): Peer {
  const socket = netConnect({host: '127.0.0.1', port})
  const decoder = new FrameDecoder(createCodec())
  const peer: Peer = {socket, messages: [], closedByServer: false, nextId: 1, sent: new Map(), ids: []}
  socket.on('data', (chunk) => peer.messages.push(...(decoder.push(chunk) as Record<string, unknown>[])))
  socket.on('end', () => (peer.closedByServer = true))
  socket.on('error', () => {})
  socket.write(encodeFrame(createCodec(), hello))
  return peer
}

/** A throwaway connection that sends `bytes` and is closed a moment later: only lockd's survival is asked of it. */
function throwaway(port: number, bytes: Buffer): void {
  const socket = netConnect({host: '127.0.0.1', port})
  socket.on('error', () => {})
  socket.on('connect', () => socket.write(bytes))
  setTimeout(() => socket.destroy(), 200).unref()
}

function request(random: () => number, peer: Peer, tokens: string[]): Record<string, unknown> {
  const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)]
  const op = random() < 0.05 ? pick(JUNK_OPS) : pick(OPS)
  const valid: Record<string, () => unknown> = {
    key: () => pick(KEYS),
    leaseMs: () => 1000 + Math.floor(random() * 3000),
    waitMs: () => pick([0, 0, 100 + Math.floor(random() * 900), -1]),
    owner: () => `fuzz-${Math.floor(random() * 3)}`,
    token: () => (tokens.length > 0 && random() < 0.8 ? pick(tokens) : 'not-a-token-0123456789'),
    attempt: () => pick(ATTEMPTS),
    limit: () => pick([1, 2]),
    shared: () => random() < 0.5,
    force: () => true,
    wid: () => (peer.ids.length > 0 ? pick(peer.ids) : 1),
    sub: () => (peer.ids.length > 0 ? pick(peer.ids) : 1),
    prefix: () => pick(['', 'fz/', 'zz']),
    after: () => pick(KEYS),
    progress: () => random() < 0.5,
    reason: () => pick(['timeout', 'cancelled']),
    maxFrame: () => 1024,
  }
  const fields: Record<string, string[]> = {
    acquire: ['key', 'leaseMs', 'waitMs', 'owner', 'token', 'attempt', 'limit', 'shared', 'progress'],
    release: ['key', 'token', 'force'],
    renew: ['key', 'token', 'leaseMs'],
    check: ['key', 'token'],
    cancel: ['key', 'wid', 'reason'],
    inspect: ['key'],
    list: ['prefix', 'after', 'limit'],
    watch: ['key', 'prefix'],
    unwatch: ['sub'],
  }
  // Required fields are mostly valid (so that locks are taken and contended); optional ones
  // mostly absent; any may be junk.
  const required = new Set(['key', 'leaseMs', 'waitMs', 'owner', 'wid', 'sub', 'prefix'])
  const message: Record<string, unknown> = {}
  for (const field of Object.hasOwn(fields, op) ? fields[op] : pick(Object.values(fields))) {
    const dice = random()
    if (dice < 0.1) message[field] = pick(JUNK)
    else if (dice < (required.has(field) ? 0.95 : 0.4)) message[field] = valid[field]()
  }
  // One field that no op has, now and then.
  if (random() < 0.05) message[pick(['extra', '__proto__', 'constructor', 't', 'id'])] = pick(JUNK)
  // The envelope last: it is kept to, so the connection must stay.
  const id = peer.nextId++
  return {...message, op, t: 'req', id}
}

/** Bytes of a frame whose body is random (msgpack of anything, or nothing decodable). */
function randomFrame(random: () => number): Buffer {
  const body = Buffer.from(Array.from({length: 1 + Math.floor(random() * 40)}, () => Math.floor(random() * 256)))
  const header = Buffer.alloc(4)
  header.writeUInt32BE(body.length)
  return Buffer.concat([header, body])
}

/** `users`: lockd with an auth file: peers log in, throwaway hellos bring junk credentials. */
async function fuzzRun(seed: number, users = false): Promise<void> {
  const random = rng(seed)
  const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)]
  const dir = tempDir('lockctl-fuzz-')
  const credentials = {user: 'fuzz', password: 'fuzz-secret'}
  const args: string[] = []
  if (users) {
    writeFileSync(join(dir, 'users'), `${credentials.user}:${await hashPassword(credentials.password)}\n`, {mode: 0o600})
    args.push('--auth-file', join(dir, 'users'))
  }
  const login = users ? credentials : {}
  const lockd: LockdProcess = await startLockd({dataDir: join(dir, 'data'), args})
  const good = await connect({endpoints: lockd.endpoint, owner: 'good', ...(users ? {credentials} : {})})
  const openPeer = (port: number) => openPeerWith(port, {t: 'hello', v: 1, ...login})
  const goodLock = good.createLock('fz/good')
  await goodLock.acquire({leaseMs: 60_000})
  const peers = [openPeer(lockd.port), openPeer(lockd.port), openPeer(lockd.port)]
  const retired: Peer[] = []
  const grants = new Map<number, string>()
  const tokens: string[] = []
  const noteGrant = (grant: unknown) => {
    const {fence, token} = grant as {fence: number; token: string}
    const earlier = grants.get(fence)
    expect(earlier === undefined || earlier === token, `seed ${seed}: fence ${fence} handed out as ${earlier} and ${token}`).toBe(true)
    if (earlier === undefined) {
      grants.set(fence, token)
      tokens.push(token)
    }
  }
  const scanned = new Map<Peer, number>()
  const scan = () => {
    for (const peer of [...peers, ...retired]) {
      const from = scanned.get(peer) ?? 0
      for (const message of peer.messages.slice(from)) {
        const grant = (message.grant as object | undefined) ?? undefined
        if (grant && (message.code === 'OK' || message.ev === 'granted') && typeof (grant as {token?: unknown}).token === 'string') noteGrant(grant)
      }
      scanned.set(peer, peer.messages.length)
    }
  }

  // A seed whose first requests granted little (its keys taken early, its leases outlasting the
  // run) goes on until it has, bounded: what it is for needs grants to check (seed 7 had 4).
  for (let i = 0; i < 3 * REQUESTS_PER_SEED; i++) {
    if (i >= REQUESTS_PER_SEED) {
      scan()
      if (grants.size > 5) break
    }
    const dice = random()
    if (dice < 0.02) {
      // A connection drops (its waiters leave their queues); a new one takes its place.
      const index = Math.floor(random() * peers.length)
      scan()
      peers[index].socket.destroy()
      retired.push(peers[index])
      peers[index] = openPeer(lockd.port)
      continue
    }
    if (dice < 0.04) {
      throwaway(lockd.port, Buffer.concat([encodeFrame(createCodec(), {t: 'hello', v: 1, ...login}), randomFrame(random)]))
      continue
    }
    if (dice < 0.05) {
      const hello: Record<string, unknown> = {t: 'hello', v: random() < 0.5 ? 1 : pick(JUNK)}
      if (random() < 0.5) hello.maxFrame = pick(JUNK)
      if (random() < 0.3) hello.user = random() < 0.5 ? credentials.user : pick(JUNK)
      if (random() < 0.3) hello.password = random() < 0.3 ? credentials.password : pick(JUNK)
      throwaway(lockd.port, encodeFrame(createCodec(), hello))
      continue
    }
    const peer = pick(peers)
    const message = request(random, peer, tokens)
    peer.sent.set(message.id as number, message)
    peer.ids.push(message.id as number)
    peer.socket.write(encodeFrame(createCodec(), message))
    if (i % 20 === 0) {
      await new Promise((r) => setTimeout(r, Math.floor(random() * 30)))
      scan()
    }
  }

  // Every request of a connection still open has its one answer.
  const answersOf = (peer: Peer) => peer.messages.filter((m) => m.t === 'res')
  await eventually(() => {
    for (const peer of peers) {
      const dropped = peer.messages.find((m) => m.t === 'error')
      if (dropped) return
      expect(answersOf(peer).length, `seed ${seed}`).toBeGreaterThanOrEqual(peer.sent.size)
    }
    return true
  })
  scan()
  for (const peer of [...peers, ...retired]) {
    const errors = peer.messages.filter((m) => m.t === 'error')
    expect(errors, `seed ${seed}: a connection that kept to the envelope was dropped`).toEqual([])
    if (peers.includes(peer)) expect(peer.closedByServer, `seed ${seed}`).toBe(false)
    const seen = new Set<number>()
    for (const answer of answersOf(peer)) {
      const id = answer.id as number
      const sent = peer.sent.get(id)
      expect(sent, `seed ${seed}: an answer to id ${id}, which was never sent`).toBeDefined()
      expect(seen.has(id), `seed ${seed}: two answers to ${show(sent)}`).toBe(false)
      seen.add(id)
      expect((users ? ANSWER_CODES_WITH_USERS : ANSWER_CODES).has(answer.code as string), `seed ${seed}: ${show(sent)} answered ${show(answer)}`).toBe(true)
      if (answer.msg !== undefined) expect(typeof answer.msg, `seed ${seed}: ${show(answer)}`).toBe('string')
    }
  }
  // The run did what it is for: locks were granted and contended, and bad input refused.
  const codes = [...peers, ...retired].flatMap((peer) => answersOf(peer).map((m) => m.code))
  expect(grants.size, `seed ${seed}`).toBeGreaterThan(5)
  for (const code of ['BAD_INPUT', 'LOCK_HELD', 'QUEUED', 'NOT_HOLDER']) expect(codes, `seed ${seed}`).toContain(code)
  // The state the run left: no name with more holders than its mode allows.
  for (const key of KEYS) {
    const lock = await good.inspect(key)
    if (!lock) continue
    const holders = lock.holders ?? (lock.holder ? [lock.holder] : [])
    const limit = lock.limit ?? 1
    if (limit > 1) expect(holders.length, `seed ${seed}: ${key}`).toBeLessThanOrEqual(limit)
    else if (holders.some((h) => !h.shared)) expect(holders.length, `seed ${seed}: ${key}`).toBe(1)
  }
  // The well-behaved client was served throughout, and lockd said nothing of a bug.
  expect(goodLock.isHeldByCurrentClient()).toBe(true)
  await goodLock.updateLease()
  await goodLock.unlock()
  expect((await good.info()).server).toBe('lockd')
  expect(lockd.child.exitCode).toBeNull()
  expect(lockd.stderr()).not.toMatch(/internal error|TypeError|\n\s+at /)
  await good.close()
  for (const peer of peers) peer.socket.destroy()
  await lockd.stop()
}

describe('lockd under random bad input', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: stays up, answers every request once with a defined code, never repeats a fence, serves the others`, async () => {
      await fuzzRun(seed)
    }, 60_000)
  }
  it(`seed ${SEEDS[0]}, lockd with users: the same, with every peer logged in and hellos with junk credentials`, async () => {
    await fuzzRun(SEEDS[0], true)
  }, 60_000)
})
