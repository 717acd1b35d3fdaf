import {formatMs, ordinal, printable} from './output.js'

/** What an event line may say, beyond its event and key. */
export interface EventFields {
  holder?: string | null
  position?: number
  fence?: number
  leaseMs?: number
  token?: string
  reason?: string
  message?: string
  endpoint?: string
}

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

  print(event: HoldEvent, key: string, fields: EventFields = {}): void {
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
    if (fields.fence !== undefined) details.push(`fence ${fields.fence}`)
    if (typeof fields.leaseMs === 'number') details.push(`lease ${formatMs(fields.leaseMs)}`)
    if (fields.reason) details.push(fields.reason)
    if (fields.message) details.push(fields.message)
    // The endpoint once: an error's reason often names it already.
    if (fields.endpoint && (event === 'suspended' || event === 'connected') && !details.some((d) => d.includes(fields.endpoint!))) details.push(fields.endpoint)
    // (Whatever the service said in it — an owner, a reason — stays one line without escape sequences.)
    this.write(`${printable(`${time} ${event} ${key}${details.length ? ` (${details.join(', ')})` : ''}`)}\n`)
  }
}
