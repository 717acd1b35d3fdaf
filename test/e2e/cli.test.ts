import {execFileSync, spawnSync} from 'node:child_process'
import {chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync} from 'node:fs'
import {createServer, connect as netConnect} from 'node:net'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {connect} from '../../src/client/index.js'
import {BIN, LAUNCHER, eventually, pausedUntil, runCli, sharedLockd, startLockd, tempDir} from '../helpers/processes.js'
import {hasTmux, inTerminal} from '../helpers/tmux.js'

/** A throw-away user: its own HOME and XDG state dir, so the embedded lockd is its own. */
function freshUser(): NodeJS.ProcessEnv {
  const home = tempDir('lockctl-home-')
  return {HOME: home, XDG_STATE_HOME: join(home, 'state')}
}

const embeddedPids: number[] = []
afterAll(() => {
  for (const pid of embeddedPids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
})

async function embeddedPid(env: NodeJS.ProcessEnv): Promise<number> {
  const status = await runCli(['status', '--json'], {env})
  expect(status.code).toBe(0)
  const pid = JSON.parse(status.stdout).server.pid as number
  embeddedPids.push(pid)
  return pid
}

/** Wait until the process has exited. */
function processGone(pid: number): Promise<boolean> {
  return eventually(() => {
    try {
      process.kill(pid, 0)
      return false
    } catch {
      return true
    }
  })
}

describe('the embedded default (no endpoint configured)', () => {
  it('refuses a state directory that others can write to (exit 6, one line), and starts nothing there', async () => {
    const env = freshUser()
    const dir = join(env.XDG_STATE_HOME!, 'lockctl')
    mkdirSync(dir, {recursive: true, mode: 0o777})
    chmodSync(dir, 0o777)
    const result = await runCli(['status'], {env})
    expect(result.code).toBe(6)
    expect(result.stderr.trim()).toMatch(/^lockctl: refusing the local lockd in .*: others can write to it \(mode 777\); run chmod 700/)
    expect(existsSync(join(dir, 'lockd.sock'))).toBe(false)
  })

  it('runs the issue script end to end, starting lockd on first use and reusing it after', async () => {
    const env = freshUser()
    const lock = await runCli(['lock', 'deploy', '--lease', '2m', '--wait', '30s'], {env})
    expect(lock.code).toBe(0)
    const token = lock.stdout.trim()
    expect(token).toMatch(/^[A-Za-z0-9_-]{16,}$/) // the token alone
    expect(existsSync(join(env.XDG_STATE_HOME!, 'lockctl', 'lockd.sock'))).toBe(true)
    const pid = await embeddedPid(env)

    const status = await runCli(['status'], {env})
    expect(status.code).toBe(0)
    for (const column of ['KEY', 'HOLDER', 'FENCE', 'LEASE LEFT', 'WAITERS', 'SINCE']) expect(status.stdout).toContain(column)
    expect(status.stdout).toMatch(/deploy/)

    const renew = await runCli(['renew', 'deploy', '--token', token, '--lease', '5m'], {env})
    expect(renew.code).toBe(0)
    expect(renew.stdout).toMatch(/renewed deploy: 5m left/)

    expect((await runCli(['unlock', 'deploy', '--token', token], {env})).code).toBe(0)

    const exported = await runCli(['lock', 'nightly', '--export'], {env})
    expect(exported.code).toBe(0)
    const vars = Object.fromEntries([...exported.stdout.matchAll(/^export (\w+)=(.*)$/gm)].map((m) => [m[1], m[2].replace(/^'|'$/g, '')]))
    expect(Object.keys(vars)).toEqual(['LOCKCTL_KEY', 'LOCKCTL_TOKEN', 'LOCKCTL_FENCE'])
    expect(vars.LOCKCTL_KEY).toBe('nightly')
    // `eval` of it in a real shell, then unlock with the token from the environment.
    const shell = execFileSync('sh', ['-c', `eval "$("${LAUNCHER}" lock shellkey --export)" && "${LAUNCHER}" unlock && echo "unlocked $LOCKCTL_KEY fence $LOCKCTL_FENCE"`], {
      env: {...process.env, ...env, LOCKCTL_ENDPOINTS: ''},
      encoding: 'utf8',
    })
    expect(shell).toMatch(/unlocked shellkey fence \d+/)
    const unlockFromEnv = await runCli(['unlock', 'nightly'], {env: {...env, LOCKCTL_TOKEN: vars.LOCKCTL_TOKEN}})
    expect(unlockFromEnv.code).toBe(0)

    const json = await runCli(['lock', 'deploy', '--json'], {env})
    expect(json.code).toBe(0)
    expect(json.stdout.trim().split('\n')).toHaveLength(1)
    const grant = JSON.parse(json.stdout)
    expect(grant).toMatchObject({key: 'deploy', token: expect.any(String), fence: expect.any(Number), leaseMs: 60_000, owner: expect.stringMatching(/@/)})
    expect(grant.fence).toBeGreaterThan(Number(vars.LOCKCTL_FENCE))

    // Every command above talked to the one lockd started by the first.
    expect(await embeddedPid(env)).toBe(pid)
  })

  it('the state directory removed under a running lockd: it exits, and the next command starts a new one, which has its locks', async () => {
    const env = freshUser()
    const before = await runCli(['lock', 'before', '--json', '--lease', '10m'], {env})
    expect(before.code).toBe(0)
    const oldPid = await embeddedPid(env)
    rmSync(join(env.XDG_STATE_HOME!, 'lockctl'), {recursive: true, force: true})
    const after = await runCli(['lock', 'after', '--json'], {env})
    expect(after.code).toBe(0)
    // The old lockd wrote its data directory again on its way out (docs/recovery.md, "Files
    // removed while lockd runs"): its lock is still held, and fences go on above it.
    const held = JSON.parse((await runCli(['status', 'before', '--json'], {env})).stdout) as {holder: {fence: number} | null}
    expect(held.holder?.fence).toBe(JSON.parse(before.stdout).fence)
    expect(JSON.parse(after.stdout).fence).toBeGreaterThan(JSON.parse(before.stdout).fence)
    const newPid = await embeddedPid(env)
    expect(newPid).not.toBe(oldPid)
    await processGone(oldPid)
    // The old lockd left the new one's socket alone on its way out.
    expect((await runCli(['status', 'after', '--json'], {env})).code).toBe(0)
  })

  it('a state directory that cannot be made: exit 4 with one line naming it, never a hang', async () => {
    const blocker = join(tempDir(), 'a-file')
    writeFileSync(blocker, '')
    // A file where a directory should be (root ignores permissions, so not EACCES), and a path
    // under /proc, where Node's own recursive mkdir never returns.
    // And a file where lockctl's own state directory belongs: said so, not as its log's ENOTDIR.
    const stateFile = tempDir()
    writeFileSync(join(stateFile, 'lockctl'), '')
    const aFileInTheWay = 'a file is where this directory \\(or one above it\\) belongs'
    for (const [stateHome, reason] of [
      [join(blocker, 'state'), aFileInTheWay],
      [stateFile, aFileInTheWay],
      ['/proc/lockctl-nope/state', 'ENOENT'],
    ]) {
      const result = await runCli(['lock', 'k'], {env: {...freshUser(), XDG_STATE_HOME: stateHome}, timeoutMs: 20_000})
      expect(result.code).toBe(4)
      expect(result.stderr).toMatch(new RegExp(`^lockctl: cannot start the local lockd: \\S+: ${reason} \\(set XDG_STATE_HOME to a writable directory, or --endpoints\\)\n$`))
    }
  })

  it.skipIf(process.getuid?.() !== 0 && !process.env.CI)('a full disk under the state directory: lockd could not even log why it stopped, so the CLI names the full file system (exit 4)', async () => {
    const mountPoint = tempDir('lockctl-full-')
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mountPoint])
    try {
      // All but a few KB taken: the state directory can be made, lockd's data and log cannot be written.
      writeFileSync(join(mountPoint, 'filler'), Buffer.alloc(60 * 1024))
      const result = await runCli(['lock', 'full/k'], {env: {HOME: mountPoint, XDG_STATE_HOME: join(mountPoint, 'state')}})
      expect(result.code).toBe(4)
      expect(result.stderr.trim()).toMatch(
        /^lockctl: the local lockd did not start: (its log is empty, and the file system of \S+ is full \(\d+ bytes free\): make room, or set XDG_STATE_HOME elsewhere|.*ENOSPC.*) \(log: \S+\)$/,
      )
    } finally {
      execFileSync('umount', ['-l', mountPoint])
    }
  })

  it("a damaged data directory: exit 4 with lockd's reason and the exact repair for the local lockd, which then works", async () => {
    const env = freshUser()
    expect((await runCli(['lock', 'dmg/a'], {env})).code).toBe(0)
    const pid = await embeddedPid(env)
    process.kill(pid, 'SIGKILL')
    await processGone(pid)
    const wal = join(env.XDG_STATE_HOME!, 'lockctl', 'data', 'wal-0.log')
    const bytes = readFileSync(wal)
    bytes[12] ^= 0xff
    writeFileSync(wal, bytes)
    const refused = await runCli(['lock', 'dmg/b'], {env})
    expect(refused.code).toBe(4)
    const line = refused.stderr.trim()
    expect(line.split('\n')).toHaveLength(1)
    // It named the damage and the log, but not how to repair the directory of the local lockd.
    expect(line).toMatch(
      /^lockctl: the local lockd did not start: .*wal-0\.log: corrupt at byte 8 .*; to start it empty \(every lock forgotten, fences above the old ones\), run once: lockctl server --socket (\S+) --data-dir (\S+) --forget-all-locks, then stop it with Ctrl-C$/,
    )
    const [, socket, dataDir] = /--socket (\S+) --data-dir (\S+)/.exec(line)!
    // Run as told, then Ctrl-C.
    const repair = spawnSync(process.execPath, [BIN, 'server', '--socket', socket, '--data-dir', dataDir, '--forget-all-locks'], {
      env: {...process.env, ...env},
      encoding: 'utf8',
      timeout: 3000,
      killSignal: 'SIGINT',
    })
    expect(repair.stderr).toMatch(/--forget-all-locks: every lock of .* is forgotten/)
    const after = await runCli(['lock', 'dmg/c', '--json'], {env})
    expect(after.code, after.stderr).toBe(0)
    expect(JSON.parse(after.stdout).fence).toBeGreaterThan(1)
    await embeddedPid(env)
  })

  it('a state directory too deep for a unix socket: exit 4 saying so (the socket path was cut short, and lockd died with a stack trace)', async () => {
    const home = join(tempDir('lockctl-deep-'), 'd'.repeat(100))
    const result = await runCli(['lock', 'deep/k'], {env: {HOME: home, XDG_STATE_HOME: home}})
    expect(result.code).toBe(4)
    expect(result.stderr.trim()).toMatch(
      /^lockctl: cannot start the local lockd: its socket \S+lockd\.sock: a unix socket path is at most 107 bytes, and this one is \d+ \(set XDG_STATE_HOME to a shorter directory, or --endpoints\)$/,
    )
  })

  it('two CLIs racing to start the embedded lockd end up with one server', async () => {
    const env = freshUser()
    const results = await Promise.all(['a', 'b', 'c'].map((key) => runCli(['lock', key], {env})))
    expect(results.map((r) => r.code)).toEqual([0, 0, 0])
    const pid = await embeddedPid(env)
    const again = await runCli(['status', '--json'], {env})
    expect(JSON.parse(again.stdout)).toMatchObject({server: {pid}, total: 3})
  })
})

describe('the CLI against a lockd server', () => {
  const {env} = sharedLockd()

  it('two processes contending: --wait 0 exits 1, --wait 30s succeeds after the other unlocks', async () => {
    const first = await runCli(['lock', 'contended', '--owner', 'first'], {env})
    expect(first.code).toBe(0)
    const refused = await runCli(['lock', 'contended', '--wait', '0'], {env})
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/held by first/)
    expect((await runCli(['lock', 'contended', '--conflict-exit-code', '75'], {env})).code).toBe(75)

    const waiting = runCli(['lock', 'contended', '--wait', '30s', '--json'], {env})
    await eventually(async () => JSON.parse((await runCli(['status', 'contended', '--json'], {env})).stdout).waiters === 1)
    expect((await runCli(['unlock', 'contended', '--token', first.stdout.trim()], {env})).code).toBe(0)
    const second = await waiting
    expect(second.code).toBe(0)
    expect(JSON.parse(second.stdout).fence).toBeGreaterThan(0)
  })

  it('--wait runs out: exit 1 naming the holder', async () => {
    expect((await runCli(['lock', 'busy'], {env})).code).toBe(0)
    const timedOut = await runCli(['lock', 'busy', '--wait', '500ms'], {env})
    expect(timedOut.code).toBe(1)
    expect(timedOut.stderr).toMatch(/gave up waiting for "busy" after/)
  })

  it('wrong or stale tokens exit 5', async () => {
    const lock = await runCli(['lock', 'tokens'], {env})
    const token = lock.stdout.trim()
    expect((await runCli(['unlock', 'tokens', '--token', 'not-the-token'], {env})).code).toBe(5)
    expect((await runCli(['renew', 'tokens', '--token', 'not-the-token'], {env})).code).toBe(5)
    expect((await runCli(['status', 'tokens', '--token', token], {env})).code).toBe(0)
    expect((await runCli(['unlock', 'tokens', '--token', token], {env})).code).toBe(0)
    // The same token again is stale now.
    expect((await runCli(['unlock', 'tokens', '--token', token], {env})).code).toBe(5)
    expect((await runCli(['renew', 'tokens', '--token', token], {env})).code).toBe(5)
    const check = await runCli(['status', 'tokens', '--token', token, '--json'], {env})
    expect(check.code).toBe(5)
    expect(JSON.parse(check.stdout)).toMatchObject({error: {code: 'NOT_HOLDER', exitCode: 5}})
  })

  it("a token that begins with '-' (lockd handed some out before it stopped) is passed as a token, even where its next letter is a short flag", async () => {
    // `-y` is unlock's --yes: oclif refused the value, so one unlock in 4096 failed with exit 2.
    for (const token of ['-ybcdefghijklmnopqrstuv', '-hbcdefghijklmnopqrstuv', '-_bcdefghijklmnopqrstuv']) {
      for (const args of [
        ['unlock', 'dash', '--token', token],
        ['renew', 'dash', '--token', token],
        ['status', 'dash', '--token', token],
      ]) {
        const result = await runCli(args, {env})
        expect({code: result.code, stderr: result.stderr.trim()}, args.join(' ')).toEqual({code: 5, stderr: 'lockctl: the token does not hold "dash" (released, expired, or never held)'})
      }
    }
    // Not a token's shape: still a --token without a value, as before.
    for (const value of ['-y', '--yes']) expect((await runCli(['unlock', 'dash', '--token', value], {env})).stderr).toMatch(/Flag --token expects a value/)
  })

  it('unlock --force releases whoever holds the lock (no prompt without a terminal)', async () => {
    const lock = await runCli(['lock', 'stuck', '--owner', 'gone-host'], {env})
    const forced = await runCli(['unlock', 'stuck', '--force', '--json'], {env})
    expect(forced.code).toBe(0)
    expect(JSON.parse(forced.stdout)).toMatchObject({key: 'stuck', released: true, forced: true, holder: {owner: 'gone-host'}})
    expect((await runCli(['renew', 'stuck', '--token', lock.stdout.trim()], {env})).code).toBe(5)
  })

  // The parser's rows run in-process (bad-input.test.ts); these few go through a real process.
  it.each([
    [['lock', ''], /KEY "": a key must not be empty/],
    [['lock', 'k', '--nope'], /Nonexistent flag: --nope/],
    [['server', '--listen', 'nope'], /--listen: "nope" is not HOST:PORT/],
    [['lock'], /^lockctl: missing KEY \(see --help\)$/m],
    [['watch', 'k', '--prefix', 'p/'], /give KEY or --prefix, not both/],
    [['frobnicate'], /unknown command "frobnicate"; commands: completion, help, hold, lock, renew, repl, server, status, unlock, watch/],
  ])('bad input %j exits 2 with one line', async (args, message) => {
    const result = await runCli(args, {env})
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(message)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stdout).toBe('')
  })

  it('$LOCKCTL_TOKEN is the default token; --token wins over it; a malformed one is named', async () => {
    const first = JSON.parse((await runCli(['lock', 'envkey', '--json'], {env})).stdout)
    const second = await runCli(['lock', 'envother'], {env})
    // As after `lockctl lock envkey --export`, then a token of another lock given for one command.
    const withEnv = {...env, LOCKCTL_KEY: 'envkey', LOCKCTL_TOKEN: first.token}
    expect((await runCli(['renew', 'envother'], {env: withEnv})).code).toBe(5) // not that lock's token
    expect((await runCli(['renew', 'envother'], {env: {...withEnv, LOCKCTL_TOKEN: second.stdout.trim()}})).code).toBe(0)
    expect((await runCli(['unlock', 'envother', '--token', second.stdout.trim()], {env: withEnv})).code).toBe(0)
    expect((await runCli(['renew'], {env: withEnv})).code).toBe(0)
    const bad = await runCli(['unlock', 'envkey'], {env: {...withEnv, LOCKCTL_TOKEN: 'has space'}})
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/^lockctl: \$LOCKCTL_TOKEN: /)
    expect((await runCli(['unlock'], {env: withEnv})).code).toBe(0)
  })

  it('bad input under --json: the error as one JSON line on stdout, exit 2', async () => {
    const result = await runCli(['lock', 'k', '--lease', 'abc', '--json'], {env})
    expect(result.code).toBe(2)
    expect(JSON.parse(result.stdout)).toMatchObject({error: {code: 'BAD_INPUT', exitCode: 2}})
  })

  it('an unreachable endpoint exits 4 with one line', async () => {
    const refused = await runCli(['lock', 'k'], {env: {LOCKCTL_ENDPOINTS: 'lockd://127.0.0.1:1'}})
    expect(refused.code).toBe(4)
    expect(refused.stderr).toMatch(/lockd:\/\/127\.0\.0\.1:1: connection refused/)
    const noSocket = await runCli(['status'], {env: {LOCKCTL_ENDPOINTS: `unix://${tempDir()}/none.sock`}})
    expect(noSocket.code).toBe(4)
  })

  it('lock --wait D goes on trying while lockd cannot be reached: started late, restarted mid-wait (kill -9), or down for the whole wait (exit 4 at its end)', async () => {
    // A port nothing listens on yet.
    const probe = createServer()
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
    const {port} = probe.address() as {port: number}
    await new Promise((resolve) => probe.close(resolve))
    const endpoint = `lockd://127.0.0.1:${port}`
    const dataDir = join(tempDir(), 'data')

    const late = runCli(['lock', 'k', '--wait', '20s', '--json', '--endpoints', endpoint])
    await new Promise((resolve) => setTimeout(resolve, 700))
    let lockd = await startLockd({port, dataDir})
    const first = await late
    expect(first.code, first.stderr).toBe(0)
    const held = JSON.parse(first.stdout) as {token: string; fence: number}

    // A waiter of the held lock; lockd killed under it and started again on its data.
    const waiting = runCli(['lock', 'k', '--wait', '30s', '--json', '--endpoints', endpoint])
    const watcher = await connect({endpoints: endpoint, owner: 'watcher'})
    await eventually(async () => expect((await watcher.inspect('k'))?.waiters).toBe(1))
    await watcher.close()
    lockd.child.kill('SIGKILL')
    await lockd.exited
    lockd = await startLockd({port, dataDir})
    // The first grant came back; its holder releases it, and the waiter (queued again) gets it.
    const owner = await connect({endpoints: endpoint, owner: 'first'})
    await eventually(async () => expect((await owner.inspect('k'))?.waiters).toBe(1))
    await owner.release('k', held.token)
    await owner.close()
    const second = await waiting
    expect(second.code, second.stderr).toBe(0)
    expect((JSON.parse(second.stdout) as {fence: number}).fence).toBeGreaterThan(held.fence)
    await lockd.stop()

    // Down for the whole wait: it tried until the wait's end, then exit 4 with the last error.
    const startedAt = performance.now()
    const down = await runCli(['lock', 'other', '--wait', '1500ms', '--endpoints', endpoint])
    expect(down.code).toBe(4)
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(1400)
    expect(down.stderr.trim()).toBe(`lockctl: ${endpoint}: connection refused (is lockd running?)`)
    // With no wait it is one try, as before.
    expect((await runCli(['lock', 'other', '--endpoints', endpoint])).code).toBe(4)
  })

  it("lock --wait D on a lockd that stops answering (paused) mid-wait: gives up at the wait's end, not at the request deadline, and leaves nothing behind", async () => {
    const lockd = await startLockd()
    const checker = await connect({endpoints: lockd.endpoint, owner: 'checker'})
    const held = checker.createLock('hung')
    await held.acquire({leaseMs: 60_000})
    // Before: a wait whose service stopped answering lasted the request deadline (--timeout
    // 60s) past its end; the run's own limit (20s) stops it first.
    const waiting = runCli(['lock', 'hung', '--wait', '3s', '--timeout', '60s', '--endpoints', lockd.endpoint], {timeoutMs: 20_000})
    await eventually(async () => (await checker.inspect('hung'))?.waiters === 1)
    const result = await pausedUntil(lockd.child.pid!, waiting)
    expect(result.code, result.stderr).toBe(4)
    expect(result.stderr.trim()).toBe('lockctl: gave up waiting for "hung" after 3s: the lock service did not answer')
    // lockd then reads the cancel or the close behind the wait: the queue is empty, the holder the same.
    await eventually(async () => (await checker.inspect('hung'))?.waiters === 0)
    expect((await checker.inspect('hung'))?.holder?.owner).toBe('checker')
    await held.unlock()
    await checker.close()
    await lockd.stop()
  })

  it('a port where something silent listens (not lockd, or a stopped one): exit 4 saying so, within a short --timeout', async () => {
    const silent = createServer(() => {})
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const {port} = silent.address() as {port: number}
    try {
      const result = await runCli(['status', 'k', '--endpoints', `lockd://127.0.0.1:${port}`, '--timeout', '500ms'])
      expect(result.code).toBe(4)
      // Bounded by --timeout (the message names the deadline it used), not by the 3 s default.
      expect(result.stderr.trim()).toBe(`lockctl: lockd://127.0.0.1:${port}: connected, but no answer to lockd's hello within 500ms: is lockd what listens there, and is it running?`)
      // As an etcd endpoint: two deadlines for a one-member cluster that hangs, not etcd3's
      // four tries of it (plus a 2 s TLS question): `lock --timeout 5s` took 20 s.
      const started = Date.now()
      const etcd = await runCli(['lock', 'k', '--endpoints', `etcd://127.0.0.1:${port}`, '--timeout', '1s'])
      const tookMs = Date.now() - started
      expect(etcd.code, etcd.stderr).toBe(4)
      expect(etcd.stderr.trim().split('\n'), etcd.stderr).toHaveLength(1)
      // (gRPC says how long it waited as it measured it: 0.999s is the 1 s deadline too.)
      expect(etcd.stderr).toMatch(/no etcd member answered \(Deadline exceeded after (0\.99\d*|1\.\d+)s/)
      // Two deadlines, the 1 s TLS question and the process's start; four deadlines took > 6.5 s.
      expect(tookMs).toBeLessThan(5500)
    } finally {
      silent.close()
    }
  })

  it('named profiles from the config file choose the endpoint; flags and LOCKCTL_ENDPOINTS win', async () => {
    const config = tempDir('lockctl-config-')
    mkdirSync(join(config, 'lockctl'))
    writeFileSync(join(config, 'lockctl', 'config.json'), JSON.stringify({profiles: {team: {endpoints: env.LOCKCTL_ENDPOINTS}, dead: {endpoints: 'lockd://127.0.0.1:1'}}, defaultProfile: 'team'}))
    const base = {XDG_CONFIG_HOME: config}
    expect((await runCli(['lock', 'profiled', '--profile', 'team', '--owner', 'via-profile'], {env: base})).code).toBe(0)
    // The default profile, with no flag at all, reaches the same lockd.
    const status = await runCli(['status', 'profiled', '--json'], {env: base})
    expect(JSON.parse(status.stdout).holder.owner).toBe('via-profile')
    expect((await runCli(['status', '--profile', 'dead'], {env: base})).code).toBe(4)
    expect((await runCli(['status', '--json'], {env: {...base, LOCKCTL_PROFILE: 'dead', LOCKCTL_ENDPOINTS: env.LOCKCTL_ENDPOINTS}})).code).toBe(0)
    const unknown = await runCli(['status', '--profile', 'nope'], {env: base})
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toMatch(/profile "nope" is not in .*config\.json \(known: team, dead\)/)
  })

  it('status lists locks by prefix as JSON', async () => {
    for (const key of ['team/a', 'team/b', 'other']) expect((await runCli(['lock', key, '--owner', 'lister'], {env})).code).toBe(0)
    const result = await runCli(['status', '--prefix', 'team/', '--json'], {env})
    const body = JSON.parse(result.stdout)
    expect(body.locks.map((l: {key: string}) => l.key)).toEqual(['team/a', 'team/b'])
    expect(body.locks[0].holder).toMatchObject({owner: 'lister', fence: expect.any(Number)})
    expect(result.stdout).not.toMatch(/token/)
  })
})

describe('lock --json through a slow network', () => {
  it("expiresAt counts from the send time: never later than the server's expiry, however slow the answer", async () => {
    const lockd = await startLockd()
    // A proxy that holds every answer from lockd for 400 ms.
    const proxy = createServer((client) => {
      const upstream = netConnect({host: '127.0.0.1', port: lockd.port})
      client.pipe(upstream)
      upstream.on('data', (chunk) => setTimeout(() => client.write(chunk), 400))
      const close = () => {
        client.destroy()
        upstream.destroy()
      }
      client.on('error', close).on('close', close)
      upstream.on('error', close).on('close', close)
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    const port = (proxy.address() as {port: number}).port
    const sentBefore = Date.now()
    const result = await runCli(['lock', 'slow', '--lease', '10s', '--json', '--endpoints', `lockd://127.0.0.1:${port}`])
    proxy.close()
    expect(result.code).toBe(0)
    const expiresAt = Date.parse(JSON.parse(result.stdout).expiresAt)
    // The server's lease started when the request arrived, after sentBefore plus at least the
    // hello's round trip through the proxy (400 ms): the answer's 400 ms must not be added.
    const direct = await connect({endpoints: lockd.endpoint})
    const askedAt = Date.now()
    const serverLeft = (await direct.inspect('slow'))!.holder!.leaseLeftMs
    await direct.close()
    // The server's expiry is at least askedAt + serverLeft.
    expect(expiresAt).toBeLessThanOrEqual(askedAt + serverLeft + 5)
    expect(expiresAt).toBeGreaterThanOrEqual(sentBefore + 10_000)
    await lockd.stop()
  })
})

describe('lockctl server', () => {
  it('stops cleanly on SIGTERM and removes its socket', async () => {
    const dir = tempDir()
    const socket = join(dir, 'lockd.sock')
    const server = runCli(['server', '--socket', socket, '--data-dir', join(dir, 'data')])
    await eventually(() => existsSync(socket))
    const env = {LOCKCTL_ENDPOINTS: `unix://${socket}`}
    expect((await runCli(['lock', 'k'], {env})).code).toBe(0)
    server.child.kill('SIGTERM')
    const result = await server
    expect(result.code).toBe(0)
    expect(result.stderr).toMatch(/SIGTERM, shutting down/)
    expect(existsSync(socket)).toBe(false)
  })

  it('a SIGHUP sent as soon as lockd says it listens is handled (a reload), never the signal that ends it', async () => {
    // The line used to come before the handlers: one SIGHUP in about eight, sent on the line,
    // killed lockd. Ten at once, each signalled as soon as its line is read.
    const servers = await Promise.all(
      Array.from({length: 10}, async () => {
        const lockd = await startLockd()
        lockd.child.kill('SIGHUP')
        return lockd
      }),
    )
    // A signal is delivered before its process runs again: a lockd that answers after it was
    // signalled has handled the SIGHUP (its default action would have ended it first).
    for (const lockd of servers) {
      const probe = await connect({endpoints: lockd.endpoint, owner: 'probe'})
      expect(await probe.info()).toMatchObject({server: 'lockd'})
      await probe.close()
      expect(lockd.child.exitCode, lockd.stderr()).toBeNull()
    }
    for (const lockd of servers) expect(await lockd.stop()).toBe(0)
  })

  it('cannot start: an address in use, or a data directory that cannot be made or read, is one line and exit 1', async () => {
    const running = await startLockd()
    const blocker = join(tempDir(), 'a-file')
    writeFileSync(blocker, '')
    // A data directory whose files are directories (an operator's mistake, a bad restore):
    // Node's bare EISDIR, with a stack, was all it said before.
    const made = tempDir()
    expect(await (await startLockd({dataDir: made})).stop()).toBe(0)
    const withDirectory = (name: string) => {
      const dir = tempDir()
      for (const file of readdirSync(made)) copyFileSync(join(made, file), join(dir, file))
      rmSync(join(dir, name))
      mkdirSync(join(dir, name))
      return dir
    }
    for (const [args, message] of [
      [['--in-memory', '--listen', `127.0.0.1:${running.port}`], `^lockctl: --listen 127.0.0.1:${running.port}: address already in use \\(EADDRINUSE\\)$`],
      [['--in-memory', '--listen', '127.0.0.1:0', '--metrics', `127.0.0.1:${running.port}`], `^lockctl: --metrics 127.0.0.1:${running.port}: address already in use \\(EADDRINUSE\\)$`],
      // A socket whose directory cannot be made: a stack trace and exit 70 before.
      [['--in-memory', '--socket', join(blocker, 'run', 'lockd.sock')], `^lockctl: --socket .*a-file/run/lockd\\.sock: cannot create .*a-file/run: ENOTDIR$`],
      // Longer than a unix socket path can be: lockd listened on the path cut short, then died (exit 70, a stack trace).
      [
        ['--in-memory', '--socket', join(tempDir(), 'x'.repeat(120), 'lockd.sock')],
        `^lockctl: --socket .*lockd\\.sock: a unix socket path is at most 107 bytes, and this one is \\d+: choose a shorter one$`,
      ],
      // --socket naming a file or a directory: the file was deleted (lockd took it for a stale
      // socket); the directory failed with a stack trace, exit 70.
      [['--in-memory', '--socket', blocker], `^lockctl: --socket .*a-file: a file is there, not a socket; lockd replaces only a socket no server answers on: choose another path, or move it away$`],
      [['--in-memory', '--socket', made], `^lockctl: --socket .*: a directory is there, not a socket; lockd replaces only a socket`],
      [['--data-dir', join(blocker, 'data'), '--listen', '127.0.0.1:0'], `^lockctl: --data-dir: cannot create .*a-file/data: ENOTDIR$`],
      [['--data-dir', blocker, '--listen', '127.0.0.1:0'], `^lockctl: --data-dir .*a-file: cannot scandir .*a-file: not a directory \\(ENOTDIR\\); refusing to start$`],
      [['--data-dir', withDirectory('fence'), '--listen', '127.0.0.1:0'], `^lockctl: --data-dir .*: cannot read .*/fence: a directory where a file belongs \\(EISDIR\\); refusing to start$`],
      [['--data-dir', withDirectory('wal-0.log'), '--listen', '127.0.0.1:0'], `^lockctl: --data-dir .*: cannot read .*/wal-0\\.log: a directory where a file belongs \\(EISDIR\\); refusing to start$`],
    ] as const) {
      const result = await runCli(['server', ...args])
      expect(result.code).toBe(1)
      expect(result.stderr.trim()).toMatch(new RegExp(message))
    }
    expect(statSync(blocker).isFile()).toBe(true)
    await running.stop()
  })
})

describe.skipIf(!hasTmux && !process.env.CI)('unlock --force in a real terminal (tmux)', () => {
  const {env} = sharedLockd()
  it('asks first: "n" (the default) keeps the lock, says so and exits 1 (a decision, not a mistake), "y" releases it', async () => {
    const held = await runCli(['lock', 'tty-force', '--owner', 'someone'], {env})
    expect(held.code).toBe(0)
    for (const [answer, code] of [
      ['n', 1],
      ['y', 0],
    ] as const) {
      await inTerminal('unlock tty-force --force', env, async ({keys, waitScreen}) => {
        await waitScreen(/Force-release "tty-force", held by someone \(fence \d+, [^)]* left\)\? \(y\/N\)/)
        keys(answer, 'Enter')
        if (answer === 'n') await waitScreen(/lockctl: kept "tty-force", held by someone \(fence \d+, [^)]* left\): not released/)
        await waitScreen(new RegExp(`exited ${code}`))
      })
      const holder = JSON.parse((await runCli(['status', 'tty-force', '--json'], {env})).stdout).holder
      if (answer === 'n') expect(holder).toMatchObject({owner: 'someone'})
      else expect(holder).toBeNull()
    }
  })
})

describe('the shell and terminal: help, output where it goes, input and messages', () => {
  const {env} = sharedLockd()

  it('help: `lockctl help`, `help lock`, `-h` and `lock -h` all show help, exit 0', async () => {
    for (const args of [['help'], ['-h'], ['help', 'lock'], ['lock', '-h']]) {
      const result = await runCli(args, {env})
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(0)
      expect(result.stdout, args.join(' ')).toMatch(args.includes('lock') ? /Acquire a lock and print its token/ : /COMMANDS/)
    }
    // hold takes a command after --, but its KEY is one word, not "KEY...".
    const hold = await runCli(['hold', '--help'], {env})
    expect(hold.stdout).toMatch(/^ {2}KEY {2}/m)
    expect(hold.stdout).not.toMatch(/KEY\.\.\./)
    // In the REPL (piped: a script), help lists each command with its summary, and COMMAND --help works.
    const repl = spawnSync(process.execPath, [BIN, 'repl'], {input: 'help\nlock --help\n', env: {...process.env, ...env}, encoding: 'utf8'})
    expect(repl.status, repl.stderr).toBe(0)
    expect(repl.stdout).toMatch(/^ {2}lock +Acquire a lock and print its token\.$/m)
    expect(repl.stdout).toMatch(/USAGE\n {2}\$ lockctl lock KEY/)
  })

  it('--json everywhere: --help --json, --version --json, and repl --json answers every line in JSON', async () => {
    const help = await runCli(['lock', '--help', '--json'], {env})
    expect(help.code).toBe(0)
    expect(JSON.parse(help.stdout)).toMatchObject({id: 'lock', summary: 'Acquire a lock and print its token.', flags: expect.objectContaining({lease: expect.any(Object)})})
    expect(JSON.parse((await runCli(['--version', '--json'], {env})).stdout)).toMatchObject({version: expect.stringMatching(/^\d+\.\d+\.\d+/)})
    const repl = spawnSync(process.execPath, [BIN, 'repl', '--json'], {input: 'lock repl-json/k\nunlock repl-json/k\nrenew repl-json/k\n', env: {...process.env, ...env}, encoding: 'utf8'})
    const lines = repl.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
    expect(lines[0]).toMatchObject({key: 'repl-json/k', fence: expect.any(Number)})
    expect(lines[1]).toMatchObject({key: 'repl-json/k', released: true})
    expect(lines[2]).toMatchObject({error: {code: 'BAD_INPUT', exitCode: 2}}) // no token to renew with
    expect(repl.status).toBe(2)
  })

  it('a key with an invisible character is shown escaped in messages', async () => {
    const key = 'dep\u200bloy'
    const held = await runCli(['lock', key], {env})
    const refused = await runCli(['lock', key, '--wait', '0'], {env})
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain('"dep\\u200bloy" is held by')
    await runCli(['unlock', key, '--token', held.stdout.trim()], {env})
  })

  it('status piped: plain columns with one header line (--no-headers drops it), no box lines', async () => {
    const taken = await runCli(['lock', 'plain/k', '--owner', 'plain-owner'], {env})
    const piped = await runCli(['status', '--prefix', 'plain/'], {env})
    expect(piped.code).toBe(0)
    const lines = piped.stdout.trimEnd().split('\n')
    expect(lines[0]).toMatch(/^KEY +HOLDER +FENCE +LEASE LEFT +WAITERS +SINCE +MODE$/)
    expect(lines[1]).toMatch(/^plain\/k +plain-owner +\d+ +\S+ +0 +\S+ ago +exclusive$/)
    expect(piped.stdout).not.toMatch(/[│┌─]/)
    const bare = await runCli(['status', '--prefix', 'plain/', '--no-headers'], {env})
    expect(bare.stdout.trimEnd().split('\n')).toHaveLength(1)
    await runCli(['unlock', 'plain/k', '--token', taken.stdout.trim()], {env})
  })

  it('input: a key that is not valid UTF-8 is refused (exit 2) instead of stored as U+FFFD', async () => {
    const result = spawnSync('sh', ['-c', `"${LAUNCHER}" lock "$(printf 'a\\377b')"`], {env: {...process.env, ...env}, encoding: 'utf8'})
    expect(result.status).toBe(2)
    expect(result.stderr.trim()).toMatch(/^lockctl: KEY .*must be valid UTF-8/)
  })

  it('a bad $LOCKCTL_OWNER is named as such, not as --owner', async () => {
    const result = await runCli(['lock', 'owner/k'], {env: {...env, LOCKCTL_OWNER: 'x'.repeat(300)}})
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/^lockctl: \$LOCKCTL_OWNER: /)
  })

  it('config.json that is null, an array, or has a profile that is a string: one line, exit 2; with --endpoints only a warning', async () => {
    for (const content of ['null', '[]', '{"profiles": {"a": "lockd://x"}, "defaultProfile": "a"}']) {
      const home = tempDir('lockctl-config-')
      mkdirSync(join(home, 'lockctl'))
      writeFileSync(join(home, 'lockctl', 'config.json'), content)
      const broken = await runCli(['status', 'cfg/k'], {env: {XDG_CONFIG_HOME: home, XDG_STATE_HOME: join(home, 'state')}})
      expect(broken.code, content).toBe(2)
      expect(broken.stderr.trim().split('\n'), content).toHaveLength(1)
      expect(broken.stderr).not.toMatch(/\n\s+at /)
      const explicit = await runCli(['status', 'cfg/k', '--endpoints', env.LOCKCTL_ENDPOINTS!], {env: {XDG_CONFIG_HOME: home}})
      expect(explicit.code, content).toBe(0)
      expect(explicit.stderr, content).toMatch(/^lockctl: warning: .*ignored: --endpoints/)
    }
  })

  it('hold --wait 0 --conflict-exit-code 0 --quiet skips in silence, as cron wants', async () => {
    const held = await runCli(['lock', 'quiet/k'], {env})
    const skipped = await runCli(['hold', 'quiet/k', '--wait', '0', '--conflict-exit-code', '0', '--quiet', '--', 'true'], {env})
    expect(skipped.code).toBe(0)
    expect(skipped.stderr).toBe('')
    await runCli(['unlock', 'quiet/k', '--token', held.stdout.trim()], {env})
  })

  it('stdout that cannot be written: lock releases the grant whose token nobody got (exit 74), hold --json and watch stop when their reader is gone', async () => {
    // A full disk behind stdout (ENOSPC): the token was lost with exit 0 and the lock held.
    for (const flag of [[], ['--json'], ['--export']]) {
      const full = spawnSync('sh', ['-c', `"${LAUNCHER}" lock out/full ${flag.join(' ')} > /dev/full`], {env: {...process.env, ...env}, encoding: 'utf8'})
      expect(full.status, `${flag.join(' ')}: ${full.stderr}`).toBe(74)
      expect(full.stderr.trim().split('\n'), flag.join(' ')).toHaveLength(1)
      expect(full.stderr).toMatch(/^lockctl: lock out\/full acquired \(fence \d+\) but its token could not be written to stdout: .*ENOSPC.*; released it$/m)
      expect((await runCli(['status', 'out/full', '--json'], {env})).stdout).toContain('"holder":null')
    }
    // The reader gone before the token is written (`lockctl lock k | false`): EPIPE.
    const closedPipe = (args: string[]) => {
      const run = runCli(args, {env})
      run.child.stdout!.destroy()
      return run
    }
    const piped = await closedPipe(['lock', 'out/pipe'])
    expect(piped.code).toBe(74)
    expect(piped.stderr).toMatch(/token could not be written to stdout: nobody reads it \(EPIPE\); released it/)
    expect((await runCli(['status', 'out/pipe', '--json'], {env})).stdout).toContain('"holder":null')
    // Leader election whose consumer died: the hold ends and releases (it held on, nobody acting).
    const hold = await closedPipe(['hold', 'out/leader', '--json'])
    expect(hold.code).toBe(74)
    expect(hold.stderr.trim()).toMatch(/^lockctl: cannot write to stdout: nobody reads it \(EPIPE\); released out\/leader$/)
    expect((await runCli(['status', 'out/leader', '--json'], {env})).stdout).toContain('"holder":null')
    // watch | head: the end of a pipeline, quietly (it died with a stack trace, or ran on).
    const watch = await closedPipe(['watch', 'out/watched'])
    expect(watch.code).toBe(0)
    expect(watch.stderr).toBe('')
    // Read-only commands: a full disk is one line and exit 74 (it was exit 0, or a stack trace with --json).
    for (const flag of ['', '--json']) {
      const status = spawnSync('sh', ['-c', `"${LAUNCHER}" status ${flag} > /dev/full`], {env: {...process.env, ...env}, encoding: 'utf8'})
      expect(status.status, flag).toBe(74)
      expect(status.stderr.trim(), flag).toMatch(/^lockctl: cannot write to stdout: ENOSPC: no space left on device$/)
    }
    // `hold -- CMD`: stdout is the command's, and so is the exit code.
    const command = spawnSync('sh', ['-c', `"${LAUNCHER}" hold out/cmd -- true > /dev/full`], {env: {...process.env, ...env}, encoding: 'utf8'})
    expect(command.status, command.stderr).toBe(0)
    expect(command.stderr).not.toMatch(/cannot write/)
  })

  it('watch --prefix with nothing under it says so at once (a state line), in JSON too', async () => {
    const run = runCli(['watch', '--prefix', 'nothing-here/', '--json'], {env})
    let out = ''
    run.child.stdout!.on('data', (c: Buffer) => (out += c.toString()))
    await eventually(() => out.includes('\n'))
    expect(JSON.parse(out.split('\n')[0])).toMatchObject({event: 'state', reason: 'no locks under "nothing-here/"'})
    run.child.kill('SIGINT')
    await run
  })
})

describe('shell completion', () => {
  const {env} = sharedLockd()
  it("bash: commands, a command's flags, and key names from the lock service", async () => {
    const bin = tempDir('lockctl-path-')
    symlinkSync(LAUNCHER, join(bin, 'lockctl'))
    const held = await runCli(['lock', 'complete/me'], {env})
    const complete = (words: string[]) => {
      const script = `source <(lockctl completion bash); COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _lockctl; printf '%s\\n' "\${COMPREPLY[@]}"`
      const result = spawnSync('bash', ['-c', script], {env: {...process.env, ...env, PATH: `${bin}:${process.env.PATH}`}, encoding: 'utf8'})
      expect(result.status, result.stderr).toBe(0)
      return result.stdout.trim().split('\n')
    }
    expect(complete(['lockctl', 'un'])).toEqual(['unlock'])
    expect(complete(['lockctl', 'lock', 'k', '--le'])).toEqual(['--lease'])
    expect(complete(['lockctl', 'unlock', 'complete/'])).toEqual(['complete/me'])
    // A key with spaces completes whole, escaped for the command line (the table's first column
    // gave "release" for "release train"); what was typed may be escaped already.
    const spaced = await runCli(['lock', "complete me/it's"], {env})
    expect(complete(['lockctl', 'unlock', 'complete'])).toEqual(["complete\\ me/it\\'s", 'complete/me'])
    expect(complete(['lockctl', 'status', 'complete\\ m'])).toEqual(["complete\\ me/it\\'s"])
    // --keys is for the scripts: not offered, nor in help.
    expect(complete(['lockctl', 'status', '--keys'])).toEqual([''])
    expect((await runCli(['status', '--help'], {env})).stdout).not.toMatch(/--keys/)
    for (const shell of ['zsh', 'fish']) expect((await runCli(['completion', shell], {env})).stdout).toMatch(/lockctl/)
    await runCli(['unlock', 'complete/me', '--token', held.stdout.trim()], {env})
    await runCli(['unlock', "complete me/it's", '--token', spaced.stdout.trim()], {env})
  })
})
