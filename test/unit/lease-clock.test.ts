import {describe, expect, it} from 'vitest'
import {LeaseClock} from '../../src/client/lease-clock.js'

/** Hand-driven clocks: `run` moves all three; `sleep` moves the wall and boot clocks only (a suspend). */
function clocks(countsSuspends = true) {
  const at = {monotonic: 1_000, wall: 1_700_000_000_000, boot: 90_000, bootReads: 0}
  const clock = new LeaseClock({
    sources: {
      monotonic: () => at.monotonic,
      wall: () => at.wall,
      // /proc/uptime's 10 ms steps.
      boot: () => {
        at.bootReads++
        return Math.floor(at.boot / 10) * 10
      },
    },
    countsSuspends,
  })
  return {
    at,
    clock,
    run(ms: number) {
      at.monotonic += ms
      at.wall += ms
      at.boot += ms
    },
    sleep(ms: number) {
      at.wall += ms
      at.boot += ms
    },
  }
}

describe('LeaseClock: monotonic milliseconds that count a suspend of the machine', () => {
  it('goes on with the monotonic clock, reading the boot clock only when the wall clock ran ahead', () => {
    const c = clocks()
    const start = c.clock.now()
    const reads = c.at.bootReads
    for (let i = 0; i < 100; i++) c.run(7.3)
    expect(c.clock.now() - start).toBeCloseTo(730, 6)
    expect(c.at.bootReads).toBe(reads)
  })

  it('adds a suspend, rounded up by the boot clock step, and never goes back', () => {
    const c = clocks()
    const before = c.clock.now()
    c.sleep(120_000)
    const after = c.clock.now()
    expect(after - before).toBeGreaterThanOrEqual(120_000)
    expect(after - before).toBeLessThanOrEqual(120_000 + 20)
    c.run(5)
    expect(c.clock.now()).toBeCloseTo(after + 5, 6)
  })

  it('a wall clock stepped ahead or back is not a suspend; a suspend after either still counts', () => {
    const c = clocks()
    const start = c.clock.now()
    c.at.wall += 3_600_000
    expect(c.clock.now()).toBe(start)
    c.at.wall -= 7_200_000
    expect(c.clock.now()).toBe(start)
    c.sleep(30_000)
    expect(c.clock.now() - start).toBeGreaterThanOrEqual(30_000)
  })

  it('a wall clock slewed by a few milliseconds reads nothing more', () => {
    const c = clocks()
    const start = c.clock.now()
    const reads = c.at.bootReads
    c.at.wall += 20
    c.run(100)
    expect(c.clock.now()).toBe(start + 100)
    expect(c.at.bootReads).toBe(reads)
  })

  it('for a service on this machine (a unix socket), a suspend is not counted: its leases stopped with ours', () => {
    const c = clocks(false)
    const start = c.clock.now()
    const reads = c.at.bootReads
    c.sleep(120_000)
    c.run(10)
    expect(c.clock.now()).toBe(start + 10)
    expect(c.at.bootReads).toBe(reads)
  })
})
