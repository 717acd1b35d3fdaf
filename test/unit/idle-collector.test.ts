import {describe, expect, it} from 'vitest'
import {IdleCollector} from '../../src/server/idle-collector.js'

const MB = 1048576

/** A collector over a heap and a request count the test moves; a collection leaves `live` in use. */
function fixture(usedMb: number, liveMb = usedMb) {
  const state = {used: usedMb * MB, activity: 0, collections: 0}
  const collector = new IdleCollector({
    collect: () => {
      state.collections++
      state.used = liveMb * MB
    },
    heapUsed: () => state.used,
    activity: () => state.activity,
  })
  return {state, collector}
}

describe('IdleCollector', () => {
  it('collects once lockd is quiet for two checks after the heap grew, not while requests come, and not again until it grows again', () => {
    const {state, collector} = fixture(100, 110)
    expect(collector.check()).toBeNull() // the heap as lockd started is the baseline
    // A burst: requests at every check, the heap grows.
    for (let i = 0; i < 5; i++) {
      state.activity += 1000
      state.used += 60 * MB
      expect(collector.check()).toBeNull()
    }
    expect(collector.check()).toBeNull() // quiet for one check: not yet
    expect(collector.check()).toEqual({before: 400 * MB, after: 110 * MB})
    expect(state.collections).toBe(1)
    // Still quiet, the heap as the collection left it: nothing more.
    for (let i = 0; i < 5; i++) expect(collector.check()).toBeNull()
    // A little garbage from a few requests (less than half again, less than 32 MB): not worth a pause.
    state.activity++
    state.used += 30 * MB
    for (let i = 0; i < 4; i++) expect(collector.check()).toBeNull()
    expect(state.collections).toBe(1)
  })

  it('counts growth from the least heap seen since the last collection: what V8 collected by itself is not counted as growth', () => {
    const {state, collector} = fixture(200)
    // V8 collected by itself: 80 MB in use, then the heap grows again by 60 MB (less than 200 MB
    // would have needed, more than 80 MB needs).
    state.used = 80 * MB
    collector.check()
    state.used = 140 * MB
    for (let i = 0; i < 3; i++) collector.check()
    expect(state.collections).toBe(1)
  })

  it('never collects while every check sees requests, however much the heap grows', () => {
    const {state, collector} = fixture(100)
    for (let i = 0; i < 50; i++) {
      state.activity++
      state.used += 100 * MB
      collector.check()
    }
    expect(state.collections).toBe(0)
  })
})
