import type {IKeyValue, Watcher} from 'etcd3'
import type {LockEvent, LockInfo} from '../../../protocol/messages.js'
import {AsyncQueue, backoffDelay, sleep} from '../../async.js'
import {holdersOf} from '../../holders.js'
import type {WatchOptions, WatchTarget, WatchUpdate} from '../../watch.js'
import {isTransient} from './errors.js'
import {lockNameOf} from './keys.js'

/** The longest pause between reads of the state after an interruption. */
const WATCH_RESYNC_BACKOFF_MAX_MS = 2000

export interface WatchSource {
  watchPrefix(prefix: string): Promise<Watcher>
  inspect(key: string): Promise<LockInfo | null>
  list(prefix: string): Promise<{locks: LockInfo[]}>
  /**
   * Which client new watches go to (a number that grows when they move to a new one), and a
   * subscription to those moves: a watch on an older client may be stuck there (the backend's
   * renewWatchClient) and is made again.
   */
  watchClientGeneration?(): number
  onWatchClientMoved?(listener: () => void): () => void
}

/**
 * Events that take a lock from `before` to `after`: each holder that went is released, each
 * new one acquired (a semaphore's or shared lock's several, by fence); with the same holders,
 * a longer or shorter queue.
 */
export function diffLocks(key: string, before: LockInfo | null, after: LockInfo | null): LockEvent[] {
  const events: LockEvent[] = []
  const oldHolders = holdersOf(before)
  const newHolders = holdersOf(after)
  const waiters = after?.waiters ?? 0
  const oldFences = new Set(oldHolders.map((h) => h.fence))
  const newFences = new Set(newHolders.map((h) => h.fence))
  for (const gone of oldHolders.filter((h) => !newFences.has(h.fence))) events.push({type: 'released', key, owner: gone.owner, fence: gone.fence, waiters})
  for (const come of newHolders.filter((h) => !oldFences.has(h.fence))) events.push({type: 'acquired', key, owner: come.owner, fence: come.fence, waiters})
  if (events.length === 0) {
    const was = before?.waiters ?? 0
    if (waiters > was) events.push({type: 'queued', key, waiters})
    if (waiters < was) events.push({type: 'dequeued', key, waiters})
  }
  return events
}

/**
 * etcd's watch on the waiter keys, translated to lockd's events: after each change the lock is
 * read again and compared with what was last reported (holder gone: released; new holder:
 * acquired; queue longer or shorter: queued / dequeued). etcd cannot tell an expiry from a
 * release, so both are reported as released. After a reconnect a fresh snapshot is yielded
 * with resync = true.
 */
export async function* watchLocks(source: WatchSource, target: WatchTarget, options: WatchOptions = {}): AsyncGenerator<WatchUpdate> {
  const {signal} = options
  const names = (waiterKey: string) => {
    const name = lockNameOf(waiterKey)
    if (name === null) return null
    if (target.key !== undefined) return name === target.key ? name : null
    return name.startsWith(target.prefix) ? name : null
  }
  // 'ended' carries the generation of the watch it ends: one ended twice (cancelled, and moved
  // for that) is made again once.
  const queue = new AsyncQueue<{kind: 'changed'; name: string} | {kind: 'disconnected'} | {kind: 'connected'} | {kind: 'ended'; reason: string; generation: number}>()
  const generationNow = () => source.watchClientGeneration?.() ?? 0
  let watcherGeneration = generationNow()
  const onChange = (kv: IKeyValue) => {
    const name = names(kv.key.toString('utf8'))
    if (name !== null) queue.push({kind: 'changed', name})
  }
  const watch = async (): Promise<Watcher> => {
    const {created, generation} = await createWatch(source, target.key !== undefined ? `${target.key}/` : target.prefix)
    watcherGeneration = generation
    created.on('put', onChange)
    created.on('delete', onChange)
    created.on('disconnected', () => queue.push({kind: 'disconnected'}))
    created.on('connected', () => queue.push({kind: 'connected'}))
    // etcd ended this watch (it resumed at a revision compacted meanwhile, or a member
    // cancelled it): a new one is made. Without a listener the watch just stopped, and with
    // nothing else pending `lockctl watch` exited 0 as if interrupted.
    created.on('error', (error: Error) => {
      // (etcd gives no reason for a compaction: only the revision it compacted to.)
      const reason = error.message.replace(/^Watcher canceled: */, '')
      queue.push({kind: 'ended', reason: reason || 'the history it resumed from was compacted', generation})
    })
    return created
  }
  let watcher = await watch()
  const offMoved = source.onWatchClientMoved?.(() => {
    if (watcherGeneration !== generationNow()) queue.push({kind: 'ended', reason: 'etcd cancelled another watch of this client; watching again', generation: watcherGeneration})
  })
  const onAbort = () => queue.close()
  signal?.addEventListener('abort', onAbort, {once: true})
  const known = new Map<string, LockInfo>()
  const snapshot = async (): Promise<LockInfo[]> => {
    const locks = target.key !== undefined ? [await source.inspect(target.key)].filter((l): l is LockInfo => l !== null) : (await source.list(target.prefix)).locks
    known.clear()
    for (const lock of locks) known.set(lock.key, lock)
    return locks
  }
  // The state after an interruption, read until etcd answers, then yielded: a member just back,
  // or one the client paused after failures (member-pause.ts), refused the read, and the error
  // ended the whole watch. Only an error that waiting cannot mend (refused credentials) still
  // ends it; false once aborted.
  async function* resync(): AsyncGenerator<WatchUpdate, boolean> {
    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) return false
      let locks: LockInfo[]
      try {
        locks = await snapshot()
      } catch (error) {
        if (!isTransient(error)) throw error
        await sleep(backoffDelay(attempt, 100, WATCH_RESYNC_BACKOFF_MAX_MS), signal)
        continue
      }
      yield {type: 'snapshot', locks, resync: true}
      return true
    }
  }
  try {
    yield {type: 'snapshot', locks: await snapshot(), resync: false}
    let disconnected = false
    for (;;) {
      const item = await queue.take()
      if (item === undefined) return
      if (item.kind === 'disconnected') {
        if (!disconnected) yield {type: 'disconnected', reason: 'the etcd watch stream was interrupted'}
        disconnected = true
        if (options.reconnect === false) return
        continue
      }
      if (item.kind === 'connected') {
        if (disconnected && !(yield* resync())) return
        disconnected = false
        continue
      }
      if (item.kind === 'ended') {
        // (This watch was made again already.)
        if (item.generation !== watcherGeneration) continue
        if (!disconnected) yield {type: 'disconnected', reason: `etcd ended the watch: ${item.reason}`}
        if (options.reconnect === false) return
        void watcher.cancel().catch(() => {})
        // From now, then a fresh snapshot: whatever happened in between is in the snapshot.
        const next = await watchAgain(watch, signal)
        if (!next) return
        watcher = next
        if (!(yield* resync())) return
        disconnected = false
        continue
      }
      const before = known.get(item.name) ?? null
      let after: LockInfo | null
      try {
        after = await source.inspect(item.name)
      } catch (error) {
        // The change happened but what it was cannot be read now: said as an interruption and
        // a fresh state once etcd answers, never passed over in silence (the lock's events
        // were lost, and `known` went stale).
        if (!isTransient(error)) throw error
        if (!disconnected) yield {type: 'disconnected', reason: `etcd did not answer a read: ${(error as Error).message}`}
        if (options.reconnect === false) return
        if (!(yield* resync())) return
        disconnected = false
        continue
      }
      if (after) known.set(item.name, after)
      else known.delete(item.name)
      for (const event of diffLocks(item.name, before, after)) yield {type: 'event', event}
    }
  } finally {
    offMoved?.()
    signal?.removeEventListener('abort', onAbort)
    void watcher.cancel().catch(() => {}) // not awaited: a hung member never answers it
  }
}

/**
 * A watch of `prefix`, and the generation of the client it was made on. If watches move to a
 * new client while it is being made, it is made again there: asked of the old client, it may
 * wait behind a cancelled watch for ever (the backend's renewWatchClient), and with it the whole
 * `watch`, which resyncs only once a watch is made. The old one, if it ever comes, is cancelled.
 */
async function createWatch(source: WatchSource, prefix: string): Promise<{created: Watcher; generation: number}> {
  for (;;) {
    const generation = source.watchClientGeneration?.() ?? 0
    let stopListening = () => {}
    const moved = new Promise<'moved'>((resolve) => {
      stopListening = source.onWatchClientMoved?.(() => resolve('moved')) ?? (() => {})
    })
    const creating = source.watchPrefix(prefix)
    try {
      const first = await Promise.race([creating, moved])
      if (first !== 'moved') return {created: first, generation}
    } finally {
      stopListening()
    }
    creating.then(
      (late) => void late.cancel().catch(() => {}),
      () => {},
    )
  }
}

/** A new watch, tried again with backoff while etcd cannot make one; null once aborted. */
async function watchAgain(watch: () => Promise<Watcher>, signal?: AbortSignal): Promise<Watcher | null> {
  for (let attempt = 0; !signal?.aborted; attempt++) {
    try {
      return await watch()
    } catch {
      await sleep(backoffDelay(attempt), signal)
    }
  }
  return null
}
