import {BaseCommand} from '../cli/base-command.js'
import {checkKeyArg, keyArg, tokenFlag, leaseFlag, missingInput} from '../cli/flags.js'
import {formatMs, grantJson} from '../cli/output.js'

export default class Renew extends BaseCommand {
  static summary = 'Extend the lease of a held lock, optionally to a new length.'
  static description = `KEY defaults to $LOCKCTL_KEY and the token to $LOCKCTL_TOKEN.
Exit codes: 0 renewed, 2 usage, 4 unreachable, 5 the token does not hold the lock any more.`

  static examples = ['<%= config.bin %> renew deploy --token "$token" --lease 5m']

  static args = {key: keyArg({required: false, description: 'lock name (default: $LOCKCTL_KEY)'})}

  static flags = {
    token: tokenFlag('token printed by `lockctl lock` (default: $LOCKCTL_TOKEN)'),
    lease: leaseFlag({defaultMs: 0, description: 'new lease length, counted from now (default: the current length)'}),
  }

  async run(): Promise<Record<string, unknown>> {
    const {args, flags} = await this.parse(Renew)
    const key = checkKeyArg(args.key ?? process.env.LOCKCTL_KEY ?? missingInput('KEY (or $LOCKCTL_KEY)'))
    const token = flags.token ?? missingInput('--token (or $LOCKCTL_TOKEN)')
    const client = await this.client(flags)
    const grant = await client.renew(key, token, flags.lease || undefined)
    this.log(`renewed ${key}: ${formatMs(grant.leaseLeftMs)} left (fence ${grant.fence})`)
    const {token: _token, ...json} = grantJson(grant)
    return json
  }
}
