import type {LockClient} from '../client/lock-client.js'
import {describeHolder} from '../client/errors.js'
import type {BackgroundHoldOptions} from './background-hold.js'
import {WAIT_FOREVER} from '../protocol/messages.js'
import {FORWARDED_SIGNALS, shellExitCode, signalNumber, SupervisedChild} from './child.js'
import {EventPrinter} from './events.js'
import {ExitCode} from './exit-codes.js'
import {formatMs, ordinal} from './output.js'
import {OwnGrantWaitError, ownGrantFence} from './own-grant.js'
import {createProgress} from './progress.js'

/** How often hold tells the watchdog how long its grant lasts (watchdog-main.ts takes half a second without one, near the grant's end, for a stopped hold). */
const WATCHDOG_BEAT_MS = 250

/** `hold` in the foreground: what a background hold takes, and the command and its supervision. */
export interface HoldOptions extends BackgroundHoldOptions {
  /** The command to run under the lock, or null to hold until a signal (leader election). */
  command: string[] | null
  onLost: 'kill' | 'ignore'
  killSignal: NodeJS.Signals
  graceMs: number
  /** Aborted for Ctrl-C where it does not arrive as a signal (the REPL's raw-mode terminal). */
  interrupt?: AbortSignal
  /**
   * Without a command, the events are the output: once they cannot be written (the reader of
   * `hold leader --json | consumer` died, a full disk) the hold ends, exit 74, rather than keep
   * a leadership nobody acts on. Its reason: an OutputError (stdout.ts).
   */
  output?: {gone: AbortSignal; claim(): Error}
}

/**
 * `hold` in the foreground, for the CLI and the REPL alike: take the lock, report its events,
 * run the command under it and supervise it, and make sure nothing the command started
 * outlives the lock (docs/semantics.md, "hold KEY -- COMMAND"). Answers the exit code.
 */
export async function runHold(client: LockClient, options: HoldOptions): Promise<number> {
  const {key, command, json} = options
  // With a command, the command owns stdout: events go to stderr.
  const stream = command ? process.stderr : process.stdout
  const events = new EventPrinter((line) => stream.write(line), options.quiet ? 'quiet' : json ? 'json' : 'human')
  const progress = createProgress(!json && !options.quiet)
  let child: SupervisedChild | null = null
  let beats: NodeJS.Timeout | null = null
  let lost = false
  let suspended = false
  let announcedWait = false

  /** A signal; 'output': nobody can read the events any more; 'own': queued behind our own grant. */
  let stopRequested!: (why: NodeJS.Signals | 'output' | 'own') => void
  const stop = new Promise<NodeJS.Signals | 'output' | 'own'>((resolve) => (stopRequested = resolve))
  // A hold inside the command of a hold of the same key would wait for its own parent forever.
  const ownFence = ownGrantFence(key, options.limit)
  // Claimed at once: this hold says it in its own line (with what became of the lock).
  let outputFailure: Error | null = null
  const onOutputGone = () => {
    outputFailure = options.output!.claim()
    stopRequested('output')
  }
  const outputGone = command ? undefined : options.output?.gone
  if (outputGone?.aborted) onOutputGone()
  outputGone?.addEventListener('abort', onOutputGone)
  const interactive = Boolean(command && process.stdin.isTTY)
  const onSignal = (signal: NodeJS.Signals) => {
    if (child?.started) {
      // In a terminal, SIGINT/SIGQUIT from the keyboard already reached the child's group.
      if (!(interactive && (signal === 'SIGINT' || signal === 'SIGQUIT'))) child.signal(signal)
    } else {
      stopRequested(signal)
    }
  }
  const handlers = FORWARDED_SIGNALS.map((signal) => [signal, () => onSignal(signal)] as const)
  for (const [signal, handler] of handlers) process.on(signal, handler)
  const onInterrupt = () => (child?.started ? child.signal('SIGINT') : stopRequested('SIGINT'))
  options.interrupt?.addEventListener('abort', onInterrupt)

  const bounded = options.waitMs !== WAIT_FOREVER
  const lock = client.createAutoRenewalLock(key, {
    leaseMs: options.leaseMs,
    retryMillis: options.retryMillis,
    waitMs: options.waitMs,
    owner: options.owner,
    limit: options.limit,
    shared: options.shared,
    // With a command, a loss ends the run: the command has the lost grant's token and fence.
    reacquire: !command,
    onQueued: ({position, holder}) => {
      if (ownFence !== null && holder?.fence === ownFence) return stopRequested('own')
      progress.show(`waiting for ${key}: held by ${describeHolder(holder)}; ${ordinal(position)} in the queue`)
      // One line per wait; the spinner follows the place in the queue.
      if (!announcedWait) events.print('waiting', key, {position, holder: holder?.owner ?? null})
      announcedWait = true
    },
    onAcquired: (grant) => {
      announcedWait = false
      progress.stop()
      if (suspended) {
        suspended = false
        events.print('connected', key, {endpoint: client.endpoint})
      }
      events.print('acquired', key, {fence: grant.fence, leaseMs: grant.leaseMs, token: json ? grant.token : undefined})
    },
    onLost: (reason) => {
      events.print('lost', key, {reason: reason.reason})
      if (!command) return
      lost = true
      if (child?.started && options.onLost === 'kill') child.terminate(options.killSignal, options.graceMs)
    },
    onRetry: (error, delayMs) => {
      // Cannot reach the service (or it failed): say so once, instead of waiting in silence.
      if (suspended) return
      suspended = true
      const until = lock.isHeldByCurrentClient() ? 'while the lease lasts' : bounded ? `until --wait runs out (next try in ${formatMs(delayMs)})` : 'until it answers (--wait forever)'
      events.print('suspended', key, {endpoint: client.endpoint, reason: `${error.message}; retrying ${until}`})
    },
    onStateChange: (state) => {
      if (state === 'suspended' && !suspended) {
        suspended = true
        const doing = lock.isHeldByCurrentClient() ? 'renewals are being retried' : 'still waiting'
        events.print('suspended', key, {endpoint: client.endpoint, reason: `cannot reach the lock service; ${doing}`})
      } else if (state === 'connected' && suspended) {
        suspended = false
        events.print('connected', key, {endpoint: client.endpoint})
      }
    },
  })

  try {
    const first = await Promise.race([lock.ready.then(() => null), stop])
    // Lost before the command could start (a forced release right after the grant).
    if (lost) return ExitCode.LOST
    if (first === 'output') return ExitCode.OUTPUT
    if (first === 'own') throw new OwnGrantWaitError(key, ownFence!)
    // Interrupted while waiting for the first grant.
    if (first) return 128 + signalNumber(first)
    if (!command) {
      const why = await stop
      if (why === 'own') throw new OwnGrantWaitError(key, ownFence!)
      return why === 'output' ? ExitCode.OUTPUT : ExitCode.OK
    }
    child = new SupervisedChild(
      command,
      {...process.env, LOCKCTL_KEY: key, LOCKCTL_TOKEN: lock.token, LOCKCTL_FENCE: String(lock.fence)},
      {
        interactive,
        // --on-lost ignore lets the command run on without the lock: nothing for a watchdog to stop.
        guard: options.onLost === 'kill' ? {killSignal: options.killSignal, graceMs: options.graceMs, leaseMs: options.leaseMs} : undefined,
      },
    )
    // The watchdog's beat: how long the grant lasts, as this process counts it (watchdog.ts).
    const beat = () => child?.beat(lock.leaseRestMillis())
    beat()
    beats = setInterval(beat, WATCHDOG_BEAT_MS)
    const result = await child.exited
    if (result.spawnError) {
      const why = result.spawnError.code === 'ENOENT' ? 'command not found' : result.spawnError.code === 'EACCES' ? 'permission denied' : result.spawnError.message
      if (json && !options.quiet) events.print('error', key, {message: `${command[0]}: ${why}`})
      else process.stderr.write(`lockctl: ${command[0]}: ${why}\n`)
    }
    // The lock covers everything the command started: background jobs it left behind must
    // be gone before the lock is released, or they would run on without it.
    await child.reap(options.killSignal, options.graceMs)
    // With --on-lost ignore the command ran on without the lock: the run still failed.
    return lost ? ExitCode.LOST : shellExitCode(result)
  } finally {
    if (beats) clearInterval(beats)
    progress.stop()
    options.interrupt?.removeEventListener('abort', onInterrupt)
    outputGone?.removeEventListener('abort', onOutputGone)
    const held = lock.isHeldByCurrentClient()
    const givenBack = await lock.close()
    // Released here either way; when the service did not hear of it, say that it still holds
    // the lock until the lease runs out (it said "released" while lockd was down).
    const unheard = givenBack ? undefined : `the lock service did not answer: it holds the lock until the lease runs out, at most ${formatMs(options.leaseMs)}`
    if (outputFailure) process.stderr.write(`lockctl: ${(outputFailure as Error).message}; ${held ? `released ${key}${unheard ? ` (${unheard})` : ''}` : `stopped waiting for ${key}`}\n`)
    else if (held) events.print('released', key, unheard ? {reason: unheard} : {})
    for (const [signal, handler] of handlers) process.off(signal, handler)
  }
}
