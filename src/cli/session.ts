import type {AutoRenewalLock} from '../client/auto-renewal-lock.js'
import type {LockClient} from '../client/lock-client.js'
import type {GrantInfo} from '../protocol/messages.js'
import {UsageError} from './usage-error.js'

/** A grant the REPL session took with `lock`, remembered so unlock/renew need no token. */
export interface SessionLock {
  key: string
  token: string
  fence: number
  leaseMs: number
  /** Deadline on the client's lease clock, counted from when the request was sent (as the client counts). */
  deadline: number
}

/**
 * State shared by the commands of one REPL: one client, the locks taken, the background holds,
 * and the signal that Ctrl-C aborts. The REPL hands it to each command it runs (BaseCommand's
 * `session`); outside the REPL there is none and commands behave as one-shot CLI commands.
 */
export interface ReplSession {
  readonly client: LockClient
  readonly locks: Map<string, SessionLock>
  readonly holds: Map<string, AutoRenewalLock>
  /** Whether a person is at a terminal (prompts allowed). */
  readonly interactive: boolean
  /** Aborted by Ctrl-C while the current command runs. */
  readonly signal: AbortSignal
  /** Print a line without garbling what is being typed at the prompt. */
  print(line: string): void
  /** Put before error lines (the line number, when running a script). */
  readonly errorPrefix: string
  /**
   * Ask a question on the REPL's own line editor (terminal only). Prompt libraries must not be
   * used inside the REPL: they open a second reader on the same terminal, see the keys the REPL
   * also sees, and leave it in cooked mode when they finish. Rejects on Ctrl-C.
   */
  ask(query: string): Promise<string>
}

export function rememberGrant(session: ReplSession, grant: GrantInfo, sentAt: number): void {
  session.locks.set(grant.key, {key: grant.key, token: grant.token, fence: grant.fence, leaseMs: grant.leaseMs, deadline: sentAt + grant.leaseMs})
}

/**
 * Without a KEY in the REPL: on a terminal, let the user pick one of the session's locks; in a
 * script (or with nothing to pick) answer undefined so the usual "missing KEY" error follows.
 */
export async function pickSessionKey(session: ReplSession, message: string, options: {locksOnly?: boolean} = {}): Promise<string | undefined> {
  const keys = [...session.locks.keys(), ...(options.locksOnly ? [] : [...session.holds.keys()])]
  if (!session.interactive || keys.length === 0) return undefined
  if (keys.length === 1) return keys[0]
  for (const [i, key] of keys.entries()) session.print(`  ${i + 1}) ${key}`)
  const answer = (await session.ask(`${message} [1-${keys.length} or a name] `)).trim()
  const picked = /^\d+$/.test(answer) ? keys[Number(answer) - 1] : keys.find((key) => key === answer)
  if (!picked) throw new UsageError(answer === '' ? 'nothing picked' : `${JSON.stringify(answer)} is not one of the listed locks`)
  return picked
}

/** A yes/no question on the REPL's line editor; anything but y/yes is no. */
export async function confirmInSession(session: ReplSession, question: string): Promise<boolean> {
  return /^(y|yes)$/i.test((await session.ask(`${question} (y/N) `)).trim())
}
