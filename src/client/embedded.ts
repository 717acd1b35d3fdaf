import {spawn} from 'node:child_process'
import {openSync, closeSync, readFileSync, existsSync, statSync, statfsSync} from 'node:fs'
import {homedir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {DAMAGED_DATA_EXIT} from '../util/daemon-exit.js'
import {makeDirectories, socketPathProblem} from '../util/fs.js'
import {shellWord} from '../util/shell.js'
import {NotPermittedError, UnreachableError} from './errors.js'
import {LockdConnection, type ConnectionOptions} from './backends/lockd-connection.js'

/** Where the per-user lockd keeps its socket, data and log: $XDG_STATE_HOME/lockctl. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME && env.XDG_STATE_HOME.startsWith('/') ? env.XDG_STATE_HOME : join(env.HOME || homedir(), '.local', 'state')
  return join(base, 'lockctl')
}

export interface EmbeddedPaths {
  dir: string
  socket: string
  dataDir: string
  logFile: string
}

export function embeddedPaths(dir = stateDir()): EmbeddedPaths {
  return {dir, socket: join(dir, 'lockd.sock'), dataDir: join(dir, 'data'), logFile: join(dir, 'lockd.log')}
}

/** How long an embedded lockd with no connections and no locks lives on. */
export const EMBEDDED_IDLE_EXIT_MS = 15 * 60 * 1000
const START_TIMEOUT_MS = 5000

/**
 * Connect to the per-user lockd, starting it in the background when nobody answers. Two CLIs
 * racing here both spawn a server; lockd's data-directory claim lets exactly one of them run and
 * the other exits, and both CLIs connect to the winner.
 */
export async function connectEmbedded(paths: EmbeddedPaths, options: ConnectionOptions, daemonEntry = defaultDaemonEntry()): Promise<LockdConnection> {
  const tooLong = socketPathProblem(paths.socket)
  if (tooLong) throw new UnreachableError(`cannot start the local lockd: its socket ${paths.socket}: ${tooLong} (set XDG_STATE_HOME to a shorter directory, or --endpoints)`)
  checkPrivateDirectory(paths.dir)
  try {
    return await LockdConnection.connect({path: paths.socket}, options)
  } catch (error) {
    if (!(error instanceof UnreachableError)) throw error
  }
  const deadline = performance.now() + START_TIMEOUT_MS
  let exited: number | null = startDaemon(paths, daemonEntry, (code) => (exited = code))
  for (let delay = 10; ; delay = Math.min(delay * 2, 200)) {
    await new Promise((resolve) => setTimeout(resolve, delay))
    try {
      return await LockdConnection.connect({path: paths.socket}, options)
    } catch (error) {
      if (!(error instanceof UnreachableError)) throw error
      if ((exited !== null && exited !== 0) || performance.now() > deadline) {
        // A damaged data directory: the exact repair for this one (docs/recovery.md).
        const repair =
          exited === DAMAGED_DATA_EXIT
            ? `; to start it empty (every lock forgotten, fences above the old ones), run once: lockctl server --socket ${shellWord(paths.socket)} --data-dir ${shellWord(paths.dataDir)} --forget-all-locks, then stop it with Ctrl-C`
            : ''
        throw new UnreachableError(`the local lockd did not start: ${lastLine(paths.logFile) ?? unsaidReason(paths.dir)} (log: ${paths.logFile})${repair}`)
      }
      // Exit code 0: our lockd lost the start race to another one. Usually that one is about
      // to answer; if it was on its way out (its socket removed), start ours again.
      if (exited === 0) exited = startDaemon(paths, daemonEntry, (code) => (exited = code))
    }
  }
}

/**
 * The per-user lockd's directory must be the user's alone: a socket in a directory that others
 * can write to could be replaced by theirs, and every lock of this user handed to a stranger.
 * (lockd makes it 0700 and its socket 0600.)
 */
function checkPrivateDirectory(dir: string): void {
  let stat
  try {
    stat = statSync(dir)
  } catch {
    return // made 0700 when lockd starts
  }
  const uid = process.getuid?.()
  if (uid !== undefined && stat.uid !== uid) {
    throw new NotPermittedError(`refusing the local lockd in ${dir}: it belongs to uid ${stat.uid}, not to you (set XDG_STATE_HOME, or use --endpoints)`)
  }
  if ((stat.mode & 0o022) !== 0) {
    throw new NotPermittedError(`refusing the local lockd in ${dir}: others can write to it (mode ${(stat.mode & 0o777).toString(8)}); run chmod 700 ${dir}`)
  }
}

/**
 * The daemon script of this package: dist/server/daemon.js, beside this module's directory —
 * dist/client/ as compiled, dist/bundle/ as bundled (both one level under dist/).
 */
function defaultDaemonEntry(): string {
  return fileURLToPath(new URL('../server/daemon.js', import.meta.url))
}

/** Start lockd in the background; `onExit` gets its exit code. Answers null (still running). */
function startDaemon(paths: EmbeddedPaths, daemon: string, onExit: (code: number) => void): null {
  let log: number
  try {
    makeDirectories(paths.dir)
    log = openSync(paths.logFile, 'a', 0o600)
  } catch (error) {
    const {code, path} = error as NodeJS.ErrnoException
    // A file where the state directory (or one above it) belongs: said so, not as the log's ENOTDIR.
    const what = code === 'ENOTDIR' ? `${paths.dir}: a file is where this directory (or one above it) belongs` : `${path ?? paths.dir}: ${code ?? (error as Error).message}`
    throw new UnreachableError(`cannot start the local lockd: ${what} (set XDG_STATE_HOME to a writable directory, or --endpoints)`)
  }
  try {
    const child = spawn(process.execPath, [daemon, '--socket', paths.socket, '--data-dir', paths.dataDir, '--idle-exit-ms', String(EMBEDDED_IDLE_EXIT_MS)], {
      detached: true,
      stdio: ['ignore', log, log],
      env: process.env,
    })
    child.on('exit', (code) => onExit(code ?? 1))
    child.unref()
  } finally {
    closeSync(log)
  }
  return null
}

/**
 * lockd says why it stops in its log; an empty log may be because nothing could be written at
 * all: a full disk, which is then named (lockd could not say so itself).
 */
function unsaidReason(dir: string): string {
  try {
    const {bavail, bsize} = statfsSync(dir)
    const free = bavail * bsize
    if (free < FULL_DISK_BYTES) return `its log is empty, and the file system of ${dir} is full (${free} bytes free): make room, or set XDG_STATE_HOME elsewhere`
  } catch {
    // No figure to give: say what is known.
  }
  return 'no reason given'
}

/** Below this much free space, a lockd that could not even write its log is taken to have met a full disk. */
const FULL_DISK_BYTES = 1024 * 1024

function lastLine(file: string): string | undefined {
  if (!existsSync(file)) return undefined
  const lines = readFileSync(file, 'utf8').trim().split('\n')
  return lines.at(-1) || undefined
}
