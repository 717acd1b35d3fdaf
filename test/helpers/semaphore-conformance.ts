import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {expect, it} from 'vitest'
import {suiteClients} from './conformance.js'
import {eventually, runCli, tempDir} from './processes.js'

/**
 * Semaphores and shared locks (docs/semantics.md, "Semaphores and shared locks"), written once
 * and run against every backend, through the CLI as users run it and through the library.
 */
export function semaphoreSuite(endpoint: () => string): void {
  const {client, key} = suiteClients(endpoint, 'sem')
  const env = () => ({LOCKCTL_ENDPOINTS: endpoint()})

  it('5 holds with --limit 2 all run, never more than 2 at once, each with its own fence', async () => {
    const k = key('limit2')
    const log = join(tempDir(), 'log')
    const job = (name: string) => ['sh', '-c', `echo "start ${name} $(date +%s%N) $LOCKCTL_FENCE" >> ${log}; sleep 0.4; echo "end ${name} $(date +%s%N)" >> ${log}`]
    const runs = ['A', 'B', 'C', 'D', 'E'].map((name) => runCli(['hold', k, '--limit', '2', '--lease', '10s', '--', ...job(name)], {env: env(), timeoutMs: 60_000}))
    const results = await Promise.all(runs)
    expect(
      results.map((r) => r.code),
      results.map((r) => r.stderr).join('\n'),
    ).toEqual([0, 0, 0, 0, 0])
    const lines = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '))
    // Replay in time order: how many ran at once at most.
    const points = lines.map(([what, name, at, fence]) => ({delta: what === 'start' ? 1 : -1, name, at: BigInt(at), fence}))
    points.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : a.delta - b.delta))
    let running = 0
    let most = 0
    for (const p of points) {
      running += p.delta
      most = Math.max(most, running)
    }
    expect(most).toBeLessThanOrEqual(2)
    expect(most).toBe(2) // they did run side by side
    const starts = points.filter((p) => p.delta === 1)
    expect(new Set(starts.map((p) => p.name)).size).toBe(5)
    expect(new Set(starts.map((p) => p.fence)).size).toBe(5)
  }, 90_000)

  it('shared holders hold together; an exclusive waiter waits for all of them, and a shared request after it waits behind it', async () => {
    const k = key('shared')
    const watcher = await client('watcher')
    const readers = await Promise.all(['R1', 'R2', 'R3'].map(async (name) => (await client(name)).createLock(k, {shared: true})))
    for (const r of readers) expect(await r.tryLock({leaseMs: 30_000})).toBe(true)
    const lock = await watcher.inspect(k)
    expect(lock?.holders?.map((h) => h.owner).sort()).toEqual(['R1', 'R2', 'R3'])
    expect(lock?.holders?.every((h) => h.shared)).toBe(true)

    const writer = (await client('W')).createLock(k)
    let writerHas = false
    const writing = writer.acquire({leaseMs: 30_000, waitMs: 30_000}).then(() => (writerHas = true))
    await eventually(async () => (await watcher.inspect(k))?.waiters === 1)
    // It would fit beside the readers, but the writer came first.
    const late = (await client('R4')).createLock(k, {shared: true})
    expect(await late.tryLock({leaseMs: 30_000})).toBe(false)
    let lateHas = false
    const lateReading = late.acquire({leaseMs: 30_000, waitMs: 30_000}).then(() => (lateHas = true))
    await eventually(async () => (await watcher.inspect(k))?.waiters === 2)

    // What the service decides is what it shows: after each answered unlock, who holds and who waits.
    await readers[0].unlock()
    await readers[1].unlock()
    const oneReaderLeft = await watcher.inspect(k)
    expect([oneReaderLeft?.holder?.owner, oneReaderLeft?.holders, oneReaderLeft?.waiters]).toEqual(['R3', undefined, 2])
    expect([writerHas, lateHas]).toEqual([false, false])
    await readers[2].unlock()
    await writing
    expect(writer.isHeldByCurrentClient()).toBe(true)
    const writing1 = await watcher.inspect(k)
    expect([writing1?.holder?.owner, writing1?.holders, writing1?.waiters]).toEqual(['W', undefined, 1])
    expect(lateHas).toBe(false)
    await writer.unlock()
    await lateReading
    expect(late.isHeldByCurrentClient()).toBe(true)
    await late.unlock()
  }, 60_000)

  it('a semaphore: each holder renews, checks and releases with its own token; a full one refuses, and status shows every holder', async () => {
    const k = key('tokens')
    const a = (await client('A')).createSemaphore(k, {limit: 2})
    const b = (await client('B')).createSemaphore(k, {limit: 2})
    const c = (await client('C')).createSemaphore(k, {limit: 2})
    expect(await a.tryLock({leaseMs: 30_000})).toBe(true)
    expect(await b.tryLock({leaseMs: 30_000})).toBe(true)
    expect(await c.tryLock({leaseMs: 30_000})).toBe(false)
    expect(a.fence).not.toBe(b.fence)
    // The refusal says the semaphore is full, not that one holder has "it".
    const full = await runCli(['lock', k, '--limit', '2'], {env: env()})
    expect(full.code).toBe(1)
    expect(full.stderr.trim()).toMatch(new RegExp(`^lockctl: "${k}" is full: all 2 slots are held \\(the oldest by A \\(fence \\d+, .* left\\)\\)$`))
    const status = JSON.parse((await runCli(['status', k, '--json'], {env: env()})).stdout)
    expect(status).toMatchObject({limit: 2, waiters: 0})
    expect(status.holders.map((h: {owner: string; mode: string}) => `${h.owner} ${h.mode}`)).toEqual(['A limit=2', 'B limit=2'])
    expect((await runCli(['status', k, '--token', a.token!], {env: env()})).code).toBe(0)
    expect((await runCli(['renew', k, '--token', b.token!], {env: env()})).code).toBe(0)
    expect((await runCli(['unlock', k, '--token', a.token!], {env: env()})).code).toBe(0)
    expect((await runCli(['status', k, '--token', a.token!], {env: env()})).code).toBe(5)
    expect(b.isHeldByCurrentClient()).toBe(true)
    expect(await c.tryLock({leaseMs: 30_000})).toBe(true)
    await Promise.all([b.unlock(), c.unlock()])
  }, 60_000)

  it('another --limit for a name in use is refused in one line (exit 2), and works once the name is free', async () => {
    const k = key('mismatch')
    const held = await runCli(['lock', k, '--limit', '3'], {env: env()})
    expect(held.code).toBe(0)
    for (const args of [['--limit', '2'], [], ['--shared']]) {
      const refused = await runCli(['lock', k, ...args], {env: env()})
      expect(refused.code, refused.stderr).toBe(2)
      expect(refused.stderr.trim().split('\n')).toHaveLength(1)
      expect(refused.stderr).toMatch(/semaphore of 3/)
    }
    expect((await runCli(['unlock', k, '--token', held.stdout.trim()], {env: env()})).code).toBe(0)
    const plain = await runCli(['lock', k], {env: env()})
    expect(plain.code, plain.stderr).toBe(0)
    const asSemaphore = await runCli(['lock', k, '--limit', '2'], {env: env()})
    expect(asSemaphore.code).toBe(2)
    expect(asSemaphore.stderr).toMatch(/is a lock/)
    const bad = await runCli(['lock', k, '--limit', '2', '--shared'], {env: env()})
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/no shared mode/)
  }, 60_000)

  it('unlock --force without a token frees every holder of a semaphore; the next waiters get in', async () => {
    const k = key('force')
    const admin = await client('admin')
    const lost: string[] = []
    const locks = await Promise.all(['A', 'B'].map(async (name) => (await client(name)).createSemaphore(k, {limit: 2, onLost: () => lost.push(name)})))
    for (const l of locks) expect(await l.tryLock({leaseMs: 30_000})).toBe(true)
    const waiter = (await client('W')).createSemaphore(k, {limit: 2})
    const waiting = waiter.acquire({leaseMs: 30_000, waitMs: 30_000})
    await eventually(async () => (await admin.inspect(k))?.waiters === 1)
    const forced = await runCli(['unlock', k, '--force', '--yes'], {env: env()})
    expect(forced.code, forced.stderr).toBe(0)
    await waiting
    // Both holders are told at once (not at their next renewal).
    await eventually(() => lost.length === 2)
    expect(locks.every((l) => !l.isHeldByCurrentClient())).toBe(true)
    const after = await admin.inspect(k)
    expect(after?.holder?.owner).toBe('W')
    expect(after?.waiters).toBe(0)
    await waiter.unlock()
  }, 60_000)

  it('AutoRenewalLock with a limit keeps its place across renewals; watch names each holder', async () => {
    const k = key('auto')
    const watching = await client('watch')
    const events: string[] = []
    const stop = new AbortController()
    let subscribed = false
    const watched = (async () => {
      for await (const update of watching.watch({key: k}, {signal: stop.signal})) {
        if (update.type === 'snapshot') subscribed = true
        if (update.type === 'event' && (update.event.type === 'acquired' || update.event.type === 'released')) events.push(`${update.event.type} ${update.event.owner}`)
      }
    })()
    await eventually(() => subscribed)
    const autos = await Promise.all(['A', 'B'].map(async (name) => (await client(name)).createAutoRenewalLock(k, {leaseMs: 3000, limit: 2})))
    await Promise.all(autos.map((a) => a.ready))
    const fences = autos.map((a) => a.fence).sort()
    // Past one whole lease: only renewals keep them, on the service as in the lock objects.
    await new Promise((resolve) => setTimeout(resolve, 3500))
    expect(autos.every((a) => a.isHeld())).toBe(true)
    const held = await watching.inspect(k)
    expect(held?.holders?.map((h) => h.fence).sort()).toEqual(fences)
    await Promise.all(autos.map((a) => a.close()))
    await eventually(() => events.filter((e) => e.startsWith('released')).length === 2)
    stop.abort()
    await watched.catch(() => {})
    expect(events.filter((e) => e.startsWith('acquired')).sort()).toEqual(['acquired A', 'acquired B'])
  }, 60_000)
}
