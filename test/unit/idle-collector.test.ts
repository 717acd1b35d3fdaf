import {describe, expect, it} from 'vitest'
import {IdleCollector} from '../../src/server/idle-collector.js'

const MB = 1048576

describe('IdleCollector', () => {
  it('collects once lockd is quiet for two checks after the heap grew, not while requests come, and not again until it grows again', () => {
    let used = 100 * MB
    let activity = 0
    const collections: number[] = []
    const collector = new IdleCollector({collect: () => collections.push((used = 110 * MB)), heapUsed: () => used, activity: () => activity})
    expect(collector.check()).toBeNull() // the heap as lockd started is the baseline
    // A burst: requests at every check, the heap grows.
    for (let i = 0; i < 5; i++) {
      activity += 1000
      used += 60 * MB
      expect(collector.check()).toBeNull()
    }
    expect(collector.check()).toBeNull() // quiet for one check: not yet
    expect(collector.check()).toEqual({before: 400 * MB, after: 110 * MB})
    expect(collections).toHaveLength(1)
    // Still quiet, the heap as the collection left it: nothing more.
    for (let i = 0; i < 5; i++) expect(collector.check()).toBeNull()
    // A little garbage from a few requests (less than half again, less than 32 MB): not worth a pause.
    activity++
    used += 30 * MB
    for (let i = 0; i < 4; i++) expect(collector.check()).toBeNull()
    expect(collections).toHaveLength(1)
  })

  it('counts growth from the least heap seen since the last collection: what V8 collected by itself is not counted as growth', () => {
    let used = 200 * MB
    const activity = 0
    let collected = 0
    const collector = new IdleCollector({collect: () => collected++, heapUsed: () => used, activity: () => activity})
    // V8 collected by itself: 80 MB in use, then the heap grows again by 60 MB (less than 200 MB
    // would have needed, more than 80 MB needs).
    used = 80 * MB
    collector.check()
    used = 140 * MB
    for (let i = 0; i < 3; i++) collector.check()
    expect(collected).toBe(1)
  })

  it('never collects while every check sees requests, however much the heap grows', () => {
    let used = 100 * MB
    let activity = 0
    let collected = 0
    const collector = new IdleCollector({collect: () => collected++, heapUsed: () => used, activity: () => activity})
    for (let i = 0; i < 50; i++) {
      activity++
      used += 100 * MB
      collector.check()
    }
    expect(collected).toBe(0)
  })
})
