import {spawnSync} from 'node:child_process'
import {cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync} from 'node:fs'
import {createRequire} from 'node:module'
import {join, resolve} from 'node:path'
import {describe, expect, it} from 'vitest'
import {BIN, LAUNCHER, ROOT, eventually, runCli, sharedLockd, tempDir} from '../helpers/processes.js'

/**
 * bin/lockctl starts the hot commands from the V8 snapshot (docs/startup.md) and everything else,
 * or any run the snapshot does not fit, through bin/run.js. Which way a run went is read from the
 * command line of the lockctl process itself: `hold` runs a shell whose parent it is.
 */
const SHOW_PARENT = ['--', 'sh', '-c', 'tr "\\0" "\\n" < /proc/$PPID/cmdline']

/** How the lockctl process was started, from its command line (one argument a line): the snapshot and package root it was given, or the script node ran. */
function startOf(cmdline: string): {blob: string; root: string} | {script: string} {
  const args = cmdline.split('\n')
  const at = args.indexOf('--snapshot-blob')
  return at === -1 ? {script: resolve(args[1])} : {blob: resolve(args[at + 1]), root: resolve(args[at + 2])}
}

describe('start-up from the snapshot', () => {
  const {env} = sharedLockd()

  it('lock, unlock, status and hold start from the snapshot, with the same answers as the ordinary start', async () => {
    const held = await runCli(['hold', 'startup/a', '--quiet', ...SHOW_PARENT], {env: {...env, NODE_OPTIONS: undefined}})
    expect(held.code, held.stderr).toBe(0)
    expect(startOf(held.stdout)).toEqual({blob: join(ROOT, 'dist', 'snapshot', 'lockctl.blob'), root: ROOT})
    const lock = await runCli(['lock', 'startup/b', '--json'], {env})
    expect(lock.code, lock.stderr).toBe(0)
    const {token, fence} = JSON.parse(lock.stdout) as {token: string; fence: number}
    const status = await runCli(['status', 'startup/b', '--json'], {env})
    expect(JSON.parse(status.stdout)).toMatchObject({key: 'startup/b', holder: {fence}})
    expect((await runCli(['unlock', 'startup/b', '--token', token], {env})).code).toBe(0)
    // The same words and exit codes either way: a usage error, a refusal, the version.
    for (const args of [['lock'], ['unlock', 'startup/b', '--token', token], ['--version'], ['status', 'startup/b', '--lease', '1s']]) {
      const fast = await runCli(args, {env})
      const plain = await runCli(args, {env: {...env, LOCKCTL_NO_SNAPSHOT: '1'}})
      expect({code: fast.code, stdout: fast.stdout, stderr: fast.stderr}, args.join(' ')).toEqual({code: plain.code, stdout: plain.stdout, stderr: plain.stderr})
    }
  })

  it('help and unknown commands start the ordinary way, with the same answers', () => {
    for (const args of [['lock', '--help'], ['help'], ['nonsense']]) {
      const launched = spawnSync(LAUNCHER, args, {encoding: 'utf8', env: {...process.env, ...env}})
      const plain = spawnSync(process.execPath, [BIN, ...args], {encoding: 'utf8', env: {...process.env, ...env}})
      expect({code: launched.status, stdout: launched.stdout, stderr: launched.stderr}, args.join(' ')).toEqual({code: plain.status, stdout: plain.stdout, stderr: plain.stderr})
    }
  })

  it('every package the snapshot holds only a stub of is beside it, loads, and is what its stub says', () => {
    // scripts/bundle.js writes each stub as `lazy("FILE",__esModule,callable)` (minified).
    const source = readFileSync(join(ROOT, 'dist', 'snapshot', 'lockctl.cjs'), 'utf8')
    const stubs = [...source.matchAll(/\.lazy\("([^"]+)",([^,]+),([^)]+)\)/g)].map(([, file, esModule, callable]) => ({file, esModule, callable}))
    expect(stubs.map(({file}) => file).sort()).toEqual(
      readdirSync(join(ROOT, 'dist', 'snapshot', 'vendor'))
        .filter((file) => file.startsWith('lazy-'))
        .sort(),
    )
    expect(stubs.length).toBeGreaterThanOrEqual(5)
    const requireHere = createRequire(import.meta.url)
    for (const {file, esModule, callable} of stubs) {
      const real = requireHere(join(ROOT, 'dist', 'snapshot', 'vendor', file)) as {__esModule?: boolean}
      expect({file, esModule: real.__esModule === true, callable: typeof real === 'function'}).toEqual({file, esModule: esModule === '!0', callable: callable === '!0'})
      expect(Object.keys(real).length + (typeof real === 'function' ? 1 : 0), file).toBeGreaterThan(0)
    }
  })

  /** A copy of the installed package somewhere else, run through a link as npm's node_modules/.bin does. */
  function copyOfPackage(): {launcher: string; root: string} {
    const root = join(tempDir('lockctl-copy-'), 'lockctl')
    for (const part of ['bin', 'dist', 'package.json', 'oclif.manifest.json']) cpSync(join(ROOT, part), join(root, part), {recursive: true, preserveTimestamps: true})
    symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'))
    const bin = join(root, '..', '.bin')
    mkdirSync(bin)
    symlinkSync('../lockctl/bin/lockctl', join(bin, 'lockctl'))
    return {launcher: join(bin, 'lockctl'), root}
  }

  async function startedFrom(launcher: string, extra: NodeJS.ProcessEnv = {}): Promise<ReturnType<typeof startOf>> {
    const held = await runCli(['hold', 'startup/copy', '--quiet', ...SHOW_PARENT], {env: {...env, NODE_OPTIONS: undefined, ...extra}, launcher})
    expect(held.code, held.stderr).toBe(0)
    return startOf(held.stdout)
  }

  it('a snapshot is used only by the node that built it: a changed binary, another node, or no snapshot start the ordinary way', {timeout: 60_000}, async () => {
    const {launcher, root} = copyOfPackage()
    const blob = join(root, 'dist', 'snapshot', 'lockctl.blob')
    const stamp = `${blob}.node`
    // Moved and reached through a link: the snapshot built elsewhere still finds this copy's files.
    const fromSnapshot = {blob: join(root, 'dist', 'snapshot', 'lockctl.blob'), root}
    const ordinary = {script: join(root, 'bin', 'run.js')}
    expect(await startedFrom(launcher)).toEqual(fromSnapshot)
    const original = readFileSync(stamp, 'utf8')
    const [builtBy, versionAnswer] = original.split('\n')
    // The stamp's second line is the snapshot's own `--version`, which the launcher prints without
    // starting Node (shown by a stamp that says something else) wherever it would use the snapshot.
    const version = (extra: NodeJS.ProcessEnv = {}) => spawnSync(launcher, ['--version'], {encoding: 'utf8', env: {...process.env, ...env, NODE_OPTIONS: undefined, ...extra}})
    expect(versionAnswer).toBe(version({LOCKCTL_NO_SNAPSHOT: '1'}).stdout.trim())
    const {mtime} = statSync(builtBy)
    const stampSaying = (text: string) => {
      writeFileSync(stamp, text)
      utimesSync(stamp, mtime, mtime)
    }
    stampSaying(`${builtBy}\nlockctl/0.0.0-from-the-stamp\n`)
    expect(version().stdout).toBe('lockctl/0.0.0-from-the-stamp\n')
    expect(version({LOCKCTL_NO_SNAPSHOT: '1'}).stdout).toBe(`${versionAnswer}\n`)
    // A stamp of an older build (no answer): the snapshot answers.
    stampSaying(`${builtBy}\n`)
    expect(version().stdout).toBe(`${versionAnswer}\n`)
    expect(await startedFrom(launcher)).toEqual(fromSnapshot)
    // The node binary changed in place (its modification time differs from the stamp's).
    stampSaying(`${builtBy}\nlockctl/0.0.0-from-the-stamp\n`)
    utimesSync(stamp, new Date(), new Date(Date.now() - 3_600_000))
    expect(await startedFrom(launcher)).toEqual(ordinary)
    expect(version().stdout).toBe(`${versionAnswer}\n`)
    // Built by another node.
    writeFileSync(stamp, '/opt/other/node\nlockctl/0.0.0-from-the-stamp\n')
    expect(await startedFrom(launcher)).toEqual(ordinary)
    expect(version().stdout).toBe(`${versionAnswer}\n`)
    // The way out, and DEBUG (which oclif reads as it loads).
    stampSaying(original)
    expect(await startedFrom(launcher)).toEqual(fromSnapshot)
    expect(await startedFrom(launcher, {LOCKCTL_NO_SNAPSHOT: '1'})).toEqual(ordinary)
    expect(await startedFrom(launcher, {DEBUG: 'nothing-matches'})).toEqual(ordinary)
    // V8 settings in NODE_OPTIONS would make Node refuse the snapshot (exit 14): the ordinary start honours them.
    expect(await startedFrom(launcher, {NODE_OPTIONS: '--max-old-space-size=4096'})).toEqual(ordinary)
    // No snapshot at all (installed with --ignore-scripts): bin/snapshot.js builds one.
    rmSync(blob)
    expect(await startedFrom(launcher)).toEqual(ordinary)
    // The build runs the hot commands once against a throw-away lockd, which it removes after.
    const buildTmp = join(root, 'build-tmp')
    mkdirSync(buildTmp)
    const built = spawnSync(process.execPath, [join(root, 'bin', 'snapshot.js')], {encoding: 'utf8', env: {...process.env, TMPDIR: buildTmp}})
    expect(built.status, built.stderr).toBe(0)
    expect(built.stdout).toMatch(/start-up snapshot built for node v[\d.]+ \(.*; the hot commands run once\)/)
    expect(readdirSync(buildTmp)).toEqual([])
    // Killed with SIGKILL as the build ended: gone once the kernel has taken it down.
    await eventually(() => processesNaming(buildTmp).length === 0)
    expect(await startedFrom(launcher)).toEqual(fromSnapshot)
    // No throw-away lockd for the warm-up (here: no temporary directory for its socket): the same
    // snapshot without it, used the same way.
    const cold = spawnSync(process.execPath, [join(root, 'bin', 'snapshot.js')], {encoding: 'utf8', env: {...process.env, TMPDIR: join(root, 'no-such-directory')}})
    expect(cold.status, cold.stderr).toBe(0)
    expect(cold.stdout).toMatch(/start-up snapshot built for node v[\d.]+ \(.*; without the warm-up: .*no-such-directory/)
    expect(await startedFrom(launcher)).toEqual(fromSnapshot)
  })
})

/** Processes whose command line names this path (read from /proc: no pgrep needed). */
function processesNaming(path: string): string[] {
  const found: string[] = []
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path)) found.push(pid)
    } catch {
      // gone meanwhile
    }
  }
  return found
}
