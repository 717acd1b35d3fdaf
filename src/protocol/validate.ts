/**
 * Input rules shared by the client (checked before anything is sent) and the server (checked
 * again, because the server cannot trust its peers). Each returns an error message or null.
 */

export const MAX_KEY_BYTES = 512
export const MIN_LEASE_MS = 1000
export const MAX_LEASE_MS = 24 * 60 * 60 * 1000
export const MAX_WAIT_MS = 30 * 24 * 60 * 60 * 1000
export const MAX_TOKEN_LENGTH = 256
export const MAX_OWNER_LENGTH = 256
/** The largest semaphore. */
export const MAX_LIMIT = 10_000

// C0 and C1 control characters and DEL.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/

export function keyProblem(key: unknown): string | null {
  if (typeof key !== 'string') return 'a key must be a string'
  if (key.length === 0) return 'a key must not be empty'
  const bytes = Buffer.byteLength(key, 'utf8')
  if (bytes > MAX_KEY_BYTES) return `a key is at most ${MAX_KEY_BYTES} bytes of UTF-8 (this one is ${bytes})`
  if (CONTROL.test(key)) return 'a key must not contain control characters'
  // Lone surrogates do not survive UTF-8 encoding: refuse rather than store a different key.
  if (!(key as string & {isWellFormed(): boolean}).isWellFormed()) return 'a key must be valid UTF-8'
  return null
}

export function leaseProblem(leaseMs: unknown): string | null {
  if (typeof leaseMs !== 'number' || !Number.isInteger(leaseMs)) return 'a lease must be a whole number of milliseconds'
  if (leaseMs < MIN_LEASE_MS) return 'a lease must be at least 1s'
  if (leaseMs > MAX_LEASE_MS) return 'a lease must be at most 24h'
  return null
}

export function waitProblem(waitMs: unknown): string | null {
  if (typeof waitMs !== 'number' || !Number.isInteger(waitMs)) return 'a wait must be a whole number of milliseconds'
  if (waitMs === -1) return null
  if (waitMs < 0) return 'a wait must not be negative'
  if (waitMs > MAX_WAIT_MS) return 'a wait must be at most 30d (or forever)'
  return null
}

export function tokenProblem(token: unknown): string | null {
  if (typeof token !== 'string' || token.length === 0) return 'a token must be a non-empty string'
  if (token.length > MAX_TOKEN_LENGTH) return `a token is at most ${MAX_TOKEN_LENGTH} characters`
  if (!/^[A-Za-z0-9._:~/+=-]+$/.test(token)) return 'a token contains characters no token has'
  return null
}

export function ownerProblem(owner: unknown): string | null {
  if (typeof owner !== 'string' || owner.length === 0) return 'an owner must be a non-empty string'
  if (owner.length > MAX_OWNER_LENGTH) return `an owner is at most ${MAX_OWNER_LENGTH} characters`
  if (CONTROL.test(owner)) return 'an owner must not contain control characters'
  return null
}

/** A semaphore's limit and the shared flag of one acquire (null: fine). */
export function modeProblem(limit: unknown, shared: unknown): string | null {
  if (limit !== undefined && limit !== null && (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT)) return `a limit is a whole number from 1 to ${MAX_LIMIT}`
  if (shared !== undefined && shared !== null && typeof shared !== 'boolean') return 'shared is true or false'
  if (shared === true && typeof limit === 'number' && limit > 1) return 'a semaphore (a limit above 1) has no shared mode: its holders are counted, not kinds'
  return null
}

/** An acquire attempt's id (see AcquireArgs.attempt): 16 to 64 URL-safe characters. */
export function attemptProblem(attempt: unknown): string | null {
  if (typeof attempt !== 'string' || !/^[A-Za-z0-9_-]{16,64}$/.test(attempt)) return 'an attempt id is 16 to 64 characters of A-Z a-z 0-9 _ -'
  return null
}
