import {BaseCommand} from '../cli/base-command.js'
import {checkKeyArg, defaultToken, keyArg, missingInput, optionalLeaseFlag, tokenFlag} from '../cli/flags.js'
import {formatMs, grantJson} from '../cli/output.js'
import {pickSessionKey, rememberGrant} from '../cli/session.js'

export default class Renew extends BaseCommand {
  static summary = 'Extend the lease of a held lock, optionally to a new length.'
  static description = `KEY defaults to $LOCKCTL_KEY and the token to $LOCKCTL_TOKEN. In the REPL the session remembers tokens.
Exit codes: 0 renewed, 2 usage, 4 unreachable, 5 the token does not hold the lock any more.`

  static examples = ['<%= config.bin %> renew deploy --token "$token" --lease 5m']

  static args = {key: keyArg({required: false, description: 'lock name (default: $LOCKCTL_KEY)'})}

  static flags = {
    token: tokenFlag('token printed by `lockctl lock` (default: $LOCKCTL_TOKEN)'),
    lease: optionalLeaseFlag('new lease length, counted from now (default: the current length)'),
  }

  async run(): Promise<Record<string, unknown>> {
    const {args, flags} = await this.parse(Renew)
    const session = this.session
    const key = checkKeyArg(
      args.key ?? (session ? await pickSessionKey(session, 'Renew which lock?', {locksOnly: true}) : undefined) ?? process.env.LOCKCTL_KEY ?? missingInput('KEY (or $LOCKCTL_KEY)'),
    )
    const token = flags.token ?? defaultToken(session?.locks.get(key)?.token)
    const client = await this.client(flags)
    const leaseClock = client.backend.leaseClock
    const sentAt = leaseClock.now()
    try {
      const grant = await client.renew(key, token, flags.lease || undefined)
      if (session?.locks.has(key)) rememberGrant(session, grant, sentAt)
      this.log(`renewed ${key}: ${formatMs(grant.leaseLeftMs)} left (fence ${grant.fence})`)
      const {token: _token, ...json} = grantJson(grant, grant.leaseMs - (leaseClock.now() - sentAt))
      return json
    } catch (error) {
      if ((error as {code?: string}).code === 'NOT_HOLDER') session?.locks.delete(key)
      throw error
    }
  }
}
