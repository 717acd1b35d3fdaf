import {appendFileSync, readdirSync, readFileSync, unlinkSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {connect, type LockError} from '../../src/client/index.js'
import {createCodec, encodeFrame} from '../../src/protocol/framing.js'
import {LockServer} from '../../src/server/lockd.js'
import {clientFactory} from '../helpers/clients.js'
import {eventually, pauseProcess, runCli, startLockd, tempDir, type LockdProcess} from '../helpers/processes.js'
import {helloFrame, rawConnection} from '../helpers/wire.js'

const client = clientFactory()

describe('lockd over TCP, between connections', () => {
  it('contention: a second owner is refused, then waits and gets the lock with a higher fence', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    const lockA = a.createLock('deploy')
    const lockB = b.createLock('deploy')
    const grantA = await lockA.acquire({leaseMs: 10_000})
    expect(lockA.isHeldByCurrentClient()).toBe(true)
    expect(await lockB.tryLock({waitMs: 0})).toBe(false)

    const waiting = lockB.acquire({leaseMs: 10_000, waitMs: 5000})
    await eventually(async () => (await a.inspect('deploy'))?.waiters === 1)
    await lockA.unlock()
    const grantB = await waiting
    expect(grantB.owner).toBe('B')
    expect(grantB.fence).toBeGreaterThan(grantA.fence)
    expect(lockB.isHeldByCurrentClient()).toBe(true)
    expect(lockA.isHeldByCurrentClient()).toBe(false)
    await lockd.stop()
  })

  it('a dropped connection leaves the queue; the next waiter gets the lock', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await connect({endpoints: lockd.endpoint, owner: 'B'})
    const c = await client(lockd.endpoint, 'C')
    const lockA = a.createLock('k')
    await lockA.acquire()
    const waitB = b
      .createLock('k')
      .acquire({waitMs: 60_000})
      .catch((e: Error) => e)
    await eventually(async () => (await a.inspect('k'))?.waiters === 1)
    const waitC = c.createLock('k').acquire({waitMs: 60_000})
    await eventually(async () => (await a.inspect('k'))?.waiters === 2)
    await b.close()
    expect(await waitB).toMatchObject({code: expect.stringMatching(/UNREACHABLE|CLOSED/)})
    await eventually(async () => (await a.inspect('k'))?.waiters === 1)
    await lockA.unlock()
    expect((await waitC).owner).toBe('C')
    await lockd.stop()
  })

  it('a wait that runs out leaves the queue and reports the holder', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    await a.createLock('k').acquire()
    const error = await b
      .createLock('k')
      .acquire({waitMs: 300})
      .catch((e) => e)
    expect(error).toMatchObject({code: 'WAIT_TIMEOUT', holder: {owner: 'A'}})
    expect((await a.inspect('k'))?.waiters).toBe(0)
    await lockd.stop()
  })

  it('a grant racing the wait timeout never leaves the lock with an owner that gave up', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    const outcomes: boolean[] = []
    for (let round = 0; round < 25; round++) {
      const key = `race-${round}`
      const lockA = a.createLock(key)
      await lockA.acquire()
      const lockB = b.createLock(key)
      const wait = 40
      // Release at about the moment B gives up: some rounds B gets it, some it does not. Round
      // 0 releases well inside the wait and round 1 well after it, so both outcomes occur.
      const releaseAfter = round === 0 ? 5 : round === 1 ? wait + 300 : wait - 3 + (round % 7)
      const release = new Promise((r) => setTimeout(r, releaseAfter)).then(() => lockA.unlock())
      const got = await lockB.tryLock({waitMs: wait})
      await release
      outcomes.push(got)
      if (got) {
        expect((await a.inspect(key))?.holder?.owner).toBe('B')
        await lockB.unlock()
      }
      // Whoever gave up holds nothing: the key ends up free.
      await eventually(async () => (await a.inspect(key)) === null, 3000)
    }
    expect(outcomes.slice(0, 2)).toEqual([true, false])
    await lockd.stop()
  })

  it('a renewal answered "not the holder" ends the grant locally at once', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const lock = a.createLock('k')
    await lock.acquire({leaseMs: 30_000})
    await a.release('k', undefined, {force: true})
    expect(lock.isHeldByCurrentClient()).toBe(true) // it cannot know yet
    await expect(lock.updateLease()).rejects.toMatchObject({code: 'NOT_HOLDER'})
    expect(lock.isHeldByCurrentClient()).toBe(false)
    await lockd.stop()
  })

  it('one operation at a time per lock object', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    await a.createLock('k').acquire()
    const lock = b.createLock('k')
    const first = lock.tryLock({waitMs: 500})
    await expect(lock.tryLock()).rejects.toMatchObject({code: 'BUSY'})
    expect(await first).toBe(false)
    await lockd.stop()
  })
})

describe('lockd crash and recovery', () => {
  it('kill -9 while locks are held and waited on: old tokens still hold, nobody else gets in, fences keep increasing', async () => {
    const dataDir = tempDir()
    let lockd: LockdProcess = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    const held = a.createLock('held')
    const grant = await held.acquire({leaseMs: 3000})
    const other = await a.createLock('other').acquire({leaseMs: 60_000})
    const waiting = b
      .createLock('held')
      .acquire({waitMs: 60_000})
      .catch((e) => e)
    await eventually(async () => (await a.inspect('held'))?.waiters === 1)

    lockd.child.kill('SIGKILL')
    await lockd.exited
    expect(await waiting).toMatchObject({code: 'UNREACHABLE'})
    lockd = await startLockd({dataDir, port: lockd.port})

    const c = await client(lockd.endpoint, 'C')
    // The old grants survived the crash with their tokens.
    expect((await c.check('held', grant.token)).fence).toBe(grant.fence)
    expect((await c.check('other', other.token)).fence).toBe(other.fence)
    // Nobody else gets in while the old holder may still believe it holds the lock...
    expect(await c.createLock('held').tryLock({waitMs: 0})).toBe(false)
    // ...and the whole lease counts again from the restart, then the lock is free.
    const later = c.createLock('held')
    const next = await later.acquire({waitMs: 10_000})
    expect(next.fence).toBeGreaterThan(Math.max(grant.fence, other.fence))
    // The old holder's token is dead now.
    await expect(c.renew('held', grant.token)).rejects.toMatchObject({code: 'NOT_HOLDER'})
    await lockd.stop()
  })

  it('kill -9 with 2 semaphore holders and 2 shared holders: all 4 still hold after the restart, with their modes; nobody else gets in', async () => {
    const dataDir = tempDir()
    let lockd: LockdProcess = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    const semaphore = [await a.createSemaphore('backups', {limit: 2}).acquire({leaseMs: 60_000}), await b.createSemaphore('backups', {limit: 2}).acquire({leaseMs: 60_000})]
    const shared = [await a.createLock('report', {shared: true}).acquire({leaseMs: 60_000}), await b.createLock('report', {shared: true}).acquire({leaseMs: 60_000})]

    lockd.child.kill('SIGKILL')
    await lockd.exited
    lockd = await startLockd({dataDir, port: lockd.port})
    const c = await client(lockd.endpoint, 'C')
    for (const grant of semaphore) expect((await c.check('backups', grant.token)).fence).toBe(grant.fence)
    for (const grant of shared) expect((await c.check('report', grant.token)).fence).toBe(grant.fence)
    const backups = await c.inspect('backups')
    expect(backups).toMatchObject({limit: 2, waiters: 0})
    expect(backups?.holders?.map((h) => h.owner)).toEqual(['A', 'B'])
    expect((await c.inspect('report'))?.holders?.map((h) => h.shared)).toEqual([true, true])
    // Full, and still a semaphore of 2: a third waits its turn, another limit is refused.
    expect(await c.createSemaphore('backups', {limit: 2}).tryLock()).toBe(false)
    await expect(c.createLock('backups').tryLock()).rejects.toMatchObject({code: 'BAD_INPUT'})
    // Shared still: a third reader gets in at once, a writer does not.
    expect(await c.createLock('report', {shared: true}).tryLock({leaseMs: 5000})).toBe(true)
    expect(await c.createLock('report').tryLock()).toBe(false)
    await lockd.stop()
  })

  it('fencing tokens never repeat across restarts, even for released keys', async () => {
    const dataDir = tempDir()
    const fences: number[] = []
    for (let run = 0; run < 3; run++) {
      const lockd = await startLockd({dataDir})
      const c = await client(lockd.endpoint, 'A')
      for (let i = 0; i < 3; i++) {
        // A key per run: a release answered just before the kill -9 may come back held until
        // its lease ends (docs/recovery.md); fences must still never repeat.
        const lock = c.createLock(`k${run}-${i}`)
        fences.push((await lock.acquire()).fence)
        await lock.unlock()
      }
      await c.close()
      if (run === 1) {
        lockd.child.kill('SIGKILL')
        await lockd.exited
      } else {
        expect(await lockd.stop()).toBe(0)
      }
    }
    expect(fences).toEqual([...fences].sort((x, y) => x - y))
    expect(new Set(fences).size).toBe(fences.length)
  })

  it('a torn tail of the log (a write cut short) is dropped and the intact grants recovered', async () => {
    const dataDir = tempDir()
    let lockd = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    const grant = await a.createLock('k').acquire({leaseMs: 60_000})
    await a.close()
    lockd.child.kill('SIGKILL')
    await lockd.exited
    const wal = join(
      dataDir,
      readdirSync(dataDir).find((n) => n.startsWith('wal-'))!,
    )
    appendFileSync(wal, Buffer.from([0, 0, 0, 50, 1, 2, 3, 4, 9, 9])) // header of a 50-byte record, 2 bytes of it
    lockd = await startLockd({dataDir})
    expect(lockd.stderr()).toMatch(/dropped 10 bytes at its end: a final write cut short/)
    const b = await client(lockd.endpoint, 'B')
    expect((await b.check('k', grant.token)).fence).toBe(grant.fence)
    await lockd.stop()
  })

  it('a corrupt record refuses to start with a clear message instead of forgetting a grant', async () => {
    const dataDir = tempDir()
    const lockd = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    await a.createLock('k1').acquire()
    await a.createLock('k2').acquire()
    await a.close()
    await lockd.stop()
    const wal = join(
      dataDir,
      readdirSync(dataDir).find((n) => n.startsWith('wal-'))!,
    )
    const data = readFileSync(wal)
    data[24] ^= 0xff // inside the first record's body (8 bytes of magic, a 12-byte header)
    writeFileSync(wal, data)
    await expect(startLockd({dataDir})).rejects.toThrow(/corrupt at byte 8 \(its body fails its checksum\); refusing to start/)
  })

  it('lockctl server on a damaged data directory: one line naming the file and byte, exit 1, and the files untouched', async () => {
    const dataDir = tempDir()
    const lockd = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    for (let i = 0; i < 5; i++) await a.createLock(`k${i}`).acquire()
    await a.close()
    await lockd.stop()
    const wal = join(dataDir, 'wal-0.log')
    const data = readFileSync(wal)
    data.writeUInt32BE(0x7fffffff, 8) // the first record's length: not a torn tail, whatever it claims
    writeFileSync(wal, data)
    const result = await runCli(['server', '--listen', '127.0.0.1:0', '--data-dir', dataDir])
    expect(result.code).toBe(1)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(/wal-0\.log: corrupt at byte 8 \(its header fails its checksum\)/)
    expect(result.stderr).not.toMatch(/\n\s+at /)
    expect(readFileSync(wal).equals(data)).toBe(true) // nothing truncated
  })

  it('--forget-all-locks repairs a damaged data directory: every lock forgotten, its files kept aside, fences above every old one; a start without it then recovers as usual', async () => {
    const dataDir = tempDir()
    let lockd = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    let highest = 0
    for (let i = 0; i < 5; i++) highest = Math.max(highest, (await a.createLock(`f${i}`).acquire({leaseMs: 3_600_000})).fence)
    await a.close()
    lockd.child.kill('SIGKILL')
    await lockd.exited
    const wal = join(dataDir, 'wal-0.log')
    const data = readFileSync(wal)
    data.writeUInt32BE(0x7fffffff, 8)
    writeFileSync(wal, data)
    // The refusal names the way out.
    const refused = await runCli(['server', '--listen', '127.0.0.1:0', '--data-dir', dataDir])
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/start lockd on it once with --forget-all-locks to start empty \(every lock is then forgotten; fences go on above the old ones\)/)
    lockd = await startLockd({dataDir, args: ['--forget-all-locks']})
    expect(lockd.stderr()).toMatch(
      /lockd: --forget-all-locks: every lock of .* is forgotten \(its 1 file\(s\) moved to .*forgotten-[^)]*\); fences go on above \d+\. Holders that still believe they hold are not told/,
    )
    const b = await client(lockd.endpoint, 'B')
    expect((await b.inspect('f0'))?.holder ?? null).toBeNull()
    const fresh = await b.createLock('f0').acquire({leaseMs: 3_600_000})
    // Above every fence handed out before: moving the directory aside would have started at 1.
    expect(fresh.fence).toBeGreaterThan(highest)
    await b.close()
    const aside = readdirSync(dataDir).find((name) => name.startsWith('forgotten-'))!
    expect(readFileSync(join(dataDir, aside, 'wal-0.log')).equals(data)).toBe(true) // kept, untouched
    lockd.child.kill('SIGKILL')
    await lockd.exited
    // Without the flag: the new grant is recovered, and fences go on above it.
    lockd = await startLockd({dataDir})
    const c = await client(lockd.endpoint, 'C')
    expect((await c.inspect('f0'))?.holder?.fence).toBe(fresh.fence)
    expect((await c.createLock('f1').acquire()).fence).toBeGreaterThan(fresh.fence)
    await lockd.stop()
  })

  it('--forget-all-locks refuses when the fence mark is gone (it could not keep fences above the old ones), and a crash after it moved the files leaves a directory a plain start refuses', async () => {
    const dataDir = tempDir()
    const lockd = await startLockd({dataDir})
    const a = await client(lockd.endpoint, 'A')
    await a.createLock('m').acquire()
    await a.close()
    await lockd.stop()
    const mark = readFileSync(join(dataDir, 'fence'))
    unlinkSync(join(dataDir, 'fence'))
    const noMark = await runCli(['server', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--forget-all-locks'])
    expect(noMark.code).toBe(1)
    expect(noMark.stderr.trim()).toMatch(/^lockctl: --forget-all-locks: .*fence is missing, so lockd cannot tell which fences it handed out/)
    // As if lockd crashed after moving the logs aside, before the new log: only the mark is left.
    writeFileSync(join(dataDir, 'fence'), mark)
    unlinkSync(join(dataDir, 'wal-0.log'))
    const plain = await runCli(['server', '--listen', '127.0.0.1:0', '--data-dir', dataDir])
    expect(plain.code).toBe(1)
    expect(plain.stderr).toMatch(/wal-0\.log is missing/)
    const again = await startLockd({dataDir, args: ['--forget-all-locks']})
    expect(again.stderr()).toMatch(/--forget-all-locks: every lock of .* is forgotten \(its 0 file\(s\)/)
    await again.stop()
  })

  it('a release is answered before it is durable: kill -9 right after, the lock is free or still held by that same grant, never by two', async () => {
    const dataDir = tempDir()
    let lockd = await startLockd({dataDir})
    const outcomes = {free: 0, heldBySameGrant: 0}
    for (let round = 0; round < 6; round++) {
      const a = await client(lockd.endpoint, 'A')
      const grant = await a.createLock('r').acquire({leaseMs: 30_000})
      await a.release('r', grant.token) // answered
      lockd.child.kill('SIGKILL')
      await lockd.exited
      lockd = await startLockd({dataDir, port: lockd.port})
      const b = await client(lockd.endpoint, 'B')
      const holder = (await b.inspect('r'))?.holder ?? null
      // Either the release reached the disk, or the lock is back with the grant that released
      // it (its owner believes nothing: it released), until its lease ends. Never anyone else.
      if (holder) {
        expect(holder.fence).toBe(grant.fence)
        expect(holder.owner).toBe('A')
        outcomes.heldBySameGrant++
        expect(await b.createLock('r').tryLock({leaseMs: 5000})).toBe(false)
        await b.release('r', grant.token) // tidy up for the next round (the token still holds it)
      } else {
        outcomes.free++
        const next = await b.createLock('r').acquire({leaseMs: 5000})
        expect(next.fence).toBeGreaterThan(grant.fence)
        await b.release('r', next.token)
      }
    }
    // Which outcome a round gets depends on the disk's timing: every round checked its own.
    expect(outcomes.free + outcomes.heldBySameGrant).toBe(6)
    await lockd.stop()
  })

  it('a second lockd on the same data directory refuses to start', async () => {
    const dataDir = tempDir()
    const first = await startLockd({dataDir})
    await expect(startLockd({dataDir})).rejects.toThrow(/another lockd is using the data directory/)
    await first.stop()
  })

  it('snapshots bound the log and keep every grant and the fence counter', async () => {
    const dataDir = tempDir()
    let server = await new LockServer({dataDir, listen: [{host: '127.0.0.1', port: 0}], snapshotBytes: 2000}).start()
    let c = await client(`lockd://127.0.0.1:${server.addresses.tcp[0].port}`, 'A')
    const kept = []
    for (let i = 0; i < 60; i++) {
      const lock = c.createLock(`key-${i}`)
      const grant = await lock.acquire({leaseMs: 60_000})
      if (i % 3 === 0) kept.push(grant)
      else await lock.unlock()
    }
    expect(readdirSync(dataDir)).toContain('snapshot')
    await c.close()
    await server.close()
    server = await new LockServer({dataDir, listen: [{host: '127.0.0.1', port: 0}]}).start()
    c = await client(`lockd://127.0.0.1:${server.addresses.tcp[0].port}`, 'A')
    for (const grant of kept) expect((await c.check(grant.key, grant.token)).fence).toBe(grant.fence)
    expect((await c.list('key-')).total).toBe(kept.length)
    // Fences continue above the durable mark: never at or below one already handed out.
    expect((await c.createLock('fresh').acquire()).fence).toBeGreaterThan(60)
    await server.close()
  })
})

describe('lockd idle exit (the embedded default)', () => {
  it('stays while a connection is open or a lock is held, and exits once neither has been true for the idle time', async () => {
    const server = await new LockServer({listen: [{host: '127.0.0.1', port: 0}], idleExitMs: 400}).start()
    let exited = false
    void server.closed.then(() => (exited = true))
    const endpoint = `lockd://127.0.0.1:${server.addresses.tcp[0].port}`
    const c = await connect({endpoints: endpoint, owner: 'A'})
    const lock = c.createLock('idle')
    await lock.acquire({leaseMs: 60_000})
    await c.close()
    // No connection left, but a lock is held: a restart would lose nothing (durable), yet the
    // embedded lockd keeps serving it until the lock is gone.
    await new Promise((resolve) => setTimeout(resolve, 1000))
    expect(exited).toBe(false)
    const d = await connect({endpoints: endpoint, owner: 'A'})
    await d.release('idle', undefined, {force: true})
    await new Promise((resolve) => setTimeout(resolve, 800))
    expect(exited).toBe(false) // d is still connected
    await d.close()
    await eventually(() => exited, 5000)
  })
})

describe('lockd against a misbehaving peer', () => {
  it('a grant whose push was lost with its connection is answered again to the same attempt, not left to expire', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const lockA = a.createLock('handoff')
    await lockA.acquire({leaseMs: 30_000})
    const attempt = 'b-attempt-0123456789'
    const b = await rawConnection(lockd.port)
    b.socket.write(Buffer.concat([helloFrame(), encodeFrame(createCodec(), {t: 'req', id: 1, op: 'acquire', key: 'handoff', leaseMs: 30_000, waitMs: -1, owner: 'B', attempt})]))
    type Message = {t: string; code?: string; ev?: string; grant?: {fence: number; token: string}}
    const messages = b.messages as Message[]
    await eventually(() => messages.some((m) => m.code === 'QUEUED'))
    await lockA.unlock()
    await eventually(() => messages.some((m) => m.ev === 'granted'))
    const pushed = messages.find((m) => m.ev === 'granted')!.grant!
    b.socket.destroy() // as if the push had been lost with the connection

    const c = await client(lockd.endpoint, 'C')
    expect(await c.createLock('handoff').tryLock({waitMs: 0, attempt: 'c-attempt-0123456789'})).toBe(false)
    const b2 = await client(lockd.endpoint, 'B')
    const retry = b2.createLock('handoff')
    const grant = await retry.acquire({leaseMs: 30_000, waitMs: 0, attempt})
    expect(grant).toMatchObject({fence: pushed.fence, token: pushed.token, owner: 'B'})
    await retry.unlock()
    expect((await c.inspect('handoff'))?.holder ?? null).toBeNull()
  })

  it('rejects malformed, oversized, wrong-version and half-sent frames, and keeps serving others', async () => {
    const lockd = await startLockd()
    const good = await client(lockd.endpoint, 'good')
    const lock = good.createLock('k')
    await lock.acquire()

    const oversized = await rawConnection(lockd.port)
    const header = Buffer.alloc(4)
    header.writeUInt32BE(64 * 1024 * 1024)
    oversized.socket.write(Buffer.concat([helloFrame(), header]))
    expect(await oversized.received).toContainEqual(expect.objectContaining({t: 'error', code: 'PROTOCOL', msg: expect.stringMatching(/over the limit/)}))

    const garbage = await rawConnection(lockd.port)
    garbage.socket.write(Buffer.concat([helloFrame(), Buffer.from([0, 0, 0, 3, 0xd9, 5, 0x61])]))
    expect(await garbage.received).toContainEqual(expect.objectContaining({t: 'error', msg: expect.stringMatching(/malformed/)}))

    const notAMap = await rawConnection(lockd.port)
    notAMap.socket.write(Buffer.concat([helloFrame(), encodeFrame(createCodec(), [1, 2, 3])]))
    expect(await notAMap.received).toContainEqual(expect.objectContaining({t: 'error', msg: expect.stringMatching(/must be a map/)}))

    const noHello = await rawConnection(lockd.port)
    noHello.socket.write(encodeFrame(createCodec(), {t: 'req', id: 1, op: 'info'}))
    expect(await noHello.received).toContainEqual(expect.objectContaining({t: 'error', msg: expect.stringMatching(/first message must be hello/)}))

    const wrongVersion = await rawConnection(lockd.port)
    wrongVersion.socket.write(encodeFrame(createCodec(), {t: 'hello', v: 99}))
    expect(await wrongVersion.received).toContainEqual(expect.objectContaining({t: 'error', msg: expect.stringMatching(/version 99/)}))

    const halfSent = await rawConnection(lockd.port)
    const frame = encodeFrame(createCodec(), {t: 'req', id: 1, op: 'acquire', key: 'k2', leaseMs: 5000, waitMs: 0, owner: 'x'})
    halfSent.socket.write(Buffer.concat([helloFrame(), frame.subarray(0, frame.length - 3)]))
    await eventually(() => halfSent.messages.length === 1) // the hello answer: lockd has read the bytes
    halfSent.socket.destroy()

    // Bad values inside a well-formed request are refused, not fatal to the connection.
    const badValues = await rawConnection(lockd.port)
    const codec = createCodec()
    badValues.socket.write(
      Buffer.concat([
        encodeFrame(codec, {t: 'hello', v: 1}),
        encodeFrame(codec, {t: 'req', id: 1, op: 'acquire', key: '', leaseMs: 5000, waitMs: 0, owner: 'x'}),
        encodeFrame(codec, {t: 'req', id: 2, op: 'acquire', key: 'k', leaseMs: 10, waitMs: 0, owner: 'x'}),
        encodeFrame(codec, {t: 'req', id: 3, op: 'nope'}),
        encodeFrame(codec, {t: 'req', id: 4, op: 'ping'}),
        encodeFrame(codec, {t: 'req', id: 5, op: 'acquire', key: 'k', leaseMs: 5000, waitMs: 0, owner: 'x', attempt: 'short'}),
        encodeFrame(codec, {t: 'req', id: 6, op: 'list', prefix: '', after: 42}),
      ]),
    )
    // hello + six answers
    await eventually(() => badValues.messages.length === 7)
    badValues.socket.end()
    const replies = (await badValues.received) as {id?: number; code?: string}[]
    expect(replies.filter((m) => m.id).map((m) => [m.id, m.code])).toEqual([
      [1, 'BAD_INPUT'],
      [2, 'BAD_INPUT'],
      [3, 'BAD_INPUT'],
      [4, 'OK'],
      [5, 'BAD_INPUT'],
      [6, 'BAD_INPUT'],
    ])

    // Through all of that the well-behaved client kept its lock and its connection.
    expect(lock.isHeldByCurrentClient()).toBe(true)
    await lock.updateLease()
    expect(await good.inspect('k2')).toBeNull()
    await lock.unlock()
    expect(lockd.child.exitCode).toBeNull()
    await lockd.stop()
  })

  it('a request id reused while its acquire waits is a protocol error, and no waiter outlives its connection', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    await a.createLock('g1').acquire({leaseMs: 60_000})
    await a.createLock('g2').acquire({leaseMs: 60_000})
    const ghost = await rawConnection(lockd.port)
    const codec = createCodec()
    ghost.socket.write(
      Buffer.concat([
        encodeFrame(codec, {t: 'hello', v: 1}),
        encodeFrame(codec, {t: 'req', id: 7, op: 'acquire', key: 'g1', leaseMs: 60_000, waitMs: -1, owner: 'ghost'}),
        encodeFrame(codec, {t: 'req', id: 7, op: 'acquire', key: 'g2', leaseMs: 60_000, waitMs: -1, owner: 'ghost'}),
      ]),
    )
    const received = (await ghost.received) as {t: string; code?: string; msg?: string}[]
    expect(received).toContainEqual(expect.objectContaining({t: 'error', code: 'PROTOCOL', msg: expect.stringMatching(/request id 7 is already in use/)}))
    // The connection is gone, and with it every waiter it had.
    await eventually(async () => (await a.inspect('g1'))?.waiters === 0 && (await a.inspect('g2'))?.waiters === 0)
    await a.release('g1', undefined, {force: true})
    await a.release('g2', undefined, {force: true})
    expect(await a.inspect('g1')).toBeNull()
    expect(await a.inspect('g2')).toBeNull()
    await lockd.stop()
  })

  it('limits: connections past --max-connections and waiters past --max-waiters-per-connection are refused with LIMIT', async () => {
    const lockd = await startLockd({args: ['--max-connections', '2', '--max-waiters-per-connection', '2']})
    const a = await client(lockd.endpoint, 'A')
    await a.createLock('busy').acquire({leaseMs: 60_000})
    const b = await client(lockd.endpoint, 'B')
    const waits = [b.createLock('busy').acquire({waitMs: 60_000}), b.createLock('busy').acquire({waitMs: 60_000})]
    for (const wait of waits) wait.catch(() => {})
    await eventually(async () => (await a.inspect('busy'))?.waiters === 2)
    await expect(b.createLock('busy').acquire({waitMs: 60_000})).rejects.toMatchObject({code: 'LIMIT', message: expect.stringMatching(/max-waiters-per-connection/)})
    // A free key is still granted on that connection.
    expect((await b.createLock('free').acquire()).owner).toBe('B')
    const c = await client(lockd.endpoint, 'C')
    await expect(c.inspect('busy')).rejects.toMatchObject({code: 'LIMIT', message: expect.stringMatching(/max-connections/)})
    const cli = await runCli(['status', 'busy', '--endpoints', lockd.endpoint])
    expect(cli.code).toBe(4)
    expect(cli.stderr.trim().split('\n')).toHaveLength(1)
    expect((await a.inspect('busy'))?.waiters).toBe(2) // the others were untouched
    await lockd.stop()
  })

  it('a lockd whose heap is half full refuses new names with LIMIT instead of dying of it; held names go on', async () => {
    // Before: --max-locks counted names, not bytes. Long keys on a small heap (Node's limit
    // follows the machine's memory) ended in a V8 fatal error: an abort, a native stack trace,
    // every client cut off.
    // (A small young generation too: Node's heap limit counts it, and at 48 MB it would be as large as the old one.)
    const lockd = await startLockd({nodeArgs: ['--max-old-space-size=48', '--max-semi-space-size=1']})
    const filler = await client(lockd.endpoint, 'filler')
    const pad = 'k'.repeat(480)
    const kept = filler.createLock(`${pad}/kept`)
    await kept.acquire({leaseMs: 600_000})
    let refusal: LockError | null = null
    let taken = 0
    await Promise.all(
      Array.from({length: 32}, async (_, worker) => {
        // (Bounded: 48 MB of heap holds far fewer than this many such locks.)
        for (let i = worker; refusal === null && i < 400_000; i += 32) {
          try {
            await filler.createLock(`${pad}/${i}`).acquire({leaseMs: 600_000})
            taken++
          } catch (error) {
            refusal ??= error as LockError
          }
        }
      }),
    )
    expect(refusal, lockd.stderr()).toMatchObject({code: 'LIMIT', message: expect.stringMatching(/lockd uses \d+ MB of its \d+ MB heap, past the 50% it keeps new names and waits within/)})
    expect(taken).toBeGreaterThan(1000)
    expect(lockd.stderr()).toMatch(/lockd: warning: \d+ MB of its \d+ MB heap in use, past half: new names and waits are refused/)
    // Nor a place in a queue: waiters grow the table as new names do.
    await expect(filler.createLock(`${pad}/kept`).acquire({waitMs: 10_000})).rejects.toMatchObject({code: 'LIMIT'})
    // Alive, and what it holds goes on: a renewal, a try of a held name, a look at it.
    expect(lockd.child.exitCode).toBeNull()
    await kept.updateLease(600_000)
    await expect(filler.createLock(`${pad}/kept`).acquire({waitMs: 0})).rejects.toMatchObject({code: 'LOCK_HELD'})
    expect((await filler.inspect(`${pad}/kept`))?.holder?.owner).toBe('filler')
    await filler.close()
    expect(await lockd.stop()).toBe(0)
  })

  it('peers that stop reading are closed once together they leave more output unread than lockd keeps; readers go on', async () => {
    // Before: only each connection's own 16 MiB limit. Many watchers of a busy prefix that stopped
    // reading each stayed under it, and together took gigabytes outside the heap.
    const lines: string[] = []
    const server = await new LockServer({listen: [{host: '127.0.0.1', port: 0}], outputBudget: 2 * 1024 * 1024, log: (line) => lines.push(line)}).start()
    const port = server.addresses.tcp[0].port
    const codec = createCodec()
    const stalled = await Promise.all(Array.from({length: 3}, () => rawConnection(port)))
    for (const watcher of stalled) {
      watcher.socket.write(Buffer.concat([helloFrame(), encodeFrame(codec, {t: 'req', id: 1, op: 'watch', prefix: ''})]))
      await eventually(() => watcher.messages.length >= 2)
      watcher.socket.pause() // reads nothing more
    }
    const reader = await rawConnection(port)
    reader.socket.write(Buffer.concat([helloFrame(), encodeFrame(codec, {t: 'req', id: 1, op: 'watch', prefix: ''})]))
    const busy = await client(`lockd://127.0.0.1:${port}`, 'busy')
    const pad = 'e'.repeat(480)
    // Events for everyone until lockd has closed every watcher that does not read (bounded in count).
    const closedSoFar = () => lines.reduce((sum, line) => sum + Number(/closed (\d+) connection\(s\) that left/.exec(line)?.[1] ?? 0), 0)
    for (let i = 0; i < 100_000 && closedSoFar() < 3; i++) {
      const lock = busy.createLock(`${pad}/${i % 50}`)
      await lock.acquire()
      await lock.unlock()
    }
    expect(closedSoFar(), lines.join('\n')).toBe(3)
    expect(lines[0]).toMatch(/^lockd: closed [1-3] connection\(s\) that left \d+ MB of output unread: all connections together may leave 2 MB$/)
    // The reader, and the client making the events, are served as before.
    const seen = reader.messages.length
    await busy.createLock('after').acquire()
    await eventually(() => reader.messages.length > seen)
    expect(reader.socket.destroyed).toBe(false)
    reader.socket.destroy()
    await busy.close()
    await server.close()
  })

  it('watches past 1,000 on one connection are refused with LIMIT; its other watches, and everyone else, go on', async () => {
    // Before: no limit. A client that watched in a loop without unwatching grew lockd's memory
    // and the work of every lock event (each prefix watch is checked against it) without end.
    const lockd = await startLockd()
    const watcher = await rawConnection(lockd.port)
    const codec = createCodec()
    const watches = Array.from({length: 1001}, (_, i) => encodeFrame(codec, {t: 'req', id: i + 1, op: 'watch', prefix: ''}))
    watcher.socket.write(Buffer.concat([helloFrame(), ...watches]))
    type Message = {t: string; id?: number; code?: string; msg?: string; ev?: string; event?: {type: string; key: string}}
    const messages = watcher.messages as Message[]
    await eventually(() => messages.some((m) => m.id === 1001), 20_000)
    const answers = messages.filter((m) => m.t === 'res')
    expect(answers.filter((m) => m.code === 'OK')).toHaveLength(1000)
    expect(answers.find((m) => m.id === 1001)).toMatchObject({code: 'LIMIT', msg: expect.stringMatching(/1000 watches, lockd's limit: unwatch one first/)})
    // Its 1,000 watches still hear events; after an unwatch, a new watch is taken again.
    const other = await client(lockd.endpoint, 'other')
    await other.createLock('watched').acquire()
    await eventually(() => messages.filter((m) => m.ev === 'lock' && m.event?.key === 'watched').length === 1000)
    watcher.socket.write(Buffer.concat([encodeFrame(codec, {t: 'req', id: 2001, op: 'unwatch', sub: 1}), encodeFrame(codec, {t: 'req', id: 2002, op: 'watch', key: 'watched'})]))
    await eventually(() => messages.some((m) => m.t === 'res' && m.id === 2002))
    expect(messages.find((m) => m.t === 'res' && m.id === 2002)).toMatchObject({code: 'OK'})
    watcher.socket.destroy()
    await other.close()
    await lockd.stop()
  })

  it('at --max-connections, a connection that sent nothing for a second makes room for a new client; greeted ones never do', async () => {
    const lockd = await startLockd({args: ['--max-connections', '3']})
    const greeted = await client(lockd.endpoint, 'greeted')
    await greeted.createLock('kept').acquire({leaseMs: 60_000})
    // Two sockets that connect and say nothing (a port scan, a flood, a client hung before its hello).
    const silent = await Promise.all([rawConnection(lockd.port), rawConnection(lockd.port)])
    await eventually(async () => ((await greeted.info()) as {connections: number}).connections === 3)
    await new Promise((resolve) => setTimeout(resolve, 1100))
    // Before: refused with LIMIT (exit 4) until the silent ones' 10 s hello timeout.
    const first = await client(lockd.endpoint, 'first')
    expect((await first.createLock('k1').acquire()).owner).toBe('first')
    const second = await client(lockd.endpoint, 'second')
    expect((await second.createLock('k2').acquire()).owner).toBe('second')
    for (const socket of silent)
      expect(await socket.received).toContainEqual(expect.objectContaining({t: 'error', code: 'PROTOCOL', msg: expect.stringMatching(/connection limit: closed to make room/)}))
    // Nothing silent is left: the next one is refused, and the greeted clients go on.
    const third = await client(lockd.endpoint, 'third')
    await expect(third.inspect('kept')).rejects.toMatchObject({code: 'LIMIT'})
    expect((await greeted.inspect('kept'))?.holder?.owner).toBe('greeted')
    await Promise.all([greeted.close(), first.close(), second.close(), third.close()])
    await lockd.stop()
  })

  it('--max-locks: a new name past it is refused with LIMIT (exit 4, one line); held names go on; a release makes room; a restart keeps the limit', async () => {
    const dataDir = tempDir()
    const args = ['--max-locks', '3']
    let lockd = await startLockd({args, dataDir})
    const a = await client(lockd.endpoint, 'A')
    const sem = a.createSemaphore('sem', {limit: 2})
    await sem.acquire({leaseMs: 60_000})
    const held = a.createLock('held')
    await held.acquire({leaseMs: 60_000})
    await a.createLock('third').acquire({leaseMs: 60_000})
    await expect(a.createLock('fourth').acquire()).rejects.toMatchObject({code: 'LIMIT', message: expect.stringMatching(/lockd holds 3 locks, its limit \(--max-locks\)/)})
    const cli = await runCli(['lock', 'fourth', '--endpoints', lockd.endpoint])
    expect(cli.stderr.trim().split('\n'), cli.stderr).toHaveLength(1)
    expect(cli.code).toBe(4)
    // Held names go on: a renewal, a second slot of the semaphore, a waiter on a held lock.
    await held.updateLease(60_000)
    await (await client(lockd.endpoint, 'B')).createSemaphore('sem', {limit: 2}).acquire({leaseMs: 60_000})
    const waiter = (await client(lockd.endpoint, 'C')).createLock('held').acquire({waitMs: 60_000})
    await eventually(async () => (await a.inspect('held'))?.waiters === 1)
    await held.unlock()
    expect((await waiter).owner).toBe('C')
    // A name released makes room.
    expect((await runCli(['unlock', 'third', '--force', '--yes', '--endpoints', lockd.endpoint])).code).toBe(0)
    expect((await a.createLock('fourth').acquire({leaseMs: 60_000})).owner).toBe('A')
    await expect(a.createLock('fifth').acquire()).rejects.toMatchObject({code: 'LIMIT'})
    // After a restart with the three names recovered, the limit holds as before.
    lockd.child.kill('SIGKILL')
    await lockd.exited
    lockd = await startLockd({args, dataDir})
    const d = await client(lockd.endpoint, 'D')
    await expect(d.createLock('fifth').acquire()).rejects.toMatchObject({code: 'LIMIT'})
    await lockd.stop()
  })

  it('an acquire that got no answer in time is not left granted: lockd paused, the client gives up, lockd resumes and grants it, the cancel behind it releases it', async () => {
    const lockd = await startLockd()
    const checker = await client(lockd.endpoint, 'checker')
    for (const [close, key] of [
      [true, 'late-1'],
      [false, 'late-2'],
    ] as const) {
      const impatient = await connect({endpoints: lockd.endpoint, owner: 'impatient', requestTimeoutMs: 300})
      await impatient.info()
      await pauseProcess(lockd.child.pid!)
      try {
        await expect(impatient.createLock(key).acquire({leaseMs: 3_600_000})).rejects.toMatchObject({code: 'UNREACHABLE'})
        // A one-shot CLI closes at once; a library client may go on using its connection.
        if (close) await impatient.close()
      } finally {
        lockd.child.kill('SIGCONT')
      }
      // lockd has read everything the impatient client sent (its acquire, the cancel behind it):
      // a round trip on that connection, or, once closed, the close (read after its data).
      if (close) await eventually(async () => ((await checker.info()) as {connections: number}).connections === 1)
      else await impatient.info()
      // Before: held for the whole hour by a token nobody had.
      expect(await checker.inspect(key)).toBeNull()
      expect((await checker.createLock(key).acquire()).owner).toBe('checker')
      if (!close) await impatient.close()
    }
    await lockd.stop()
  })

  it('an unreachable endpoint fails with UNREACHABLE', async () => {
    const c = await client('lockd://127.0.0.1:1', 'A')
    await expect(c.createLock('k').acquire()).rejects.toMatchObject({code: 'UNREACHABLE'})
  })
})

describe('lockd: connection state', () => {
  it('client.status() yields connected, suspended when lockd dies, connected again, then closed, once each, and ends', async () => {
    let lockd = await startLockd({dataDir: tempDir()})
    const c = await connect({endpoints: lockd.endpoint, owner: 'A', requestTimeoutMs: 2000})
    const seen: string[] = []
    const listening = (async () => {
      for await (const state of c.status()) seen.push(state)
    })()
    await c.inspect('s')
    await eventually(() => seen.includes('connected'))
    lockd.child.kill('SIGKILL')
    await lockd.exited
    await eventually(() => seen.includes('suspended'))
    lockd = await startLockd({dataDir: tempDir(), port: lockd.port})
    await eventually(
      async () =>
        (await c.inspect('s').then(
          () => true,
          () => false,
        )) && seen.length === 3,
    )
    await c.close()
    await listening // ends at closed
    expect(seen).toEqual(['connected', 'suspended', 'connected', 'closed'])
    await lockd.stop()
  })
})

describe('lockd: aborting a wait', () => {
  it('an abort that lands while the acquire is in flight still leaves the queue', async () => {
    const lockd = await startLockd()
    const a = await client(lockd.endpoint, 'A')
    const b = await client(lockd.endpoint, 'B')
    await a.createLock('k').acquire()
    for (let round = 0; round < 10; round++) {
      const controller = new AbortController()
      const waiting = b.createLock('k').acquire({waitMs: 60_000, signal: controller.signal})
      // After the request is written (synchronously, a few microtasks in) and before lockd's
      // QUEUED answer can have come back from the other process.
      setImmediate(() => controller.abort())
      await expect(waiting).rejects.toMatchObject({code: 'ABORTED'})
    }
    await eventually(async () => (await a.inspect('k'))?.waiters === 0)
    await lockd.stop()
  })
})
