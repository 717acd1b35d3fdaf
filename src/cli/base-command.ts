import {Command, Flags} from '@oclif/core'
import type {ConnectOptions, LockClient} from '../client/lock-client.js'
import {ErrorCode} from '../protocol/errors.js'
import {ExitCode, exitCodeFor} from './exit-codes.js'
import {durationFlag, markDashTokens} from './flags.js'
import {UsageError} from './usage-error.js'
import type {ReplSession} from './session.js'
import {StdoutGuard} from './stdout.js'

/** The global flags every command gets (see BaseCommand.baseFlags). */
export interface GlobalFlags {
  endpoints?: string
  profile?: string
  timeout: number
  cacert?: string
  cert?: string
  key?: string
  user?: string
}

/**
 * What every lockctl command shares: the global flags, the lazily created client, the one
 * place where an error becomes a message and an exit code, and closing the client at the end.
 */
export abstract class BaseCommand extends Command {
  static enableJsonFlag = true

  static baseFlags = {
    endpoints: Flags.string({
      description: 'lock service: unix:///path/lockd.sock, lockd://host:port, etcd://h1:2379,h2:2379 (default: the local lockd, started on demand)',
      env: 'LOCKCTL_ENDPOINTS',
      helpGroup: 'GLOBAL',
      helpValue: 'URL',
    }),
    profile: Flags.string({
      description: 'named profile from $XDG_CONFIG_HOME/lockctl/config.json (endpoints, TLS, user)',
      env: 'LOCKCTL_PROFILE',
      helpGroup: 'GLOBAL',
      helpValue: 'NAME',
    }),
    cacert: Flags.string({
      description: 'CA certificate (PEM) to verify the lock service (lockds:// or etcd; switches to TLS)',
      env: 'LOCKCTL_ETCD_CACERT',
      helpGroup: 'TLS AND AUTH',
      helpValue: 'FILE',
    }),
    cert: Flags.string({description: 'client certificate (PEM; needs --key)', env: 'LOCKCTL_ETCD_CERT', helpGroup: 'TLS AND AUTH', helpValue: 'FILE'}),
    key: Flags.string({description: 'private key of --cert (PEM)', env: 'LOCKCTL_ETCD_KEY', helpGroup: 'TLS AND AUTH', helpValue: 'FILE'}),
    user: Flags.string({description: 'user name (password from $LOCKCTL_PASSWORD, or asked on a terminal)', env: 'LOCKCTL_ETCD_USER', helpGroup: 'TLS AND AUTH', helpValue: 'NAME'}),
    timeout: durationFlag({
      description: 'deadline of each request to the lock service',
      defaultMs: 5000,
      min: 100,
      max: 600_000,
    }),
  }

  /**
   * The REPL session this command runs in (the REPL sets it before the command runs), or null
   * for a one-shot CLI command.
   */
  session: ReplSession | null = null
  private status: number | undefined

  /** The exit code this run ends with; outside the REPL it is the process's. */
  get exitStatus(): number | undefined {
    return this.status
  }

  set exitStatus(code: number | undefined) {
    this.status = code
    if (!this.session) process.exitCode = code
  }

  /** Exit code used when the lock is not acquired (`--conflict-exit-code`). */
  protected conflictExitCode: number = ExitCode.NOT_ACQUIRED
  /** `--quiet`: a lock held by another (or a wait that ran out) ends without a line, as cron wants. */
  protected quietConflicts = false
  /** What this command knows of its stdout (a write that failed: stdout.ts). Set by init. */
  protected stdout!: StdoutGuard
  private clientPromise: Promise<LockClient> | null = null
  private interruptController: AbortController | null = null

  async init(): Promise<void> {
    // Node's deprecation warnings are for the developers of the code that triggers them, and a
    // CLI's stderr is its users': gRPC connecting to etcds://10.0.0.1 makes Node warn (DEP0123,
    // an IP address as the TLS server name) on every command, around the one line an error gets.
    process.noDeprecation = true
    this.stdout = StdoutGuard.install(!this.session)
    // A token that begins with '-' would be taken for flags (flags.ts, markDashTokens).
    this.argv = markDashTokens(this.argv)
    await super.init()
  }

  /** The client, connected on first use (commands that never need one never pay for it). */
  protected async client(flags: GlobalFlags, options: Partial<ConnectOptions> = {}): Promise<LockClient> {
    // In the REPL every command shares the session's client (and its locks).
    const session = this.session
    if (session) return session.client
    this.clientPromise ??= (async () => {
      const [{connect}, {loadProfile}] = await Promise.all([import('../client/lock-client.js'), import('./profiles.js')])
      // Flags and environment variables win over the profile, field by field. With an explicit
      // endpoint and no --profile, a broken config file is only a warning: it is not needed.
      let profile: Awaited<ReturnType<typeof loadProfile>> = {}
      try {
        profile = loadProfile(flags.profile) ?? {}
      } catch (error) {
        if (flags.profile !== undefined || !flags.endpoints) throw error
        process.stderr.write(`lockctl: warning: ${(error as Error).message} (ignored: --endpoints / $LOCKCTL_ENDPOINTS is given)\n`)
      }
      const endpoints = flags.endpoints || (flags.endpoints === undefined ? profile.endpoints : undefined)
      const user = flags.user ?? profile.user
      if (user === '') throw new UsageError('--user: a user name must not be empty')
      let password = process.env.LOCKCTL_PASSWORD ?? process.env.LOCKCTL_ETCD_PASSWORD
      if (user !== undefined && password === undefined && process.stdin.isTTY && process.stderr.isTTY) {
        const {password: ask} = await import('@inquirer/prompts')
        password = await ask({message: `password for ${user}:`, mask: true}, {output: process.stderr})
      }
      return connect({
        endpoints,
        // The CLI's default with no endpoint: the per-user lockd, started when not running.
        embedded: true,
        requestTimeoutMs: flags.timeout,
        // A shorter --timeout bounds connecting too (3 s otherwise): `--timeout 500ms` is an
        // answer within about half a second, whatever listens at the endpoint.
        connectTimeoutMs: Math.min(flags.timeout, 3000),
        credentials: {cacert: flags.cacert ?? profile.cacert, cert: flags.cert ?? profile.cert, key: flags.key ?? profile.key, user, password},
        ...options,
      })
    })()
    return this.clientPromise
  }

  /** Aborts on the first SIGINT/SIGTERM, so a wait can leave the queue cleanly. */
  protected get interruptSignal(): AbortSignal {
    const session = this.session
    if (session) return session.signal
    if (!this.interruptController) {
      const controller = new AbortController()
      this.interruptController = controller
      const onSignal = () => controller.abort()
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
    }
    return this.interruptController.signal
  }

  /**
   * For a command that streams to stdout until interrupted (watch, status --watch, hold): ends
   * on Ctrl-C/SIGTERM, or once stdout cannot be written (its reader gone, a full disk), instead of
   * streaming on to nobody. A failure other than the reader leaving is one line, exit 74.
   */
  protected get streamSignal(): AbortSignal {
    return AbortSignal.any([this.interruptSignal, this.stdout.gone])
  }

  /** One JSON document on one line: easy for `jq` and for line-oriented scripts. */
  logJson(json: unknown): void {
    process.stdout.write(`${JSON.stringify(json)}\n`)
  }

  async catch(error: Error & {code?: string; oneLine?: string; oclif?: {exit?: number}; exitCode?: number}): Promise<void> {
    const {code, exitCode, message} = describeError(error, this.conflictExitCode)
    // A parse that failed still counts as parsed: otherwise oclif adds a developer warning
    // ("did not parse its arguments") under NODE_ENV=development/test, and errors stay one line.
    ;(this as unknown as {parsed: boolean}).parsed = true
    this.exitStatus = exitCode
    if (this.quietConflicts && (code === ErrorCode.LOCK_HELD || code === ErrorCode.WAIT_TIMEOUT)) return
    // (An error about stdout itself goes to stderr, where it can still be read.)
    if (this.jsonEnabled() && code !== ErrorCode.OUTPUT) this.logJson({error: {code, message, exitCode}})
    else process.stderr.write(`${this.session?.errorPrefix ?? ''}lockctl: ${message}\n`)
  }

  async finally(error: Error | undefined): Promise<void> {
    await super.finally(error)
    if (this.clientPromise) await (await this.clientPromise.catch(() => null))?.close()
  }
}

/**
 * For a command that is not a BaseCommand (help, completion): its error as one line and its exit
 * code, as every other command says it, instead of oclif's boxed text (with a stack trace and exit
 * 1 for `help --owner x`).
 */
export function reportError(command: Command, error: Error): void {
  // (As BaseCommand.catch: a failed parse counts as parsed, or oclif adds a developer warning.)
  ;(command as unknown as {parsed: boolean}).parsed = true
  const {exitCode, message} = describeError(error)
  process.stderr.write(`lockctl: ${message}\n`)
  process.exitCode = exitCode
}

/** Map any error to the code, exit code and one-line message the user sees. */
export function describeError(
  error: Error & {code?: string; oneLine?: string; oclif?: {exit?: number}; exitCode?: number},
  conflictExitCode: number = ExitCode.NOT_ACQUIRED,
): {code: string; exitCode: number; message: string} {
  if (error.oneLine) return {code: ErrorCode.BAD_INPUT, exitCode: ExitCode.USAGE, message: error.oneLine}
  if (error.code && error.code in ErrorCode) {
    const exitCode = error.code === ErrorCode.LOCK_HELD || error.code === ErrorCode.WAIT_TIMEOUT ? conflictExitCode : exitCodeFor(error.code)
    return {code: error.code, exitCode, message: error.message}
  }
  if (typeof error.exitCode === 'number' && !(error.oclif?.exit !== undefined)) {
    // Errors that carry their own exit code (lockd start-up failures).
    return {code: 'SERVER', exitCode: error.exitCode, message: error.message}
  }
  if (error.oclif?.exit !== undefined) {
    // oclif's own usage errors (unknown flag, missing argument): keep them to one line.
    const lines = error.message
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !/^See more help/.test(line))
    // "Missing 1 required arg:" then "key  lock name: ..." lines: say "missing KEY".
    const missing = /^Missing \d+ required args?:$/.test(lines[0] ?? '')
    const message = missing
      ? `missing ${lines
          .slice(1)
          .map((line) => line.split(/\s{2,}/)[0].toUpperCase())
          .join(', ')}`
      : lines.join(' ')
    const exitCode = error.oclif.exit === 0 ? 0 : ExitCode.USAGE
    return {code: exitCode === 0 ? 'OK' : ErrorCode.BAD_INPUT, exitCode, message: `${message} (see --help)`}
  }
  return {code: 'INTERNAL', exitCode: ExitCode.INTERNAL, message: `unexpected error: ${error.stack ?? error.message}`}
}
