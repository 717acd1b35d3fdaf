import {spawn} from 'node:child_process'
import {fileURLToPath} from 'node:url'
import type {Writable} from 'node:stream'

/**
 * The watchdog of `hold KEY -- COMMAND` (docs/semantics.md, "hold KEY -- COMMAND"): a process
 * started beside the command, in a session of its own (no signal to the terminal's job or to the
 * command's group reaches it), to which hold writes over a pipe how long its grant lasts, a few
 * times a second. It acts only when hold cannot: killed with SIGKILL or by the OOM killer (the
 * pipe closes), or stopped (SIGSTOP, a debugger: the beats stop while the lease runs out). hold
 * then renews nothing and stops nothing, and the command ran on without the lock once the lease
 * ran out and the lock service gave it to the next taker — two holders at once. The watchdog
 * gives the command's process group and every process carrying the grant's `LOCKCTL_TOKEN`
 * the kill signal, and SIGKILL after the grace, cut to a quarter of the lease (watchdog-main.ts).
 */

export interface WatchdogOptions {
  /** LOCKCTL_TOKEN of the grant the command runs under. */
  token: string
  killSignal: NodeJS.Signals
  graceMs: number
  leaseMs: number
  /** The command's own process group, or null when it shares hold's (on a terminal). */
  group: number | null
}

export interface Watchdog {
  /** The grant lasts `leaseRestMs` more (as hold counts it): the beat that keeps the watchdog still. */
  beat(leaseRestMs: number): void
  /** All the command started is gone: the watchdog leaves. */
  standDown(): void
}

/** hold beats every 250 ms: this long without one, it is not running. */
const STALE_MS = 500
/** The kill signal goes out at least this long before the grant's end... */
const MIN_LEAD_MS = 100
/** ...and at most this long before it. */
const MAX_LEAD_MS = 1000

/**
 * Whether a silent hold's command is stopped now: hold has not beaten for STALE_MS, and the
 * grant it last reported ends within a quarter of the lease, at most a second (a loaded machine
 * schedules the watchdog late too). Not sooner: a live hold renews at half the lease, so it is
 * never there, and a hold stopped for a few seconds that resumes in time renews, and its command
 * goes on. SIGKILL follows after the grace, as when hold itself sees a loss. Times in ms of one
 * monotonic clock.
 */
export function silentHoldDue(at: {now: number; lastBeat: number; grantEnd: number; leaseMs: number}): boolean {
  const leadMs = Math.max(MIN_LEAD_MS, Math.min(at.leaseMs / 4, MAX_LEAD_MS))
  return at.now - at.lastBeat > STALE_MS && at.now >= at.grantEnd - leadMs
}

/** Where the watchdog's program is: beside this module in dist/cli (also from the bundle's directory). */
function watchdogMain(): string {
  return fileURLToPath(new URL('../cli/watchdog-main.js', import.meta.url))
}

export function startWatchdog(options: WatchdogOptions, env: NodeJS.ProcessEnv): Watchdog {
  // (Without LOCKCTL_TOKEN in its own environment: it must not find itself.)
  const {LOCKCTL_TOKEN: _token, ...rest} = env
  let stdin: Writable | null = null
  try {
    const graceMs = Math.max(100, Math.min(options.graceMs, options.leaseMs / 4))
    const dog = spawn(process.execPath, [watchdogMain(), options.killSignal, String(Math.round(graceMs)), String(options.group ?? 0), String(options.leaseMs)], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
      // The token in the environment, which only this user can read (arguments everyone can),
      // and there from the start (a pipe's first line may still sit in hold's buffer when hold
      // is stopped). Not as LOCKCTL_TOKEN: the watchdog must not find itself.
      env: {...rest, LOCKCTL_WATCHDOG_TOKEN: options.token},
    })
    dog.on('error', () => {})
    dog.stdin.on('error', () => {
      stdin = null
    })
    // Neither keeps hold running: its end (however it comes) closes the pipe.
    dog.unref()
    ;(dog.stdin as unknown as {unref?(): void}).unref?.()
    stdin = dog.stdin
  } catch {
    // Nothing to start it with: hold works as before, without the guard against its own end.
  }
  return {
    beat: (leaseRestMs) => {
      stdin?.write(`until ${Math.max(0, Math.floor(leaseRestMs))}\n`)
    },
    standDown: () => {
      stdin?.end('done\n')
      stdin = null
    },
  }
}
