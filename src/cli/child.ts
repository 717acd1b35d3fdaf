import {spawn} from 'node:child_process'
import {readdirSync, readFileSync} from 'node:fs'
import {constants} from 'node:os'

/** How a child ended, as a shell would report it. */
export interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  /** Set when the program could not be started at all. */
  spawnError?: NodeJS.ErrnoException
}

export const FORWARDED_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT']

export function signalNumber(signal: NodeJS.Signals): number {
  return constants.signals[signal] ?? 0
}

/** `code`, or 128+N for death by signal N, or 127 / 126 for not found / not executable. */
export function shellExitCode(result: ChildResult): number {
  if (result.spawnError) return result.spawnError.code === 'ENOENT' ? 127 : 126
  if (result.signal) return 128 + signalNumber(result.signal)
  return result.code ?? 1
}

/**
 * A command run under a lock. Not through a shell. Normally in its own process group, so every
 * signal reaches the grandchildren of a `sh -c` too. When stdin is a terminal the child stays in
 * our (foreground) group instead, or it would be stopped by SIGTTIN the moment it read from the
 * terminal; then signals go to the child and its descendants found through /proc.
 */
export class SupervisedChild {
  readonly exited: Promise<ChildResult>
  readonly ownGroup: boolean
  private readonly pid: number | undefined
  private killTimer: NodeJS.Timeout | null = null
  private done = false

  constructor(command: string[], env: NodeJS.ProcessEnv, options: {interactive: boolean}) {
    this.ownGroup = !options.interactive
    const child = spawn(command[0], command.slice(1), {stdio: 'inherit', env, detached: this.ownGroup})
    this.pid = child.pid
    this.exited = new Promise((resolve) => {
      child.once('error', (error: NodeJS.ErrnoException) => {
        if (child.pid === undefined) resolve({code: null, signal: null, spawnError: error})
      })
      child.once('exit', (code, signal) => resolve({code, signal}))
    })
    void this.exited.then(() => {
      this.done = true
      if (this.killTimer) clearTimeout(this.killTimer)
    })
  }

  get started(): boolean {
    return this.pid !== undefined
  }

  /** Send a signal to the child's whole group (or to the child and its descendants). */
  signal(signal: NodeJS.Signals): void {
    if (this.pid === undefined) return
    try {
      if (this.ownGroup) process.kill(-this.pid, signal)
      else for (const pid of [this.pid, ...descendants(this.pid)]) process.kill(pid, signal)
    } catch {
      // Already gone.
    }
  }

  /** Are any processes of the child's group left (e.g. background jobs of a finished shell)? */
  groupAlive(): boolean {
    if (this.pid === undefined || !this.ownGroup) return false
    try {
      process.kill(-this.pid, 0)
      return true
    } catch {
      return false
    }
  }

  /** `signal` now, SIGKILL after `graceMs` if the child is still running. */
  terminate(signal: NodeJS.Signals, graceMs: number): void {
    this.signal(signal)
    if (this.killTimer || this.done) return
    this.killTimer = setTimeout(() => this.signal('SIGKILL'), graceMs)
  }
}

/** Descendants of `root` (Linux /proc); empty elsewhere. */
function descendants(root: number): number[] {
  const parents = new Map<number, number[]>()
  let entries: string[]
  try {
    entries = readdirSync('/proc')
  } catch {
    return []
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      // The command name may contain spaces and parentheses: the ppid follows the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      const list = parents.get(ppid) ?? []
      list.push(Number(entry))
      parents.set(ppid, list)
    } catch {}
  }
  const found: number[] = []
  const queue = [root]
  while (queue.length > 0) {
    for (const child of parents.get(queue.shift()!) ?? []) {
      found.push(child)
      queue.push(child)
    }
  }
  return found
}
