import {mkdirSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, expect, it, vi} from 'vitest'
import {TokenSource} from '../../src/server/tokens.js'
import {describeError} from '../../src/cli/base-command.js'
import {loadProfile} from '../../src/cli/profiles.js'
import {byCreateRevision, lockNameOf, makeToken, parseToken, prefixEnd} from '../../src/client/backends/etcd/keys.js'
import {LockHeldError, NotPermittedError, UnreachableError} from '../../src/client/errors.js'
import {DeadlineHeap} from '../../src/server/deadline-heap.js'
import {isLoopback} from '../../src/server/run.js'
import {atDeadline} from '../../src/util/timers.js'
import {ownGrantFence} from '../../src/cli/own-grant.js'

describe('DeadlineHeap', () => {
  it('pops in deadline order for a seeded random mix of pushes, and compacts away dead entries', () => {
    let seed = 7
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    const heap = new DeadlineHeap<number>()
    const pushed: number[] = []
    for (let i = 0; i < 500; i++) {
      const at = Math.floor(random() * 10_000)
      heap.push(at, i)
      pushed.push(at)
    }
    const popped: number[] = []
    for (let at = heap.peekAt(); at !== undefined; at = heap.peekAt()) {
      const item = heap.pop()!
      expect(pushed[item]).toBe(at)
      popped.push(at)
    }
    expect(popped).toEqual([...pushed].sort((a, b) => a - b))
    for (let i = 0; i < 100; i++) heap.push(i, i)
    heap.compact((item) => item % 2 === 0)
    expect(heap.size).toBe(50)
    expect(heap.pop()).toBe(0)
    expect(heap.pop()).toBe(2)
    // Many at once (a restart): the same order as one by one.
    const bulk = new DeadlineHeap<number>()
    const ats = Array.from({length: 300}, () => Math.floor(random() * 1000))
    bulk.pushAll(
      ats,
      ats.map((_, i) => i),
    )
    const order: number[] = []
    for (let at = bulk.peekAt(); at !== undefined; at = bulk.peekAt()) {
      expect(ats[bulk.pop()!]).toBe(at)
      order.push(at)
    }
    expect(order).toEqual([...ats].sort((a, b) => a - b))
  })
})

describe('etcd key and token layout (the recipe of etcdctl lock)', () => {
  it('tokens round-trip; a foreign token is NOT_HOLDER; waiter keys name their lock; prefixes end right', () => {
    const token = makeToken('694d7a1b2c3d4e5f', '123456')
    expect(parseToken(token, 'k')).toEqual({suffix: '694d7a1b2c3d4e5f', revision: '123456'})
    expect(() => parseToken('not-a-token', 'k')).toThrow(expect.objectContaining({code: 'NOT_HOLDER'}))
    expect(lockNameOf('deploy/694d7a1b2c3d4e5f')).toBe('deploy')
    expect(lockNameOf('deploy/x/694d')).toBe('deploy/x')
    expect(lockNameOf('deploy/not-hex')).toBeNull()
    expect(lockNameOf('/694d')).toBeNull()
    expect(prefixEnd('a/').toString()).toBe('a0')
    expect([...prefixEnd('a\xff')]).toEqual([0x61, 0xc3, 0xc0]) // ÿ is c3 bf in UTF-8: the last byte goes up
    const kv = (revision: string) => ({create_revision: revision}) as Parameters<typeof byCreateRevision>[0]
    expect(
      ['10', '9', '100']
        .map(kv)
        .sort(byCreateRevision)
        .map((k) => k.create_revision),
    ).toEqual(['9', '10', '100'])
  })
})

describe('profiles', () => {
  const file = (content: string) => {
    const dir = join(tmpdir(), `lockctl-profile-${process.pid}-${Math.random().toString(36).slice(2)}`)
    mkdirSync(dir, {recursive: true})
    writeFileSync(join(dir, 'config.json'), content)
    return join(dir, 'config.json')
  }
  it('picks the named profile, else the default, else none; refuses what is not a profile', () => {
    const config = file(JSON.stringify({profiles: {team: {endpoints: 'lockd://h:1', user: 'ci'}, prod: {endpoints: 'etcd://e:2379'}}, defaultProfile: 'team'}))
    expect(loadProfile(undefined, config)).toEqual({endpoints: 'lockd://h:1', user: 'ci'})
    expect(loadProfile('prod', config)).toEqual({endpoints: 'etcd://e:2379'})
    expect(() => loadProfile('nope', config)).toThrow(/profile "nope" is not in .* \(known: team, prod\)/)
    expect(loadProfile(undefined, file('{}'))).toBeUndefined()
    expect(() => loadProfile(undefined, file('null'))).toThrow(/must hold a JSON object .* not null/)
    expect(() => loadProfile(undefined, file('{"profiles": {"a": {"endpoint": "x"}}, "defaultProfile": "a"}'))).toThrow(/"endpoint" is not a profile field \(known: endpoints, cacert/)
    expect(() => loadProfile(undefined, file('{"profiles": {"a": {"endpoints": 42}}, "defaultProfile": "a"}'))).toThrow(/"endpoints" must be a string, not 42/)
    expect(() => loadProfile(undefined, file('{"profiles": {"a": {"password": "x"}}, "defaultProfile": "a"}'))).toThrow(/a password never goes in the file/)
    // A name every object has is not a profile of the file (it said "must be an object, not undefined").
    expect(() => loadProfile('toString', file('{"profiles": {"a": {"endpoints": "lockd://h:1"}}}'))).toThrow(/profile "toString" is not in .* \(known: a\)/)
    expect(loadProfile(undefined, join(tmpdir(), 'no-such-dir-lockctl', 'config.json'))).toBeUndefined()
  })
})

describe('describeError: one place from an error to its exit code and line', () => {
  it('maps by code, never by message', () => {
    expect(describeError(new LockHeldError('k', null))).toMatchObject({code: 'LOCK_HELD', exitCode: 1})
    expect(describeError(new LockHeldError('k', null), 0)).toMatchObject({exitCode: 0}) // --conflict-exit-code 0
    expect(describeError(new UnreachableError('not permitted, says the message'))).toMatchObject({code: 'UNREACHABLE', exitCode: 4})
    expect(describeError(new NotPermittedError('unreachable, says the message'))).toMatchObject({code: 'NOT_PERMITTED', exitCode: 6})
    const bug = describeError(new TypeError('x is undefined'))
    expect(bug).toMatchObject({code: 'INTERNAL', exitCode: 70})
  })
})

describe('TokenSource', () => {
  it('hands out distinct 144-bit URL-safe tokens across refills of its pool', () => {
    const source = new TokenSource()
    const tokens = Array.from({length: 2000}, () => source.next()) // several refills of 256
    expect(new Set(tokens).size).toBe(2000)
    for (const token of tokens) expect(token).toMatch(/^[A-Za-z0-9_-]{24}$/)
  })

  it("never begins a token with '-' (an option parser would take it for flags), and every other first character comes", () => {
    const source = new TokenSource()
    const firsts = new Map<string, number>()
    // One in 64 candidates begins with '-': 64,000 tokens would have ~1,000 of them.
    for (let i = 0; i < 64_000; i++) {
      const first = source.next()[0]
      firsts.set(first, (firsts.get(first) ?? 0) + 1)
    }
    expect(firsts.has('-')).toBe(false)
    expect([...firsts.keys()].sort().join('')).toBe('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz')
    // Uniform over the other 63: ~1,016 each (a character below 800 or above 1,250 is a bias).
    for (const [first, count] of firsts) expect(count, first).toBeGreaterThan(800)
    for (const [first, count] of firsts) expect(count, first).toBeLessThan(1250)
  })
})

describe('isLoopback: where lockd warns that passwords would travel in clear text', () => {
  it('127.0.0.0/8, ::1 and IPv4-mapped loopback are local; any other address is not', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1', '::FFFF:127.0.0.1']) expect(isLoopback(host), host).toBe(true)
    for (const host of ['0.0.0.0', '::', '10.0.0.5', '192.168.1.1', '::ffff:10.0.0.1', 'fe80::1', '128.0.0.1']) expect(isLoopback(host), host).toBe(false)
  })
})

describe('atDeadline: a deadline further away than one timer can hold', () => {
  it('fires at its deadline 40 days away, not after 1 ms (an overflowing setTimeout), and not before', () => {
    vi.useFakeTimers({toFake: ['setTimeout', 'clearTimeout', 'performance']})
    try {
      const day = 24 * 60 * 60 * 1000
      let fired = 0
      atDeadline(performance.now() + 40 * day, () => fired++)
      vi.advanceTimersByTime(10)
      expect(fired).toBe(0)
      vi.advanceTimersByTime(39 * day)
      expect(fired).toBe(0)
      vi.advanceTimersByTime(day)
      expect(fired).toBe(1)
      // Cancelled before a step of its wait: never fires.
      const cancel = atDeadline(performance.now() + 30 * day, () => fired++)
      vi.advanceTimersByTime(26 * day)
      cancel()
      vi.advanceTimersByTime(10 * day)
      expect(fired).toBe(1)
    } finally {
      vi.useRealTimers()
    }
  })
})

describe('ownGrantFence: the grant this process runs under, from its environment', () => {
  it('the fence for the same key; nothing for another key, without a token, or for a semaphore of more than 1', () => {
    const env = {LOCKCTL_KEY: 'deploy', LOCKCTL_TOKEN: 'tok', LOCKCTL_FENCE: '42'}
    expect(ownGrantFence('deploy', 1, env)).toBe(42)
    expect(ownGrantFence('other', 1, env)).toBeNull()
    expect(ownGrantFence('deploy', 1, {...env, LOCKCTL_TOKEN: undefined})).toBeNull()
    expect(ownGrantFence('deploy', 3, env)).toBeNull()
    expect(ownGrantFence('deploy', 1, {...env, LOCKCTL_FENCE: 'x'})).toBeNull()
  })
})
