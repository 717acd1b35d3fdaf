// Benchmarks: figures printed next to a reference measured in the same run. Nothing is asserted.
// Every load loop is bounded in count and time; all traffic stays on loopback.
//
//   npm run bench            (builds first)
//   node bench/run.js --quick
//   node bench/run.js --lockd-only --baseline ../other-checkout
//        lockd's figures next to those of another built checkout's lockd, in the same run
//   node bench/run.js --no-redis      without the side-by-side with Redis (run when redis-server is installed)
//   node bench/run.js --scale [N]     only the scale section: N (1M) held locks, RSS, a watch of them all, restart time
//   node bench/run.js --startup       only the CLI's start-up (process wall times)
//   node bench/run.js --side-by-side  only lockd next to Redis and to a bare Node echo server (multi-process lockers)
import {spawn, spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {availableParallelism, tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {connect} from '../dist/client/index.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const bin = join(root, 'bin', 'run.js')
const launcher = join(root, 'bin', 'lockctl')
const quick = process.argv.includes('--quick')
const lockdOnly = process.argv.includes('--lockd-only')
const etcdOnly = process.argv.includes('--etcd-only')
const baselineAt = process.argv.indexOf('--baseline')
const baseline = baselineAt === -1 ? null : process.argv[baselineAt + 1]
const work = mkdtempSync(join(tmpdir(), 'lockctl-bench-'))
const children = []
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
  rmSync(work, {recursive: true, force: true})
})

function pct(values, p) {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}
const us = (ms) => `${(ms * 1000).toFixed(0)} µs`
const msf = (ms) => `${ms.toFixed(1)} ms`
function row(label, value, reference, ratio) {
  console.log(`  ${label.padEnd(46)} ${String(value).padStart(14)}   ${reference ? `ref: ${reference}` : ''}${ratio ? `  (${ratio})` : ''}`)
}

async function startLockd(args, serverBin = bin) {
  const child = spawn(process.execPath, [serverBin, 'server', '--listen', '127.0.0.1:0', ...args], {stdio: ['ignore', 'ignore', 'pipe']})
  children.push(child)
  let err = ''
  const port = await new Promise((resolve, reject) => {
    child.stderr.on('data', (c) => {
      err += c
      const m = /lockds?:\/\/127\.0\.0\.1:(\d+)/.exec(err)
      if (m) resolve(Number(m[1]))
    })
    child.on('exit', () => reject(new Error(err)))
  })
  return {child, endpoint: `lockd://127.0.0.1:${port}`}
}

async function processBench() {
  const runs = quick ? 5 : 25
  const ca = process.env.NODE_EXTRA_CA_CERTS
  // Every process is started without the machine's extra CA bundle (it costs every Node start
  // ~30 ms here, and users' machines mostly do not set it); then the same with it, if set.
  for (const withCa of ca ? [false, true] : [false]) {
    // (Without NODE_OPTIONS: with it, bin/lockctl takes the ordinary start; docs/startup.md.)
    const base = {HOME: work, XDG_STATE_HOME: join(work, 'state'), LOCKCTL_ENDPOINTS: '', NODE_EXTRA_CA_CERTS: withCa ? ca : undefined, NODE_OPTIONS: undefined}
    const env = Object.fromEntries(Object.entries({...process.env, ...base}).filter(([, v]) => v !== undefined))
    console.log(`\nCLI process wall time, median of ${runs} interleaved runs, embedded lockd running; NODE_EXTRA_CA_CERTS ${withCa ? 'set' : 'unset'}`)
    console.log('  lockctl = the package\'s bin (bin/lockctl: the hot commands from the start-up snapshot); bin/run.js = the ordinary start')
    const run = (args, command = process.execPath) => {
      const start = performance.now()
      const r = spawnSync(command, args, {env, encoding: 'utf8'})
      if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr}`)
      return {elapsed: performance.now() - start, stdout: r.stdout}
    }
    const lockctl = (args) => run(args, launcher)
    run([bin, 'status']) // starts the embedded lockd
    const times = {
      'node -e 0': [],
      'lockctl --version': [],
      'node --snapshot-blob ... --version': [],
      'lockctl lock K': [],
      'lockctl unlock K --token T': [],
      'lockctl status K': [],
      'lockctl hold K -- true': [],
      'node bin/run.js --version': [],
      'node bin/run.js lock K': [],
    }
    // Keys of their own in each pass: the first pass's locks are still held (recovered by the restarted lockd).
    const k = (name) => `${withCa ? 'ca-' : ''}${name}`
    for (let i = 0; i < runs; i++) {
      times['node -e 0'].push(run(['-e', '0']).elapsed)
      times['lockctl --version'].push(lockctl(['--version']).elapsed)
      // The launcher answers a bare --version from the snapshot's stamp without starting Node: the
      // snapshot's own answer to it is the floor every hot command starts from.
      times['node --snapshot-blob ... --version'].push(run(['--snapshot-blob', join(root, 'dist', 'snapshot', 'lockctl.blob'), root, '--version']).elapsed)
      const lock = lockctl(['lock', k(`bench-${i}`)])
      times['lockctl lock K'].push(lock.elapsed)
      times['lockctl status K'].push(lockctl(['status', k(`bench-${i}`)]).elapsed)
      times['lockctl unlock K --token T'].push(lockctl(['unlock', k(`bench-${i}`), '--token', lock.stdout.trim()]).elapsed)
      times['lockctl hold K -- true'].push(lockctl(['hold', k(`bench-h-${i}`), '--quiet', '--', 'true']).elapsed)
      times['node bin/run.js --version'].push(run([bin, '--version']).elapsed)
      times['node bin/run.js lock K'].push(run([bin, 'lock', k(`bench-p-${i}`)]).elapsed)
    }
    const floor = pct(times['node -e 0'], 50)
    for (const [label, values] of Object.entries(times)) row(label, msf(pct(values, 50)), label === 'node -e 0' ? '' : `node -e 0 ${msf(floor)}`, label === 'node -e 0' ? '' : `${(pct(values, 50) / floor).toFixed(2)}× node -e 0`)
    const st = JSON.parse(run([bin, 'status', '--json']).stdout)
    process.kill(st.server.pid, 'SIGTERM')
    await new Promise((resolve) => setTimeout(resolve, 300))
  }
}

async function sequential(endpoint, label, extra = {}) {
  const client = await connect({endpoints: endpoint, owner: 'bench', ...extra})
  const lock = client.createLock('seq')
  const n = quick ? 300 : 2000
  const pairs = []
  const pings = []
  const backend = client.backend
  for (let i = 0; i < n + 100; i++) {
    const t0 = performance.now()
    await lock.acquire({leaseMs: 10_000})
    await lock.unlock()
    const t1 = performance.now()
    await backend.info()
    const t2 = performance.now()
    if (i >= 100) {
      pairs.push(t1 - t0)
      pings.push(t2 - t1)
    }
  }
  row(`${label}: lock+unlock pair p50`, us(pct(pairs, 50)), `request round trip p50 ${us(pct(pings, 50))}`)
  row(`${label}: lock+unlock pair p99`, us(pct(pairs, 99)), `request round trip p99 ${us(pct(pings, 99))}`)
  await client.close()
  return {p50: pct(pairs, 50), p99: pct(pairs, 99)}
}

/**
 * Pairs per second of `concurrency` connections, each taking and giving back the lock `makeLock`
 * gives it (by default its own plain lock), for the bench's duration (and at most 2M pairs).
 */
async function pairsPerSecond(endpoint, concurrency, makeLock = (client, i) => client.createLock(`tp-${concurrency}-${i}`), extra = {}) {
  const clients = await Promise.all(Array.from({length: concurrency}, (_, i) => connect({endpoints: endpoint, owner: `c${i}`, ...extra})))
  const durationMs = quick ? 1000 : 3000
  let done = 0
  const deadline = performance.now() + durationMs
  const start = performance.now()
  await Promise.all(
    clients.map(async (client, i) => {
      const lock = makeLock(client, i)
      while (performance.now() < deadline && done < 2_000_000) {
        await lock.acquire({leaseMs: 10_000, waitMs: 10_000})
        await lock.unlock()
        done++
      }
    }),
  )
  const rate = done / ((performance.now() - start) / 1000)
  await Promise.all(clients.map((c) => c.close()))
  return rate
}

async function throughput(endpoint, label, concurrency, extra = {}) {
  const rate = await pairsPerSecond(endpoint, concurrency, undefined, extra)
  row(`${label}: pairs/s, ${concurrency} connection(s)`, Math.round(rate).toLocaleString('en'))
  return rate
}

/**
 * Semaphores and shared locks next to plain locks, 64 connections each: every connection takes
 * and gives back (a) its own plain lock (the reference), (b) a slot of one semaphore of 64 (no
 * waiting: the cost of a name with many holders), (c) a slot of one semaphore of 8 (56 always
 * queued: hand-offs), (d) a shared grant of one lock.
 */
async function semaphoreBench(endpoint, label) {
  const round = Date.now()
  const plain = await pairsPerSecond(endpoint, 64, (client, i) => client.createLock(`sem-ref-${round}-${i}`))
  const wide = await pairsPerSecond(endpoint, 64, (client) => client.createSemaphore(`sem-64-${round}`, {limit: 64}))
  const narrow = await pairsPerSecond(endpoint, 64, (client) => client.createSemaphore(`sem-8-${round}`, {limit: 8}))
  const shared = await pairsPerSecond(endpoint, 64, (client) => client.createLock(`sem-shared-${round}`, {shared: true}))
  const reference = `plain locks ${Math.round(plain).toLocaleString('en')}`
  row(`${label}: semaphore of 64, one name, pairs/s`, Math.round(wide).toLocaleString('en'), reference, `${(wide / plain).toFixed(2)}×`)
  row(`${label}: semaphore of 8, one name, pairs/s`, Math.round(narrow).toLocaleString('en'), reference, `${(narrow / plain).toFixed(2)}×`)
  row(`${label}: shared lock, one name, pairs/s`, Math.round(shared).toLocaleString('en'), reference, `${(shared / plain).toFixed(2)}×`)
}

async function handoff(endpoint, label) {
  const contenders = 4
  const clients = await Promise.all(Array.from({length: contenders}, (_, i) => connect({endpoints: endpoint, owner: `h${i}`})))
  const rounds = quick ? 300 : 2000
  const samples = []
  let releasedAt = 0
  let count = 0
  let stop = false
  await Promise.all(
    clients.map(async (client) => {
      const lock = client.createLock('handoff')
      while (!stop) {
        await lock.acquire({leaseMs: 10_000, waitMs: 10_000})
        if (releasedAt) samples.push(performance.now() - releasedAt)
        if (++count >= rounds) stop = true
        releasedAt = performance.now()
        await lock.unlock()
      }
    }),
  )
  row(`${label}: hand-off (unlock → next holds) p50`, us(pct(samples, 50)))
  row(`${label}: hand-off p99`, us(pct(samples, 99)))
  await Promise.all(clients.map((c) => c.close()))
  return {p50: pct(samples, 50), p99: pct(samples, 99)}
}

function rssOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024
}

async function memory() {
  const lockd = await startLockd(['--in-memory'])
  await new Promise((r) => setTimeout(r, 300))
  const idle = rssOf(lockd.child.pid)
  const holders = await Promise.all(Array.from({length: 8}, (_, i) => connect({endpoints: lockd.endpoint, owner: `holder-${i}`, requestTimeoutMs: 60_000})))
  const total = quick ? 20_000 : 100_000
  const waitersWanted = total / 10
  // Bounded batches of pipelined acquires.
  for (let base = 0; base < total; base += 2000) {
    await Promise.all(
      Array.from({length: 2000}, (_, j) => holders[(base + j) % holders.length].createLock(`mem/${base + j}`).acquire({leaseMs: 3_600_000})),
    )
  }
  const waiterClient = await connect({endpoints: lockd.endpoint, owner: 'waiter', requestTimeoutMs: 60_000})
  const waits = []
  for (let i = 0; i < waitersWanted; i++) waits.push(waiterClient.createLock(`mem/${i}`).acquire({waitMs: 3_600_000}).catch(() => {}))
  const info = await (async () => {
    for (;;) {
      const i = await holders[0].info()
      if (i.waiters >= waitersWanted) return i
      await new Promise((r) => setTimeout(r, 100))
    }
  })()
  const loaded = rssOf(lockd.child.pid)
  row(`lockd RSS, ${info.locks.toLocaleString('en')} locks + ${info.waiters.toLocaleString('en')} waiters`, `${loaded.toFixed(0)} MB`, `idle lockd ${idle.toFixed(0)} MB`)
  await waiterClient.close()
  await Promise.all(holders.map((c) => c.close()))
  lockd.child.kill('SIGKILL')
}

console.log(`lockctl benchmarks — ${new Date().toISOString()}, node ${process.version}, ${quick ? 'quick' : 'full'} run`)
if (process.argv.includes('--scale')) {
  await scale()
  process.exit(0)
}
if (process.argv.includes('--side-by-side')) {
  await sideBySide()
  process.exit(0)
}
if (!lockdOnly && !etcdOnly) await processBench()
if (process.argv.includes('--startup')) process.exit(0)

for (const [label, args] of etcdOnly ? [] : [
  ['lockd in memory', ['--in-memory']],
  ['lockd durable (fdatasync, group commit)', ['--data-dir', 'DATA']],
]) {
  const servers = [['this checkout', bin]]
  // The client process warms up as it goes: with --baseline-first the baseline runs first.
  if (baseline) servers[process.argv.includes('--baseline-first') ? 'unshift' : 'push']([`baseline ${baseline}`, join(baseline, 'bin', 'run.js')])
  const results = []
  for (const [name, serverBin] of servers) {
    console.log(`\n${label}, ${name} (separate process, TCP loopback)`)
    const lockd = await startLockd(
      args.map((a) => (a === 'DATA' ? mkdtempSync(join(work, 'data-')) : a)),
      serverBin,
    )
    const sequentialFigures = await sequential(lockd.endpoint, 'sequential')
    const rates = {}
    for (const c of [1, 8, 64, 256]) rates[c] = await throughput(lockd.endpoint, 'concurrent', c)
    const handoffFigures = await handoff(lockd.endpoint, '4 contenders')
    await semaphoreBench(lockd.endpoint, '64 connections')
    lockd.child.kill('SIGTERM')
    results.push({sequentialFigures, rates, handoffFigures})
  }
  if (baseline) {
    const [now, before] = servers[0][1] === bin ? results : [results[1], results[0]]
    console.log(`\n${label}: this checkout next to the baseline (ratio: this / baseline)`)
    row('pair p50', us(now.sequentialFigures.p50), `baseline ${us(before.sequentialFigures.p50)}`, `${(now.sequentialFigures.p50 / before.sequentialFigures.p50).toFixed(2)}×`)
    row('pair p99', us(now.sequentialFigures.p99), `baseline ${us(before.sequentialFigures.p99)}`, `${(now.sequentialFigures.p99 / before.sequentialFigures.p99).toFixed(2)}×`)
    row('pairs/s, 64 connections', Math.round(now.rates[64]).toLocaleString('en'), `baseline ${Math.round(before.rates[64]).toLocaleString('en')}`, `${(now.rates[64] / before.rates[64]).toFixed(2)}×`)
    row('hand-off p50', us(now.handoffFigures.p50), `baseline ${us(before.handoffFigures.p50)}`, `${(now.handoffFigures.p50 / before.handoffFigures.p50).toFixed(2)}×`)
  }
}

async function tlsBench() {
  if (spawnSync('openssl', ['version']).status !== 0) {
    console.log('\nlockd over TLS: skipped (openssl is not installed)')
    return
  }
  const dir = mkdtempSync(join(work, 'tls-'))
  const file = (name) => join(dir, name)
  const openssl = (...args) => spawnSync('openssl', args, {stdio: 'ignore'})
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=bench CA', '-keyout', file('ca-key.pem'), '-out', file('ca.pem'))
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', file('key.pem'), '-out', file('csr.pem'))
  writeFileSync(file('san.cnf'), 'subjectAltName=IP:127.0.0.1\n')
  openssl('x509', '-req', '-in', file('csr.pem'), '-CA', file('ca.pem'), '-CAkey', file('ca-key.pem'), '-CAcreateserial', '-days', '1', '-extfile', file('san.cnf'), '-out', file('cert.pem'))
  console.log('\nlockd over TLS next to plain TCP (in memory, separate process, loopback)')
  const plain = await startLockd(['--in-memory'])
  const secure = await startLockd(['--in-memory', '--tls-cert', file('cert.pem'), '--tls-key', file('key.pem')])
  const secureEndpoint = secure.endpoint.replace('lockd://', 'lockds://')
  const tls = {credentials: {cacert: file('ca.pem')}}
  const plainPair = await sequential(plain.endpoint, 'plain TCP')
  const tlsPair = await sequential(secureEndpoint, 'TLS', tls)
  const plainRate = await throughput(plain.endpoint, 'plain TCP', 64)
  const tlsRate = await throughput(secureEndpoint, 'TLS', 64, tls)
  row('TLS / plain: pair p50', `${(tlsPair.p50 / plainPair.p50).toFixed(2)}×`)
  row('TLS / plain: pairs/s, 64 connections', `${(tlsRate / plainRate).toFixed(2)}×`)
  plain.child.kill('SIGTERM')
  secure.child.kill('SIGTERM')
}

if (!lockdOnly && !etcdOnly) await tlsBench()

if (!lockdOnly && !etcdOnly) {
  console.log('\nmemory')
  await memory()
}

async function etcdBench() {
  if (spawnSync('etcd', ['--version']).status !== 0) {
    console.log('\netcd: skipped (etcd is not installed: apt-get install etcd-server)')
    return
  }
  const port = 22379 + Math.floor(Math.random() * 100) * 2
  const child = spawn('etcd', ['--name', 'bench', '--data-dir', join(work, 'etcd'), '--listen-client-urls', `http://127.0.0.1:${port}`, '--advertise-client-urls', `http://127.0.0.1:${port}`,
    '--listen-peer-urls', `http://127.0.0.1:${port + 1}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${port + 1}`, '--initial-cluster', `bench=http://127.0.0.1:${port + 1}`, '--log-level', 'error'], {stdio: 'ignore'})
  children.push(child)
  const {Etcd3} = await import('etcd3')
  const raw = new Etcd3({hosts: `http://127.0.0.1:${port}`})
  for (let i = 0; ; i++) {
    try {
      await raw.put('bench/ready').value('1')
      break
    } catch (error) {
      if (i > 100) throw error
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  const endpoint = `etcd://127.0.0.1:${port}`
  console.log(`\netcd 1 member (separate process, loopback): lockctl's etcd backend next to the etcd3 package's Lock`)
  const n = quick ? 100 : 500
  const writes = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    await raw.put(`bench/w${i % 10}`).value('x')
    writes.push(performance.now() - t)
  }
  const w50 = pct(writes, 50)
  row('etcd write round trip (put) p50', us(w50))
  const client = await connect({endpoints: endpoint, owner: 'bench'})
  const ours = []
  for (let i = 0; i < n; i++) {
    const lock = client.createLock('bench/seq')
    const t = performance.now()
    await lock.acquire({leaseMs: 10_000})
    await lock.unlock()
    ours.push(performance.now() - t)
  }
  const theirs = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    const lock = raw.lock('bench/seq3').ttl(10)
    await lock.acquire()
    await lock.release()
    theirs.push(performance.now() - t)
  }
  row('sequential pair p50, lockctl', us(pct(ours, 50)), `etcd3 Lock ${us(pct(theirs, 50))}`, `${(pct(ours, 50) / w50).toFixed(1)} write round trips`)
  row('sequential pair p99, lockctl', us(pct(ours, 99)), `etcd3 Lock ${us(pct(theirs, 99))}`)
  await client.close()

  for (const concurrency of [1, 64]) {
    const durationMs = quick ? 2000 : 5000
    const clients = await Promise.all(Array.from({length: concurrency}, (_, i) => connect({endpoints: endpoint, owner: `c${i}`})))
    let done = 0
    let deadline = performance.now() + durationMs
    let start = performance.now()
    await Promise.all(clients.map(async (c, i) => {
      while (performance.now() < deadline) {
        const lock = c.createLock(`bench/tp${concurrency}-${i}`)
        await lock.acquire({leaseMs: 10_000})
        await lock.unlock()
        done++
      }
    }))
    const oursTp = done / ((performance.now() - start) / 1000)
    await Promise.all(clients.map((c) => c.close()))
    const raws = Array.from({length: concurrency}, () => new Etcd3({hosts: `http://127.0.0.1:${port}`}))
    done = 0
    deadline = performance.now() + durationMs
    start = performance.now()
    await Promise.all(raws.map(async (r, i) => {
      while (performance.now() < deadline) {
        const lock = r.lock(`bench/tp3-${concurrency}-${i}`).ttl(10)
        await lock.acquire()
        await lock.release()
        done++
      }
    }))
    const theirsTp = done / ((performance.now() - start) / 1000)
    for (const r of raws) r.close()
    row(`pairs/s, ${concurrency} client(s), lockctl`, Math.round(oursTp).toLocaleString('en'), `etcd3 Lock ${Math.round(theirsTp).toLocaleString('en')}`, `${(oursTp / theirsTp).toFixed(2)}×`)
  }
  raw.close()
  child.kill('SIGKILL')
}
/** A free loopback port (for servers that cannot be told to pick one and say which). */
async function freePort() {
  const {createServer} = await import('node:net')
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const {port} = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function startRedis(persist) {
  const port = await freePort()
  const dir = mkdtempSync(join(work, 'redis-'))
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning']
  args.push(...(persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']))
  const child = spawn('redis-server', args, {stdio: 'ignore'})
  children.push(child)
  for (let i = 0; i < 100; i++) {
    if (spawnSync('redis-cli', ['-p', String(port), 'ping'], {encoding: 'utf8'}).stdout?.trim() === 'PONG') return {child, port}
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error('redis-server did not answer')
}

/** The floor (bench/echo-server.mjs): a bare Node echo server; resolves with its port once it listens. */
async function startEcho() {
  const child = spawn(process.execPath, [join(root, 'bench', 'echo-server.mjs')], {stdio: ['ignore', 'pipe', 'inherit']})
  children.push(child)
  const port = await new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (c) => {
      out += c
      if (out.includes('\n')) resolve(Number(out.trim()))
    })
    child.on('exit', () => reject(new Error('bench/echo-server.mjs exited before it listened')))
  })
  return {child, port}
}

/** CPU time (user + system, µs) a process has used so far, from /proc (null where there is none). */
function cpuUsOf(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100 // utime + stime, in USER_HZ (100/s)
  } catch {
    return null
  }
}

/**
 * `processes` client processes of bench/lockers.mjs, `lockers` lockers in all: pairs/s, pair
 * times, and the CPU per pair of the server (`serverPid`) and of the clients.
 */
async function lockersRun(kind, target, lockers, processes, durationMs, serverPid) {
  const each = Math.max(1, Math.floor(lockers / processes))
  const runs = Array.from({length: processes}, (_, i) =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(root, 'bench', 'lockers.mjs'), kind, String(target), String(each), String(durationMs), `p${i}`], {stdio: ['ignore', 'pipe', 'inherit']})
      children.push(child)
      let out = ''
      child.stdout.on('data', (c) => (out += c))
      child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`lockers.mjs ${kind} exited ${code}`))))
    }),
  )
  const start = performance.now()
  const serverCpuBefore = cpuUsOf(serverPid)
  const results = await Promise.all(runs)
  const seconds = (performance.now() - start) / 1000
  const serverCpuAfter = cpuUsOf(serverPid)
  const latencies = results.flatMap((r) => r.latencies)
  const pairs = results.reduce((sum, r) => sum + r.pairs, 0)
  const serverCpu = serverCpuBefore === null || serverCpuAfter === null ? null : (serverCpuAfter - serverCpuBefore) / pairs
  const clientCpu = results.reduce((sum, r) => sum + r.cpuUs, 0) / pairs
  return {rate: pairs / seconds, p50: pct(latencies, 50), p99: pct(latencies, 99), serverCpu, clientCpu}
}

/**
 * lockd next to Redis (issue 16), every system on loopback TCP, the clients in separate
 * processes (one Node client process saturates near 30k pairs/s): one locker alone, and 64
 * lockers over 4 processes. Redis's lock is SET NX PX + a compare-and-delete script; it has no
 * queue, so there is no hand-off figure for it.
 */
async function sideBySide() {
  if (spawnSync('redis-server', ['--version']).status !== 0) {
    console.log('\nlockd next to Redis: skipped (redis-server is not installed: apt-get install redis-server)')
    return
  }
  const durationMs = quick ? 1500 : 4000
  console.log(`\nlockd next to Redis (clients in separate processes; ${durationMs / 1000}s per figure)`)
  const systems = [
    ['lockd durable', async () => startLockd(['--data-dir', mkdtempSync(join(work, 'data-'))]), 'lockd'],
    ['Redis appendfsync always', async () => startRedis(true), 'redis'],
    ['lockd in memory', async () => startLockd(['--in-memory']), 'lockd'],
    ['Redis no persistence', async () => startRedis(false), 'redis'],
    ['a bare Node echo server', startEcho, 'echo'],
  ]
  const figures = {}
  const cores = availableParallelism()
  for (const [name, start, kind] of systems) {
    const server = await start()
    const target = kind === 'lockd' ? server.endpoint : server.port
    const one = await lockersRun(kind, target, 1, 1, durationMs, server.child.pid)
    const many = await lockersRun(kind, target, 64, 4, durationMs, server.child.pid)
    figures[name] = {one, many}
    server.child.kill('SIGKILL')
  }
  const pair = (ours, theirs) => {
    const a = figures[ours]
    const b = figures[theirs]
    console.log(`  ${ours} / ${theirs}`)
    row('  pair p50, one locker', us(a.one.p50), `${us(b.one.p50)}`, `${(a.one.p50 / b.one.p50).toFixed(2)}×`)
    row('  pair p99, one locker', us(a.one.p99), `${us(b.one.p99)}`, `${(a.one.p99 / b.one.p99).toFixed(2)}×`)
    row('  pairs/s, 64 lockers in 4 processes', Math.round(a.many.rate).toLocaleString('en'), Math.round(b.many.rate).toLocaleString('en'), `${(a.many.rate / b.many.rate).toFixed(2)}×`)
    row('  pair p99, 64 lockers', us(a.many.p99), `${us(b.many.p99)}`, `${(a.many.p99 / b.many.p99).toFixed(2)}×`)
    if (a.many.serverCpu !== null && b.many.serverCpu !== null) {
      // Where pairs/s goes when the clients share the machine's cores with the server: the CPU
      // of one pair, server and clients (their own process.cpuUsage), and the rate those allow.
      const cpu = (f) => `${f.serverCpu.toFixed(1)} + ${f.clientCpu.toFixed(1)} µs`
      row('  CPU per pair at 64 lockers: server + clients', cpu(a.many), cpu(b.many), `${((a.many.serverCpu + a.many.clientCpu) / (b.many.serverCpu + b.many.clientCpu)).toFixed(2)}×`)
      const ceiling = (f) => Math.round((cores * 1e6) / (f.serverCpu + f.clientCpu)).toLocaleString('en')
      row(`  pairs/s ${cores} cores allow at that CPU`, ceiling(a.many), ceiling(b.many))
    }
  }
  pair('lockd durable', 'Redis appendfsync always')
  pair('lockd in memory', 'Redis no persistence')
  // Where the rest goes: the same load against a server that is nothing but Node's own socket
  // path (two round trips of 64 bytes per pair). What lockd costs above it is its own work
  // (protocol, lock table, client library); what it leaves to reach Redis is Node's floor.
  console.log('  (the floor: a bare Node echo server, two round trips of 64 bytes per pair, no protocol, no lock)')
  pair('lockd in memory', 'a bare Node echo server')
}

/**
 * `--scale [N]` (default 1M): N held locks taken by one client process, 256 in flight over 4
 * connections; the acquisition rate per tenth of the way (does it stay flat as the table
 * grows?), lockd's RSS, and for the durable lockd the time from a restart after kill -9 until it
 * answers again. Redis holding the same N keys (token + TTL) is the reference.
 */
async function scale() {
  const at = process.argv.indexOf('--scale')
  const total = Number(process.argv[at + 1]) > 0 ? Number(process.argv[at + 1]) : 1_000_000
  const inFlight = 256
  const fill = async (acquireOne) => {
    const tenths = []
    let next = 0
    let segmentStart = performance.now()
    let longest = 0
    const worker = async () => {
      while (next < total) {
        const i = next++
        const began = performance.now()
        await acquireOne(i)
        longest = Math.max(longest, performance.now() - began)
        if ((i + 1) % (total / 10) === 0) {
          const now = performance.now()
          tenths.push(Math.round(total / 10 / ((now - segmentStart) / 1000)))
          segmentStart = now
        }
      }
    }
    const start = performance.now()
    await Promise.all(Array.from({length: inFlight}, worker))
    return {rate: total / ((performance.now() - start) / 1000), tenths, longest}
  }
  console.log(`\nScale: ${total.toLocaleString('en')} held locks, one client process, ${inFlight} in flight over 4 connections`)
  let keptInMemory = null
  for (const durable of [false, true]) {
    const dataDir = durable ? mkdtempSync(join(work, 'scale-')) : null
    const lockd = await startLockd(durable ? ['--data-dir', dataDir] : ['--in-memory'])
    const clients = await Promise.all(Array.from({length: 4}, (_, i) => connect({endpoints: lockd.endpoint, owner: `scale-${i}`, requestTimeoutMs: 120_000})))
    const {rate, tenths, longest} = await fill((i) => clients[i % 4].createLock(`scale/${i}`).acquire({leaseMs: 3_600_000}))
    const label = durable ? 'lockd durable' : 'lockd in memory'
    row(`${label}: acquisitions/s`, Math.round(rate).toLocaleString('en'), `by tenths: ${tenths.map((t) => t.toLocaleString('en')).join(' ')}`)
    row(`${label}: longest single acquisition`, msf(longest), '(a stall shows here: lockd answering nothing)')
    row(`${label}: RSS`, `${rssOf(lockd.child.pid).toFixed(0)} MB`, 'as the last acquisition is answered')
    // lockd collects the burst's garbage once no request has come for 1-2 s (idle-collector.ts).
    await new Promise((r) => setTimeout(r, 5000))
    row(`${label}: RSS, quiet 5 s later`, `${rssOf(lockd.child.pid).toFixed(0)} MB`)
    await Promise.all(clients.map((c) => c.close()))
    if (durable) {
      lockd.child.kill('SIGKILL')
      await new Promise((r) => lockd.child.once('exit', r))
      const start = performance.now()
      const again = await startLockd(['--data-dir', dataDir])
      const probe = await connect({endpoints: again.endpoint, owner: 'probe'})
      const info = await probe.info()
      const ms = performance.now() - start
      row(`${label}: kill -9, restart until it answers`, msf(ms), `${Number(info.locks).toLocaleString('en')} locks recovered`)
      row(`${label}: RSS after the restart`, `${rssOf(again.child.pid).toFixed(0)} MB`)
      await new Promise((r) => setTimeout(r, 5000))
      row(`${label}: RSS after the restart, quiet 5 s later`, `${rssOf(again.child.pid).toFixed(0)} MB`)
      await probe.close()
      again.child.kill('SIGKILL')
    } else {
      // Kept for the watch below, measured last: the bench process decodes the snapshot's
      // ~100 MB, and the garbage it leaves would stall the acquisitions measured after it.
      keptInMemory = lockd
    }
  }
  if (spawnSync('redis-server', ['--version']).status === 0) {
    const redis = await startRedis(false)
    const {default: Redis} = await import('ioredis')
    const client = new Redis({host: '127.0.0.1', port: redis.port})
    const {rate} = await fill((i) => client.set(`scale/${i}`, `token-${i}-xxxxxxxxxxxxxxxxxx`, 'PX', 3_600_000, 'NX'))
    row('Redis (no persistence): SET NX PX/s', Math.round(rate).toLocaleString('en'))
    row('Redis: RSS', `${rssOf(redis.child.pid).toFixed(0)} MB`)
    await client.quit()
    redis.child.kill('SIGKILL')
  }
  if (keptInMemory) {
    // A watch of every name gets its snapshot in one piece (it must match the events after it):
    // how long lockd answers nobody else meanwhile, seen by a client asking all along.
    const lockd = keptInMemory
    const asker = await connect({endpoints: lockd.endpoint, owner: 'asker'})
    const watcher = await connect({endpoints: lockd.endpoint, owner: 'watcher', requestTimeoutMs: 120_000})
    const stop = new AbortController()
    const began = performance.now()
    const first = watcher.watch({prefix: ''}, {signal: stop.signal})[Symbol.asyncIterator]().next()
    let longest = 0
    let done = false
    void first.finally(() => (done = true))
    while (!done) {
      const asked = performance.now()
      await asker.info()
      longest = Math.max(longest, performance.now() - asked)
    }
    const snapshot = (await first).value
    row('lockd in memory: watch of every name, snapshot', msf(performance.now() - began), `${snapshot.locks.length.toLocaleString('en')} locks; another client waited up to ${msf(longest)}`)
    stop.abort()
    await Promise.all([watcher.close(), asker.close()])
    lockd.child.kill('SIGKILL')
  }
}

if (!etcdOnly && !process.argv.includes('--no-redis')) await sideBySide()
if (!lockdOnly) await etcdBench()
process.exit(0)
