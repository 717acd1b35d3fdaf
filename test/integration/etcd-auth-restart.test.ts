import {spawnSync} from 'node:child_process'
import {beforeAll, expect, it} from 'vitest'
import {connect, type WatchUpdate} from '../../src/client/index.js'
import {describeEtcd, startEtcd, type EtcdCluster} from '../helpers/etcd.js'
import {eventually, runCli} from '../helpers/processes.js'

/**
 * An etcd with users restarted under waiters and watches. etcd's default (simple) tokens live in
 * each member's memory: after the restart every token is unknown. etcd3 logs in again for a call,
 * but it opened its watch stream again with the old token; etcd cancelled the watch, and etcd3
 * then created no other watch on that client. A waiter never saw its turn come (it timed out
 * while holding the lock), and `watch` stopped for good.
 */
describeEtcd('etcd with authentication, restarted under a waiter, a watch and a holder', () => {
  let etcd: EtcdCluster
  let endpoint: string
  const credentials = {user: 'locker', password: 'locker-secret'}
  beforeAll(async () => {
    etcd = await startEtcd(1)
    const url = `http://127.0.0.1:${etcd.members[0].clientPort}`
    const etcdctl = (...args: string[]) => {
      const result = spawnSync('etcdctl', ['--endpoints', url, ...args], {encoding: 'utf8', input: ''})
      if (result.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${result.stderr}`)
    }
    etcdctl('user', 'add', 'root:root-secret')
    etcdctl('user', 'add', `${credentials.user}:${credentials.password}`)
    etcdctl('role', 'add', 'locks')
    etcdctl('role', 'grant-permission', 'locks', '--prefix=true', 'readwrite', 'auth/')
    etcdctl('user', 'grant-role', credentials.user, 'locks')
    etcdctl('auth', 'enable')
    endpoint = etcd.endpoint
  })

  // Three times: whether the old stream's token is refused is a race (without the fix, about half
  // the restarts showed the bug, by hand and here).
  it.each([1, 2, 3])('restart %i: the waiter gets its turn as soon as the lock is free, the watch goes on, and the holder hears of a forced release at once', {timeout: 60_000}, async (round) => {
    const env = {LOCKCTL_ENDPOINTS: endpoint, LOCKCTL_ETCD_USER: credentials.user, LOCKCTL_PASSWORD: credentials.password}
    const key = `auth/k${round}`
    // Two locks, each with a waiter on one client: a second watch of a client waited behind the
    // cancelled one for ever.
    const keys = [key, `${key}-b`]
    const tokens: string[] = []
    for (const each of keys) {
      const held = await runCli(['lock', each, '--lease', '30s', '--json'], {env})
      expect(held.code, held.stderr).toBe(0)
      tokens.push((JSON.parse(held.stdout) as {token: string}).token)
    }

    const waiting = await connect({endpoints: endpoint, credentials, owner: 'waiter', requestTimeoutMs: 3000})
    let queued = 0
    const turns = keys.map((each) => waiting.createLock(each).acquire({leaseMs: 30_000, waitMs: 45_000, onQueued: () => queued++}))
    for (const turn of turns) turn.catch(() => {})
    await eventually(() => queued === keys.length)

    // The same client watches, its watch made after the waits': when the stream opens again, a
    // wait's watch is cancelled first, and the watch waited behind it for ever too.
    const updates: WatchUpdate[] = []
    const stopWatch = new AbortController()
    const watched = (async () => {
      for await (const update of waiting.watch({prefix: 'auth/'}, {signal: stopWatch.signal})) updates.push(update)
    })()
    await eventually(() => updates.some((u) => u.type === 'snapshot'))

    // And it holds a lock, listening for its end: a forced release must be heard of at once
    // (its own key's watch), not at the renewal 30 s on.
    const losses: string[] = []
    const heldKey = `${key}-held`
    const holding = waiting.createAutoRenewalLock(heldKey, {leaseMs: 60_000, owner: 'waiter', onLost: (why) => losses.push(why.message)})
    await holding.ready

    await etcd.restart(etcd.members[0])
    // The holders let go once etcd is back; the waiters must hear of it from their watches.
    for (const [i, each] of keys.entries()) await eventually(async () => (await runCli(['unlock', each, '--token', tokens[i]], {env})).code === 0, 20_000)
    for (const turn of turns) expect((await turn).owner).toBe('waiter')
    // The watch made a new stream too: the grant is told, after a resync.
    await eventually(() => updates.some((u) => u.type === 'event' && u.event.type === 'acquired' && u.event.key === key && u.event.owner === 'waiter'), 20_000)
    expect(updates.some((u) => u.type === 'snapshot' && u.resync)).toBe(true)
    const forced = await runCli(['unlock', heldKey, '--force', '--yes'], {env})
    expect(forced.code, forced.stderr).toBe(0)
    await eventually(() => losses.length === 1, 10_000)
    expect(losses[0]).toMatch(/its key was deleted/)
    await holding.close()

    stopWatch.abort()
    await watched
    await waiting.close()
  })
})
