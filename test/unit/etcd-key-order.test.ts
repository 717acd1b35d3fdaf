import {describe, expect, it} from 'vitest'
import {fitsBehind, holdingKeys, type KeyMode} from '../../src/client/backends/etcd/keys.js'
import {LockTable} from '../../src/server/lock-table.js'
import {WAIT_FOREVER} from '../../src/protocol/messages.js'
import {FakeClock} from '../helpers/fake-clock.js'
import {rng} from '../helpers/random.js'

/**
 * etcd decides who holds a name from the order of its keys alone (keys.ts, fitsBehind); lockd
 * from its table. The same arrivals and departures must give the same holders on both: one
 * semantics, two backends.
 */
describe('etcd key order agrees with the lock table (seeded)', () => {
  const seeds = (process.env.LOCKCTL_TABLE_SEEDS ?? '11,12,13,14,15,16').split(',').map(Number)
  for (const seed of seeds) {
    it(`seed ${seed}: the same holders after every arrival and departure`, () => {
      const random = rng(seed)
      for (let run = 0; run < 40; run++) {
        const limit = random() < 0.5 ? 1 : 2 + Math.floor(random() * 3)
        const table = new LockTable(new FakeClock())
        // Keys in arrival (create revision) order, with the table's name for each.
        const keys: {mode: KeyMode; wid: number; token?: string}[] = []
        let wid = 0
        for (let step = 0; step < 60; step++) {
          if (keys.length === 0 || random() < 0.55) {
            const mode = {limit, shared: limit === 1 && random() < 0.6}
            const result = table.acquire({key: 'k', leaseMs: 60_000, waitMs: WAIT_FOREVER, owner: 'o', from: {session: 's', wid: ++wid}, limit, shared: mode.shared})
            keys.push({mode, wid, token: result.kind === 'granted' ? result.grant.token : undefined})
          } else {
            const at = Math.floor(random() * keys.length)
            const [gone] = keys.splice(at, 1)
            // A holder releases; a waiter gives up (etcd: either way its key is deleted).
            const holderToken = table.inspect('k')?.holders.find((h) => h.origin?.wid === gone.wid || h.token === gone.token)?.token
            if (holderToken) table.release('k', holderToken)
            else table.cancel({session: 's', wid: gone.wid}, 'k')
          }
          const holders = new Set((table.inspect('k')?.holders ?? []).map((h) => h.origin?.wid ?? keys.find((k) => k.token === h.token)?.wid))
          const byOrder = holdingKeys(keys.map((k) => k.mode))
          expect(
            keys.map((k) => holders.has(k.wid)),
            `seed ${seed} run ${run} step ${step}`,
          ).toEqual(byOrder)
          // holdingKeys is fitsBehind for each key, done in one pass.
          expect(byOrder).toEqual(
            keys.map((k, i) =>
              fitsBehind(
                k.mode,
                keys.slice(0, i).map((a) => a.mode),
              ),
            ),
          )
        }
      }
    })
  }

  it('an etcdctl key (an exclusive lock) blocks shared keys and semaphores behind it, and waits for all ahead', () => {
    const exclusive = {limit: 1, shared: false}
    const shared = {limit: 1, shared: true}
    const sem = {limit: 3, shared: false}
    expect(holdingKeys([shared, shared, exclusive, shared])).toEqual([true, true, false, false])
    expect(holdingKeys([exclusive, sem, sem])).toEqual([true, false, false])
    expect(holdingKeys([sem, sem, sem, sem])).toEqual([true, true, true, false])
  })
})
