import {Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {checkKeyArg, keyArg, tokenFlag, UsageError} from '../cli/flags.js'
import {age, formatMs, holderJson, holdersOf, lockJson, modeOf, printable} from '../cli/output.js'
import type {LockInfo} from '../client/backend.js'
import type {LockClient} from '../client/lock-client.js'
import type {WatchTarget} from '../client/watch.js'

export default class Status extends BaseCommand {
  static summary = 'Show locks: holders, fence, lease left, waiters, since, mode.'
  static description = `Without KEY: every lock (or those under --prefix). A semaphore or a shared lock has a row per holder; MODE says exclusive, shared, or limit=N (one of a semaphore's N). With KEY and --token: exit 0 if the token still holds the lock, 5 if not.`

  static examples = ['<%= config.bin %> status', '<%= config.bin %> status --prefix deploy/', '<%= config.bin %> status deploy --token "$token" && echo still mine']

  static args = {key: keyArg({required: false})}

  static flags = {
    prefix: Flags.string({description: 'only keys that start with this (not with KEY)', helpValue: 'PREFIX'}),
    token: tokenFlag('check whether this token holds KEY (exit 0) or not (exit 5)'),
    limit: Flags.integer({description: 'show at most this many locks (default: 1000 in the table, all with --json)', min: 1, helpValue: 'N'}),
    watch: Flags.boolean({char: 'w', description: 'redraw the table as locks change (and every second), until Ctrl-C', exclusive: ['token', 'json']}),
    'no-headers': Flags.boolean({description: 'no header line in the plain (piped) output'}),
    // For the completion scripts: a key with spaces is one line (the table's columns split it).
    keys: Flags.boolean({description: 'the key names alone, one per line', hidden: true, exclusive: ['token', 'watch', 'json']}),
  }

  async run(): Promise<Record<string, unknown>> {
    const {args, flags} = await this.parse(Status)
    // oclif's `exclusive` only relates flags to flags: KEY against flags is checked here.
    if (args.key !== undefined && flags.prefix !== undefined) throw new UsageError('give KEY or --prefix, not both')
    if (args.key === undefined && flags.token !== undefined) throw new UsageError('--token needs KEY: status KEY --token TOKEN')
    const client = await this.client(flags)
    // A table of more than a screenful is read by nobody; a JSON document is read by programs.
    const limit = flags.limit ?? (this.jsonEnabled() ? undefined : 1000)
    if (flags.watch) {
      await this.watchTable(client, args.key !== undefined ? {key: checkKeyArg(args.key)} : {prefix: flags.prefix ?? ''}, limit ?? 1000, flags['no-headers'])
      return {}
    }
    if (args.key !== undefined) {
      const key = checkKeyArg(args.key)
      if (flags.token) {
        const holder = await client.check(key, flags.token)
        this.log(`${key}: held by this token (fence ${holder.fence}, ${formatMs(holder.leaseLeftMs)} left)`)
        return {key, held: true, holder: holderJson(holder)}
      }
      const lock = (await client.inspect(key)) ?? {key, holder: null, waiters: 0}
      await this.render([lock], 1, flags['no-headers'])
      return lockJson(lock)
    }
    if (flags.keys) {
      const {locks} = await client.list(flags.prefix ?? '', limit)
      for (const lock of locks) this.log(printable(lock.key))
      return {}
    }
    const [info, {locks, total}] = await Promise.all([client.info(), client.list(flags.prefix ?? '', limit)])
    // The summary line is for people; piped, the output is the columns alone (like ps).
    if (process.stdout.isTTY)
      this.log(
        info.server === 'etcd'
          ? `etcd ${String(info.version)} at ${client.endpoint}: ${(info.members as unknown[]).length} member(s), leader ${String(info.leader)}, raft term ${String(info.raftTerm)}${silentEndpoints(info)}`
          : `${String(info.server)} ${String(info.version)} at ${client.endpoint}: ${String(info.locks)} lock(s), ${String(info.waiters)} waiter(s)`,
      )
    await this.render(locks, total, flags['no-headers'])
    return {
      server: info,
      total,
      locks: locks.map((lock) => lockJson(lock)),
    }
  }

  /** Redraw on every change: in place on a terminal, one table after another otherwise. */
  private async watchTable(client: LockClient, target: WatchTarget, limit: number, noHeaders: boolean): Promise<void> {
    let pending: NodeJS.Timeout | null = null
    const draw = async () => {
      pending = null
      const {locks, total} = target.key !== undefined ? await client.inspect(target.key).then((l) => ({locks: l ? [l] : [], total: l ? 1 : 0})) : await client.list(target.prefix, limit)
      if (process.stdout.isTTY) process.stdout.write('\u001B[H\u001B[2J')
      this.log(`${client.endpoint} — ${new Date().toLocaleTimeString()} (Ctrl-C to stop)`)
      await this.render(locks, total, noHeaders)
    }
    const redraw = () => {
      // Bursts of events are drawn once.
      pending ??= setTimeout(() => void draw().catch((error: Error) => this.log(`lockctl: ${error.message}`)), 50)
    }
    // On a terminal LEASE LEFT and SINCE move on their own: redraw every second too.
    const ticker = process.stdout.isTTY ? setInterval(redraw, 1000) : null
    try {
      for await (const update of client.watch(target, {signal: this.streamSignal})) {
        if (update.type === 'disconnected') {
          this.log(`disconnected: ${update.reason}; reconnecting…`)
          continue
        }
        redraw()
      }
    } finally {
      if (ticker) clearInterval(ticker)
      if (pending) clearTimeout(pending)
    }
  }

  /**
   * A box table on a terminal (one rule under the header, long keys shortened in the middle to
   * fit its width); plain columns with one header line when piped, like `ps` (`--no-headers`).
   */
  private async render(locks: LockInfo[], total: number, noHeaders: boolean): Promise<void> {
    if (this.jsonEnabled()) return
    if (locks.length === 0) {
      this.log('no locks')
      return
    }
    // MODE last: the columns scripts already read keep their places.
    const head = ['KEY', 'HOLDER', 'FENCE', 'LEASE LEFT', 'WAITERS', 'SINCE', 'MODE']
    // A row per holder (a semaphore's or shared lock's several).
    const rows = locks.flatMap((lock) => {
      const holders = holdersOf(lock)
      const key = printable(lock.key)
      if (holders.length === 0) return [[key, '(free)', '', '', String(lock.waiters), '', '']]
      return holders.map((holder) => [key, printable(holder.owner), String(holder.fence), formatMs(holder.leaseLeftMs), String(lock.waiters), age(holder.since), modeOf(lock, holder)])
    })
    const more = total > locks.length ? `… and ${total - locks.length} more (--limit)` : null
    if (!process.stdout.isTTY) {
      const lines = noHeaders ? rows : [head, ...rows]
      const widths = head.map((_, column) => Math.max(...lines.map((row) => row[column].length)))
      for (const row of lines)
        this.log(
          row
            .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column])))
            .join('  ')
            .trimEnd(),
        )
      if (more) process.stderr.write(`${more}\n`)
      return
    }
    // Fit the terminal: the other columns as they are, the key column what is left.
    const columns = process.stdout.columns || 120
    const others = head.slice(1).map((title, i) => Math.max(title.length, ...rows.map((row) => row[i + 1].length)))
    const keyRoom = Math.max(12, columns - others.reduce((sum, width) => sum + width + 3, 0) - 4)
    let shortened = false
    for (const row of rows) {
      if (row[0].length > keyRoom) {
        const keep = keyRoom - 1
        row[0] = `${row[0].slice(0, Math.ceil(keep / 2))}…${row[0].slice(row[0].length - Math.floor(keep / 2))}`
        shortened = true
      }
    }
    const {default: Table} = await import('cli-table3')
    const table = new Table({
      head,
      style: {head: [], border: []},
      // One rule under the header, none between rows.
      chars: {mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': ''},
    })
    for (const row of rows) table.push(row)
    this.log(table.toString())
    if (shortened) this.log('(long keys are shortened in the middle; --json shows them whole)')
    if (more) this.log(more)
  }
}

/** `; not answering: h:p, ...` for the etcd endpoints given that did not answer (info's `endpoints`). */
function silentEndpoints(info: Record<string, unknown>): string {
  const silent = ((info.endpoints ?? []) as {endpoint: string; answering: boolean}[]).filter((e) => !e.answering).map((e) => e.endpoint)
  return silent.length ? `; not answering: ${silent.join(', ')}` : ''
}
