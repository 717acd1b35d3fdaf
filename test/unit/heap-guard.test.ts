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
