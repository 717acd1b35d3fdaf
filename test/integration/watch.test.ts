import {spawnSync} from 'node:child_process'
import {once} from 'node:events'
import {createConnection, createServer, type AddressInfo, type Socket} from 'node:net'
import {describe, expect, it} from 'vitest'
import {type WatchUpdate} from '../../src/client/index.js'
import {clientFactory} from '../helpers/clients.js'
import {describeEtcd, startEtcd} from '../helpers/etcd.js'
import {eventually, startLockd, tempDir} from '../helpers/processes.js'
import {helloFrame, rawConnection} from '../helpers/wire.js'

const client = clientFactory()

/** Collect what a watch yields, in the background. */
function collect(stream: AsyncIterable<WatchUpdate>): {updates: WatchUpdate[]; done: Promise<void>} {
  const updates: WatchUpdate[] = []
  const done = (async () => {
    for await (const update of stream) updates.push(update)
  })()
  return {updates, done}
}

/**
 * A loopback port that forwards to `port` while open, and refuses connections while shut (it
 * does not listen). Counts the forwarded connections that have ended.
 */
async function tcpGate(port: number) {
  let closed = 0
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    const upstream = createConnection({host: '127.0.0.1', port})
    sockets.add(socket).add(upstream)
    let ended = false
    const end = () => {
      if (!ended) closed++
      ended = true
      socket.destroy()
      upstream.destroy()
    }
    for (const side of [socket, upstream]) side.on('close', end).on('error', end)
    socket.pipe(upstream).pipe(socket)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const gatePort = (server.address() as AddressInfo).port
  return {
    port: gatePort,
    closed: () => closed,
    async open() {
      server.listen(gatePort, '127.0.0.1')
      await once(server, 'listening')
    },
    async shut() {
      if (!server.listening) return
      const stopped = once(server, 'close')
      server.close()
      for (const socket of sockets) socket.destroy()
      sockets.clear()
      await stopped
    },
  }
}

const brief = (u: WatchUpdate) =>
  u.type === 'event'
    ? `${u.event.type} ${u.event.key}${u.event.owner ? ` ${u.event.owner}` : ''} w=${u.event.waiters}`
    : u.type === 'snapshot'
      ? `snapshot(${u.locks.map((l) => l.key).join(',')})${u.resync ? ' resync' : ''}`
      : u.type

describe('watching locks on lockd', () => {
  it('a wait that runs out shows as dequeued with reason timeout; one given up, as cancelled', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    const watcher = await client(lockd.endpoint, 'W')
    await a.createLock('t').acquire({leaseMs: 30_000})
    const controller = new AbortController()
    const {updates, done} = collect(watcher.watch({key: 't'}, {signal: controller.signal}))
    await eventually(() => updates.length === 1)
    await b
      .createLock('t')
      .acquire({waitMs: 300})
      .catch(() => null)
    const giveUp = new AbortController()
    const aborted = b
      .createLock('t')
      .acquire({waitMs: 30_000, signal: giveUp.signal})
      .catch(() => null)
    await eventually(async () => (await a.inspect('t'))?.waiters === 1)
    giveUp.abort()
    await aborted
    const reasons = () => updates.flatMap((u) => (u.type === 'event' && u.event.type === 'dequeued' ? [u.event.reason] : []))
    await eventually(() => reasons().length === 2)
    expect(reasons()).toEqual(['timeout', 'cancelled'])
    controller.abort()
    await done
    await lockd.stop()
  })

  it('yields the current state, then events in order for a scripted sequence', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    const watcher = await client(lockd.endpoint, 'W')
    await a.createLock('w').acquire()
    const controller = new AbortController()
    const {updates, done} = collect(watcher.watch({key: 'w'}, {signal: controller.signal}))
    await eventually(() => updates.length === 1)
    const waiting = b.createLock('w').acquire({waitMs: 5000})
    await eventually(async () => (await a.inspect('w'))?.waiters === 1)
    await a.release('w', undefined, {force: true})
    const grant = await waiting
    await b.release('w', grant.token)
    const short = b.createLock('w')
    await short.acquire({leaseMs: 1000})
    const timedOut = a
      .createLock('w')
      .acquire({waitMs: 200})
      .catch(() => null)
    await timedOut
    await eventually(() => updates.some((u) => u.type === 'event' && u.event.type === 'expired'), 5000)
    controller.abort()
    await done
    expect(updates.map(brief)).toEqual([
      'snapshot(w)',
      'queued w w=1',
      'released w A w=0',
      'acquired w B w=0',
      'released w B w=0',
      'acquired w B w=0',
      'queued w w=1',
      'dequeued w w=0',
      'expired w B w=0',
    ])
    const forced = updates.find((u) => u.type === 'event' && u.event.type === 'released')
    expect(forced).toMatchObject({event: {force: true}})
    await lockd.stop()
  })

  it('a prefix watch sees only keys under the prefix', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const watcher = await client(lockd.endpoint, 'W')
    await a.createLock('jobs/old').acquire()
    const controller = new AbortController()
    const {updates, done} = collect(watcher.watch({prefix: 'jobs/'}, {signal: controller.signal}))
    await eventually(() => updates.length === 1)
    for (const key of ['jobs/1', 'other/1', 'jobsx', 'jobs/2']) await a.createLock(key).acquire()
    await eventually(() => updates.length === 3)
    controller.abort()
    await done
    expect(updates.map(brief)).toEqual(['snapshot(jobs/old)', 'acquired jobs/1 A w=0', 'acquired jobs/2 A w=0'])
    await lockd.stop()
  })

  it('after a lockd restart: says it was disconnected, then a fresh snapshot marked resync', async () => {
    const dataDir = tempDir()
    let lockd = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    const watcher = await client(lockd.endpoint, 'W')
    await a.createLock('r/1').acquire({leaseMs: 60_000})
    const controller = new AbortController()
    const {updates, done} = collect(watcher.watch({prefix: 'r/'}, {signal: controller.signal}))
    await eventually(() => updates.length === 1)
    lockd.child.kill('SIGKILL')
    await lockd.exited
    await eventually(() => updates.some((u) => u.type === 'disconnected'))
    lockd = await startLockd({dataDir, port: lockd.port})
    await eventually(() => updates.some((u) => u.type === 'snapshot' && u.resync), 15_000)
    await a.createLock('r/2').acquire()
    await eventually(() => updates.some((u) => u.type === 'event' && u.event.key === 'r/2'))
    controller.abort()
    await done
    expect(updates.map(brief)).toEqual(['snapshot(r/1)', 'disconnected', 'snapshot(r/1) resync', 'acquired r/2 A w=0'])
    await lockd.stop()
  })

  it('after a lockd restart at its connection limit: the watch keeps trying until one is free (the refusal ended it)', {timeout: 40_000}, async () => {
    const dataDir = tempDir()
    let lockd = await startLockd({dataDir, args: ['--max-connections', '1']})
    // The watch reaches lockd through a gate, shut while another connection takes lockd's one:
    // it cannot come back first, and each of its tries is seen.
    const gate = await tcpGate(lockd.port)
    const watcher = await client(`lockd://127.0.0.1:${gate.port}`, 'W')
    const controller = new AbortController()
    const {updates, done} = collect(watcher.watch({prefix: 'm/'}, {signal: controller.signal}))
    let ended: unknown = null
    void done.catch((error: unknown) => (ended = error))
    await eventually(() => updates.length === 1)
    await gate.shut()
    lockd.child.kill('SIGKILL')
    await lockd.exited
    await eventually(() => updates.some((u) => u.type === 'disconnected'))
    lockd = await startLockd({dataDir, port: lockd.port, args: ['--max-connections', '1']})
    // A greeted connection: lockd never closes it to make room (a silent one it would, after 1 s,
    // and the watch got in before it had been refused twice on a loaded machine).
    const other = await rawConnection(lockd.port)
    other.socket.write(helloFrame())
    await eventually(() => other.messages.some((m) => m.t === 'hello'))
    const before = gate.closed()
    await gate.open()
    // Refused (lockd is at its limit), and tried again: before, the refusal ended the watch.
    await eventually(() => gate.closed() >= before + 2 || ended !== null, 20_000)
    expect(ended).toBe(null)
    other.socket.destroy()
    await eventually(() => updates.some((u) => u.type === 'snapshot' && u.resync), 15_000)
    controller.abort()
    await done
    expect(updates.map(brief)).toEqual(['snapshot()', 'disconnected', 'snapshot() resync'])
    await gate.shut()
    await lockd.stop()
  })

  it('an unreachable service at the start is an error', async () => {
    const c = await client('lockd://127.0.0.1:1', 'W')
    const iterator = c.watch({key: 'k'})[Symbol.asyncIterator]()
    await expect(iterator.next()).rejects.toMatchObject({code: 'UNREACHABLE'})
  })
})

describeEtcd('watching locks on etcd', () => {
  it('a watch that resumes at a compacted revision starts again (with a resync) instead of ending in silence', async () => {
    const etcd = await startEtcd(3)
    const [watched, other] = etcd.members
    const watcher = await client(`etcd://127.0.0.1:${watched.clientPort}`, 'W')
    const a = await client(`etcd://127.0.0.1:${other.clientPort}`, 'A')
    const controller = new AbortController()
    const {updates, done} = collect(watcher.watch({prefix: 'c/'}, {signal: controller.signal}))
    await eventually(() => updates.length === 1)
    // The watch's member goes; the history it would resume from is changed and compacted.
    await etcd.kill(watched)
    await eventually(() => updates.some((u) => u.type === 'disconnected'))
    await a.createLock('c/1').acquire({leaseMs: 60_000})
    await a.createLock('c/2').acquire({leaseMs: 60_000})
    const status = spawnSync('etcdctl', ['--endpoints', `127.0.0.1:${other.clientPort}`, 'endpoint', 'status', '-w', 'json'], {encoding: 'utf8'})
    const revision = JSON.parse(status.stdout)[0].Status.header.revision as number
    expect(spawnSync('etcdctl', ['--endpoints', `127.0.0.1:${other.clientPort}`, 'compact', String(revision)], {encoding: 'utf8'}).status).toBe(0)
    await etcd.restart(watched)
    // etcd cancels the watch that resumes at the compacted revision: said, and a new one made.
    const ended = await eventually(() => updates.findIndex((u) => u.type === 'disconnected' && /^etcd ended the watch: the history it resumed from was compacted$/.test(u.reason)) + 1, 20_000)
    await eventually(() => updates.slice(ended).some((u) => u.type === 'snapshot' && u.resync && u.locks.length === 2))
    // Still watching: a change after all that is seen (the watch had ended, with nothing said).
    await a.createLock('c/3').acquire({leaseMs: 60_000})
    await eventually(() => updates.some((u) => u.type === 'event' && u.event.type === 'acquired' && u.event.key === 'c/3'), 15_000)
    controller.abort()
    await done
  })

  it('a holder whose key watch resumes at a compacted revision still learns of a forced release at once', async () => {
    const etcd = await startEtcd(3)
    const [watched, other] = etcd.members
    const holderClient = await client(`etcd://127.0.0.1:${watched.clientPort}`, 'H')
    const admin = await client(`etcd://127.0.0.1:${other.clientPort}`, 'A')
    const lost: string[] = []
    // A renewal would come after 30 s: only the key's watch can tell it sooner.
    const lock = holderClient.createAutoRenewalLock('g/1', {leaseMs: 60_000, onLost: (why) => lost.push(why.code)})
    await lock.ready
    await etcd.kill(watched)
    // History moves on and is compacted past the key's creation while the watch is away.
    for (let i = 0; i < 3; i++) await admin.createLock(`g/other-${i}`).acquire({leaseMs: 60_000})
    const status = spawnSync('etcdctl', ['--endpoints', `127.0.0.1:${other.clientPort}`, 'endpoint', 'status', '-w', 'json'], {encoding: 'utf8'})
    const revision = JSON.parse(status.stdout)[0].Status.header.revision as number
    expect(spawnSync('etcdctl', ['--endpoints', `127.0.0.1:${other.clientPort}`, 'compact', String(revision)], {encoding: 'utf8'}).status).toBe(0)
    await etcd.restart(watched)
    // The member answers again. Its watch of the key is cancelled for the compaction whether it
    // comes back before the release or after it; either way the holder must learn of it at once.
    await eventually(async () => (await holderClient.inspect('g/1')) !== null, 15_000)
    await admin.release('g/1', undefined, {force: true})
    await eventually(() => lost.length === 1, 10_000)
    expect(lost).toEqual(['LEASE_LOST'])
    await lock.close()

    // A grant after a wait during which the history was compacted past the waiter's key: its
    // watch cannot start from the key's creation, so it starts from now.
    const blocker = admin.createLock('g/2')
    await blocker.acquire({leaseMs: 60_000})
    const lostAfterWait: string[] = []
    const waiter = holderClient.createAutoRenewalLock('g/2', {leaseMs: 60_000, onLost: (why) => lostAfterWait.push(why.code)})
    await eventually(async () => (await admin.inspect('g/2'))?.waiters === 1)
    for (let i = 3; i < 6; i++) await admin.createLock(`g/other-${i}`).acquire({leaseMs: 60_000})
    const later = JSON.parse(spawnSync('etcdctl', ['--endpoints', `127.0.0.1:${other.clientPort}`, 'endpoint', 'status', '-w', 'json'], {encoding: 'utf8'}).stdout)[0].Status.header.revision as number
    expect(spawnSync('etcdctl', ['--endpoints', `127.0.0.1:${other.clientPort}`, 'compact', String(later)], {encoding: 'utf8'}).status).toBe(0)
    await blocker.unlock()
    await waiter.ready
    await admin.release('g/2', undefined, {force: true})
    await eventually(() => lostAfterWait.length === 1, 10_000)
    await waiter.close()
  })
})
