import {spawn} from 'node:child_process'
import type {Writable} from 'node:stream'

/**
 * The watchdog of `hold KEY -- COMMAND` (docs/semantics.md, "hold"): a small shell process
 * started beside the command, in a session of its own (no signal to the terminal's job or to
 * the command's group reaches it), reading a pipe from hold. It acts only if hold ends without
 * saying so — killed with SIGKILL, or by the OOM killer: then nothing would stop the command,
 * and it ran on without the lock while the lease that hold no longer renewed ran out and the
 * service gave the lock to the next holder (two holders at once). Then every process that still
 * carries the grant's `LOCKCTL_TOKEN` in its environment (the command, whatever it started, a
 * daemon that left with `setsid`), and the command's process group, get the kill signal, and
 * SIGKILL after the grace, cut to a quarter of the lease (the lease left when hold died is at
 * least half of it: hold renews at half). When hold finishes normally it has already reaped
 * everything and writes `done`: the watchdog exits without looking.
 *
 * A shell and /proc (grep -z), not a second Node process: ~1 MB beside a command that may run
 * for hours, not ~40. The token comes over the pipe, never in arguments, which every user of the
 * machine can read.
 */
const SCRIPT = `
sig=$1 grace_tenths=$2 group=$3
IFS= read -r token || exit 0
while IFS= read -r line; do [ "$line" = done ] && exit 0; done
marker="LOCKCTL_TOKEN=$token"
carriers() {
  for f in /proc/[0-9]*/environ; do
    grep -qzxF -e "$marker" "$f" 2>/dev/null && { p=\${f#/proc/}; echo "\${p%/environ}"; }
  done
}
signal_all() {
  [ "$group" != 0 ] && kill -s "$1" -- "-$group" 2>/dev/null
  for p in $(carriers); do kill -s "$1" "$p" 2>/dev/null; done
}
alive() {
  [ "$group" != 0 ] && kill -0 -- "-$group" 2>/dev/null && return 0
  [ -n "$(carriers)" ]
}
signal_all "$sig"
i=0
while [ "$i" -lt "$grace_tenths" ]; do
  alive || exit 0
  sleep 0.1
  i=$((i + 1))
done
signal_all KILL
`

export interface WatchdogOptions {
  /** LOCKCTL_TOKEN of the grant the command runs under. */
  token: string
  killSignal: NodeJS.Signals
  graceMs: number
  leaseMs: number
  /** The command's own process group, or null when it shares hold's (on a terminal). */
  group: number | null
}

/** Start the watchdog; `done()` once the command and all it started are gone. */
export function startWatchdog(options: WatchdogOptions, env: NodeJS.ProcessEnv): {done(): void} {
  const graceTenths = Math.max(1, Math.floor(Math.min(options.graceMs, options.leaseMs / 4) / 100))
  // (Without the token in its own environment: it must not find itself.)
  const {LOCKCTL_TOKEN: _token, ...rest} = env
  let stdin: Writable | null = null
  try {
    // (The script through the environment: `ps` shows `sh -c eval ... lockctl-watchdog TERM 10 PGID`.)
    const dog = spawn('sh', ['-c', 'eval "$LOCKCTL_WATCHDOG_SCRIPT"', 'lockctl-watchdog', options.killSignal.replace(/^SIG/, ''), String(graceTenths), String(options.group ?? 0)], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
      env: {...rest, LOCKCTL_WATCHDOG_SCRIPT: SCRIPT},
    })
    dog.on('error', () => {})
    dog.stdin.on('error', () => {})
    dog.stdin.write(`${options.token}\n`)
    // Neither keeps hold running: its end (however it comes) closes the pipe.
    dog.unref()
    ;(dog.stdin as unknown as {unref?(): void}).unref?.()
    stdin = dog.stdin
  } catch {
    // No shell to start: hold works as before, without the guard against its own death.
  }
  return {
    done: () => {
      stdin?.end('done\n')
      stdin = null
    },
  }
}
