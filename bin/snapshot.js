#!/usr/bin/env node
// Builds lockctl's start-up snapshot (docs/startup.md) for the Node that runs this script:
// dist/snapshot/lockctl.blob, and beside it the stamp bin/lockctl checks before using it (which
// `node` it was built for, and that binary's modification time as its own). Run by `npm run
// build` and after `npm install` (postinstall; `npm rebuild lockctl` runs it again after a Node
// upgrade). Never fails an install: without a snapshot, every command starts through bin/run.js.
import {spawnSync} from 'node:child_process'
import {existsSync, realpathSync, renameSync, rmSync, statSync, utimesSync, writeFileSync} from 'node:fs'
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
const result = spawnSync(process.execPath, ['--snapshot-blob', temporary, '--build-snapshot', entry], {
  cwd: dir,
  // The snapshot must not depend on this process's terminal or settings: no colours, no debug.
  env: {...process.env, LOCKCTL_SNAPSHOT_ROOT: root, NO_COLOR: '1', FORCE_COLOR: '0', DEBUG: '', NODE_OPTIONS: ''},
  stdio: ['ignore', 'ignore', 'pipe'],
  encoding: 'utf8',
})
if (result.status !== 0 || !existsSync(temporary)) {
  rmSync(temporary, {force: true})
  const why = (result.stderr ?? '').split('\n').find((line) => line.trim() && !/Warning|It may still|To request|--trace-warnings/.test(line))
  process.stderr.write(`lockctl: no start-up snapshot for node ${process.version} (${why ?? `exit ${result.status ?? result.signal}`}); commands start without it\n`)
  process.exit(0)
}
renameSync(temporary, blob)
const node = nodeOnPath()
writeFileSync(`${stamp}.${process.pid}`, `${node}\n`)
// bin/lockctl compares modification times with `test -nt` both ways (no stat in a shell without
// a process): equal times and the same path say this is the binary the snapshot was built by.
const {atime, mtime} = statSync(node)
utimesSync(`${stamp}.${process.pid}`, atime, mtime)
renameSync(`${stamp}.${process.pid}`, stamp)
if (!quiet) process.stdout.write(`lockctl: start-up snapshot built for node ${process.version} (${node})\n`)

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
