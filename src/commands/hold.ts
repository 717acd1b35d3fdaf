import {Flags} from '@oclif/core'
import {constants} from 'node:os'
import {BaseCommand} from '../cli/base-command.js'
import {startBackgroundHold} from '../cli/background-hold.js'
import {
  checkKeyArg,
  conflictExitCodeFlag,
  durationFlag,
  keyArg,
  leaseFlag,
  lockMode,
  missingInput,
  ownerFlag,
  parseDuration,
  semaphoreLimitFlag,
  sharedFlag,
  UsageError,
  waitFlag,
} from '../cli/flags.js'
import {runHold} from '../cli/hold-runner.js'
import {WAIT_FOREVER} from '../protocol/messages.js'

export default class Hold extends BaseCommand {
  static summary = 'Hold a lock, renewing it, until interrupted; or run a command while it is held.'
  static description = `Without a command: print "acquired" when the lock is held, "lost" if it is lost (then wait for it again), and release it on SIGINT/SIGTERM (exit 0), or once its events cannot be written (the reader of its output is gone: exit 74). Leader election from the shell.
With a command (after --): start it once the lock is held, without a shell, with LOCKCTL_KEY, LOCKCTL_TOKEN and LOCKCTL_FENCE in its environment, in its own process group. SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to it. If the lock is lost, the command's process group gets --kill-signal, then SIGKILL after --grace, and lockctl exits 3 without taking the lock again. When it exits, whatever it left running gets the same, the lock is released, and lockctl exits with its code (128+N if signal N ended it; 127 not found, 126 not executable).
--wait bounds the wait for the first grant, time the service cannot be reached included (exit 1 if held, 4 if unreachable).`

  static examples = [
    '<%= config.bin %> hold deploy -- ./deploy.sh',
    '<%= config.bin %> hold nightly --wait 0 -- ./backup.sh   # cron: skip if another run holds it',
    '<%= config.bin %> hold leader --json                     # leader election: one JSON line per event',
    '<%= config.bin %> hold backups --limit 3 -- ./backup.sh   # at most 3 backups at once',
    '<%= config.bin %> hold report --shared -- ./read-report.sh   # readers together, a writer alone',
  ]

  static strict = false
  static usage = '<%= command.id %> KEY [FLAGS] [-- COMMAND [ARGS...]]'

  static args = {key: keyArg({required: true})}

  static flags = {
    lease: leaseFlag({defaultMs: 15_000}),
    wait: waitFlag({defaultMs: WAIT_FOREVER, description: 'how long to wait for the first grant: 0 = try once, a duration, or forever'}),
    retry: Flags.string({description: 'delays between failed renewals; the last one repeats', default: '1s,10s,30s,60s', helpValue: 'D,D,...'}),
    'on-lost': Flags.string({description: 'what to do with the command when the lock is lost', options: ['kill', 'ignore'], default: 'kill'}),
    'kill-signal': Flags.string({description: 'signal sent to the command when the lock is lost: a name (SIGTERM, TERM) or a number (15)', default: 'SIGTERM', helpValue: 'SIGNAL'}),
    grace: durationFlag({description: 'time between --kill-signal and SIGKILL', defaultMs: 5000, min: 0, max: 3_600_000}),
    owner: ownerFlag(),
    limit: semaphoreLimitFlag(),
    shared: sharedFlag,
    quiet: Flags.boolean({char: 'q', description: 'print no events (errors still go to stderr)'}),
    'conflict-exit-code': conflictExitCodeFlag,
  }

  /** The lifecycle is docs/semantics.md, "hold KEY -- COMMAND". */
  async run(): Promise<void> {
    const {args, argv, flags} = await this.parse(Hold)
    this.conflictExitCode = flags['conflict-exit-code']
    this.quietConflicts = flags.quiet
    const dashes = this.argv.indexOf('--')
    // `hold -- CMD`: oclif would take CMD's first word for KEY.
    if (dashes !== -1 && !this.argv.slice(0, dashes).includes(args.key ?? '')) throw new UsageError('missing KEY: lockctl hold KEY [flags] -- COMMAND')
    const key = checkKeyArg(args.key ?? missingInput('KEY'))
    const command = commandAfterDashes(this.argv, argv as string[])
    const mode = lockMode(flags)
    const retryMillis = parseRetry(flags.retry)
    const killSignal = parseSignal(flags['kill-signal'])
    const json = this.jsonEnabled()

    const client = await this.client(flags, {owner: flags.owner})
    const options = {
      key,
      leaseMs: flags.lease,
      waitMs: flags.wait,
      retryMillis,
      owner: flags.owner,
      ...mode,
      json,
      quiet: flags.quiet,
    }
    if (this.session && !command) {
      startBackgroundHold(this.session, options)
      this.log(`holding ${key} in the background (unlock ${key} to stop)`)
      return
    }
    if (command) this.stdout.handOver()
    this.exitStatus = await runHold(client, {
      ...options,
      command,
      onLost: flags['on-lost'] as 'kill' | 'ignore',
      killSignal,
      graceMs: flags.grace,
      // In the REPL the terminal is in raw mode: Ctrl-C arrives as the session's interrupt.
      interrupt: this.session?.signal,
      output: this.stdout,
    })
  }
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
  // A number as kill(1) takes it (`--kill-signal 9`), else a name with or without SIG.
  const byNumber = /^\d+$/.test(text) ? Object.entries(constants.signals).find(([, number]) => number === Number(text))?.[0] : undefined
  const name = byNumber ?? (/^sig/i.test(text) ? text : `SIG${text}`).toUpperCase()
  if (!(name in constants.signals)) throw new UsageError(`--kill-signal: ${JSON.stringify(text)} is not a signal; use e.g. SIGTERM, SIGINT, SIGKILL`)
  return name as NodeJS.Signals
}
