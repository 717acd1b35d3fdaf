import {Flags} from '@oclif/core'
import {join} from 'node:path'
import {BaseCommand} from '../cli/base-command.js'
import {UsageError} from '../cli/flags.js'

export default class Server extends BaseCommand {
  // A server has no lock service to reach and prints no JSON: none of the clients' flags.
  static baseFlags = {} as unknown as typeof BaseCommand.baseFlags
  static enableJsonFlag = false

  static summary = 'Run lockd, the lock server, in the foreground.'
  static description = `Stops cleanly on SIGTERM or SIGINT. State is kept in --data-dir (a durable log with group commit and snapshots): after a crash every lock still held comes back with its whole lease, and fencing tokens never repeat.
Without --listen or --socket it listens on 127.0.0.1:7070.`

  static examples = ['<%= config.bin %> server --listen 127.0.0.1:7070 --data-dir /var/lib/lockd', '<%= config.bin %> server --socket /run/lockd.sock']

  static flags = {
    listen: Flags.string({description: 'TCP address to listen on (repeatable)', multiple: true, helpValue: 'HOST:PORT'}),
    socket: Flags.string({description: 'unix socket to listen on', helpValue: 'PATH'}),
    'data-dir': Flags.string({description: 'directory for the durable state (default: $XDG_STATE_HOME/lockctl/server)', helpValue: 'DIR'}),
    'in-memory': Flags.boolean({description: 'keep no state on disk (locks are forgotten on restart)', exclusive: ['data-dir']}),
    'forget-all-locks': Flags.boolean({
      description:
        'a one-time repair of a data directory lockd refuses as damaged: forget every lock in it (its files go to DIR/forgotten-TIME), fences going on above every one handed out; never leave it in a service definition',
      exclusive: ['in-memory'],
    }),
    'max-frame': Flags.integer({description: 'largest accepted frame in bytes', default: 1024 * 1024, min: 64 * 1024, max: 64 * 1024 * 1024}),
    'max-connections': Flags.integer({
      description: 'connections beyond this many are refused (the client exits 4 and says why); fewer when the open-file limit leaves less (said at start)',
      default: 10_000,
      min: 1,
    }),
    'max-waiters-per-connection': Flags.integer({description: 'waiting acquires one connection may have at once', default: 10_000, min: 1}),
    'max-locks': Flags.integer({description: 'names held at once; acquiring another is refused (the client exits 4) while the held ones go on', default: 5_000_000, min: 1}),
    'tls-cert': Flags.string({description: 'TLS on every --listen address: this certificate (PEM; re-read on SIGHUP)', helpValue: 'FILE', dependsOn: ['tls-key']}),
    'tls-key': Flags.string({description: 'the private key of --tls-cert (PEM)', helpValue: 'FILE', dependsOn: ['tls-cert']}),
    'tls-client-ca': Flags.string({description: "require client certificates signed by this CA (PEM); a certificate's CN is its user", helpValue: 'FILE', dependsOn: ['tls-cert']}),
    'auth-file': Flags.string({description: 'clients must log in as a user of this file: NAME:HASH lines (see --hash-password; re-read on SIGHUP)', helpValue: 'FILE'}),
    admin: Flags.string({description: 'a user who may unlock --force a lock it does not hold (repeatable); with --auth-file and no --admin, nobody may', multiple: true, helpValue: 'NAME'}),
    'socket-mode': Flags.string({description: 'permission bits of the --socket (e.g. 0660 to share it with a group)', default: '0600', helpValue: 'MODE'}),
    metrics: Flags.string({description: 'serve /metrics (Prometheus) and /healthz on this address', helpValue: 'HOST:PORT'}),
    'hash-password': Flags.boolean({description: 'read a password on stdin, print its hash for --auth-file, and exit'}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Server)
    if (flags['hash-password']) {
      const [{hashPassword}, {readPassword}] = await Promise.all([import('../server/auth.js'), import('../cli/read-password.js')])
      this.log(await hashPassword(await readPassword()))
      return
    }
    const socketMode = /^0?[0-7]{3}$/.test(flags['socket-mode']) ? Number.parseInt(flags['socket-mode'], 8) : Number.NaN
    if (Number.isNaN(socketMode)) throw new UsageError(`--socket-mode: ${JSON.stringify(flags['socket-mode'])} is not octal permission bits (e.g. 0600, 0660)`)
    // An admin is a user, and users come from the auth file or client certificates: without
    // either, --admin named nobody who could ever connect, and nobody could unlock --force.
    if (flags.admin && !flags['auth-file'] && !flags['tls-client-ca']) {
      throw new UsageError('--admin names a user: give --auth-file (or --tls-client-ca, whose certificates name their users) too')
    }
    const listen = (flags.listen ?? (flags.socket ? [] : ['127.0.0.1:7070'])).map((value) => parseListen(value))
    const [{runServer}, {stateDir}] = await Promise.all([import('../server/run.js'), import('../client/embedded.js')])
    const dataDir = flags['in-memory'] ? undefined : (flags['data-dir'] ?? join(stateDir(), 'server'))
    await runServer({
      listen,
      socket: flags.socket,
      dataDir,
      forgetAllLocks: flags['forget-all-locks'],
      maxFrame: flags['max-frame'],
      maxConnections: flags['max-connections'],
      maxWaitersPerConnection: flags['max-waiters-per-connection'],
      maxLocks: flags['max-locks'],
      tls: flags['tls-cert'] ? {cert: flags['tls-cert'], key: flags['tls-key']!, clientCa: flags['tls-client-ca']} : undefined,
      authFile: flags['auth-file'],
      admins: flags.admin,
      socketMode,
      metrics: flags.metrics ? parseListen(flags.metrics, '--metrics') : undefined,
    })
  }
}

function parseListen(value: string, flag = '--listen'): {host: string; port: number} {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d+)$/.exec(value.trim())
  const port = match ? Number(match[3]) : Number.NaN
  if (!match || port > 65535) throw new UsageError(`${flag}: ${JSON.stringify(value)} is not HOST:PORT (e.g. 127.0.0.1:7070, [::1]:7070)`)
  return {host: match[1] ?? match[2], port}
}
