import {EventPrinter} from './events.js'
import type {ReplSession} from './session.js'
import {UsageError} from './usage-error.js'

/** A hold's lock and how its events print (the foreground `hold` adds its command: HoldOptions). */
export interface BackgroundHoldOptions {
  key: string
  leaseMs: number
  waitMs: number
  retryMillis: number[]
  owner?: string
  /** A semaphore's limit, or a shared lock (see DistributedLockOptions). */
  limit?: number
  shared?: boolean
  quiet: boolean
  json: boolean
}

/**
 * REPL: `hold KEY` keeps the lock in the background (renewing, re-acquiring after a loss) and
 * prints its events above the prompt; `unlock KEY` or leaving the REPL stops it.
 */
export function startBackgroundHold(session: ReplSession, options: BackgroundHoldOptions): void {
  const {key} = options
  if (session.holds.has(key)) throw new UsageError(`already holding ${key} in this session (unlock ${key} to stop)`)
  const events = new EventPrinter((line) => session.print(line.replace(/\n$/, '')), options.quiet ? 'quiet' : options.json ? 'json' : 'human')
  let announcedWait = false
  const lock = session.client.createAutoRenewalLock(key, {
    leaseMs: options.leaseMs,
    retryMillis: options.retryMillis,
    waitMs: options.waitMs,
    owner: options.owner,
    limit: options.limit,
    shared: options.shared,
    onQueued: ({position, holder}) => {
      if (!announcedWait) events.print('waiting', key, {position, holder: holder?.owner ?? null})
      announcedWait = true
    },
    onAcquired: (grant) => {
      announcedWait = false
      events.print('acquired', key, {fence: grant.fence, leaseMs: grant.leaseMs})
    },
    onLost: (reason) => events.print('lost', key, {reason: reason.reason}),
  })
  session.holds.set(key, lock)
  lock.ready.catch((error: Error) => {
    if (session.holds.get(key) !== lock) return
    session.holds.delete(key)
    if ((error as {code?: string}).code !== 'CLOSED') session.print(`lockctl: hold ${key}: ${error.message}`)
  })
}
