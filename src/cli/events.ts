import {formatMs, ordinal} from './output.js'

export type HoldEvent = 'waiting' | 'acquired' | 'lost' | 'released' | 'suspended' | 'connected' | 'error'

/**
 * One line per event: `<ISO time> <event> <key> <details>` for people, or a JSON object per line
 * with --json. Written synchronously so that lines appear in order and before the process exits.
 */
export class EventPrinter {
  constructor(
    /** Receives one whole line (with its newline) at a time. */
    private readonly write: (line: string) => void,
    private readonly mode: 'human' | 'json' | 'quiet',
  ) {}

  print(event: HoldEvent, key: string, fields: Record<string, unknown> = {}): void {
    if (this.mode === 'quiet') return
    const time = new Date().toISOString()
    if (this.mode === 'json') {
      this.write(`${JSON.stringify({event, time, key, ...fields})}\n`)
      return
    }
    const details: string[] = []
    if (event === 'waiting') {
      if (typeof fields.holder === 'string') details.push(`held by ${fields.holder}`)
      if (typeof fields.position === 'number' && fields.position > 0) details.push(`${ordinal(fields.position)} in the queue`)
    }
    if (fields.fence !== undefined) details.push(`fence ${String(fields.fence)}`)
    if (typeof fields.leaseMs === 'number') details.push(`lease ${formatMs(fields.leaseMs)}`)
    if (fields.reason) details.push(String(fields.reason))
    if (fields.endpoint && (event === 'suspended' || event === 'connected')) details.push(String(fields.endpoint))
    this.write(`${time} ${event} ${key}${details.length ? ` (${details.join(', ')})` : ''}\n`)
  }
}
