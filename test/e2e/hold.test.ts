import {spawn} from 'node:child_process'
import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {connect} from '../../src/client/index.js'
import {LAUNCHER, eventually, pausedUntil, runCli, sharedLockd, startLockd, tempDir} from '../helpers/processes.js'
import {hasTmux, inTerminal} from '../helpers/tmux.js'

const shared = sharedLockd()
const {env} = shared

async function holderOf(key: string, environment = env): Promise<string | null> {
  const status = await runCli(['status', key, '--json'], {env: environment})
  return JSON.parse(status.stdout).holder?.owner ?? null
}

function notExecutable(): string {
  const file = join(tempDir(), 'data.txt')
  writeFileSync(file, 'not a program\n', {mode: 0o644})
  return file
}

/**
 * A daemon: a new session (setsid, as Node's `detached` does), its parent gone at once, SIGTERM
 * ignored. Neither the process group nor a walk up from the command finds it; the grant's
 * LOCKCTL_TOKEN in its environment does. It outlived the lock before.
 */
const daemonScript = (dir: string, pidFile: string, then: string) => {
  const starter = join(dir, 'daemon.cjs')
  writeFileSync(
    starter,
    `const c = require('node:child_process').spawn('sh', ['-c', 'trap "" TERM; exec sleep 304'], {detached: true, stdio: 'ignore'})\nrequire('node:fs').writeFileSync(${JSON.stringify(pidFile)}, String(c.pid))\nc.unref()\n`,
  )
  return `${JSON.stringify(process.execPath)} ${starter}; ${then}`
}

/** Running, not a zombie (a killed orphan stays a zombie where PID 1 does not reap it, as in some containers). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

/** A lockd of the test's own on a data directory of its own, and two files its command and the test signal through. */
async function durableLockd() {
  const dataDir = tempDir()
  const own = await startLockd({dataDir})
  const dir = tempDir()
  return {dataDir, own, ownEnv: {LOCKCTL_ENDPOINTS: own.endpoint}, ready: join(dir, 'ready'), done: join(dir, 'done')}
}

describe('hold KEY -- CMD: exit codes as a shell would give them', () => {
  it.each([
    [['true'], 0],
    [['sh', '-c', 'exit 7'], 7],
    [['sh', '-c', 'kill -TERM $$'], 143],
    [['definitely-not-a-program-xyz'], 127],
    [['NOT-EXECUTABLE'], 126],
  ])('%j exits %d and releases the lock', async (command, code) => {
    const args = command.map((a) => (a === 'NOT-EXECUTABLE' ? notExecutable() : a))
    const result = await runCli(['hold', 'codes', '--', ...args], {env})
    expect(result.code).toBe(code)
    expect(await holderOf('codes')).toBeNull()
    if (code === 127) expect(result.stderr).toMatch(/command not found/)
    if (code === 126) expect(result.stderr).toMatch(/permission denied/)
  })

  it('gives the child LOCKCTL_KEY, LOCKCTL_TOKEN, LOCKCTL_FENCE and owns stdout; events go to stderr', async () => {
    const result = await runCli(['hold', 'envs', '--', 'sh', '-c', 'echo "$LOCKCTL_KEY|$LOCKCTL_TOKEN|$LOCKCTL_FENCE"'], {env})
    expect(result.code).toBe(0)
    const [key, token, fence] = result.stdout.trim().split('|')
    expect(key).toBe('envs')
    expect(token).toMatch(/^[A-Za-z0-9_-]{16,}$/)
    expect(Number(fence)).toBeGreaterThan(0)
    expect(result.stderr).toMatch(new RegExp(`acquired envs \\(fence ${fence}, lease 15s\\)`))
    expect(result.stderr).toMatch(/released envs/)
  })

  it('no KEY before -- is a usage error, not the command taken for the key', async () => {
    const dir = tempDir()
    const result = await runCli(['hold', '--', 'touch', join(dir, 'ran')], {env})
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/^lockctl: missing KEY/)
    expect(existsSync(join(dir, 'ran'))).toBe(false)
  })

  it('a command after KEY without -- is a usage error', async () => {
    const result = await runCli(['hold', 'k', 'echo', 'hi'], {env})
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/put the command after --/)
  })
})

describe('hold: signals', () => {
  it('SIGTERM to lockctl reaches the child (its trap runs) and the lock is released', async () => {
    const dir = tempDir()
    const marker = join(dir, 'trapped')
    const ready = join(dir, 'ready')
    const run = runCli(['hold', 'sig', '--', 'sh', '-c', `trap 'echo trapped > ${marker}; exit 0' TERM; touch ${ready}; while :; do sleep 0.05; done`], {env})
    await eventually(() => existsSync(ready))
    run.child.kill('SIGTERM')
    const result = await run
    expect(readFileSync(marker, 'utf8').trim()).toBe('trapped')
    expect(result.code).toBe(0) // the child's code: its trap exited 0
    expect(await holderOf('sig')).toBeNull()
  })

  it('hold without a command: prints acquired, and after SIGINT released, exit 0', async () => {
    const run = runCli(['hold', 'leader', '--owner', 'me'], {env})
    let out = ''
    run.child.stdout!.on('data', (c: Buffer) => (out += c.toString()))
    await eventually(() => /acquired leader/.test(out))
    expect(await holderOf('leader')).toBe('me')
    run.child.kill('SIGINT')
    const result = await run
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^\S+ acquired leader \(fence \d+, lease 15s\)\n\S+ released leader\n$/)
    expect(await holderOf('leader')).toBeNull()
  })

  it('SIGINT while waiting for the first grant leaves the queue and exits 130', async () => {
    const first = await runCli(['lock', 'queued', '--owner', 'first'], {env})
    const run = runCli(['hold', 'queued', '--', 'true'], {env})
    await eventually(async () => JSON.parse((await runCli(['status', 'queued', '--json'], {env})).stdout).waiters === 1)
    run.child.kill('SIGINT')
    const result = await run
    expect(result.code).toBe(130)
    expect(result.stderr).toMatch(/^\S+ waiting queued \(held by first, 1st in the queue\)$/m)
    await eventually(async () => JSON.parse((await runCli(['status', 'queued', '--json'], {env})).stdout).waiters === 0)
    expect((await runCli(['unlock', 'queued', '--token', first.stdout.trim()], {env})).code).toBe(0)
  })

  it('an unreachable service while waiting for the first grant: says so, keeps retrying, SIGTERM exits 143', async () => {
    const run = runCli(['hold', 'nowhere', '--retry', '200ms', '--', 'true'], {env: {LOCKCTL_ENDPOINTS: 'lockd://127.0.0.1:1'}})
    let stderr = ''
    run.child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()))
    await eventually(() => /suspended nowhere \(.*connection refused.*retrying until it answers \(--wait forever\)/.test(stderr))
    run.child.kill('SIGTERM')
    const result = await run
    expect(result.code).toBe(143)
    expect(result.stderr.match(/suspended/g)).toHaveLength(1) // said once, not per retry
  })

  it('--wait bounds the time the service is unreachable too: --wait 0 and --wait 1s exit 4, the command never runs', async () => {
    const dir = tempDir()
    for (const wait of ['0', '1s']) {
      const result = await runCli(['hold', 'nightly', '--wait', wait, '--retry', '300ms', '--', 'touch', join(dir, 'ran')], {env: {LOCKCTL_ENDPOINTS: 'lockd://127.0.0.1:1'}})
      expect(result.code).toBe(4)
      expect(result.stderr).toMatch(/^lockctl: .*connection refused/m)
      if (wait === '1s') expect(result.stderr).toMatch(/retrying until --wait runs out/)
    }
    expect(existsSync(join(dir, 'ran'))).toBe(false)
  })

  it('--wait 0 while held: exit 1 (cron style), the command never runs', async () => {
    const first = await runCli(['lock', 'cron'], {env})
    const dir = tempDir()
    const result = await runCli(['hold', 'cron', '--wait', '0', '--', 'touch', join(dir, 'ran')], {env})
    expect(result.code).toBe(1)
    expect(existsSync(join(dir, 'ran'))).toBe(false)
    expect((await runCli(['hold', 'cron', '--wait', '0', '--conflict-exit-code', '0', '--', 'true'], {env})).code).toBe(0)
    await runCli(['unlock', 'cron', '--token', first.stdout.trim()], {env})
  })
})

describe('hold: mutual exclusion', () => {
  it('two holds started together run their children strictly one after the other, the second with a higher fence', async () => {
    const dir = tempDir()
    const log = join(dir, 'log')
    const script = `echo "start $(date +%s%N) $LOCKCTL_FENCE" >> ${log}; sleep 0.4; echo "end $(date +%s%N) $LOCKCTL_FENCE" >> ${log}`
    const results = await Promise.all([0, 1, 2].map(() => runCli(['hold', 'mutex', '--', 'sh', '-c', script], {env})))
    expect(results.map((r) => r.code)).toEqual([0, 0, 0])
    const lines = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '))
    expect(lines.map((l) => l[0])).toEqual(['start', 'end', 'start', 'end', 'start', 'end'])
    for (let i = 0; i < lines.length; i += 2) expect(lines[i][2]).toBe(lines[i + 1][2]) // start/end of one child
    const times = lines.map((l) => BigInt(l[1]))
    for (let i = 1; i < times.length; i++) expect(times[i] >= times[i - 1]).toBe(true)
    const fences = [0, 2, 4].map((i) => Number(lines[i][2]))
    expect(fences).toEqual([...fences].sort((a, b) => a - b))
    expect(new Set(fences).size).toBe(3)
  })

  it('a lock or hold of the same key inside the command of a hold is refused at once (it would wait for its own parent forever); another key is taken', async () => {
    const self = `"${LAUNCHER}"`
    // `hold` waits forever by default: inside a hold of the same key this hung until killed.
    const script = `${self} hold nested -- true; echo "hold $?"; ${self} lock nested --wait forever; echo "lock $?"; ${self} lock nested-other >/dev/null; echo "other $?"`
    const result = await runCli(['hold', 'nested', '--', 'sh', '-c', script], {env, timeoutMs: 15_000})
    expect(result.code, result.stderr).toBe(0)
    expect(result.stdout.trim().split('\n')).toEqual(['hold 1', 'lock 1', 'other 0'])
    const refusals = result.stderr.split('\n').filter((line) => line.startsWith('lockctl: '))
    expect(refusals).toHaveLength(2)
    for (const line of refusals)
      expect(line).toMatch(
        /^lockctl: "nested" is already held by the grant this process runs under \(fence \d+: LOCKCTL_KEY and LOCKCTL_FENCE in its environment, set by hold or lock --export\); it would be waiting for itself/,
      )
    // Neither left a waiter behind.
    expect(JSON.parse((await runCli(['status', 'nested', '--json'], {env})).stdout).holder).toBeNull()
  })
})

describe('hold: nothing the command started outlives the lock', () => {
  it('a background job that ignores SIGTERM is killed (after the grace) before hold releases and exits', async () => {
    const dir = tempDir()
    const pidFile = join(dir, 'pid')
    const script = `(trap "" TERM; exec sleep 303) & echo $! > ${pidFile}; exit 0`
    const result = await runCli(['hold', 'jobs', '--grace', '300ms', '--', 'sh', '-c', script], {env})
    expect(result.code).toBe(0)
    const pid = Number(readFileSync(pidFile, 'utf8'))
    expect(alive(pid)).toBe(false) // gone by the time hold exited
    expect(await holderOf('jobs')).toBeNull()
  })

  it('on loss: the command and its background job (which ignores SIGTERM) are both gone before exit 3', async () => {
    const dir = tempDir()
    const pidFile = join(dir, 'pid')
    const script = `(trap "" TERM; exec sleep 301) & echo $! > ${pidFile}; exec sleep 302`
    const run = runCli(['hold', 'jobs-lost', '--lease', '1m', '--grace', '300ms', '--', 'sh', '-c', script], {env})
    await eventually(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '')
    expect((await runCli(['unlock', 'jobs-lost', '--force'], {env})).code).toBe(0)
    const result = await run
    expect(result.code).toBe(3)
    expect(alive(Number(readFileSync(pidFile, 'utf8')))).toBe(false)
  })

  it('--kill-signal by number, as kill(1) takes it: 10 is SIGUSR1, which the command traps on loss', async () => {
    const dir = tempDir()
    const [ready, caught] = [join(dir, 'ready'), join(dir, 'caught')]
    const script = `trap 'echo usr1 > ${caught}; exit 0' USR1; touch ${ready}; while :; do sleep 0.05; done`
    const run = runCli(['hold', 'by-number', '--lease', '1m', '--kill-signal', '10', '--', 'sh', '-c', script], {env})
    await eventually(() => existsSync(ready))
    expect((await runCli(['unlock', 'by-number', '--force'], {env})).code).toBe(0)
    expect((await run).code).toBe(3)
    expect(readFileSync(caught, 'utf8').trim()).toBe('usr1')
  })

  it('a daemon the command started in a session of its own (setsid), ignoring SIGTERM, is killed before hold releases and exits', async () => {
    const dir = tempDir()
    const pidFile = join(dir, 'pid')
    const result = await runCli(['hold', 'daemon', '--grace', '300ms', '--', 'sh', '-c', daemonScript(dir, pidFile, 'exit 0')], {env})
    expect(result.code, result.stderr).toBe(0)
    expect(alive(Number(readFileSync(pidFile, 'utf8')))).toBe(false)
    expect(await holderOf('daemon')).toBeNull()
  })

  it('on loss: a daemon the command started in a session of its own is gone before exit 3', async () => {
    const dir = tempDir()
    const pidFile = join(dir, 'pid')
    const run = runCli(['hold', 'daemon-lost', '--lease', '1m', '--grace', '300ms', '--', 'sh', '-c', daemonScript(dir, pidFile, 'exec sleep 305')], {env})
    await eventually(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '')
    expect((await runCli(['unlock', 'daemon-lost', '--force'], {env})).code).toBe(0)
    const result = await run
    expect(result.code).toBe(3)
    expect(alive(Number(readFileSync(pidFile, 'utf8')))).toBe(false)
  })
})

describe('hold killed with SIGKILL while its command runs', () => {
  it('the command, its job and its daemon (each ignoring SIGTERM) are gone before the lease runs out: nothing runs on without the lock', async () => {
    const dir = tempDir()
    const [commandPid, jobPid, daemonPid] = ['command', 'job', 'daemon'].map((name) => join(dir, name))
    // Before: all three ran on without the lock once its lease ran out, and the next taker got it.
    const script = `trap "" TERM; echo $$ > ${commandPid}; (trap "" TERM; exec sleep 306) & echo $! > ${jobPid}; ${daemonScript(dir, daemonPid, 'while :; do sleep 0.05; done')}`
    const hold = spawn(LAUNCHER, ['hold', 'killed', '--lease', '4s', '--grace', '300ms', '--', 'sh', '-c', script], {env: {...process.env, ...env}, stdio: 'ignore'})
    let pids: number[] = []
    await eventually(() => {
      pids = [commandPid, jobPid, daemonPid].map((file) => (existsSync(file) ? Number(readFileSync(file, 'utf8')) : 0))
      return pids.every((pid) => pid > 0)
    })
    expect(pids.every(alive)).toBe(true)
    const killedAt = Date.now()
    hold.kill('SIGKILL')
    // The lease (4 s) is renewed at half: at least 2 s of it were left when hold died.
    await eventually(() => pids.every((pid) => !alive(pid)), 1900)
    expect(Date.now() - killedAt).toBeLessThan(2000)
    // Its lease runs out with nobody renewing it: the next taker gets the lock.
    const next = await runCli(['lock', 'killed', '--wait', '10s', '--lease', '5s'], {env})
    expect(next.code, next.stderr).toBe(0)
  })
})

describe('hold stopped (SIGSTOP) past its lease while its command runs', () => {
  it('the command is stopped before the next taker gets the lock; hold, resumed, says the lock was lost', async () => {
    const dir = tempDir()
    const commandPid = join(dir, 'command')
    const hold = spawn(LAUNCHER, ['hold', 'stopped', '--lease', '3s', '--grace', '300ms', '--', 'sh', '-c', `echo $$ > ${commandPid}; exec sleep 308`], {
      env: {...process.env, ...env},
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    hold.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const exited = new Promise<number | null>((resolve) => hold.on('exit', (code) => resolve(code)))
    const pid = Number(await eventually(() => existsSync(commandPid) && readFileSync(commandPid, 'utf8').trim()))
    expect(alive(pid)).toBe(true)
    hold.kill('SIGSTOP')
    try {
      // Before: the command ran on while the lease that hold no longer renewed ran out, and
      // whoever took the lock next ran beside it.
      const next = await runCli(['lock', 'stopped', '--wait', '10s', '--lease', '5s'], {env})
      expect(next.code, next.stderr).toBe(0)
      expect(alive(pid)).toBe(false)
    } finally {
      hold.kill('SIGCONT')
    }
    expect(await exited).toBe(3)
    expect(stderr).toMatch(/lost stopped/)
  })
})

describe('hold: lock loss while the child runs', () => {
  it('force-unlocked by another process: lost at once (pushed, not found at a renewal), SIGTERM then SIGKILL after the grace, exit 3, grandchild gone', async () => {
    const dir = tempDir()
    const pids = join(dir, 'pids')
    // The shell ignores SIGTERM (so only SIGKILL after the grace ends it) and starts a grandchild.
    const script = `trap '' TERM; sleep 300 & echo "$$ $!" > ${pids}; while :; do sleep 0.05; done`
    // A 1-minute lease: the first renewal would come after 30 s, past this run's 20 s limit.
    const run = runCli(['hold', 'lose', '--lease', '1m', '--grace', '500ms', '--', 'sh', '-c', script], {env})
    await eventually(() => existsSync(pids) && readFileSync(pids, 'utf8').includes(' '))
    const [shellPid, grandchildPid] = readFileSync(pids, 'utf8').trim().split(' ').map(Number)
    expect((await runCli(['unlock', 'lose', '--force'], {env})).code).toBe(0)
    const result = await run
    expect(result.code).toBe(3)
    expect(result.stderr).toMatch(/lost lose \(.*force-released/)
    expect(result.stderr).not.toMatch(/lost lose \(lost/) // says lost once
    // No second grant while (or after) the command is killed.
    expect(result.stderr.match(/acquired lose/g)).toHaveLength(1)
    expect(alive(shellPid)).toBe(false)
    await eventually(() => !alive(grandchildPid), 3000)
  })

  it('the server stopped past the lease: lost (as the client counts it), the child is killed, exit 3', async () => {
    const own = await startLockd({dataDir: tempDir()})
    const ownEnv = {LOCKCTL_ENDPOINTS: own.endpoint}
    const dir = tempDir()
    const ready = join(dir, 'ready')
    const run = runCli(['hold', 'gone', '--lease', '2s', '--retry', '200ms', '--grace', '300ms', '--', 'sh', '-c', `touch ${ready}; while :; do sleep 0.05; done`], {env: ownEnv})
    await eventually(() => existsSync(ready))
    own.child.kill('SIGKILL')
    await own.exited
    const result = await run
    expect(result.code).toBe(3)
    expect(result.stderr).toMatch(/suspended gone/)
    expect(result.stderr).toMatch(/lost gone \(.*lease ran out/)
  })

  it('the command ends while the server is down: its exit code, and the released line says the server still holds the lock until the lease runs out; after a restart it does', async () => {
    const {dataDir, own, ownEnv, ready, done} = await durableLockd()
    const run = runCli(['hold', 'down', '--lease', '30s', '--', 'sh', '-c', `touch ${ready}; while [ ! -e ${done} ]; do sleep 0.05; done; exit 7`], {env: ownEnv})
    await eventually(() => existsSync(ready))
    own.child.kill('SIGKILL')
    await own.exited
    writeFileSync(done, '')
    const result = await run
    expect(result.code, result.stderr).toBe(7)
    // It said "released down" alone: as if the lock were free.
    expect(result.stderr).toMatch(/released down \(the lock service did not answer: it holds the lock until the lease runs out, at most 30s\)/)
    const again = await startLockd({dataDir, port: own.port})
    const status = await runCli(['status', 'down', '--json'], {env: ownEnv})
    expect(JSON.parse(status.stdout).holder).not.toBeNull()
    await again.stop()
  })

  it("--wait D while the server stops answering (paused) mid-wait: exit 4 at the wait's end, not at the request deadline (--timeout 60s); the command never runs", async () => {
    const own = await startLockd()
    const checker = await connect({endpoints: own.endpoint, owner: 'checker'})
    await checker.createLock('stalled').acquire({leaseMs: 60_000})
    const dir = tempDir()
    const ran = join(dir, 'ran')
    const waiting = runCli(['hold', 'stalled', '--wait', '3s', '--timeout', '60s', '--', 'touch', ran], {env: {LOCKCTL_ENDPOINTS: own.endpoint}, timeoutMs: 20_000})
    await eventually(async () => (await checker.inspect('stalled'))?.waiters === 1)
    const result = await pausedUntil(own.child.pid!, waiting)
    expect(result.code, result.stderr).toBe(4)
    expect(result.stderr).toMatch(/^lockctl: gave up waiting for "stalled" after 3s: the lock service did not answer$/m)
    expect(existsSync(ran)).toBe(false)
    await eventually(async () => (await checker.inspect('stalled'))?.waiters === 0)
    await checker.close()
    await own.stop()
  })

  it('the server paused (SIGSTOP) past the lease: lost, the child killed and exit 3 without waiting for the hung renewal (--timeout 60s)', async () => {
    const own = await startLockd()
    const dir = tempDir()
    const ready = join(dir, 'ready')
    const started = Date.now()
    const run = runCli(['hold', 'paused', '--lease', '2s', '--timeout', '60s', '--grace', '300ms', '--', 'sh', '-c', `touch ${ready}; while :; do sleep 0.05; done`], {
      env: {LOCKCTL_ENDPOINTS: own.endpoint},
      timeoutMs: 90_000,
    })
    await eventually(() => existsSync(ready))
    own.child.kill('SIGSTOP')
    try {
      const result = await run
      expect(result.code, result.stderr).toBe(3)
      expect(result.stderr).toMatch(/lost paused \(.*lease ran out/)
      // A renewal went out at 1 s and hangs until its 60 s deadline; close() used to wait for it.
      expect(Date.now() - started).toBeLessThan(30_000)
    } finally {
      own.child.kill('SIGCONT')
      await own.stop()
    }
  })

  it('--on-lost ignore: reports the loss, keeps the child without taking the lock again, exits 3 when it ends', async () => {
    const dir = tempDir()
    const ready = join(dir, 'ready')
    const done = join(dir, 'done')
    const run = runCli(['hold', 'ignore', '--lease', '2s', '--on-lost', 'ignore', '--', 'sh', '-c', `touch ${ready}; while [ ! -e ${done} ]; do sleep 0.05; done; exit 4`], {env})
    let stderr = ''
    run.child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()))
    await eventually(() => existsSync(ready))
    await runCli(['unlock', 'ignore', '--force'], {env})
    await eventually(() => /lost ignore/.test(stderr))
    // The child still runs (it has not seen done), with the lost grant's token: no new grant.
    expect(existsSync(done)).toBe(false)
    writeFileSync(done, '')
    const result = await run
    expect(result.code).toBe(3)
    expect(result.stderr.match(/acquired ignore/g)).toHaveLength(1)
    expect(result.stderr).not.toMatch(/released ignore/)
  })

  it('lockd restarted mid-hold for less than the lease: no lost, renewals resume, same fence', async () => {
    const started = await durableLockd()
    const {dataDir, ownEnv, ready, done} = started
    let {own} = started
    const run = runCli(['hold', 'restart', '--lease', '8s', '--retry', '200ms', '--', 'sh', '-c', `echo $LOCKCTL_FENCE > ${ready}; while [ ! -e ${done} ]; do sleep 0.05; done`], {env: ownEnv})
    await eventually(() => existsSync(ready) && readFileSync(ready, 'utf8').trim() !== '')
    const fence = Number(readFileSync(ready, 'utf8'))
    own.child.kill('SIGKILL')
    await own.exited
    own = await startLockd({dataDir, port: own.port})
    // A renewal against the restarted lockd: the lease left goes back up (not just the whole
    // lease recovery gave it at the restart running down).
    let lowest = Number.POSITIVE_INFINITY
    const renewed = await eventually(async () => {
      const holder = JSON.parse((await runCli(['status', 'restart', '--json'], {env: ownEnv})).stdout).holder as {fence: number; leaseLeftMs: number}
      lowest = Math.min(lowest, holder.leaseLeftMs)
      return holder.leaseLeftMs > lowest + 500 ? holder : null
    }, 20_000)
    expect(renewed!.fence).toBe(fence)
    writeFileSync(done, '')
    const result = await run
    expect(result.code).toBe(0)
    expect(result.stderr).not.toMatch(/lost/)
    expect(result.stderr.match(/acquired restart/g)).toHaveLength(1)
    expect(result.stderr).toMatch(/suspended restart[^]*connected restart/)
    await own.stop()
  })
})

describe('hold as leader election', () => {
  it('events strictly alternate acquired/lost over several losses, with increasing fences', async () => {
    const run = runCli(['hold', 'elect', '--lease', '2s', '--json'], {env})
    let out = ''
    run.child.stdout!.on('data', (c: Buffer) => (out += c.toString()))
    const count = (event: string) => (out.match(new RegExp(`"event":"${event}"`, 'g')) ?? []).length
    for (let round = 1; round <= 3; round++) {
      await eventually(() => count('acquired') === round)
      expect((await runCli(['unlock', 'elect', '--force'], {env})).code).toBe(0)
      await eventually(() => count('lost') === round)
    }
    await eventually(() => count('acquired') === 4)
    run.child.kill('SIGTERM')
    expect((await run).code).toBe(0)
    const events = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    const kinds = events.map((e) => e.event).filter((e) => e === 'acquired' || e === 'lost')
    expect(kinds).toEqual(['acquired', 'lost', 'acquired', 'lost', 'acquired', 'lost', 'acquired'])
    const fences = events.filter((e) => e.event === 'acquired').map((e) => e.fence)
    expect(fences).toEqual([...fences].sort((a, b) => a - b))
    expect(new Set(fences).size).toBe(4)
    expect(events.at(-1)).toMatchObject({event: 'released', key: 'elect'})
  })
})

describe.skipIf(!hasTmux && !process.env.CI)('hold in a real terminal (tmux)', () => {
  it('a background job of the command is gone when hold exits, on a terminal too', async () => {
    const pidFile = join(tempDir(), 'pid')
    await inTerminal(`hold tty-jobs --grace 300ms -- sh -c 'sleep 200 & echo $! > ${pidFile}; exit 0'`, env, async ({waitScreen}) => {
      await waitScreen(/exited 0/)
    })
    expect(alive(Number(readFileSync(pidFile, 'utf8')))).toBe(false)
  })

  it('a spinner shows the holder and our place while waiting, then gives way to the events and the command', async () => {
    const blocker = await runCli(['lock', 'tty-spin', '--owner', 'blocker'], {env})
    await inTerminal(`hold tty-spin -- sh -c 'echo child ran'`, env, async ({waitScreen, screen}) => {
      await waitScreen(/waiting tty-spin \(held by blocker, 1st in the queue\)/)
      await waitScreen(/^\S waiting for tty-spin: held by blocker \(fence \d+, [^)]* left\); 1st in the queue$/m)
      await runCli(['unlock', 'tty-spin', '--token', blocker.stdout.trim()], {env})
      await waitScreen(/exited 0/)
      const lines = screen()
        .split('\n')
        .filter((l) => l.trim())
      // The spinner line is gone; what is left is the events and the command's output, in order.
      expect(lines.map((l) => l.replace(/^\S+Z /, ''))).toEqual([
        'waiting tty-spin (held by blocker, 1st in the queue)',
        expect.stringMatching(/^acquired tty-spin \(fence \d+, lease 15s\)$/),
        'child ran',
        'released tty-spin',
        'exited 0',
      ])
    })
  })
})
