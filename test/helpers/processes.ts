import {spawn, type ChildProcess} from 'node:child_process'
import {mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll} from 'vitest'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const BIN = join(ROOT, 'bin', 'run.js')
/** The package's bin, as npm links it: a shell launcher that starts the hot commands from the V8 snapshot (docs/startup.md). */
export const LAUNCHER = join(ROOT, 'bin', 'lockctl')

const dirs: string[] = []
const children = new Set<ChildProcess>()

/** A fresh directory, removed after the test file (with every process the file started). */
export function tempDir(prefix = 'lockctl-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  dirs.push(dir)
  return dir
}

afterAll(() => {
  for (const child of children) child.kill('SIGKILL')
  for (const dir of dirs) rmSync(dir, {recursive: true, force: true})
})

export interface LockdProcess {
  endpoint: string
  port: number
  child: ChildProcess
  /** Resolves with the exit code (or 128+signal) when the process ends. */
  exited: Promise<number>
  stderr(): string
  /** SIGTERM and wait for the exit. */
  stop(): Promise<number>
}

/**
 * Start `lockctl server` as a real process on a loopback port and wait until it listens.
 * `fileLimit`: started under `ulimit -n` of this many (its soft and hard open-file limit).
 * `nodeArgs`: flags for Node itself (a small --max-old-space-size).
 */
export async function startLockd(options: {dataDir?: string; port?: number; args?: string[]; fileLimit?: number; nodeArgs?: string[]} = {}): Promise<LockdProcess> {
  const args = [...(options.nodeArgs ?? []), BIN, 'server', '--listen', `127.0.0.1:${options.port ?? 0}`, ...(options.args ?? [])]
  args.push(...(options.dataDir ? ['--data-dir', options.dataDir] : ['--in-memory']))
  const child =
    options.fileLimit === undefined
      ? spawn(process.execPath, args, {stdio: ['ignore', 'ignore', 'pipe']})
      : spawn('sh', ['-c', `ulimit -n ${options.fileLimit} && exec "$0" "$@"`, process.execPath, ...args], {stdio: ['ignore', 'ignore', 'pipe']})
  children.add(child)
  let stderr = ''
  const exited = new Promise<number>((resolve) =>
    child.on('exit', (code, signal) => {
      children.delete(child)
      resolve(code ?? 128 + (signal ? osSignal(signal) : 0))
    }),
  )
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString()
      const match = /listening on lockds?:\/\/127\.0\.0\.1:(\d+)/.exec(stderr)
      if (match) resolve(Number(match[1]))
    })
    void exited.then((code) => reject(new Error(`lockd exited with ${code} before listening: ${stderr}`)))
  })
  return {
    endpoint: `lockd://127.0.0.1:${port}`,
    port,
    child,
    exited,
    stderr: () => stderr,
    async stop() {
      child.kill('SIGTERM')
      return exited
    },
  }
}

function osSignal(name: NodeJS.Signals): number {
  return ({SIGKILL: 9, SIGTERM: 15, SIGINT: 2, SIGHUP: 1} as Record<string, number>)[name] ?? 0
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

/** Run the CLI as a process, the way a shell script does: through the package's bin. */
export function runCli(args: string[], options: {env?: NodeJS.ProcessEnv; timeoutMs?: number; launcher?: string} = {}): Promise<CliResult> & {child: ChildProcess} {
  const child = spawn(options.launcher ?? LAUNCHER, args, {
    // A developer's own config file or environment must not leak into the tests.
    env: {
      ...process.env,
      LOCKCTL_ENDPOINTS: undefined,
      LOCKCTL_TOKEN: undefined,
      LOCKCTL_KEY: undefined,
      LOCKCTL_PROFILE: undefined,
      XDG_CONFIG_HOME: join(tmpdir(), 'lockctl-tests-no-config'),
      ...options.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 20_000)
  const promise = new Promise<CliResult>((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      resolve({code: code ?? 128 + (signal ? osSignal(signal) : 0), stdout, stderr})
    }),
  ) as Promise<CliResult> & {child: ChildProcess}
  promise.child = child
  return promise
}

/** Wait until `check` returns a truthy value (polling a condition the test cannot be told about). */
export async function eventually<T>(check: () => Promise<T> | T, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await check()
      if (value) return value
    } catch (error) {
      lastError = error
    }
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs}ms${lastError ? `: ${(lastError as Error).message ?? JSON.stringify(lastError)}` : ''}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

/**
 * A durable lockd for the enclosing describe (or file): started before its tests, stopped after.
 * `env` is one object, filled in before the tests run (LOCKCTL_ENDPOINTS pointing at the lockd),
 * so it can be destructured at once; `lockd` is there from the first test on.
 */
export function sharedLockd(): {readonly lockd: LockdProcess; readonly env: NodeJS.ProcessEnv} {
  let lockd: LockdProcess | undefined
  const env: NodeJS.ProcessEnv = {}
  beforeAll(async () => {
    lockd = await startLockd({dataDir: tempDir()})
    env.LOCKCTL_ENDPOINTS = lockd.endpoint
  })
  afterAll(async () => {
    await lockd?.stop()
  })
  return {
    env,
    get lockd() {
      if (!lockd) throw new Error('sharedLockd: used before its beforeAll ran')
      return lockd
    },
  }
}

/**
 * SIGSTOP `pid` and wait until every one of its threads has stopped. kill() returns before the
 * stop takes hold: under load a stopped etcd still answered a request sent right after it (a
 * test that needed it silent then saw a grant). Linux (/proc); elsewhere, only the signal.
 */
export async function pauseProcess(pid: number, timeoutMs = 5000): Promise<void> {
  process.kill(pid, 'SIGSTOP')
  const stopped = () => {
    try {
      return readdirSync(`/proc/${pid}/task`).every((thread) => /^[Tt]$/.test(threadState(pid, thread)))
    } catch {
      return true // no /proc, or the process is gone
    }
  }
  await eventually(stopped, timeoutMs)
}

/**
 * Pause `pid` (pauseProcess) until `settled` settles, then let it go on: what a client answers
 * meanwhile is what it does with a service that hangs instead of refusing.
 */
export async function pausedUntil<T>(pid: number, settled: Promise<T>): Promise<T> {
  await pauseProcess(pid)
  try {
    return await settled
  } finally {
    process.kill(pid, 'SIGCONT')
  }
}

function threadState(pid: number, thread: string): string {
  try {
    const stat = readFileSync(`/proc/${pid}/task/${thread}/stat`, 'utf8')
    // After the command name, which may hold spaces, in parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  } catch {
    return 'T' // the thread ended
  }
}
