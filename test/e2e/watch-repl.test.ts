import {spawn, spawnSync} from 'node:child_process'
import {existsSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {BIN, eventually, runCli, sharedLockd, startLockd} from '../helpers/processes.js'
import {hasTmux, inTerminal, type Terminal} from '../helpers/tmux.js'

const shared = sharedLockd()
const {env} = shared

/** Run the REPL with a script on stdin. */
function replScript(script: string, environment: NodeJS.ProcessEnv = env): {code: number; stdout: string; stderr: string} {
  const result = spawnSync(process.execPath, [BIN, 'repl', '--owner', 'repl-user'], {
    input: script,
    env: {...process.env, ...environment},
    encoding: 'utf8',
    timeout: 30_000,
  })
  return {code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr}
}

describe('lockctl watch as a process', () => {
  it('prints the exact event lines as JSON while other processes lock and unlock', async () => {
    const watch = runCli(['watch', 'watched', '--json'], {env})
    let out = ''
    watch.child.stdout!.on('data', (c: Buffer) => (out += c.toString()))
    await eventually(() => out.includes('"event":"state"'))
    const first = await runCli(['lock', 'watched', '--owner', 'first'], {env})
    const waiting = runCli(['lock', 'watched', '--owner', 'second', '--wait', '10s'], {env})
    await eventually(() => out.includes('"event":"queued"'))
    await runCli(['unlock', 'watched', '--token', first.stdout.trim()], {env})
    expect((await waiting).code).toBe(0)
    await runCli(['unlock', 'watched', '--force'], {env})
    await eventually(() => (out.match(/"event":"released"/g) ?? []).length === 2)
    watch.child.kill('SIGINT')
    expect((await watch).code).toBe(0)
    const lines = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
    for (const line of lines) expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT/)
    const fence = (await runCli(['status', 'watched', '--json'], {env})).stdout // free now
    expect(JSON.parse(fence).holder).toBeNull()
    expect(lines.map(({time: _t, ...rest}) => rest)).toEqual([
      {event: 'state', key: 'watched', holder: null, fence: null, waiters: 0},
      {event: 'acquired', key: 'watched', holder: 'first', fence: lines[1].fence, waiters: 0},
      {event: 'queued', key: 'watched', waiters: 1},
      {event: 'released', key: 'watched', holder: 'first', fence: lines[1].fence, waiters: 0},
      {event: 'acquired', key: 'watched', holder: 'second', fence: lines[4].fence, waiters: 0},
      {event: 'released', key: 'watched', holder: 'second', fence: lines[4].fence, waiters: 0, reason: 'forced'},
    ])
    expect(lines[4].fence).toBeGreaterThan(lines[1].fence)
  })

  it('status --watch redraws the table as locks change, until Ctrl-C', async () => {
    const watch = runCli(['status', '--watch', '--prefix', 'sw/'], {env})
    let out = ''
    watch.child.stdout!.on('data', (c: Buffer) => (out += c.toString()))
    await eventually(() => out.includes('no locks'))
    const lock = await runCli(['lock', 'sw/a', '--owner', 'drawn'], {env})
    // Piped: plain columns, one header line per drawing.
    await eventually(() => /^sw\/a +drawn +\d+ /m.test(out))
    await runCli(['unlock', 'sw/a', '--token', lock.stdout.trim()], {env})
    await eventually(() => out.lastIndexOf('no locks') > out.lastIndexOf('drawn'))
    watch.child.kill('SIGINT')
    expect((await watch).code).toBe(0)
  })

  it('exits 4 when the lock service is unreachable at the start', async () => {
    const result = await runCli(['watch', 'k'], {env: {LOCKCTL_ENDPOINTS: 'lockd://127.0.0.1:1'}})
    expect(result.code).toBe(4)
  })
})

describe('the REPL with piped input (a script)', () => {
  it('runs a whole session: tokens remembered, quotes work, errors with line numbers, exit code of the first failure', () => {
    const result = replScript(
      [
        'lock "repl key" --lease 30s',
        'renew "repl key" --lease 1m',
        'status "repl key" --json',
        'lock other --wait 0',
        "unlock 'repl key'",
        'lock nope --lease abc',
        'unlock "repl key"',
        'bogus-command',
        '# a comment',
        '',
      ].join('\n'),
    )
    expect(result.code).toBe(2) // line 6: bad duration
    const out = result.stdout.trim().split('\n')
    expect(out[0]).toMatch(/^[A-Za-z0-9_-]{16,}$/) // the token
    expect(out[1]).toMatch(/^renewed repl key: 1m left \(fence \d+\)$/)
    expect(JSON.parse(out[2])).toMatchObject({key: 'repl key', holder: {owner: 'repl-user'}})
    expect(out[3]).toMatch(/^[A-Za-z0-9_-]{16,}$/)
    expect(out[4]).toMatch(/^released repl key \(fence \d+, held by repl-user\)$/)
    expect(out.at(-1)).toBe('released other') // leaving releases what the session holds
    expect(result.stderr.trim().split('\n')).toEqual([
      'line 6: lockctl: --lease: "abc" is not a duration; use a number with a unit, e.g. 500ms, 30s, 1m30s, 2h',
      'line 7: lockctl: missing --token (or $LOCKCTL_TOKEN); use --force to release a lock you do not hold',
      'line 8: lockctl: unknown command "bogus-command" (try help)',
    ])
  })

  it('a token the session remembers wins over $LOCKCTL_TOKEN set for another key', () => {
    // As after `eval "$(lockctl lock nightly --export)"` in the shell that starts the REPL.
    const result = replScript('lock mine\nrenew mine\nunlock mine\n', {...env, LOCKCTL_KEY: 'nightly', LOCKCTL_TOKEN: 'AAAAAAAAAAAAAAAAAAAAAAAA'})
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^released mine \(fence \d+, held by repl-user\)$/m)
  })

  it('exit code 0 when every line succeeds, and the locks are released at the end', async () => {
    const result = replScript('lock s1\nlock s2\nhold s3 --lease 2s\nlocks\n')
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/s1 {2}fence \d+, 1m left \(lock\)/)
    for (const key of ['s1', 's2', 's3']) {
      expect(JSON.parse((await runCli(['status', key, '--json'], {env})).stdout).holder).toBeNull()
    }
  })

  it('leaving says "released" for a background hold that held, as for a plain lock', async () => {
    // The third line waits 1 s (for a lock the session holds itself): time for the hold's grant.
    const result = replScript('hold rhold --lease 2s\nlock rplain\nlock rplain --wait 1s\n')
    expect(result.stdout).toMatch(/acquired rhold \(fence \d+, lease 2s\)/)
    expect(result.stdout).toMatch(/^released rhold$/m)
    expect(result.stdout).toMatch(/^released rplain$/m)
    expect(JSON.parse((await runCli(['status', 'rhold', '--json'], {env})).stdout).holder).toBeNull()
  })

  it('a semaphore slot and a shared lock in the REPL: a second slot of one key is refused (it would hide the first), and leaving releases them', async () => {
    const result = replScript('lock rsem --limit 2\nlock rsem --limit 2\nlock rshared --shared\nlocks\n')
    expect(result.code).toBe(2) // the refused line
    expect(result.stderr).toMatch(/^line 2: lockctl: this session already holds rsem \(fence \d+\): unlock rsem first/m)
    expect(result.stdout).toMatch(/rsem {2}fence \d+, 1m left \(lock\)/)
    for (const key of ['rsem', 'rshared']) {
      expect(JSON.parse((await runCli(['status', key, '--json'], {env})).stdout).holder).toBeNull()
    }
  })
})

describe('the REPL leaving while the lock service is down', () => {
  it('a script whose lockd died: unlock of a background hold and leaving say the service did not hear the release, and the script exits 4', async () => {
    const own = await startLockd()
    const repl = spawn(process.execPath, [BIN, 'repl', '--owner', 'repl-user'], {env: {...process.env, LOCKCTL_ENDPOINTS: own.endpoint}, stdio: ['pipe', 'pipe', 'pipe']})
    let out = ''
    let err = ''
    repl.stdout.on('data', (c: Buffer) => (out += c.toString()))
    repl.stderr.on('data', (c: Buffer) => (err += c.toString()))
    const exited = new Promise<number | null>((resolve) => repl.on('close', (status) => resolve(status)))
    repl.stdin.write('lock rdown/plain\nhold rdown/hold --lease 30s\nhold rdown/unlocked --lease 30s\n')
    await eventually(() => out.includes('acquired rdown/hold') && out.includes('acquired rdown/unlocked'))
    own.child.kill('SIGKILL')
    await own.exited
    // `unlock` of a background hold said "released" as well.
    repl.stdin.end('unlock rdown/unlocked\n')
    // It said "released rdown/hold" alone, and exited 0 with the plain lock's release failed.
    expect(await exited, out + err).toBe(4)
    expect(out).toMatch(/^released rdown\/hold \(the lock service did not answer: it holds the lock until its lease runs out\)$/m)
    expect(err).toMatch(/^lockctl: rdown\/plain: .*connection refused/m)
    expect(err).toMatch(/^line 4: lockctl: stopped holding "rdown\/unlocked", but the lock service did not answer its release: it holds the lock until its lease runs out$/m)
    expect(out).not.toMatch(/released rdown\/unlocked/)
  })
})

describe('the REPL ended by a signal', () => {
  it('SIGTERM and SIGHUP (its terminal closed) release what the session holds, leave the queue it waits in, and exit 128+N', async () => {
    for (const [signal, code] of [
      ['SIGTERM', 143],
      ['SIGHUP', 129],
    ] as const) {
      const blocker = await runCli(['lock', `rsig/busy-${signal}`, '--owner', 'someone-else'], {env})
      const repl = spawn(process.execPath, [BIN, 'repl', '--owner', 'repl-user'], {env: {...process.env, ...env}, stdio: ['pipe', 'pipe', 'pipe']})
      let out = ''
      repl.stdout.on('data', (c: Buffer) => (out += c.toString()))
      const exited = new Promise<number | null>((resolve) => repl.on('close', (status) => resolve(status)))
      repl.stdin.write(`lock rsig/plain-${signal}\nhold rsig/hold-${signal}\nlock rsig/busy-${signal} --wait forever\n`)
      await eventually(() => out.includes(`acquired rsig/hold-${signal}`))
      await eventually(async () => JSON.parse((await runCli(['status', `rsig/busy-${signal}`, '--json'], {env})).stdout).waiters === 1)
      repl.kill(signal)
      expect(await exited, out).toBe(code)
      expect(out).toMatch(new RegExp(`^released rsig/plain-${signal}$`, 'm'))
      for (const key of [`rsig/plain-${signal}`, `rsig/hold-${signal}`]) {
        expect(JSON.parse((await runCli(['status', key, '--json'], {env})).stdout).holder, key).toBeNull()
      }
      const busy = JSON.parse((await runCli(['status', `rsig/busy-${signal}`, '--json'], {env})).stdout)
      expect(busy.waiters).toBe(0)
      expect(busy.holder.owner).toBe('someone-else')
      await runCli(['unlock', `rsig/busy-${signal}`, '--token', blocker.stdout.trim()], {env})
    }
  })
})

/** The REPL in a real terminal, as tty-user, on the shared lockd. */
function replInTmux(run: (terminal: Terminal) => Promise<void>): Promise<void> {
  return inTerminal('repl --owner tty-user', {LOCKCTL_ENDPOINTS: shared.lockd.endpoint}, async (terminal) => {
    await terminal.waitScreen(/lockctl>/, 15_000)
    await run(terminal)
  })
}

describe.skipIf(!hasTmux && !process.env.CI)('the REPL in a real terminal (tmux)', () => {
  it('prompt, background hold events while typing, Ctrl-C during a waiting lock, the exit question', async () => {
    await replInTmux(async ({keys, waitScreen, screen, home}) => {
      // A background hold whose events appear above the prompt while a line is being typed.
      const blocker = await runCli(['lock', 'tty-held', '--owner', 'blocker'], {env})
      keys('hold tty-held --lease 2s', 'Enter')
      await waitScreen(/holding tty-held in the background/)
      keys('status half-typed')
      await runCli(['unlock', 'tty-held', '--token', blocker.stdout.trim()], {env})
      await waitScreen(/acquired tty-held \(fence \d+, lease 2s\)/)
      const lines = screen()
        .split('\n')
        .filter((l) => l.trim())
      const acquiredAt = lines.findIndex((l) => l.includes('acquired tty-held'))
      // The event is above the prompt, and the half-typed line is still there after it.
      expect(lines.slice(acquiredAt + 1).join('\n')).toMatch(/lockctl> status half-typed/)
      keys('C-u')

      // Ctrl-C cancels a waiting lock, not the REPL.
      const other = await runCli(['lock', 'tty-busy', '--owner', 'other'], {env})
      keys('lock tty-busy --wait forever', 'Enter')
      await eventually(async () => JSON.parse((await runCli(['status', 'tty-busy', '--json'], {env})).stdout).waiters === 1)
      keys('C-c')
      await waitScreen(/lockctl: stopped waiting for "tty-busy"/)
      await eventually(async () => JSON.parse((await runCli(['status', 'tty-busy', '--json'], {env})).stdout).waiters === 0)
      keys('locks', 'Enter')
      // (Renewed at half of its 2 s lease: what is left may read "1.4s" or, just before a renewal, "950ms".)
      await waitScreen(/tty-held {2}fence \d+, [\d.]+m?s left, renewing \(hold\)/)

      // Ctrl-C reaches a foreground hold's command (the terminal is in raw mode: no signal from it).
      keys(`hold tty-fg -- sh -c 'trap "echo got-int; exit 5" INT; while :; do sleep 0.1; done'`, 'Enter')
      await waitScreen(/acquired tty-fg/)
      keys('C-c')
      await waitScreen(/got-int\n(.*\n)*.*released tty-fg\nlockctl>$/m)
      expect(JSON.parse((await runCli(['status', 'tty-fg', '--json'], {env})).stdout).holder).toBeNull()

      // Leaving asks what to do with the held lock; release all.
      keys('exit', 'Enter')
      await waitScreen(/This session holds 1 lock\(s\)\. On exit:/)
      keys('Enter')
      await waitScreen(/exited 0/)
      expect(JSON.parse((await runCli(['status', 'tty-held', '--json'], {env})).stdout).holder).toBeNull()
      await runCli(['unlock', 'tty-busy', '--token', other.stdout.trim()], {env})
      const history = join(home, 'state', 'lockctl', 'repl_history')
      expect(existsSync(history) && readFileSync(history, 'utf8')).toMatch(/hold tty-held --lease 2s/)
    })
  })

  it('questions inside the REPL (pick a lock, confirm --force, Ctrl-C at a question, stay at exit) and watch leave it working', async () => {
    await replInTmux(async ({keys, waitScreen}) => {
      // (tmux drops trailing blanks: a prompt shows as "lockctl>" at the end of a line.)
      // Tab completes commands and flags.
      keys('unl', 'Tab')
      await waitScreen(/lockctl> unlock$/m)
      // A key with a space is inserted quoted, as one word; after "-" come the flags.
      keys('C-u', 'lock "tty release train"', 'Enter')
      await waitScreen(/lockctl> lock "tty release train"\n\S+\nlockctl>$/m)
      keys('renew tty', 'Tab')
      await waitScreen(/lockctl> renew 'tty release train'$/m)
      keys(' --le', 'Tab')
      await waitScreen(/lockctl> renew 'tty release train' --lease$/m)
      keys(' 5m', 'Enter')
      await waitScreen(/renewed tty release train: 5m left/)
      keys('unlock "tty release train"', 'Enter')
      await waitScreen(/released tty release train/)
      keys('lock tty-a', 'Enter')
      await waitScreen(/lockctl> lock tty-a\n\S+\nlockctl>$/m)
      keys('lock tty-b', 'Enter')
      await waitScreen(/lockctl> lock tty-b\n\S+\nlockctl>$/m)

      // Two locks: unlock without KEY lists them and asks which.
      keys('unlock', 'Enter')
      await waitScreen(/ {2}1\) tty-a\n {2}2\) tty-b\nRelease which lock\? \[1-2 or a name\]$/m)
      keys('2', 'Enter')
      await waitScreen(/released tty-b \(fence \d+, held by tty-user\)\nlockctl>$/m)

      // --force asks first; Ctrl-C at the question cancels the command, not the REPL.
      keys('unlock tty-a --force', 'Enter')
      await waitScreen(/Force-release "tty-a", held by tty-user \(fence \d+, [^)]* left\)\? \(y\/N\)$/m)
      keys('C-c')
      await waitScreen(/lockctl: cancelled at the prompt\nlockctl>$/m)
      expect(JSON.parse((await runCli(['status', 'tty-a', '--json'], {env})).stdout).holder).toMatchObject({owner: 'tty-user'})
      keys('unlock tty-a --force', 'Enter')
      // This question, the last thing on the screen (the cancelled one above ends the same way).
      await waitScreen(/\(y\/N\)\s*$/)
      keys('y', 'Enter')
      await waitScreen(/released tty-a \(fence \d+, held by tty-user\)\nlockctl>$/m)
      expect(JSON.parse((await runCli(['status', 'tty-a', '--json'], {env})).stdout).holder).toBeNull()

      // watch streams until Ctrl-C, then the prompt comes back.
      keys('watch tty-w', 'Enter')
      await waitScreen(/state +tty-w holder=- fence=- waiters=0/)
      const other = await runCli(['lock', 'tty-w', '--owner', 'other'], {env})
      await waitScreen(/acquired +tty-w holder=other fence=\d+ waiters=0/)
      keys('C-c')
      await waitScreen(/acquired +tty-w holder=other fence=\d+ waiters=0\nlockctl>$/m)
      await runCli(['unlock', 'tty-w', '--token', other.stdout.trim()], {env})

      // The answer went to the question, not to the REPL as a command; typing still works.
      keys('lock tty-c', 'Enter')
      await waitScreen(/lockctl> lock tty-c\n\S+\nlockctl>$/m)
      keys('exit', 'Enter')
      await waitScreen(/This session holds 1 lock\(s\)\. On exit:/)
      keys('Up', 'Enter') // the last choice: cancel, stay
      await waitScreen(/cancel: stay in the REPL\nlockctl>$/m)
      keys('locks', 'Enter')
      await waitScreen(/tty-c {2}fence \d+, [^)]* left \(lock\)\nlockctl>$/m)
      keys('C-d')
      await waitScreen(/On exit:/)
      keys('Enter')
      await waitScreen(/exited 0/)
      expect(JSON.parse((await runCli(['status', 'tty-c', '--json'], {env})).stdout).holder).toBeNull()
    })
  })
})
