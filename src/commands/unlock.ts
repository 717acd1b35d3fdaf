import {Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {checkKeyArg, defaultToken, keyArg, missingInput, tokenFlag} from '../cli/flags.js'
import {ExitCode} from '../cli/exit-codes.js'
import {holderJson, printable} from '../cli/output.js'
import {confirmInSession, pickSessionKey} from '../cli/session.js'
import {describeHolder, quoteKey, UnreachableError} from '../client/errors.js'

export default class Unlock extends BaseCommand {
  static summary = 'Release a lock with its token (or --force as an admin).'
  static description = `KEY defaults to $LOCKCTL_KEY and the token to $LOCKCTL_TOKEN, as set by \`lockctl lock KEY --export\`. In the REPL the session remembers tokens, and without KEY on a terminal you pick one of the session's locks.
Exit codes: 0 released, 2 usage, 4 unreachable, 5 the token does not hold the lock (released, expired, or force-released).`

  static examples = ['<%= config.bin %> unlock deploy --token "$token"', '<%= config.bin %> unlock', '<%= config.bin %> unlock deploy --force --yes']

  static args = {key: keyArg({required: false, description: 'lock name (default: $LOCKCTL_KEY)'})}

  static flags = {
    token: tokenFlag('token printed by `lockctl lock` (default: $LOCKCTL_TOKEN)'),
    force: Flags.boolean({description: 'release whoever holds it (admin); asks first on a terminal'}),
    yes: Flags.boolean({char: 'y', description: 'do not ask before --force'}),
  }

  async run(): Promise<Record<string, unknown>> {
    const {args, flags} = await this.parse(Unlock)
    const session = this.session
    const key = checkKeyArg(args.key ?? (session ? await pickSessionKey(session, 'Release which lock?') : undefined) ?? process.env.LOCKCTL_KEY ?? missingInput('KEY (or $LOCKCTL_KEY)'))
    const client = await this.client(flags)
    const hold = session?.holds.get(key)
    if (hold && !flags.force) {
      // A background `hold` of this session: stop renewing and release.
      const fence = hold.fence
      session!.holds.delete(key)
      if (!(await hold.close())) {
        // Stopped here, but not released there: one line and exit 4, as a plain lock's release would.
        throw new UnreachableError(`stopped holding ${quoteKey(key)}, but the lock service did not answer its release: it holds the lock until its lease runs out`)
      }
      this.log(`released ${key} (stopped holding it${fence === undefined ? '' : `, fence ${fence}`})`)
      return {key, released: true, forced: false, holder: null}
    }
    // --force needs no token; without it, a missing token says how to pass one.
    const token = flags.force ? undefined : (flags.token ?? defaultToken(session?.locks.get(key)?.token, '; use --force to release a lock you do not hold'))
    if (flags.force && !flags.yes && process.stdin.isTTY && process.stderr.isTTY && !this.jsonEnabled() && (session?.interactive ?? true)) {
      const lock = await client.inspect(key)
      // A semaphore or shared lock: every holder goes (docs/semantics.md).
      const others = (lock?.holders?.length ?? 1) - 1
      const question = `Force-release ${quoteKey(key)}, held by ${describeHolder(lock?.holder)}${others > 0 ? ` and ${others} other holder(s)` : ''}?`
      const ok = session ? await confirmInSession(session, question) : await import('@inquirer/prompts').then(({confirm}) => confirm({message: question, default: false}, {output: process.stderr}))
      if (!ok) {
        // A decision, not a mistake: say what was kept, exit 1 (docs/exit-codes.md).
        process.stderr.write(`${session?.errorPrefix ?? ''}lockctl: kept ${quoteKey(key)}, held by ${describeHolder(lock?.holder)}: not released\n`)
        this.exitStatus = ExitCode.NOT_ACQUIRED
        return {key, released: false, forced: false, holder: holderJson(lock?.holder ?? null)}
      }
    }
    try {
      const holder = await client.release(key, flags.force ? undefined : token, {force: flags.force})
      this.log(`released ${key} (fence ${holder.fence}, held by ${printable(holder.owner)})`)
      return {key, released: true, forced: flags.force, holder: holderJson(holder)}
    } finally {
      if (!flags.force || session?.locks.get(key)) session?.locks.delete(key)
    }
  }
}
