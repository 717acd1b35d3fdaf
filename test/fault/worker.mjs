// A worker of the randomized fault test (test/integration/fault.test.ts): takes locks with
// AutoRenewalLock and, while it believes it holds one, appends "protected writes" to its log.
//
//   node worker.mjs ENDPOINT LOG MODE KEYS SEED [LEASE_MS]
//
// MODE: isHeld (checks lock.isHeld() right before each write), signal (trusts only the
// AbortSignal handed over at onAcquired, as the README shows), sabotage (checks nothing after
// the grant: the checker must catch it). `t` is read before the check: CLOCK_MONOTONIC, one
// clock for every process on the machine.
import {appendFileSync} from 'node:fs'
import {setTimeout as sleep} from 'node:timers/promises'
import {connect} from '../../dist/client/index.js'

const [endpoint, log, mode, keyList, seedText, leaseText] = process.argv.slice(2)
// 1 s on lockd; etcd's shortest lease is longer (its TTLs are whole seconds, at least 1.5
// election timeouts), so its run passes a longer one.
const leaseMs = Number(leaseText ?? 1000)
let seed = Number(seedText) >>> 0
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
// KEY, KEY:N for a semaphore of N, or KEY:rw for a lock taken shared (read) or exclusive at random.
const keys = keyList.split(',').map((spec) => {
  const [name, mode] = spec.split(':')
  return {name, limit: mode && mode !== 'rw' ? Number(mode) : undefined, readWrite: mode === 'rw'}
})
const client = await connect({endpoints: endpoint, owner: `${mode}-${process.pid}`, requestTimeoutMs: 800, connectTimeoutMs: 800})
const write = (key, grant, shared) =>
  appendFileSync(log, `${JSON.stringify({key, token: grant.token, fence: grant.fence, worker: process.pid, t: String(grant.t), ...(shared ? {shared} : {})})}\n`)

for (;;) {
  const {name: key, limit, readWrite} = keys[Math.floor(random() * keys.length)]
  const shared = readWrite && random() < 0.6
  let granted = null
  const lock = client.createAutoRenewalLock(key, {
    leaseMs,
    limit,
    shared,
    retryMillis: [100, 200],
    onAcquired: (grant) => (granted ??= {token: grant.token, fence: grant.fence, signal: lock.signal}),
  })
  try {
    await lock.ready
  } catch {
    continue
  }
  // A number of writes, not a time: a worker paused mid-way still has writes to make after.
  const count = 20 + Math.floor(random() * 80)
  for (let i = 0; i < count; i++) {
    const t = process.hrtime.bigint()
    if (mode === 'isHeld') {
      if (!lock.isHeld()) break
      write(key, {token: lock.token, fence: lock.fence, t}, shared)
    } else if (mode === 'signal') {
      if (granted.signal.aborted) break
      write(key, {...granted, t}, shared)
    } else {
      write(key, {...granted, t}, shared)
    }
    await sleep(10)
  }
  await lock.close()
}
