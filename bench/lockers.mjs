// One client process of the multi-process benchmark (bench/run.js, "Side by side"): runs
// LOCKERS lockers, each taking and giving back its own lock until DURATION ms are over (and at
// most 1M pairs in all), then prints {"pairs": N, "latencies": [...sampled pair times in ms],
// "cpuUs": CPU time (user + system, µs) this process spent while the lockers ran}.
//
//   node bench/lockers.mjs lockd|redis|echo ENDPOINT_OR_PORT LOCKERS DURATION_MS TAG
//
// `echo`: the floor (bench/echo-server.mjs), two round trips of 64 bytes per pair.
import {randomBytes} from 'node:crypto'

const [kind, target, lockersText, durationText, tag] = process.argv.slice(2)
const lockers = Number(lockersText)
const durationMs = Number(durationText)
let pairs = 0
const latencies = []
let cpuAtStart = null
const sample = (ms) => {
  if (latencies.length < 20_000) latencies.push(ms)
}

if (kind === 'lockd') {
  const {connect} = await import('../dist/client/index.js')
  const clients = await Promise.all(Array.from({length: lockers}, (_, i) => connect({endpoints: target, owner: `${tag}-${i}`})))
  const deadline = performance.now() + durationMs
  cpuAtStart = process.cpuUsage()
  await Promise.all(
    clients.map(async (client, i) => {
      const lock = client.createLock(`mp-${tag}-${i}`)
      while (performance.now() < deadline && pairs < 1_000_000) {
        const t0 = performance.now()
        await lock.acquire({leaseMs: 10_000})
        await lock.unlock()
        sample(performance.now() - t0)
        pairs++
      }
    }),
  )
  await Promise.all(clients.map((c) => c.close()))
} else if (kind === 'echo') {
  const {connect} = await import('node:net')
  const sockets = await Promise.all(
    Array.from({length: lockers}, () => new Promise((resolve, reject) => {
      const socket = connect(Number(target), '127.0.0.1', () => resolve(socket))
      socket.setNoDelay(true)
      socket.once('error', reject)
    })),
  )
  const deadline = performance.now() + durationMs
  cpuAtStart = process.cpuUsage()
  const message = Buffer.alloc(64, 1)
  await Promise.all(
    sockets.map(async (socket) => {
      // One message in flight per socket: 64 bytes out, 64 back (in one or more chunks).
      let waiting = null
      let received = 0
      socket.on('data', (chunk) => {
        received += chunk.length
        if (received >= 64 && waiting) {
          received -= 64
          const done = waiting
          waiting = null
          done()
        }
      })
      const roundTrip = () => new Promise((resolve) => {
        waiting = resolve
        socket.write(message)
      })
      while (performance.now() < deadline && pairs < 1_000_000) {
        const t0 = performance.now()
        await roundTrip()
        await roundTrip()
        sample(performance.now() - t0)
        pairs++
      }
    }),
  )
  for (const socket of sockets) socket.destroy()
} else {
  // The usual single-instance Redis lock: SET NX PX with a random token, released by a script
  // that deletes the key only if it still holds that token.
  const {default: Redis} = await import('ioredis')
  const clients = Array.from({length: lockers}, () => new Redis({host: '127.0.0.1', port: Number(target), lazyConnect: true, enableOfflineQueue: true}))
  await Promise.all(clients.map((c) => c.connect()))
  for (const c of clients) {
    c.defineCommand('unlock', {numberOfKeys: 1, lua: "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"})
  }
  const deadline = performance.now() + durationMs
  cpuAtStart = process.cpuUsage()
  await Promise.all(
    clients.map(async (client, i) => {
      const key = `mp-${tag}-${i}`
      while (performance.now() < deadline && pairs < 1_000_000) {
        const token = randomBytes(18).toString('base64url')
        const t0 = performance.now()
        if ((await client.set(key, token, 'PX', 10_000, 'NX')) !== 'OK') throw new Error(`${key} was held`)
        await client.unlock(key, token)
        sample(performance.now() - t0)
        pairs++
      }
    }),
  )
  await Promise.all(clients.map((c) => c.quit()))
}
const cpu = process.cpuUsage(cpuAtStart)
process.stdout.write(`${JSON.stringify({pairs, latencies, cpuUs: cpu.user + cpu.system})}\n`)
