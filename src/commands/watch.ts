import {Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {checkKeyArg, keyArg, UsageError} from '../cli/flags.js'
import {printable} from '../cli/output.js'
import type {LockInfo} from '../client/backend.js'
import type {LockEvent} from '../client/watch.js'

export default class Watch extends BaseCommand {
  static summary = 'Stream lock events until interrupted.'
  static description = `One line per event: time, event (acquired, released, expired, queued, dequeued), key, holder, fence, waiters. The current state comes first (event "state"). If the connection is lost it reconnects with backoff, printing "disconnected" and then "resynced" with a fresh state (events in between may have been missed).
Exit codes: 0 after Ctrl-C or once its reader is gone (watch | head), 4 if the lock service is unreachable at the start, 74 if stdout fails otherwise (a full disk).`

  static examples = ['<%= config.bin %> watch deploy', '<%= config.bin %> watch --prefix jobs/ --json']

  static args = {key: keyArg({required: false, description: 'the lock to watch (default: all, or --prefix)'})}

  static flags = {
    prefix: Flags.string({description: 'watch every lock whose key starts with this (not with KEY)', helpValue: 'PREFIX'}),
  }

  async run(): Promise<void> {
    const {args, flags} = await this.parse(Watch)
    if (args.key !== undefined && flags.prefix !== undefined) throw new UsageError('give KEY or --prefix, not both')
    const target = args.key !== undefined ? {key: checkKeyArg(args.key)} : {prefix: flags.prefix ?? ''}
    const client = await this.client(flags)
    const json = this.jsonEnabled()
    const line = (event: string, fields: {key?: string; holder?: string | null; fence?: number | null; waiters?: number | null; reason?: string}) => {
      const time = new Date().toISOString()
      if (json) {
        process.stdout.write(`${JSON.stringify({time, event, ...fields})}\n`)
        return
      }
      const parts = [time, event.padEnd(12)]
      if (fields.key !== undefined) parts.push(printable(fields.key))
      if (fields.holder !== undefined) parts.push(`holder=${fields.holder === null ? '-' : printable(fields.holder)}`)
      if (fields.fence !== undefined) parts.push(`fence=${fields.fence ?? '-'}`)
      if (fields.waiters !== undefined) parts.push(`waiters=${fields.waiters ?? 0}`)
      if (fields.reason) parts.push(`(${fields.reason})`)
      process.stdout.write(`${parts.join(' ')}\n`)
    }
    const state = (lock: LockInfo) => line('state', {key: lock.key, holder: lock.holder?.owner ?? null, fence: lock.holder?.fence ?? null, waiters: lock.waiters})
    const event = (e: LockEvent) =>
      e.type === 'queued' || e.type === 'dequeued'
        ? line(e.type, {key: e.key, waiters: e.waiters, reason: e.reason})
        : line(e.type, {key: e.key, holder: e.owner ?? null, fence: e.fence ?? null, waiters: e.waiters, reason: e.force ? 'forced' : undefined})

    for await (const update of client.watch(target, {signal: this.streamSignal})) {
      if (update.type === 'snapshot') {
        if (update.resync) line('resynced', {reason: 'events while disconnected may have been missed'})
        if (update.locks.length === 0 && target.key !== undefined) line('state', {key: target.key, holder: null, fence: null, waiters: 0})
        // A prefix with no lock under it yet: say so, rather than print nothing until the first event.
        if (update.locks.length === 0 && target.key === undefined) line('state', {reason: `no locks under ${JSON.stringify(target.prefix)}`})
        for (const lock of update.locks) state(lock)
      } else if (update.type === 'event') {
        event(update.event)
      } else {
        line('disconnected', {reason: update.reason})
      }
    }
  }
}
