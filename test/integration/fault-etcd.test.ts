import {join} from 'node:path'
import {it} from 'vitest'
import {expectSafeRun, readWrites, sleep, startWorker} from '../fault/workers.js'
import {describeEtcd, startEtcd} from '../helpers/etcd.js'
import {tempDir} from '../helpers/processes.js'
import {rng} from '../helpers/random.js'

/**
 * The randomized fault test of fault.test.ts on a 3-member etcd cluster (shared/fault-testing.md):
 * the same workers take locks and write while they believe they hold them; holders are paused
 * past their lease, members are killed -9 (the leader among them) and restarted on their data,
 * or paused. One seed drives every choice; a failure prints it and the faults. Timing varies.
 */

const LEASE_MS = 2000
const SEMAPHORE = 'f/sem'
/** A lock taken shared or exclusive at random: shared grants may write together, an exclusive one alone. */
const READ_WRITE = 'f/rw'

describeEtcd('randomized faults against a 3-member etcd cluster (seeded)', () => {
  it('no two holders at once, fences never repeat or go back, through leader kills, member pauses and paused holders', {timeout: 600_000}, async () => {
    // More seeds by hand: LOCKCTL_ETCD_FAULT_SEEDS=1,2,3 npx vitest run test/integration/fault-etcd.test.ts
    const seeds = process.env.LOCKCTL_ETCD_FAULT_SEEDS ? process.env.LOCKCTL_ETCD_FAULT_SEEDS.split(',').map(Number) : [17]
    const durationMs = Number(process.env.LOCKCTL_ETCD_FAULT_MS ?? 20_000)
    for (const seed of seeds) {
      const random = rng(seed)
      const etcd = await startEtcd(3)
      const dir = tempDir('lockctl-etcd-fault-')
      const modes = ['isHeld', 'signal', 'isHeld', 'signal']
      const logs = modes.map((_, i) => join(dir, `worker-${i}.log`))
      const workers = modes.map((mode, i) => startWorker({endpoint: etcd.endpoint, log: logs[i], mode, keys: `f/a,${READ_WRITE}:rw,${SEMAPHORE}:2`, seed: seed * 100 + i, leaseMs: LEASE_MS}))
      const faults: string[] = []
      try {
        const end = Date.now() + durationMs
        while (Date.now() < end) {
          await sleep(500 + random() * 1000)
          const choice = random()
          if (choice < 0.45) {
            const index = Math.floor(random() * workers.length)
            const pauseMs = LEASE_MS + 200 + Math.floor(random() * 1500)
            faults.push(`SIGSTOP worker ${index} for ${pauseMs}ms`)
            workers[index].kill('SIGSTOP')
            await sleep(pauseMs)
            workers[index].kill('SIGCONT')
          } else if (choice < 0.7) {
            const leader = await etcd.leader()
            faults.push(`kill -9 leader ${leader.name}, restart`)
            await etcd.kill(leader)
            await sleep(300 + random() * 1500)
            await etcd.restart(leader)
          } else {
            const member = etcd.members[Math.floor(random() * etcd.members.length)]
            const pauseMs = 300 + Math.floor(random() * 2000)
            faults.push(`SIGSTOP ${member.name} for ${pauseMs}ms`)
            member.child?.kill('SIGSTOP')
            await sleep(pauseMs)
            member.child?.kill('SIGCONT')
          }
        }
      } finally {
        for (const worker of workers) {
          worker.kill('SIGCONT')
          worker.kill('SIGKILL')
        }
        for (const member of etcd.members) member.child?.kill('SIGCONT')
        await etcd.stop()
      }
      expectSafeRun({writes: readWrites(logs), semaphore: SEMAPHORE, limit: 2, readWrite: READ_WRITE, faults, seed})
    }
  })
})
