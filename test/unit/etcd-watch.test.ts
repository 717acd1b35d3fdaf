import {EventEmitter} from 'node:events'
import type {Watcher} from 'etcd3'
import {describe, expect, it} from 'vitest'
import {watchLocks, type WatchSource} from '../../src/client/backends/etcd/watch.js'
import type {LockInfo} from '../../src/protocol/messages.js'

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
    inspect: async (key) => locks.get(key) ?? null,
    list: async (prefix) => ({locks: [...locks.values()].filter((lock) => lock.key.startsWith(prefix))}),
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
