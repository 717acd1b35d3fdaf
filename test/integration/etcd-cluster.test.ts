import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {spawn, spawnSync} from 'node:child_process'
import {expect, it} from 'vitest'
import {connect} from '../../src/client/index.js'
import {describeEtcd, startEtcd} from '../helpers/etcd.js'
import {eventually, pausedUntil, pauseProcess, runCli, tempDir} from '../helpers/processes.js'

/** A child script that logs start/end with nanosecond times and runs until `done` exists. */
function worker(log: string, name: string, done?: string): string[] {
  const body = done ? `while [ ! -e ${done} ]; do sleep 0.05; done` : 'sleep 0.3'
  return ['sh', '-c', `echo "start ${name} $(date +%s%N) \${LOCKCTL_FENCE:-$ETCD_LOCK_REV}" >> ${log}; ${body}; echo "end ${name} $(date +%s%N)" >> ${log}`]
}

/** Parse the log and check that the holders never overlapped; returns the order of holders. */
function checkNoOverlap(log: string): string[] {
  const lines = readFileSync(log, 'utf8')
    .trim()
    .split('\n')
    .map((l) => l.split(' '))
  const order: string[] = []
  let holding: string | null = null
  for (const [what, name] of lines) {
    if (what === 'start') {
      expect(holding, `${name} started while ${holding} held the lock`).toBeNull()
      holding = name
      order.push(name)
    } else {
      expect(holding).toBe(name)
      holding = null
    }
  }
  // etcdctl does not always export its revision: compare the fences that are there.
  const fences = lines.filter((l) => l[0] === 'start' && l[3]).map((l) => Number(l[3]))
  for (let i = 1; i < fences.length; i++) expect(fences[i]).toBeGreaterThan(fences[i - 1])
  return order
}

describeEtcd('etcd: a 3-member cluster losing its leader', () => {
  it('no second holder at any time, the waiters keep their order, the holder reports no lost', async () => {
    const etcd = await startEtcd(3)
    const env = {LOCKCTL_ENDPOINTS: etcd.endpoint}
    const dir = tempDir()
    const log = join(dir, 'log')
    const done = join(dir, 'done')
    const holder = runCli(['hold', 'failover', '--lease', '10s', '--', ...worker(log, 'A', done)], {env, timeoutMs: 60_000})
    await eventually(() => existsSync(log))
    const b = runCli(['hold', 'failover', '--lease', '10s', '--', ...worker(log, 'B')], {env, timeoutMs: 60_000})
    await eventually(async () => JSON.parse((await runCli(['status', 'failover', '--json'], {env})).stdout).waiters === 1)
    const c = runCli(['hold', 'failover', '--lease', '10s', '--', ...worker(log, 'C')], {env, timeoutMs: 60_000})
    await eventually(async () => JSON.parse((await runCli(['status', 'failover', '--json'], {env})).stdout).waiters === 2)

    const leader = await etcd.leader()
    await etcd.kill(leader)
    // A new leader is elected. Stay past the whole lease (10 s): the waiters' keys must be kept
    // alive through the surviving members, not expire while their processes still wait.
    await etcd.leader()
    // status names the endpoint that no longer answers, and which member each other one is.
    const cluster = JSON.parse((await runCli(['status', '--json'], {env})).stdout).server
    expect(cluster.endpoints).toEqual(etcd.members.map((m) => ({endpoint: `127.0.0.1:${m.clientPort}`, member: m === leader ? null : m.name, answering: m !== leader})))
    await new Promise((r) => setTimeout(r, 12_000))
    const during = JSON.parse((await runCli(['status', 'failover', '--json'], {env})).stdout)
    expect(during.waiters).toBe(2)
    writeFileSync(done, '')

    const results = await Promise.all([holder, b, c])
    const stderrs = results.map((r, i) => `--- ${'ABC'[i]}:\n${r.stderr}`).join('\n')
    expect(
      results.map((r) => r.code),
      stderrs,
    ).toEqual([0, 0, 0])
    expect(results[0].stderr).not.toMatch(/\blost\b/)
    expect(checkNoOverlap(log), stderrs).toEqual(['A', 'B', 'C'])
    expect(stderrs).not.toMatch(/lost our place/)
  }, 90_000)
})

/** Sum of the metric lines of etcd that match `pattern`. */
async function metric(clientPort: number, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${clientPort}/metrics`)).text()
  let total = 0
  for (const line of text.split('\n')) if (pattern.test(line)) total += Number(line.split(' ').at(-1))
  return total
}

/** Range and Txn calls etcd has served. */
const rangeAndTxnCalls = (clientPort: number) => metric(clientPort, /^grpc_server_handled_total\{.*grpc_method="(Range|Txn)"/)

describeEtcd('etcd: no herd on release', () => {
  it('one release costs etcd the same few Range/Txn calls with 8 queued CLI waiters as with 2', async () => {
    const etcd = await startEtcd(1)
    const env = {LOCKCTL_ENDPOINTS: etcd.endpoint}
    const port = etcd.members[0].clientPort
    const perRelease: number[] = []
    for (const waiters of [2, 8]) {
      const key = `herd-${waiters}`
      const holder = await connect({endpoints: etcd.endpoint, owner: 'holder'})
      const lock = holder.createLock(key)
      await lock.acquire({leaseMs: 60_000})
      // `lockctl lock --wait` follows its place in the queue (for its spinner).
      const runs = Array.from({length: waiters}, () => runCli(['lock', key, '--wait', '1m', '--lease', '60s'], {env, timeoutMs: 60_000}))
      await eventually(async () => (await holder.inspect(key))?.waiters === waiters, 20_000)
      // Every waiter is watching (each CLI waiter has its watch on the name) before we count.
      await eventually(async () => (await metric(port, /^etcd_debugging_mvcc_watcher_total /)) >= waiters, 20_000)
      const before = await rangeAndTxnCalls(port)
      await lock.unlock()
      // The first waiter gets it (and exits); the others only learn their new place.
      await eventually(async () => (await holder.inspect(key))?.waiters === waiters - 1, 20_000)
      // A window for a herd to show: the waiters that did not get the lock learn their place now.
      await new Promise((r) => setTimeout(r, 500))
      perRelease.push((await rangeAndTxnCalls(port)) - before)
      await holder.close()
      for (const run of runs) run.child.kill('SIGTERM')
      await Promise.all(runs)
    }
    // Not one read per waiter: the count does not grow with the queue (2 reads and 2 writes of
    // the releaser and the next holder, and our own inspect calls above).
    expect(perRelease[1], `calls per release with 2 and 8 waiters: ${perRelease.join(', ')}`).toBeLessThanOrEqual(perRelease[0] + 1)
    expect(perRelease[1]).toBeLessThan(10)
  }, 90_000)
})

describeEtcd('etcd: a member that stops answering', () => {
  it('a waiter that gives up while etcd does not answer leaves no key behind once etcd answers again', async () => {
    const etcd = await startEtcd(1)
    const a = await connect({endpoints: etcd.endpoint, owner: 'A', requestTimeoutMs: 1000})
    const b = await connect({endpoints: etcd.endpoint, owner: 'B', requestTimeoutMs: 1000})
    try {
      const holder = a.createLock('frozen')
      await holder.acquire({leaseMs: 30_000})
      const controller = new AbortController()
      const waiting = b.createLock('frozen').acquire({leaseMs: 60_000, waitMs: 120_000, signal: controller.signal})
      await eventually(async () => (await a.inspect('frozen'))?.waiters === 1)
      const pid = etcd.members[0].child!.pid!
      await pauseProcess(pid) // etcd hangs: the give-up's revoke gets no answer
      controller.abort()
      await expect(waiting).rejects.toMatchObject({code: 'ABORTED'})
      process.kill(pid, 'SIGCONT')
      // Gone long before its 60 s lease would have run out (the client pauses the member for a
      // second after the failures: member-pause.ts).
      await eventually(async () => (await a.inspect('frozen'))?.waiters === 0, 20_000)
      await holder.unlock()
    } finally {
      await Promise.all([a.close(), b.close()])
    }
  }, 60_000)

  it("lock --wait and hold --wait on a member that hangs from the start: exit 4 at the wait's end, not at the lease grant's request deadline (--timeout 60s)", async () => {
    const etcd = await startEtcd(1)
    const pid = etcd.members[0].child!.pid!
    for (const [command, ...rest] of [
      ['lock', 'hung/w'],
      ['hold', 'hung/h', '--', 'true'],
    ]) {
      // Before: the aborted try waited for its lease grant (60s here); the run's own limit (20s) stops it first.
      const run = runCli([command, '--wait', '2s', '--endpoints', etcd.endpoint, '--timeout', '60s', ...rest], {timeoutMs: 20_000})
      const result = await pausedUntil(pid, run)
      expect(result.code, result.stderr).toBe(4)
      expect(result.stderr.trim()).toMatch(/^lockctl: gave up waiting for "hung\/[wh]" after 2s: the lock service did not answer$/)
    }
  })

  it('an acquire whose put got no answer leaves no key behind when the client closes at once (a one-shot CLI)', async () => {
    const etcd = await startEtcd(1)
    const pid = etcd.members[0].child!.pid!
    const checker = await connect({endpoints: etcd.endpoint, owner: 'checker'})
    try {
      // The race (does etcd apply the put after the client gave up?) goes either way: several tries.
      for (let i = 0; i < 4; i++) {
        const key = `unanswered-${i}`
        const impatient = await connect({endpoints: etcd.endpoint, owner: 'impatient', requestTimeoutMs: 1000})
        const warm = impatient.createLock(`warm-${i}`) // its session (lease) exists: the put is the one call
        await warm.acquire({leaseMs: 600_000})
        await warm.unlock()
        await pauseProcess(pid)
        try {
          await expect(impatient.createLock(key).acquire({leaseMs: 600_000})).rejects.toMatchObject({code: 'UNREACHABLE'})
          const closed = impatient.close()
          setTimeout(() => process.kill(pid, 'SIGCONT'), 200)
          await closed
        } finally {
          process.kill(pid, 'SIGCONT')
        }
        // Before: held by 'impatient' for its 10-minute lease, by a token nobody had. An absence:
        // no event says a put stuck in etcd will never land, so this gives it a second to (it
        // did within that, before the fix, in every run that failed).
        await new Promise((resolve) => setTimeout(resolve, 1000))
        expect(await checker.inspect(key), key).toBeNull()
      }
    } finally {
      await checker.close()
    }
  }, 90_000)
})

describeEtcd('etcd: interoperability with etcdctl lock', () => {
  for (const first of ['etcdctl', 'lockctl'] as const) {
    it(`etcdctl lock and lockctl hold on one name never overlap (${first} first)`, async () => {
      const etcd = await startEtcd(1)
      const endpoint = `127.0.0.1:${etcd.members[0].clientPort}`
      const env = {LOCKCTL_ENDPOINTS: etcd.endpoint}
      const log = join(tempDir(), 'log')
      const runEtcdctl = () =>
        new Promise<number>((resolve) => {
          const child = spawn('etcdctl', ['--endpoints', endpoint, 'lock', 'shared', '--', ...worker(log, 'etcdctl')], {stdio: 'ignore', env: {...process.env, ETCDCTL_API: '3'}})
          child.on('exit', (code) => resolve(code ?? 1))
        })
      const runLockctl = () => runCli(['hold', 'shared', '--', ...worker(log, 'lockctl')], {env}).then((r) => r.code)
      const [one, two] = first === 'etcdctl' ? [runEtcdctl, runLockctl] : [runLockctl, runEtcdctl]
      const firstRun = one()
      await eventually(() => existsSync(log))
      const codes = await Promise.all([firstRun, two()])
      expect(codes).toEqual([0, 0])
      expect(checkNoOverlap(log)).toEqual(first === 'etcdctl' ? ['etcdctl', 'lockctl'] : ['lockctl', 'etcdctl'])
    })
  }
})

describeEtcd('etcd: semaphores and shared locks beside etcdctl lock', () => {
  /** Start and end times (ns) of each name in a worker log. */
  const spans = (log: string) => {
    const out = new Map<string, {start: bigint; end: bigint}>()
    for (const [what, name, at] of readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '))) {
      const span = out.get(name) ?? {start: 0n, end: 0n}
      span[what as 'start' | 'end'] = BigInt(at)
      out.set(name, span)
    }
    return out
  }
  const etcdctlLock = (endpoint: string, name: string, command: string[]) =>
    new Promise<number>((resolve) => {
      const child = spawn('etcdctl', ['--endpoints', endpoint, 'lock', name, '--', ...command], {stdio: 'ignore', env: {...process.env, ETCDCTL_API: '3'}})
      child.on('exit', (code) => resolve(code ?? 1))
    })

  it('etcdctl lock waits for every shared holder; a lockctl semaphore waits for etcdctl', async () => {
    const etcd = await startEtcd(1)
    const endpoint = `127.0.0.1:${etcd.members[0].clientPort}`
    const env = {LOCKCTL_ENDPOINTS: etcd.endpoint}
    const dir = tempDir()
    const log = join(dir, 'log')
    const done = join(dir, 'done')
    const readers = ['R1', 'R2'].map((name) => runCli(['hold', 'rw', '--shared', '--', ...worker(log, name, done)], {env, timeoutMs: 60_000}))
    await eventually(
      () =>
        existsSync(log) &&
        readFileSync(log, 'utf8')
          .split('\n')
          .filter((l) => l.startsWith('start')).length === 2,
    )
    const writer = etcdctlLock(endpoint, 'rw', worker(log, 'etcdctl'))
    await eventually(async () => JSON.parse((await runCli(['status', 'rw', '--json'], {env})).stdout).waiters === 1)
    writeFileSync(done, '')
    expect((await Promise.all(readers)).map((r) => r.code)).toEqual([0, 0])
    expect(await writer).toBe(0)
    const s = spans(log)
    expect(s.get('etcdctl')!.start).toBeGreaterThan(s.get('R1')!.end)
    expect(s.get('etcdctl')!.start).toBeGreaterThan(s.get('R2')!.end)

    // etcdctl first: a lockctl semaphore waits for its key (an exclusive lock's), then runs.
    const log2 = join(dir, 'log2')
    const done2 = join(dir, 'done2')
    const held = etcdctlLock(endpoint, 'sem', worker(log2, 'etcdctl', done2))
    await eventually(() => existsSync(log2))
    const slot = runCli(['hold', 'sem', '--limit', '2', '--', ...worker(log2, 'S1')], {env, timeoutMs: 60_000})
    await eventually(async () => JSON.parse((await runCli(['status', 'sem', '--json'], {env})).stdout).waiters === 1)
    writeFileSync(done2, '')
    expect(await held).toBe(0)
    expect((await slot).code).toBe(0)
    const s2 = spans(log2)
    expect(s2.get('S1')!.start).toBeGreaterThan(s2.get('etcdctl')!.end)
  }, 60_000)
})

describeEtcd('etcd: a closed client lets its process end', () => {
  it('after its member restarted while it waited, the process ends by itself once the client is closed', async () => {
    const etcd = await startEtcd(1)
    const script = join(import.meta.dirname, '../fault/close-after-restart.mjs')
    const child = spawn(process.execPath, [script, etcd.endpoint], {stdio: ['pipe', 'pipe', 'pipe']})
    let out = ''
    let err = ''
    child.stdout.on('data', (c: Buffer) => (out += c.toString()))
    child.stderr.on('data', (c: Buffer) => (err += c.toString()))
    const ended = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
    await eventually(() => out.includes('waiting'), 20_000)
    // The waiter's watch stream breaks and etcd3 keeps trying to re-open it, backing off
    // further each time, until the member is back.
    await etcd.kill(etcd.members[0])
    await new Promise((resolve) => setTimeout(resolve, 1000))
    await etcd.restart(etcd.members[0])
    await new Promise((resolve) => setTimeout(resolve, 3000))
    child.stdin.write('go\n')
    await eventually(() => out.includes('closed') || err, 30_000)
    expect(err).toBe('')
    // Before the fix the process lived on for many seconds (etcd3 kept re-opening the watch
    // stream, backing off up to 30 s, for a watcher that nobody had cancelled). Closing takes
    // milliseconds; 3 s is far more than that and less than the backoff it had grown to.
    const code = await Promise.race([ended, new Promise<'alive'>((resolve) => setTimeout(() => resolve('alive'), 3000))])
    if (code === 'alive') child.kill('SIGKILL')
    expect(code).toBe(0)
  }, 60_000)
})

describeEtcd('etcd: a full database (NOSPACE alarm)', () => {
  it('a new lock is exit 4 saying etcd is out of space and what an operator does, not that no member answered', async () => {
    const etcd = await startEtcd(1, {args: ['--quota-backend-bytes', '2000000']})
    const member = `127.0.0.1:${etcd.members[0].clientPort}`
    const value = 'x'.repeat(60_000)
    let full = false
    for (let i = 0; i < 100 && !full; i++) full = spawnSync('etcdctl', ['--endpoints', member, 'put', `filler/${i}`, value], {encoding: 'utf8'}).status !== 0
    expect(full).toBe(true)
    const result = await runCli(['lock', 'full/k', '--endpoints', etcd.endpoint])
    expect(result.code).toBe(4)
    expect(result.stderr.trim()).toMatch(
      /^lockctl: etcd:\/\/\S+: lease grant: etcd refused it for lack of resources \(etcdserver: mvcc: database space exceeded\); if its database is full \(NOSPACE alarm\), an operator must compact, defragment and disarm it \(etcdctl alarm disarm\)$/,
    )
  })
})

describeEtcd('etcd: a cluster that lost its quorum', () => {
  it('a command says the answering member has no leader (exit 4), not only that the others are down', async () => {
    const etcd = await startEtcd(3)
    const leader = await etcd.leader()
    const [other] = etcd.members.filter((m) => m !== leader)
    await etcd.kill(leader)
    await etcd.kill(other)
    // The one member left knows no leader once its election timeout has passed.
    const result = (await eventually(async () => {
      const attempt = await runCli(['lock', 'quorum/k', '--endpoints', etcd.endpoint, '--timeout', '2s'])
      return /etcd has no leader/.test(attempt.stderr) ? attempt : undefined
    }, 20_000))!
    expect(result.code).toBe(4)
    expect(result.stderr.trim()).toMatch(
      /^lockctl: etcd:\/\/\S+: lease grant: etcd has no leader: 1 of 3 endpoint\(s\) answer, and none knows a leader \(a majority of the cluster's members must be up and reach each other\)$/,
    )
  })
})

describeEtcd('etcd: keys other programs wrote', () => {
  it('a value that is not what lockctl writes (null, wrong types) and a key with escape sequences: status, lock and watch go on, and a terminal gets no escape', async () => {
    const etcd = await startEtcd(1)
    const endpoint = `127.0.0.1:${etcd.members[0].clientPort}`
    const env = {LOCKCTL_ENDPOINTS: etcd.endpoint}
    const etcdctl = (...args: string[]) => {
      const result = spawnSync('etcdctl', ['--endpoints', endpoint, ...args], {encoding: 'utf8', env: {...process.env, ETCDCTL_API: '3'}})
      if (result.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${result.stderr}`)
      return result.stdout
    }
    const lease = /lease ([0-9a-f]+) granted/.exec(etcdctl('lease', 'grant', '60'))![1]
    // Before: `null` failed every status, lock and watch of the name with a stack trace (exit
    // 70); an owner that was not a string, or a `since` past any date, failed status.
    for (const value of ['null', '{"owner":{"a":1},"leaseMs":"x","since":"y"}', '{"owner":123,"since":1e400,"limit":"2"}']) {
      etcdctl('put', `--lease=${lease}`, `foreign/${lease}`, value)
      for (const args of [['status'], ['status', 'foreign', '--json'], ['lock', 'foreign', '--wait', '500ms']]) {
        const result = await runCli(args, {env})
        expect(result.stderr, `${value}: ${args.join(' ')}`).not.toMatch(/unexpected error|\n\s+at /)
        expect(result.code, `${value}: ${args.join(' ')}: ${result.stderr}`).toBe(args[0] === 'lock' ? 1 : 0)
      }
      const status = JSON.parse((await runCli(['status', 'foreign', '--json'], {env})).stdout)
      // (etcdctl pads the id to 16 digits; a lease key's name, as Go's concurrency writes it, does not.)
      expect(status.holder.owner).toBe(`etcd lease ${BigInt(`0x${lease}`).toString(16)}`)
    }
    etcdctl('del', '--prefix', 'foreign/')
    etcdctl('put', `--lease=${lease}`, `ev\u001b[2Jil/${lease}`, '{"owner":"o\\u001b[31mx"}')
    const table = await runCli(['status'], {env})
    expect(table.code, table.stderr).toBe(0)
    expect(table.stdout.includes('\u001b')).toBe(false)
    expect(table.stdout).toContain('ev\\u001b[2Jil')
    const watch = runCli(['watch', '--prefix', 'ev'], {env, timeoutMs: 20_000})
    let watched = ''
    watch.child.stdout!.on('data', (chunk) => (watched += chunk))
    await eventually(() => watched.includes('state'))
    watch.child.kill('SIGINT')
    await watch
    expect(watched.includes('\u001b')).toBe(false)
    expect(watched).toContain('ev\\u001b[2Jil')
  }, 60_000)
})
