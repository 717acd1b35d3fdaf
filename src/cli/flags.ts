import {Args, Flags} from '@oclif/core'
import {WAIT_FOREVER} from '../protocol/messages.js'
import {keyProblem, MAX_LEASE_MS, MAX_LIMIT, MAX_WAIT_MS, MIN_LEASE_MS, modeProblem, tokenProblem, ownerProblem} from '../protocol/validate.js'
import {UsageError} from './usage-error.js'
import {quoteStart} from '../client/errors.js'

export {UsageError}

const UNITS: Record<string, number> = {ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000}
const DURATION_FORMS = 'a number with a unit, e.g. 500ms, 30s, 1m30s, 2h'

/** Parse `500ms`, `30s`, `1m30s`, `2h`, `1.5s`, `0`; returns milliseconds. */
export function parseDuration(text: string): number | null {
  const trimmed = text.trim().toLowerCase()
  if (trimmed === '0') return 0
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(trimmed)) return null
  let total = 0
  for (const [, amount, unit] of trimmed.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) total += Number(amount) * UNITS[unit]
  return Math.round(total)
}

function durationFlagValue(name: string, input: string, min: number, max: number, allowForever: boolean): number {
  if (allowForever && /^(forever|inf|infinity)$/i.test(input.trim())) return WAIT_FOREVER
  const ms = parseDuration(input)
  const forms = allowForever ? `${DURATION_FORMS}, or forever` : DURATION_FORMS
  if (ms === null) {
    const hint = /^\d+(\.\d+)?$/.test(input.trim()) ? ` (a bare number has no unit: write ${input.trim()}s)` : ''
    throw new UsageError(`--${name}: ${JSON.stringify(input)} is not a duration${hint}; use ${forms}`)
  }
  if (ms < min) throw new UsageError(`--${name}: ${input} is too short; the minimum is ${formatBound(min)}`)
  if (ms > max) throw new UsageError(`--${name}: ${input} is too long; the maximum is ${formatBound(max)}`)
  return ms
}

function formatBound(ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 2 * 86_400_000) return `${ms / 86_400_000}d`
  if (ms % 3_600_000 === 0 && ms >= 3_600_000) return `${ms / 3_600_000}h`
  if (ms % 1000 === 0 && ms >= 1000) return `${ms / 1000}s`
  return `${ms}ms`
}

export const leaseFlag = (options: {defaultMs: number; description?: string}) =>
  Flags.custom<number>({
    description: options.description ?? `lease length (${formatBound(MIN_LEASE_MS)}..${formatBound(MAX_LEASE_MS)}); the lock is released when it runs out`,
    helpValue: 'DURATION',
    default: options.defaultMs,
    defaultHelp: async () => formatBound(options.defaultMs),
    parse: async (input, _ctx, flag) => durationFlagValue(flag.name, input, MIN_LEASE_MS, MAX_LEASE_MS, false),
  })()

/** A lease flag with no default (renew keeps the current length; help shows no default). */
export const optionalLeaseFlag = (description: string) =>
  Flags.custom<number>({
    description,
    helpValue: 'DURATION',
    parse: async (input, _ctx, flag) => durationFlagValue(flag.name, input, MIN_LEASE_MS, MAX_LEASE_MS, false),
  })()

export const waitFlag = (options: {defaultMs: number; description?: string}) =>
  Flags.custom<number>({
    description: options.description ?? 'how long to wait in the queue: 0 = try once, a duration, or forever',
    helpValue: 'DURATION|forever',
    default: options.defaultMs,
    defaultHelp: async () => (options.defaultMs === WAIT_FOREVER ? 'forever' : formatBound(options.defaultMs)),
    parse: async (input, _ctx, flag) => durationFlagValue(flag.name, input, 0, MAX_WAIT_MS, true),
  })()

export const durationFlag = (options: {description: string; defaultMs: number; min: number; max: number}) =>
  Flags.custom<number>({
    description: options.description,
    helpValue: 'DURATION',
    default: options.defaultMs,
    defaultHelp: async () => formatBound(options.defaultMs),
    parse: async (input, _ctx, flag) => durationFlagValue(flag.name, input, options.min, options.max, false),
  })()

/** Marks a --token value that begins with '-' (markDashTokens); never in a process's argv, which cannot hold NUL. */
const DASH_TOKEN_MARK = '\u0000'

/**
 * Shields a `--token T` whose T begins with '-' from oclif, which refuses any option value that
 * starts like one of the command's short flags, `--token=T` included: `unlock K --token -yK3...`
 * was read as --yes and a --token without a value (exit 2). lockd's tokens are base64url and
 * older ones can begin with '-' (new ones never do: src/server/tokens.ts). T gets a mark that
 * tokenFlag takes off again. Only before `--` (what follows is hold's command), and only a token's
 * shape: a mistaken `--token --yes` or `--token -y` still says that --token has no value.
 */
export function markDashTokens(argv: string[]): string[] {
  const end = argv.indexOf('--')
  return argv.map((arg, i) => (i > 0 && argv[i - 1] === '--token' && (end === -1 || i < end) && /^-[A-Za-z0-9_][A-Za-z0-9_-]{14,}$/.test(arg) ? DASH_TOKEN_MARK + arg : arg))
}

/** --token. $LOCKCTL_TOKEN is not read here: a REPL session's own token comes first (see defaultToken). */
export const tokenFlag = (description: string) =>
  Flags.custom<string>({
    description,
    helpValue: 'TOKEN',
    parse: async (input) => {
      const token = input.startsWith(DASH_TOKEN_MARK) ? input.slice(DASH_TOKEN_MARK.length) : input
      const problem = tokenProblem(token)
      if (problem) throw new UsageError(`--token: ${problem}; pass the token printed by lockctl lock`)
      return token
    },
  })()

/** `--limit N`: a semaphore (docs/semantics.md, "Semaphores and shared locks"). */
export const semaphoreLimitFlag = Flags.custom<number>({
  description: 'a semaphore: at most N holders of KEY at once (every user of KEY gives the same N)',
  helpValue: 'N',
  parse: async (input) => {
    const n = Number(input)
    if (!/^\d+$/.test(input) || !Number.isSafeInteger(n) || n < 1 || n > MAX_LIMIT) throw new UsageError(`--limit: ${JSON.stringify(input)} is not a whole number from 1 to ${MAX_LIMIT}`)
    return n
  },
})

export const sharedFlag = Flags.boolean({description: 'a shared (read) lock: held beside other shared holders, never beside an exclusive one'})

/** The mode of `lock`/`hold`, checked together (a semaphore has no shared mode). */
export function lockMode(flags: {limit?: number; shared?: boolean}): {limit?: number; shared?: boolean} {
  const problem = modeProblem(flags.limit, flags.shared)
  if (problem) throw new UsageError(`--limit ${flags.limit} --shared: ${problem}`)
  return {...(flags.limit !== undefined && flags.limit > 1 ? {limit: flags.limit} : {}), ...(flags.shared ? {shared: true} : {})}
}

export const ownerFlag = Flags.custom<string>({
  description: 'who holds the lock, as status shows it (default user@host:pid)',
  env: 'LOCKCTL_OWNER',
  helpValue: 'NAME',
  parse: async (input) => {
    const problem = ownerProblem(input)
    // oclif fills the flag from $LOCKCTL_OWNER too: name whichever the value came from.
    const source = input === process.env.LOCKCTL_OWNER && !process.argv.some((a) => a === '--owner' || a.startsWith('--owner=')) ? '$LOCKCTL_OWNER' : '--owner'
    if (problem) throw new UsageError(`${source}: ${problem}`)
    return input
  },
})

export function checkKeyArg(key: string): string {
  // Node decodes the command line as UTF-8 and puts U+FFFD where a byte is not: two different
  // invalid keys would become one. Refuse it here (a library caller can pass U+FFFD on purpose).
  const problem = keyProblem(key) ?? (key.includes('\uFFFD') ? 'a key must be valid UTF-8 (this one has a byte that is not, or U+FFFD)' : null)
  if (problem) {
    throw new UsageError(`KEY ${quoteStart(key)}: ${problem}`)
  }
  return key
}

export const keyArg = (options: {required: boolean; description?: string}) =>
  Args.string({
    description: options.description ?? 'lock name: 1-512 bytes of UTF-8, no control characters',
    required: options.required,
  })

export const conflictExitCodeFlag = Flags.integer({
  description: 'exit code when the lock is not acquired (as flock -E; 0 makes a busy lock a quiet skip)',
  default: 1,
  min: 0,
  max: 255,
  helpValue: 'N',
})

/**
 * The token for KEY when --token is not given: the one the REPL session remembers for KEY (it
 * comes first: a REPL started from a shell that exported another lock's token must still use
 * its own), else $LOCKCTL_TOKEN.
 */
export function defaultToken(remembered: string | undefined, hint = ''): string {
  if (remembered) return remembered
  const token = process.env.LOCKCTL_TOKEN
  if (!token) return missingInput(`--token (or $LOCKCTL_TOKEN)${hint}`)
  const problem = tokenProblem(token)
  if (problem) throw new UsageError(`$LOCKCTL_TOKEN: ${problem}; it should be a token printed by lockctl lock`)
  return token
}

/** A required value that was given neither as a flag nor through its environment variable. */
export function missingInput(what: string): never {
  throw new UsageError(`missing ${what}`)
}
