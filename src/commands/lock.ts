import {Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {checkKeyArg, conflictExitCodeFlag, keyArg, leaseFlag, lockMode, missingInput, ownerFlag, semaphoreLimitFlag, sharedFlag, UsageError, waitFlag} from '../cli/flags.js'
import {grantJson, ordinal, shellQuote} from '../cli/output.js'
import {createProgress} from '../cli/progress.js'
import {acquireWithin} from '../client/acquire-within.js'
import {describeHolder, formatMs} from '../client/errors.js'
import {rememberGrant} from '../cli/session.js'
import {OutputError} from '../cli/stdout.js'
import {OwnGrantWaitError, ownGrantFence} from '../cli/own-grant.js'

export default class Lock extends BaseCommand {
  static summary = 'Acquire a lock and print its token.'
  static description = `The lock stays held after lockctl exits, until its lease runs out or \`lockctl unlock\` releases it with the token.
Exit codes: 0 acquired, 1 not acquired (held, or the wait ran out), 2 usage, 3 granted after the wait but its lease ran out first (the process was paused), 4 unreachable (with --wait D: tried again until D ran out), 74 the token could not be written to stdout (the lock was released), 130 interrupted.`

  static examples = [
    'token=$(<%= config.bin %> lock deploy --lease 2m --wait 30s) || exit 1',
    'vars=$(<%= config.bin %> lock nightly --export) || exit 1; eval "$vars"',
    '<%= config.bin %> lock deploy --json',
    'token=$(<%= config.bin %> lock backups --limit 3 --wait 10m) || exit 1   # one of at most 3',
    'token=$(<%= config.bin %> lock report --shared) || exit 1   # beside other --shared holders',
  ]

  static args = {key: keyArg({required: true})}

  static flags = {
    lease: leaseFlag({defaultMs: 60_000}),
    wait: waitFlag({defaultMs: 0}),
    owner: ownerFlag(),
    limit: semaphoreLimitFlag(),
    shared: sharedFlag,
    export: Flags.boolean({description: 'print shell `export` lines for LOCKCTL_KEY, LOCKCTL_TOKEN, LOCKCTL_FENCE (check the exit code before eval)', exclusive: ['json']}),
    'conflict-exit-code': conflictExitCodeFlag,
  }

  async run(): Promise<undefined> {
    const {args, flags} = await this.parse(Lock)
    this.conflictExitCode = flags['conflict-exit-code']
    const key = checkKeyArg(args.key ?? missingInput('KEY'))
    const mode = lockMode(flags)
    const held = this.session?.locks.get(key)
    if (held && (mode.limit !== undefined || mode.shared)) {
      // The session keeps one token per key: a second slot would hide the first, which would
      // then outlive the session unreleased.
      throw new UsageError(`this session already holds ${key} (fence ${held.fence}): unlock ${key} first; a second slot needs another session`)
    }
    const client = await this.client(flags, {owner: flags.owner})
    const lock = client.createLock(key, mode)
    const progress = createProgress(!this.jsonEnabled())
    // Queued behind the grant this process runs under: a wait for itself (own-grant.ts).
    const ownFence = ownGrantFence(key, mode.limit)
    const ownWait = new AbortController()
    let grant
    const sentAt = client.backend.leaseClock.now()
    try {
      grant = await acquireWithin(lock, {
        leaseMs: flags.lease,
        waitMs: flags.wait,
        signal: AbortSignal.any([this.interruptSignal, ownWait.signal]),
        onQueued: ({position, holder}) => {
          if (ownFence !== null && holder?.fence === ownFence) ownWait.abort()
          else progress.show(`waiting for ${key}: held by ${describeHolder(holder)}; ${ordinal(position)} in the queue`)
        },
        onRetry: (error, delayMs) => progress.show(`waiting for ${key}: ${error.message}; trying again in ${formatMs(delayMs)}`),
      })
    } catch (error) {
      throw ownWait.signal.aborted ? new OwnGrantWaitError(key, ownFence!) : error
    } finally {
      progress.stop()
    }
    const session = this.session
    if (session) rememberGrant(session, grant, sentAt)
    const output = this.jsonEnabled()
      ? `${JSON.stringify(grantJson(grant, lock.leaseRestMillis(), {endpoint: client.endpoint}))}\n`
      : flags.export
        ? `export LOCKCTL_KEY=${shellQuote(key)}\nexport LOCKCTL_TOKEN=${shellQuote(grant.token)}\nexport LOCKCTL_FENCE=${grant.fence}\n`
        : `${grant.token}\n`
    try {
      await this.stdout.write(output)
    } catch (error) {
      // The token is the only key to this grant: one nobody can read would hold the lock for
      // the whole lease with nobody able to release it, while the script's `token=$(...)`
      // failed or went on without it. Release it, and say so.
      if (session) session.locks.delete(key)
      const released = await lock.unlock().then(
        () => 'released it',
        (why: Error) => `could not release it (${why.message}): it is held until its lease runs out`,
      )
      const failure = error as OutputError
      throw new OutputError(`lock ${key} acquired (fence ${grant.fence}) but its token could not be written to stdout: ${failure.detail}; ${released}`, failure.errno)
    }
    // Already printed, --json included (oclif prints a returned value after the client is
    // closed, too late to release a grant whose token it could not write).
    return undefined
  }
}
