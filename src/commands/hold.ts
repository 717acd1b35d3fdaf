import {Flags} from '@oclif/core'
import {constants} from 'node:os'
import {BaseCommand} from '../cli/base-command.js'
import {FORWARDED_SIGNALS, shellExitCode, signalNumber, SupervisedChild} from '../cli/child.js'
import {EventPrinter} from '../cli/events.js'
import {ExitCode} from '../cli/exit-codes.js'
import {checkKeyArg, conflictExitCodeFlag, durationFlag, keyArg, leaseFlag, missingInput, ownerFlag, parseDuration, UsageError, waitFlag} from '../cli/flags.js'
import {formatMs, ordinal} from '../cli/output.js'
import {createProgress} from '../cli/progress.js'
import {describeHolder} from '../client/errors.js'
import {WAIT_FOREVER} from '../protocol/messages.js'
import {type ReplSession} from '../cli/session.js'

export default class Hold extends BaseCommand {
  static summary = 'Hold a lock, renewing it, until interrupted; or run a command while it is held.'
  static description = `Without a command: print "acquired" when the lock is held, "lost" if it is lost (then wait for it again), and release it on SIGINT/SIGTERM (exit 0). Leader election from the shell.
With a command (after --): start it once the lock is held, without a shell, with LOCKCTL_KEY, LOCKCTL_TOKEN and LOCKCTL_FENCE in its environment, in its own process group. SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to it. If the lock is lost, the command's process group gets --kill-signal, then SIGKILL after --grace, and lockctl exits 3 without taking the lock again. When it exits, whatever it left running gets the same, the lock is released, and lockctl exits with its code (128+N if signal N ended it; 127 not found, 126 not executable).
--wait bounds the wait for the first grant, time the service cannot be reached included (exit 1 if held, 4 if unreachable).`

  static examples = [
    '<%= config.bin %> hold deploy -- ./deploy.sh',
    '<%= config.bin %> hold nightly --wait 0 -- ./backup.sh   # cron: skip if another run holds it',
    '<%= config.bin %> hold leader --json                     # leader election: one JSON line per event',
  ]

  static strict = false
  static usage = '<%= command.id %> KEY [FLAGS] [-- COMMAND [ARGS...]]'

  static args = {key: keyArg({required: true})}

  static flags = {
    lease: leaseFlag({defaultMs: 15_000}),
    wait: waitFlag({defaultMs: WAIT_FOREVER, description: 'how long to wait for the first grant: 0 = try once, a duration, or forever'}),
    retry: Flags.string({description: 'delays between failed renewals; the last one repeats', default: '1s,10s,30s,60s', helpValue: 'D,D,...'}),
    'on-lost': Flags.string({description: 'what to do with the command when the lock is lost', options: ['kill', 'ignore'], default: 'kill'}),
    'kill-signal': Flags.string({description: 'signal sent to the command when the lock is lost', default: 'SIGTERM', helpValue: 'SIGNAL'}),
    grace: durationFlag({description: 'time between --kill-signal and SIGKILL', defaultMs: 5000, min: 0, max: 3_600_000}),
    owner: ownerFlag(),
    quiet: Flags.boolean({char: 'q', description: 'print no events (errors still go to stderr)'}),
    'conflict-exit-code': conflictExitCodeFlag,
  }

  /** The lifecycle is docs/semantics.md, "hold KEY -- COMMAND". */
  async run(): Promise<void> {
    const {args, argv, flags} = await this.parse(Hold)
    this.conflictExitCode = flags['conflict-exit-code']
    const dashes = this.argv.indexOf('--')
    // `hold -- CMD`: oclif would take CMD's first word for KEY.
    if (dashes !== -1 && !this.argv.slice(0, dashes).includes(args.key ?? '')) throw new UsageError('missing KEY: lockctl hold KEY [flags] -- COMMAND')
    const key = checkKeyArg(args.key ?? missingInput('KEY'))
    const command = commandAfterDashes(this.argv, argv as string[])
    const retryMillis = parseRetry(flags.retry)
    const killSignal = parseSignal(flags['kill-signal'])
    const json = this.jsonEnabled()

    const client = await this.client(flags, {owner: flags.owner})
    const session = this.session
    if (session && !command) {
      this.holdInBackground(session, key, {...flags, retryMillis, json})
      return
    }
    // With a command, the command owns stdout: events go to stderr.
    const stream = command ? process.stderr : process.stdout
    const events = new EventPrinter((line) => stream.write(line), flags.quiet ? 'quiet' : json ? 'json' : 'human')
    const progress = createProgress(!json && !flags.quiet)
    let child: SupervisedChild | null = null
    let lost = false
    let suspended = false
    let announcedWait = false

    let stopRequested!: (signal: NodeJS.Signals) => void
    const stop = new Promise<NodeJS.Signals>((resolve) => (stopRequested = resolve))
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
    // In the REPL the terminal is in raw mode: Ctrl-C reaches us as the session's interrupt,
    // not as a signal to the foreground group, so the command would never see it.
    const replInterrupt = () => (child?.started ? child.signal('SIGINT') : stopRequested('SIGINT'))
    session?.signal.addEventListener('abort', replInterrupt)

    const bounded = flags.wait !== WAIT_FOREVER
    const lock = client.createAutoRenewalLock(key, {
      leaseMs: flags.lease,
      retryMillis,
      waitMs: flags.wait,
      // With a command, a loss ends the run: the command has the lost grant's token and fence.
      reacquire: !command,
      onQueued: ({position, holder}) => {
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
        events.print('lost', key, {reason: reason.message})
        if (!command) return
        lost = true
        if (child?.started && flags['on-lost'] === 'kill') child.terminate(killSignal, flags.grace)
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
      if (lost) {
        // Lost before the command could start (a forced release right after the grant).
        this.exitStatus = ExitCode.LOST
        return
      }
      if (first) {
        // Interrupted while waiting for the first grant.
        this.exitStatus = 128 + signalNumber(first)
        return
      }
      if (!command) {
        await stop
        this.exitStatus = ExitCode.OK
        return
      }
      child = new SupervisedChild(
        command,
        {...process.env, LOCKCTL_KEY: key, LOCKCTL_TOKEN: lock.token, LOCKCTL_FENCE: String(lock.fence)},
        {interactive},
      )
      const result = await child.exited
      if (result.spawnError) {
        const why = result.spawnError.code === 'ENOENT' ? 'command not found' : result.spawnError.code === 'EACCES' ? 'permission denied' : result.spawnError.message
        if (json && !flags.quiet) events.print('error', key, {message: `${command[0]}: ${why}`})
        else process.stderr.write(`lockctl: ${command[0]}: ${why}\n`)
      }
      // The lock covers everything the command started: background jobs it left behind must
      // be gone before the lock is released, or they would run on without it.
      await child.reap(killSignal, flags.grace)
      // With --on-lost ignore the command ran on without the lock: the run still failed.
      this.exitStatus = lost ? ExitCode.LOST : shellExitCode(result)
    } finally {
      progress.stop()
      session?.signal.removeEventListener('abort', replInterrupt)
      const held = lock.isHeldByCurrentClient()
      await lock.close()
      if (held) events.print('released', key)
      for (const [signal, handler] of handlers) process.off(signal, handler)
    }
  }

  /**
   * REPL: `hold KEY` keeps the lock in the background (renewing, re-acquiring after a loss) and
   * prints its events above the prompt; `unlock KEY` or leaving the REPL stops it.
   */
  private holdInBackground(session: ReplSession, key: string, flags: BackgroundHoldFlags): void {
    if (session.holds.has(key)) throw new UsageError(`already holding ${key} in this session (unlock ${key} to stop)`)
    const events = new EventPrinter((line) => session.print(line.replace(/\n$/, '')), flags.quiet ? 'quiet' : flags.json ? 'json' : 'human')
    let announcedWait = false
    const lock = session.client.createAutoRenewalLock(key, {
      leaseMs: flags.lease,
      retryMillis: flags.retryMillis,
      waitMs: flags.wait,
      owner: flags.owner,
      onQueued: ({position, holder}) => {
        if (!announcedWait) events.print('waiting', key, {position, holder: holder?.owner ?? null})
        announcedWait = true
      },
      onAcquired: (grant) => {
        announcedWait = false
        events.print('acquired', key, {fence: grant.fence, leaseMs: grant.leaseMs})
      },
      onLost: (reason) => events.print('lost', key, {reason: reason.message}),
    })
    session.holds.set(key, lock)
    lock.ready.catch((error: Error) => {
      if (session.holds.get(key) !== lock) return
      session.holds.delete(key)
      if ((error as {code?: string}).code !== 'CLOSED') session.print(`lockctl: hold ${key}: ${error.message}`)
    })
    this.log(`holding ${key} in the background (unlock ${key} to stop)`)
  }
}

/** The flags `holdInBackground` needs. */
interface BackgroundHoldFlags {
  lease: number
  wait: number
  owner?: string
  quiet: boolean
  json: boolean
  retryMillis: number[]
}

/** The command after `--`; positionals other than KEY without `--` are a usage error. */
function commandAfterDashes(rawArgv: string[], positionals: string[]): string[] | null {
  const index = rawArgv.indexOf('--')
  if (index === -1) {
    if (positionals.length > 1) throw new UsageError(`put the command after --: lockctl hold KEY [flags] -- ${positionals.slice(1).join(' ')}`)
    return null
  }
  const command = rawArgv.slice(index + 1)
  if (command.length === 0) throw new UsageError('missing command after --')
  return command
}

function parseRetry(text: string): number[] {
  const delays = text.split(',').map((part) => parseDuration(part))
  if (delays.length === 0 || delays.some((d) => d === null || d <= 0)) {
    throw new UsageError(`--retry: ${JSON.stringify(text)} is not a list of durations; use e.g. 1s,10s,30s,60s`)
  }
  return delays as number[]
}

function parseSignal(text: string): NodeJS.Signals {
  const name = (/^sig/i.test(text) ? text : `SIG${text}`).toUpperCase()
  if (!(name in constants.signals)) throw new UsageError(`--kill-signal: ${JSON.stringify(text)} is not a signal; use e.g. SIGTERM, SIGINT, SIGKILL`)
  return name as NodeJS.Signals
}
