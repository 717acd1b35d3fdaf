import {describe, expect, it} from 'vitest'
import {HeapGuard, type HeapReading} from '../../src/server/heap-guard.js'

describe('HeapGuard', () => {
  it('refuses new names past half the heap limit, says so once each way, and takes them again below it', () => {
    let reading: HeapReading = {used: 40, limit: 100}
    const changes: boolean[] = []
    const guard = new HeapGuard((full) => changes.push(full), {read: () => reading})
    guard.check()
    expect([guard.full, guard.refusal(), changes]).toEqual([false, null, []])

    reading = {used: 60 * 1048576, limit: 100 * 1048576}
    guard.check()
    guard.check()
    expect(guard.full).toBe(true)
    expect(guard.refusal()).toBe(
      'lockd uses 60 MB of its 100 MB heap, past the 50% it keeps new names and waits within: release some locks, or give lockd more memory (NODE_OPTIONS=--max-old-space-size=MB)',
    )
    expect(changes).toEqual([true]) // once, not at every reading

    reading = {used: 50 * 1048576, limit: 100 * 1048576} // at half exactly: not past it
    guard.check()
    expect([guard.full, guard.refusal(), changes]).toEqual([false, null, [true, false]])
  })

  it('before its first reading it refuses nothing', () => {
    const guard = new HeapGuard(() => {}, {read: () => ({used: 99, limit: 100})})
    expect([guard.full, guard.refusal()]).toEqual([false, null])
  })
})

describe('HeapGuard with a collector', () => {
  it('collects garbage before it refuses, refuses only what is left in use, and does not collect again and again while the heap really is full', () => {
    const MB = 1048576
    let used = 70 * MB
    let live = 30 * MB
    let now = 0
    let collections = 0
    const changes: boolean[] = []
    const collect = () => {
      collections++
      used = live
    }
    const guard = new HeapGuard((full) => changes.push(full), {read: () => ({used, limit: 100 * MB}), collect, now: () => now})
    // Past half, but most of it garbage: collected, and not refused.
    guard.check()
    expect([collections, guard.full, changes]).toEqual([1, false, []])
    // Now really full: collected (it grew by more than a tenth of the limit), still full: refused.
    live = 60 * MB
    used = 75 * MB
    now += 10_000
    guard.check()
    expect([collections, guard.full, changes]).toEqual([2, true, [true]])
    // Full still, a little more in use: no collection at every reading (each stops lockd).
    for (let i = 0; i < 10; i++) {
      now += 10_000
      used += MB
      guard.check()
    }
    expect([collections, guard.full]).toEqual([2, true])
    // Grown by a tenth of the limit since: worth another look, but never within 10 s of the last.
    used = 75 * MB
    now += 1000
    guard.check()
    expect(collections).toBe(3)
    used = 90 * MB
    now += 1000
    guard.check()
    expect(collections).toBe(3)
  })
})
