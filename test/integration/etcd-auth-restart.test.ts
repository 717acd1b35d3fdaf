import {spawnSync} from 'node:child_process'
import {generateKeyPairSync} from 'node:crypto'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {beforeAll, expect, it} from 'vitest'
import {connect, type WatchUpdate} from '../../src/client/index.js'
import {describeEtcd, startEtcd, type EtcdCluster} from '../helpers/etcd.js'
import {eventually, runCli, tempDir} from '../helpers/processes.js'

/** Users on: `credentials` may read and write under `prefix`. */
function enableAuth(etcd: EtcdCluster, credentials: {user: string; password: string}, prefix: string): void {
  const url = `http://127.0.0.1:${etcd.members[0].clientPort}`
  const etcdctl = (...args: string[]) => {
    const result = spawnSync('etcdctl', ['--endpoints', url, ...args], {encoding: 'utf8', input: ''})
    if (result.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${result.stderr}`)
  }
  etcdctl('user', 'add', 'root:root-secret')
  etcdctl('user', 'add', `${credentials.user}:${credentials.password}`)
  etcdctl('role', 'add', 'locks')
  etcdctl('role', 'grant-permission', 'locks', '--prefix=true', 'readwrite', prefix)
  etcdctl('user', 'grant-role', credentials.user, 'locks')
  etcdctl('auth', 'enable')
}

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
    enableAuth(etcd, credentials, 'auth/')
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
    // The watch made a new stream too: the grant is told, as an event or, when the new stream
    // came after the grant, in the state the watch resynced with.
    const toldGranted = (u: WatchUpdate) =>
      (u.type === 'event' && u.event.type === 'acquired' && u.event.key === key && u.event.owner === 'waiter') ||
      (u.type === 'snapshot' && u.resync && u.locks.some((l) => l.key === key && l.holder?.owner === 'waiter'))
    await eventually(() => updates.some(toldGranted), 20_000)
    expect(updates.some((u) => u.type === 'snapshot' && u.resync)).toBe(true)
    const forced = await runCli(['unlock', heldKey, '--force', '--yes'], {env})
    expect(forced.code, forced.stderr).toBe(0)
    await eventually(() => losses.length === 1, 10_000)
    expect(losses[0]).toMatch(/its key was deleted/)
    // And the watch goes on past its resync: the forced release is told.
    await eventually(() => updates.some((u) => u.type === 'event' && u.event.type === 'released' && u.event.key === heldKey), 10_000)
    await holding.close()

    stopWatch.abort()
    await watched
    await waiting.close()
  })
})

/**
 * A client idle past its auth token's life across an outage. Three failed calls paused the
 * member; the first call after the pause went through alone, as etcd3's circuit breaker's test,
 * and etcd refused its forgotten token. etcd3 retried it, logged in again, through the same
 * breaker, which made the retry wait for the test: the call it was part of. That call never
 * ended, and every call and stream of the client waited behind it, for ever: a waiter never got
 * its turn, and its wait's deadline passed unheeded (the CI run that failed). Tokens are
 * forgotten after --auth-token-ttl of idleness (5 minutes by default), or at a restart.
 */
describeEtcd('etcd with authentication, a client idle past its token across an outage', () => {
  let etcd: EtcdCluster
  const credentials = {user: 'locker', password: 'locker-secret'}
  beforeAll(async () => {
    etcd = await startEtcd(1, {args: ['--auth-token-ttl', '2']})
    enableAuth(etcd, credentials, 'ttl/')
  })

  it('answers again once etcd is back: a waiter gets its turn, and a holder renews and releases', {timeout: 60_000}, async () => {
    const client = await connect({endpoints: etcd.endpoint, credentials, owner: 'idle', requestTimeoutMs: 2000})
    try {
      const holding = client.createLock('ttl/held')
      await holding.acquire({leaseMs: 30_000})
      const member = etcd.members[0]
      await etcd.kill(member)
      // Down: three failures in a row pause the member.
      for (let i = 0; i < 3; i++) await expect(client.inspect('ttl/held')).rejects.toMatchObject({code: 'UNREACHABLE'})
      await etcd.restart(member)
      // Idle past the token's life (and the member's pause).
      await new Promise((resolve) => setTimeout(resolve, 3500))

      const noAnswer = (what: string) => new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in 15 s`)), 15_000).unref())
      const info = await Promise.race([client.inspect('ttl/held'), noAnswer('inspect')])
      expect(info?.holder?.owner).toBe('idle')
      // A waiter of this client gets its turn when the holder lets go.
      let queued = false
      const waiting = client.createLock('ttl/held').acquire({leaseMs: 30_000, waitMs: 20_000, onQueued: () => (queued = true)})
      await eventually(() => queued)
      await Promise.race([holding.updateLease(), noAnswer('renew')])
      await Promise.race([holding.unlock(), noAnswer('release')])
      const turn = await Promise.race([waiting, noAnswer('the waiter')])
      expect(turn.owner).toBe('idle')
    } finally {
      await client.close()
    }
  })
})

/**
 * With JWT tokens (what clusters of several members use), etcd refuses every token issued
 * before a change of its users or roles ("revision of auth store is old"), and etcd3 logs in
 * again only for "invalid auth token": from the first `etcdctl user add` on, every call of a
 * long-lived client failed. A holder's renewals failed until its lease ran out.
 */
describeEtcd('etcd with JWT tokens, its users changed under a holder, a waiter and a watch', () => {
  let etcd: EtcdCluster
  const credentials = {user: 'locker', password: 'locker-secret'}
  beforeAll(async () => {
    const dir = tempDir('lockctl-jwt-')
    const {publicKey, privateKey} = generateKeyPairSync('rsa', {modulusLength: 2048, publicKeyEncoding: {type: 'spki', format: 'pem'}, privateKeyEncoding: {type: 'pkcs8', format: 'pem'}})
    writeFileSync(join(dir, 'jwt.pub'), publicKey)
    writeFileSync(join(dir, 'jwt.key'), privateKey)
    etcd = await startEtcd(1, {args: ['--auth-token', `jwt,pub-key=${join(dir, 'jwt.pub')},priv-key=${join(dir, 'jwt.key')},sign-method=RS256,ttl=10m`]})
    enableAuth(etcd, credentials, 'jwt/')
  })

  it('the holder keeps renewing, the waiter gets its turn, and the watch goes on', {timeout: 60_000}, async () => {
    const client = await connect({endpoints: etcd.endpoint, credentials, owner: 'jwt', requestTimeoutMs: 2000})
    try {
      const losses: string[] = []
      const retries: string[] = []
      const holding = client.createAutoRenewalLock('jwt/held', {leaseMs: 3000, onLost: (why) => losses.push(why.message), onRetry: (error) => retries.push(error.message)})
      await holding.ready
      let queued = false
      const waiting = client.createLock('jwt/held').acquire({leaseMs: 30_000, waitMs: 30_000, onQueued: () => (queued = true)})
      await eventually(() => queued)
      const updates: WatchUpdate[] = []
      const stopWatch = new AbortController()
      const watched = (async () => {
        for await (const update of client.watch({prefix: 'jwt/'}, {signal: stopWatch.signal})) updates.push(update)
      })()
      await eventually(() => updates.some((u) => u.type === 'snapshot'))

      const added = spawnSync('etcdctl', ['--endpoints', `http://127.0.0.1:${etcd.members[0].clientPort}`, '--user', 'root:root-secret', 'user', 'add', 'another:another-secret'], {encoding: 'utf8'})
      expect(added.status, added.stderr).toBe(0)
      // Past the lease twice over (renewals every 1.5 s): not one renewal failed.
      await new Promise((resolve) => setTimeout(resolve, 6500))
      expect(retries).toEqual([])
      expect(losses).toEqual([])
      expect((await client.inspect('jwt/held'))?.holder?.owner).toBe('jwt')

      await holding.close()
      expect((await waiting).owner).toBe('jwt')
      await eventually(() => updates.some((u) => u.type === 'event' && u.event.type === 'acquired' && u.event.key === 'jwt/held'), 10_000)
      stopWatch.abort()
      await watched
    } finally {
      await client.close()
    }
  })
})
