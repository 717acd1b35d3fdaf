import {Flags} from '@oclif/core'
import {join} from 'node:path'
import {BaseCommand} from '../cli/base-command.js'
import {UsageError} from '../cli/flags.js'

export default class Server extends BaseCommand {
  static summary = 'Run lockd, the lock server, in the foreground.'
  static description = `Stops cleanly on SIGTERM or SIGINT. State is kept in --data-dir (a durable log with group commit and snapshots): after a crash every lock still held comes back with its whole lease, and fencing tokens never repeat.
Without --listen or --socket it listens on 127.0.0.1:7070.`

  static examples = ['<%= config.bin %> server --listen 127.0.0.1:7070 --data-dir /var/lib/lockd', '<%= config.bin %> server --socket /run/lockd.sock']

  static flags = {
    listen: Flags.string({description: 'TCP address to listen on (repeatable)', multiple: true, helpValue: 'HOST:PORT'}),
    socket: Flags.string({description: 'unix socket to listen on', helpValue: 'PATH'}),
    'data-dir': Flags.string({description: 'directory for the durable state (default: $XDG_STATE_HOME/lockctl/server)', helpValue: 'DIR'}),
    'in-memory': Flags.boolean({description: 'keep no state on disk (locks are forgotten on restart)', exclusive: ['data-dir']}),
    'max-frame': Flags.integer({description: 'largest accepted frame in bytes', default: 1024 * 1024, min: 64 * 1024, max: 64 * 1024 * 1024}),
    'max-connections': Flags.integer({description: 'connections beyond this many are refused (the client exits 4 and says why)', default: 10_000, min: 1}),
    'max-waiters-per-connection': Flags.integer({description: 'waiting acquires one connection may have at once', default: 10_000, min: 1}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Server)
    const listen = (flags.listen ?? (flags.socket ? [] : ['127.0.0.1:7070'])).map(parseListen)
    const [{runServer}, {stateDir}] = await Promise.all([import('../server/run.js'), import('../client/embedded.js')])
    const dataDir = flags['in-memory'] ? undefined : (flags['data-dir'] ?? join(stateDir(), 'server'))
    await runServer({
      listen,
      socket: flags.socket,
      dataDir,
      maxFrame: flags['max-frame'],
      maxConnections: flags['max-connections'],
      maxWaitersPerConnection: flags['max-waiters-per-connection'],
    })
  }
}

function parseListen(value: string): {host: string; port: number} {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d+)$/.exec(value.trim())
  const port = match ? Number(match[3]) : Number.NaN
  if (!match || port > 65535) throw new UsageError(`--listen: ${JSON.stringify(value)} is not HOST:PORT (e.g. 127.0.0.1:7070, [::1]:7070)`)
  return {host: match[1] ?? match[2], port}
}
