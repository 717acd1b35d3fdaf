#!/usr/bin/env node
// Builds lockctl's start-up snapshot (docs/startup.md) for the Node that runs this script:
// dist/snapshot/lockctl.blob, and beside it the stamp bin/lockctl checks before using it (which
// `node` it was built for, and that binary's modification time as its own; then what the snapshot
// answers to `--version`). Run by `npm run build` and after `npm install` (postinstall; `npm
// rebuild lockctl` runs it again after a Node upgrade). Never fails an install: without a
// snapshot, every command starts through bin/run.js.
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, realpathSync, renameSync, rmSync, statSync, utimesSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {delimiter, dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const dir = join(root, 'dist', 'snapshot')
const entry = join(dir, 'lockctl.cjs')
const blob = join(dir, 'lockctl.blob')
const stamp = join(dir, 'lockctl.blob.node')
// Before the first build (npm install in a fresh clone) there is nothing to snapshot yet.
if (!existsSync(entry)) process.exit(0)

const quiet = process.argv.includes('--quiet')
const temporary = `${blob}.${process.pid}`
rmSync(stamp, {force: true})
// The snapshot must not depend on this process's terminal, settings or lockctl's own variables:
// no colours, no debug, no endpoint, profile or password.
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('LOCKCTL_')))
const buildSnapshot = (extraEnv) =>
  spawnSync(process.execPath, ['--snapshot-blob', temporary, '--build-snapshot', entry], {
    cwd: dir,
    env: {...env, LOCKCTL_SNAPSHOT_ROOT: root, ...extraEnv, NO_COLOR: '1', FORCE_COLOR: '0', DEBUG: '', NODE_OPTIONS: ''},
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
    // A warm-up that hangs (a lockd that never answers: 5 s per request) must not hold up an install.
    timeout: 60_000,
  })
// With the hot commands run once against a throw-away lockd (src/snapshot/warm-up.ts), or, when
// that lockd does not start or the warm-up fails, without: the same snapshot, slower to run.
const warmUp = await startWarmUpLockd().catch((error) => ({failed: error.message}))
let result = warmUp.endpoint && buildSnapshot({LOCKCTL_SNAPSHOT_WARM_UP: warmUp.endpoint, HOME: warmUp.dir, XDG_CONFIG_HOME: warmUp.dir, XDG_STATE_HOME: warmUp.dir})
warmUp.stop?.()
let warmedUp = true
if (!result || result.status !== 0 || !existsSync(temporary)) {
  warmedUp = false
  if (result) warmUp.failed = `the build with it failed: ${whyFailed(result)}`
  rmSync(temporary, {force: true})
  result = buildSnapshot({})
}
if (result.status !== 0 || !existsSync(temporary)) {
  rmSync(temporary, {force: true})
  process.stderr.write(`lockctl: no start-up snapshot for node ${process.version} (${whyFailed(result)}); commands start without it\n`)
  process.exit(0)
}
renameSync(temporary, blob)
const node = nodeOnPath()
// The stamp's second line is the snapshot's own answer to `--version` (oclif's user agent: the
// package's name and version, this platform and this Node), which depends on nothing a run can
// change: bin/lockctl prints it without starting Node wherever it would start this snapshot.
const version = spawnSync(process.execPath, ['--snapshot-blob', blob, root, '--version'], {env: {...env, NODE_OPTIONS: ''}, encoding: 'utf8', timeout: 10_000})
const answer = version.status === 0 && /^[^\s/]+\/\S+ \S+ node-v\S+\n$/.test(version.stdout) ? version.stdout : ''
writeFileSync(`${stamp}.${process.pid}`, `${node}\n${answer}`)
// bin/lockctl compares modification times with `test -nt` both ways (no stat in a shell without
// a process): equal times and the same path say this is the binary the snapshot was built by.
const {atime, mtime} = statSync(node)
utimesSync(`${stamp}.${process.pid}`, atime, mtime)
renameSync(`${stamp}.${process.pid}`, stamp)
if (!quiet) {
  const how = warmedUp ? 'the hot commands run once' : `without the warm-up: ${warmUp.failed}`
  process.stdout.write(`lockctl: start-up snapshot built for node ${process.version} (${node}; ${how})\n`)
}

/** What a failed build said (its error's line, else its first line that is not one of Node's warnings), or how it ended. */
function whyFailed(build) {
  const lines = (build.stderr ?? '').split('\n')
  const said = lines.find((line) => /Error\b/.test(line)) ?? lines.find((line) => line.trim() && !/Warning|It may still|To request|--trace-warnings/.test(line))
  return said?.trim() ?? `exit ${build.status ?? build.signal}`
}

/**
 * A throw-away in-memory lockd on a socket in a fresh private directory, for the build to run the
 * hot commands against once (src/snapshot/warm-up.ts); or why not (the snapshot is then built
 * without the warm-up: the same, only slower to run).
 */
async function startWarmUpLockd() {
  const warmDir = mkdtempSync(join(tmpdir(), 'lockctl-snapshot-'))
  const socket = join(warmDir, 'lockd.sock')
  const lockd = spawn(process.execPath, [join(root, 'bin', 'run.js'), 'server', '--in-memory', '--socket', socket], {
    env: {...env, NODE_OPTIONS: ''},
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const stop = () => {
    lockd.kill('SIGKILL')
    rmSync(warmDir, {recursive: true, force: true})
  }
  const listening = await new Promise((resolve) => {
    let said = ''
    const timer = setTimeout(() => resolve(false), 10_000)
    const settle = (started) => {
      clearTimeout(timer)
      resolve(started)
    }
    lockd.stderr.on('data', (chunk) => {
      said += chunk
      if (said.includes(' listening on ')) settle(true)
    })
    lockd.on('exit', () => settle(false))
    lockd.on('error', () => settle(false))
  })
  if (!listening) {
    stop()
    return {failed: 'its lockd did not start'}
  }
  lockd.stderr.destroy()
  lockd.unref()
  return {endpoint: `unix://${socket}`, dir: warmDir, stop}
}

/** The `node` a shell finds first on PATH when it is this one (bin/lockctl runs that one), else this binary's own path. */
function nodeOnPath() {
  const self = realpathSync(process.execPath)
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    const candidate = join(directory || '.', 'node')
    if (!existsSync(candidate)) continue
    return realpathSync(candidate) === self ? candidate : process.execPath
  }
  return process.execPath
}
