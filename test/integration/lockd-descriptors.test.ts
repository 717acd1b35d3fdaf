import {mkdirSync} from 'node:fs'
import type {Socket} from 'node:net'
import {join} from 'node:path'
import {afterEach, describe, expect, it} from 'vitest'
import {connect} from '../../src/client/index.js'
import {eventually, runCli, startLockd, tempDir} from '../helpers/processes.js'
import {idleSockets} from '../helpers/wire.js'

/**
 * Connections and the open-file limit (docs/protocol.md, "Connections and the open-file limit"). Before: with
 * connections up to `ulimit -n`, writing the next fence mark failed (EMFILE) and lockd stopped
 * with a stack trace, so anyone who could connect could stop it.
 */
describe('lockd under its open-file limit', () => {
  const sockets: Socket[] = []
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy()
  })

  /** `count` connections that never say hello, each open until the test ends (or lockd closes it). */
  const flood = (port: number, count: number) => idleSockets(port, count, sockets)

  it('a flood of connections past the limit neither stops it nor costs its log a descriptor, nor keeps a newcomer out', async () => {
    const lockd = await startLockd({dataDir: tempDir(), fileLimit: 120})
    const served = Number(/leaves room for (\d+) connections, fewer than --max-connections \(10000\)/.exec(lockd.stderr())?.[1])
    expect(served, lockd.stderr()).toBeGreaterThan(4)

    const client = await connect({endpoints: lockd.endpoint, owner: 'worker'})
    await client.createLock('warm').acquire({leaseMs: 10_000})
    // Three times the limit: whatever lockd does not serve, it must refuse or close.
    await flood(lockd.port, 360)

    // More grants than a fence-mark block (FENCE_BLOCK 10,000 reserves again at 5,001): the mark
    // is rewritten through a new file while every descriptor left to connections is taken.
    for (let i = 0; i < 5200; i++) {
      const lock = client.createLock(`job-${i % 16}`)
      await lock.acquire({leaseMs: 10_000})
      await lock.unlock()
    }
    expect((await client.inspect('warm'))?.holder?.owner).toBe('worker')

    // A newcomer while the flood lasts: served, since a flood socket that never said hello makes
    // room for it (it was refused with exit 4 until the flood's 10 s hello timeout ran out).
    const newcomer = await runCli(['lock', 'newcomer-1', '--endpoints', lockd.endpoint])
    expect(newcomer.code, newcomer.stderr).toBe(0)
    await eventually(() => /closed \d+ new connection\(s\) unanswered: the open-file limit \(120\)/.test(lockd.stderr()))

    // The flood gone, everyone is served again, and lockd never stopped.
    for (const socket of sockets.splice(0)) socket.destroy()
    const after = await eventually(async () => {
      const result = await runCli(['lock', 'newcomer', '--endpoints', lockd.endpoint])
      return result.code === 0 ? result : null
    })
    expect(after!.stdout.trim()).toMatch(/^[A-Za-z0-9_-]{24}$/)
    expect(lockd.stderr()).not.toMatch(/EMFILE|stopping|at .*\.js/)
    expect(lockd.child.exitCode).toBeNull()
    await client.close()
    expect(await lockd.stop()).toBe(0)
  })

  it('a fence mark that cannot be written stops lockd in one line, and no fence above the old mark was answered', async () => {
    const dataDir = tempDir()
    const lockd = await startLockd({dataDir})
    const client = await connect({endpoints: lockd.endpoint, owner: 'worker'})
    await client.createLock('warm').acquire({leaseMs: 10_000})
    // The mark is written through fence.tmp: a directory there makes that open fail (EISDIR).
    mkdirSync(join(dataDir, 'fence.tmp'))
    let highest = 0
    let failure: unknown
    try {
      for (let i = 0; i < 6000; i++) {
        const lock = client.createLock(`job-${i % 16}`)
        highest = (await lock.acquire({leaseMs: 10_000})).fence
        await lock.unlock()
      }
    } catch (error) {
      failure = error
    }
    expect(failure).toBeDefined()
    // The first mark covers fences up to 10,000 and is written again past 5,000.
    expect(highest).toBe(5000)
    expect(await lockd.exited).toBe(1)
    expect(lockd.stderr()).toMatch(/lockd: cannot write the fence mark in .*: EISDIR[^\n]*; stopping\n/)
    expect(lockd.stderr()).not.toMatch(/\n\s+at /)
    await client.close()
  })

  it('a limit that leaves no descriptor for a connection is a one-line start-up error', async () => {
    await expect(startLockd({dataDir: tempDir(), fileLimit: 40})).rejects.toThrow(/exited with 1 before listening: .*the open-file limit \(40\) leaves lockd no descriptors for connections: raise it/)
  })
})
