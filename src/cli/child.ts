import {spawn} from 'node:child_process'
import {constants} from 'node:os'
import {carries, descendsFrom, groupExists, listProcesses, type ProcessEntry} from './process-table.js'
import {startWatchdog, type Watchdog, type WatchdogOptions} from './watchdog.js'

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
  /** When SIGKILL follows the kill signal (set by the first terminate()). */
  private killAt: number | null = null
  /**
   * Sharing our process group (on a terminal): who was in it before the command started, by
   * pid and start time. Anything else in the group later came from the command.
   */
  private readonly groupBefore: Map<number, string> | null
  /** Our own process group (the terminal's foreground job), read once; used only when sharing it. */
  private readonly group: number
  /**
   * `LOCKCTL_TOKEN=<this grant's token>` as it stands in a process's environment: every process
   * the command starts inherits it, even one that left the group and session (`setsid`, a
   * daemon's double fork), which no process-group or parent walk finds once its parent is gone.
   */
  private readonly marker: Buffer | null
  /** Ends what the command started should hold itself die or stop (watchdog.ts); stood down when all is reaped. */
  private watchdog: Watchdog | null = null

  constructor(command: string[], env: NodeJS.ProcessEnv, options: {interactive: boolean; guard?: Pick<WatchdogOptions, 'killSignal' | 'graceMs' | 'leaseMs'>}) {
    this.ownGroup = !options.interactive
    // Only a child that shares our group needs to know who was in it before: reading /proc costs
    // ~1 ms per 70 processes, and a hold from a script or cron (its own group) never needs it.
    const processes = this.ownGroup ? null : listProcesses()
    this.group = processes?.get(process.pid)?.pgrp ?? process.pid
    this.groupBefore = processes && new Map([...processes.values()].filter((p) => p.pgrp === this.group).map((p) => [p.pid, p.start]))
    this.marker = env.LOCKCTL_TOKEN ? Buffer.from(`LOCKCTL_TOKEN=${env.LOCKCTL_TOKEN}\0`) : null
    const child = spawn(command[0], command.slice(1), {stdio: 'inherit', env, detached: this.ownGroup})
    this.pid = child.pid
    if (child.pid !== undefined && options.guard && env.LOCKCTL_TOKEN) {
      this.watchdog = startWatchdog({...options.guard, token: env.LOCKCTL_TOKEN, group: this.ownGroup ? child.pid : null}, env)
    }
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

  /**
   * Send a signal to everything the command started (its group, or what it left in ours). A
   * forwarded signal (Ctrl-C, SIGHUP) stops there; `escaped` (ending it: the lock is lost, or the
   * command is over) also reaches the processes that left the group (`marker`).
   */
  signal(signal: NodeJS.Signals, escaped = false): void {
    if (this.pid === undefined) return
    if (this.ownGroup) {
      try {
        process.kill(-this.pid, signal)
      } catch {
        // Already gone.
      }
    }
    const pids = !this.ownGroup ? this.leftovers() : escaped ? this.escaped(listProcesses()) : []
    for (const pid of pids) {
      try {
        process.kill(pid, signal)
      } catch {}
    }
  }

  /**
   * Processes that carry this grant's marker outside the command's own group (each signalled
   * once). Only those that started after lockctl itself have their environment read: anything
   * the command started is younger, and reading a process's environment takes its memory map's
   * lock, which an unrelated process stuck in I/O may hold (as `ps` can hang on one).
   */
  private escaped(processes: Map<number, ProcessEntry>): number[] {
    const marker = this.marker
    const since = Number(processes.get(process.pid)?.start)
    if (!marker || Number.isNaN(since)) return [] // no marker, or no /proc
    const ownGroup = this.ownGroup ? this.pid : null
    return [...processes.values()].filter((p) => !p.zombie && p.pid !== process.pid && Number(p.start) >= since && p.pgrp !== ownGroup && carries(p.pid, marker)).map((p) => p.pid)
  }

  /**
   * Live (not zombie) processes the command started: its process group; on a terminal, the
   * child, its descendants, and processes that joined our group after the command started
   * and whose parent is gone (background jobs orphaned when the command exited), but not
   * those of other members of a pipeline.
   */
  private leftovers(): number[] {
    if (this.pid === undefined) return []
    // Its own group, the kernel says it is empty, and nothing can have left it (no marker to look
    // for): /proc is not read. Reading every /proc/N/stat costs ~1 ms per 70 processes.
    if (this.ownGroup && !this.marker && !groupExists(this.pid)) return []
    const processes = listProcesses()
    if (this.ownGroup && processes.size === 0) return groupExists(this.pid) ? [this.pid] : [] // no /proc: ask the kernel about the group
    const escaped = this.escaped(processes)
    if (this.ownGroup) return [...[...processes.values()].filter((p) => p.pgrp === this.pid && !p.zombie).map((p) => p.pid), ...escaped]
    const before = this.groupBefore!
    const group = this.group
    const isOld = (pid: number) => before.get(pid) === processes.get(pid)?.start
    const fromCommand = (pid: number): boolean => {
      // Walk up: reaching the command means ours; reaching an older member of the group (a
      // pipeline's other commands) or ourselves means theirs; leaving the group means orphaned.
      for (let at = processes.get(pid), hops = 0; at && hops < 64; at = processes.get(at.ppid), hops++) {
        if (at.pid === this.pid) return true
        if (at.pid === process.pid || isOld(at.pid)) return false
        if (at.pgrp !== group) return true
      }
      return true
    }
    const found = new Set<number>()
    for (const p of processes.values()) {
      if (p.zombie || p.pid === process.pid || isOld(p.pid)) continue
      if (p.pid === this.pid || descendsFrom(processes, p.pid, this.pid) || (p.pgrp === group && fromCommand(p.pid))) found.add(p.pid)
    }
    for (const pid of escaped) if (!isOld(pid)) found.add(pid)
    return [...found]
  }

  /** `signal` now to everything the command started, SIGKILL after `graceMs` (counted once, from the first call). */
  terminate(signal: NodeJS.Signals, graceMs: number): void {
    this.signal(signal, true)
    this.killAt ??= Date.now() + graceMs
    if (this.killTimer || this.done) return
    this.killTimer = setTimeout(() => this.signal('SIGKILL', true), graceMs)
  }

  /**
   * After the command exited: whatever it started and left running (background jobs, a
   * daemonised child) gets `signal`, then SIGKILL once the grace is over; resolves when none
   * is left. It must be gone before the lock is released: it would run on without it.
   */
  async reap(signal: NodeJS.Signals, graceMs: number): Promise<void> {
    try {
      await this.reapLeftovers(signal, graceMs)
    } finally {
      this.standDown()
    }
  }

  /** Tell the watchdog how long the grant lasts (hold does, a few times a second). */
  beat(leaseRestMs: number): void {
    this.watchdog?.beat(leaseRestMs)
  }

  /** The watchdog leaves: all the command started is reaped. */
  private standDown(): void {
    this.watchdog?.standDown()
    this.watchdog = null
  }

  private async reapLeftovers(signal: NodeJS.Signals, graceMs: number): Promise<void> {
    if (this.leftovers().length === 0) return
    this.terminate(signal, graceMs)
    let killed = false
    // Bounded: a process that SIGKILL cannot end (uninterruptible I/O) is not waited for forever.
    for (let round = 0; round < 2000 && this.leftovers().length > 0; round++) {
      if (!killed && Date.now() >= this.killAt!) {
        this.signal('SIGKILL', true)
        killed = true
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
}
