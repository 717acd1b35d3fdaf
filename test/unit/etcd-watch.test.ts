import {EventEmitter} from 'node:events'
import type {Watcher} from 'etcd3'
import {describe, expect, it, vi} from 'vitest'
import {watchLocks, type WatchSource} from '../../src/client/backends/etcd/watch.js'
import type {WatchUpdate} from '../../src/client/watch.js'
import type {LockInfo} from '../../src/protocol/messages.js'
import {UnreachableError} from '../../src/client/errors.js'

/**
 * A watch source whose watches can be stuck on a client and moved to a new one, as the etcd
 * backend's renewWatchClient moves them: a creation asked of the old client after etcd cancelled
 * a watch there waits for ever.
 */
function movingSource() {
  const locks = new Map<string, LockInfo>()
  const moved = new Set<() => void>()
  const watchers: (EventEmitter & {cancelled: boolean})[] = []
  let generation = 0
  const stuckOn = new Set<number>()
  /** Resolves when a watch is asked of a client where it gets stuck. */
  let askedStuck!: () => void
  const stuckAsk = new Promise<void>((resolve) => (askedStuck = resolve))
  /** How many reads (list, inspect) are refused next, as etcd refuses them while a member comes back. */
  const refusals = {left: 0, made: 0}
  const refuse = () => {
    if (refusals.left === 0) return
    refusals.left--
    refusals.made++
    throw new UnreachableError('etcd://127.0.0.1:1: range: no etcd member answered (Execution prevented because the circuit breaker is open)')
  }
  const source: WatchSource = {
    watchPrefix: () => {
      if (stuckOn.has(generation)) {
        askedStuck()
        return new Promise<Watcher>(() => {})
      }
      const watcher = Object.assign(new EventEmitter(), {
        cancelled: false,
        async cancel() {
          watcher.cancelled = true
        },
      })
      watchers.push(watcher)
      return Promise.resolve(watcher as unknown as Watcher)
    },
    inspect: async (key) => {
      refuse()
      return locks.get(key) ?? null
    },
    list: async (prefix) => {
      refuse()
      return {locks: [...locks.values()].filter((lock) => lock.key.startsWith(prefix))}
    },
    watchClientGeneration: () => generation,
    onWatchClientMoved: (listener) => {
      moved.add(listener)
      return () => moved.delete(listener)
    },
  }
  return {
    source,
    locks,
    watchers,
    stuckOn,
    stuckAsk,
    refusals,
    move() {
      generation++
      for (const listener of [...moved]) listener()
    },
    listeners: () => moved.size,
  }
}

const holder = {owner: 'o', fence: 7, leaseMs: 10_000, leaseLeftMs: 10_000, since: 0}

describe('etcd watchLocks when watches move to a new client', () => {
  it('a watch being made on the old client when they move is made again on the new one: the watch goes on', async () => {
    const s = movingSource()
    const updates = watchLocks(s.source, {prefix: 'a/'})
    const first = await updates.next()
    expect(first.value).toMatchObject({type: 'snapshot', resync: false})

    // The watch is cancelled; its new one is asked of the old client, where it waits for ever.
    s.stuckOn.add(0)
    s.watchers[0].emit('error', new Error('Watcher canceled: permission denied'))
    const next = updates.next()
    expect((await next).value).toMatchObject({type: 'disconnected'})
    const resync = updates.next()
    await s.stuckAsk
    s.move()
    // (Without the move seen, it waited for ever.)
    const stuck = new Promise((resolve) => setTimeout(() => resolve({value: 'still waiting for the watch on the old client'}), 2000))
    expect(((await Promise.race([resync, stuck])) as {value: unknown}).value).toMatchObject({type: 'snapshot', resync: true})
    expect(s.watchers).toHaveLength(2)

    // Events come through the watch made on the new client.
    s.locks.set('a/k', {key: 'a/k', holder, waiters: 0})
    const event = updates.next()
    s.watchers[1].emit('put', {key: Buffer.from('a/k/1f'), value: Buffer.from('{}')})
    expect((await event).value).toMatchObject({type: 'event', event: {type: 'acquired', key: 'a/k', fence: 7}})
    await updates.return(undefined)
    expect(s.listeners()).toBe(0)
  })
})

/** a/k (fence 7) is released, as the watch on `watcher` tells it: the next update says so. */
async function expectReleaseTold(s: ReturnType<typeof movingSource>, updates: AsyncGenerator<WatchUpdate>, watcher: number): Promise<void> {
  s.locks.delete('a/k')
  const event = updates.next()
  s.watchers[watcher].emit('delete', {key: Buffer.from('a/k/1f'), value: Buffer.from('')})
  expect((await event).value).toMatchObject({type: 'event', event: {type: 'released', key: 'a/k', fence: 7}})
}

describe('etcd watchLocks when etcd refuses a read after an interruption', () => {
  it('the state after a watch ended is read again until etcd answers: the watch goes on (the refusal ended it)', async () => {
    const s = movingSource()
    const updates = watchLocks(s.source, {prefix: 'a/'})
    expect((await updates.next()).value).toMatchObject({type: 'snapshot', resync: false})

    s.refusals.left = 2
    s.locks.set('a/k', {key: 'a/k', holder, waiters: 0})
    s.watchers[0].emit('error', new Error('Watcher canceled: permission denied'))
    expect((await updates.next()).value).toMatchObject({type: 'disconnected'})
    expect((await updates.next()).value).toMatchObject({type: 'snapshot', resync: true, locks: [{key: 'a/k', holder: {fence: 7}}]})
    expect(s.refusals.made).toBe(2)

    // And it goes on, on the watch made again.
    await expectReleaseTold(s, updates, 1)
    await updates.return(undefined)
  })

  it('a change whose lock cannot be read is said as an interruption and a fresh state, never passed over', async () => {
    const s = movingSource()
    const updates = watchLocks(s.source, {prefix: 'a/'})
    expect((await updates.next()).value).toMatchObject({type: 'snapshot', resync: false})

    s.refusals.left = 2
    s.locks.set('a/k', {key: 'a/k', holder, waiters: 0})
    s.watchers[0].emit('put', {key: Buffer.from('a/k/1f'), value: Buffer.from('{}')})
    expect((await updates.next()).value).toMatchObject({type: 'disconnected', reason: expect.stringMatching(/did not answer a read/)})
    expect((await updates.next()).value).toMatchObject({type: 'snapshot', resync: true, locks: [{key: 'a/k', holder: {fence: 7}}]})

    // The state it resynced from is the one the next event is told against.
    await expectReleaseTold(s, updates, 0)
    await updates.return(undefined)
  })

  it('aborted while etcd refuses the read: the watch ends quietly', async () => {
    const s = movingSource()
    const abort = new AbortController()
    const updates = watchLocks(s.source, {prefix: 'a/'}, {signal: abort.signal})
    expect((await updates.next()).value).toMatchObject({type: 'snapshot', resync: false})
    s.refusals.left = 1_000_000
    s.watchers[0].emit('error', new Error('Watcher canceled: permission denied'))
    expect((await updates.next()).value).toMatchObject({type: 'disconnected'})
    const ended = updates.next()
    // Aborted once a read has been refused: the watch is in its loop of reads.
    await vi.waitFor(() => expect(s.refusals.made).toBeGreaterThan(0))
    abort.abort()
    expect(await ended).toEqual({done: true, value: undefined})
  })
})
