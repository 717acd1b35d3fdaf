import {describe, expect, it} from 'vitest'
import {silentHoldDue} from '../../src/cli/watchdog.js'

describe("hold's watchdog: when a silent hold's command is stopped", () => {
  it('only when hold has not beaten for half a second and the grant ends within a quarter of the lease, at most a second', () => {
    const due = (now: number, lastBeat: number, grantEnd: number, leaseMs: number) => silentHoldDue({now, lastBeat, grantEnd, leaseMs})
    // A 15 s lease: a hold stopped with 3 s of it left may resume and renew in time (the
    // watchdog's first version stopped its command 3.85 s before the end: the grace and more).
    expect(due(10_000, 9_000, 13_000, 15_000)).toBe(false)
    expect(due(10_000, 9_000, 11_100, 15_000)).toBe(false)
    expect(due(10_000, 9_000, 10_900, 15_000)).toBe(true)
    // A hold that beats is alive and handles its own loss, however near the end.
    expect(due(10_000, 9_800, 10_100, 15_000)).toBe(false)
    // A 3 s lease: a quarter of it, 750 ms; a 1 s lease: 250 ms.
    expect(due(10_000, 9_000, 10_800, 3_000)).toBe(false)
    expect(due(10_000, 9_000, 10_700, 3_000)).toBe(true)
    expect(due(10_000, 9_000, 10_300, 1_000)).toBe(false)
    expect(due(10_000, 9_000, 10_200, 1_000)).toBe(true)
    // Past the end: always, once silent.
    expect(due(10_000, 9_000, 9_500, 60_000)).toBe(true)
  })
})
