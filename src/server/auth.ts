import {createHash, randomBytes, scrypt, timingSafeEqual} from 'node:crypto'
import {readFileSync} from 'node:fs'
import {promisify} from 'node:util'
import {openTo} from '../util/fs.js'
import {ServerStartError} from './errors.js'

/**
 * Users of a team lockd (docs/protocol.md, "Authentication"): an auth file of `NAME:HASH`
 * lines, HASH made by `lockctl server --hash-password` (scrypt from node:crypto; never the
 * password itself), and the admins who may force-release a lock they do not hold.
 */

const scryptAsync = promisify(scrypt) as (password: string, salt: Buffer, keylen: number, options: {N: number; r: number; p: number; maxmem: number}) => Promise<Buffer>
const N = 2 ** 15
const R = 8
const P = 1
const KEY_BYTES = 32
const MAXMEM = 128 * N * R * 2

/** `scrypt$N$r$p$salt$hash`, base64 salt and hash. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16)
  const hash = await scryptAsync(password, salt, KEY_BYTES, {N, r: R, p: P, maxmem: MAXMEM})
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${hash.toString('base64')}`
}

/**
 * What a user who is not in the auth file is checked against: a hash with --hash-password's
 * parameters that no password is known to make (all zero bytes), so that checking
 * takes as long as for a user who is there.
 */
export const UNKNOWN_USER_HASH = `scrypt$${N}$${R}$${P}$${Buffer.alloc(16, 1).toString('base64')}$${Buffer.alloc(KEY_BYTES).toString('base64')}`

const HASH = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/
/** The most memory one check may take (128·N·r bytes): 8× what --hash-password's take. */
const MAX_SCRYPT_BYTES = 256 * 1024 * 1024
const MAX_P = 16

interface ParsedHash {
  n: number
  r: number
  p: number
  salt: Buffer
  hash: Buffer
}

/**
 * A stored hash, or what is wrong with it. The parameters come from a file an admin edits:
 * scrypt throws on some (N not a power of two), which took lockd down at that user's next login,
 * and an empty hash would have matched every password.
 */
export function parseHash(stored: string): ParsedHash | string {
  const match = HASH.exec(stored)
  if (!match) return 'is not NAME:HASH'
  const [, nText, rText, pText, saltText, hashText] = match
  const [n, r, p] = [Number(nText), Number(rText), Number(pText)]
  if (!Number.isSafeInteger(n) || n < 2 || (n & (n - 1)) !== 0 || n > 2 ** 30) return `has scrypt N ${nText}: not a power of two from 2 to 2^30`
  if (!Number.isSafeInteger(r) || r < 1 || !Number.isSafeInteger(p) || p < 1 || p > MAX_P) return `has scrypt r ${rText} and p ${pText}: r must be at least 1, p from 1 to ${MAX_P}`
  if (128 * n * r > MAX_SCRYPT_BYTES) return `has scrypt N ${nText} and r ${rText}: each login would take ${Math.round((128 * n * r) / 2 ** 20)} MiB (at most ${MAX_SCRYPT_BYTES / 2 ** 20})`
  const salt = Buffer.from(saltText, 'base64')
  const hash = Buffer.from(hashText, 'base64')
  if (salt.length < 8 || hash.length < 16) return 'has a salt or hash too short (cut off?)'
  return {n, r, p, salt, hash}
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parseHash(stored)
  if (typeof parsed === 'string') return false
  const {n, r, p, salt, hash} = parsed
  let got: Buffer
  try {
    got = await scryptAsync(password, salt, hash.length, {N: n, r, p, maxmem: 128 * n * r * 2})
  } catch {
    // Parameters scrypt refuses after all, or no memory for them: not a match, and lockd goes on.
    return false
  }
  return got.length === hash.length && timingSafeEqual(got, hash)
}

/**
 * Read an auth file: one `NAME:HASH` per line; blank lines and `#` comments are skipped. A file
 * every user may write is refused: anyone could add a user of their own (an --admin's name
 * among them), as sshd refuses such an authorized_keys.
 */
export function readAuthFile(path: string): Map<string, string> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    throw new ServerStartError(`--auth-file: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
  }
  const open = openTo(path)
  if (open?.write) throw new ServerStartError(`--auth-file: every user can write ${path} (mode ${open.mode}), and so add a user of their own: chmod o-w ${path} (600 or 640)`)
  const users = new Map<string, string>()
  const lines = new Map<string, number>()
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    const name = line.slice(0, colon)
    const hash = line.slice(colon + 1)
    const problem = colon <= 0 ? 'is not NAME:HASH' : parseHash(hash)
    if (typeof problem === 'string') throw new ServerStartError(`--auth-file: ${path} line ${index + 1} ${problem} (make HASH with lockctl server --hash-password)`)
    // Which of two passwords counts would be the file's order, an accident: refused instead.
    if (lines.has(name)) throw new ServerStartError(`--auth-file: ${path} line ${index + 1} names ${JSON.stringify(name)} again (line ${lines.get(name)}): one line per user`)
    lines.set(name, index + 1)
    users.set(name, hash)
  }
  return users
}

/**
 * Checks a user's password against the auth file. A successful check is remembered (by a
 * digest of the name and password, for as long as the file says the same), so a CLI that
 * connects once per command does not pay scrypt's cost, nor make the server pay it, each time.
 */
export class PasswordCheck {
  private users: Map<string, string>
  private readonly verified = new Map<string, string>()
  /** Checks under way, by the login's digest: the same login asked again shares the one check. */
  private readonly checking = new Map<string, Promise<boolean>>()

  constructor(
    private readonly path: string,
    /** How a password is checked against a stored hash (injected by tests, to see which hash). */
    private readonly verify: (password: string, stored: string) => Promise<boolean> = verifyPassword,
  ) {
    this.users = readAuthFile(path)
  }

  /**
   * The file read again (SIGHUP), not yet in force: a bad file throws and nothing changes. The
   * server reads every file of a reload before it puts any in force (`replace`), so a reload
   * is taken whole or not at all.
   */
  readAgain(): Map<string, string> {
    return readAuthFile(this.path)
  }

  /** Put users read by `readAgain` in force. Returns how many, and those removed or given a new password since. */
  replace(users: Map<string, string>): {users: number; revoked: Set<string>} {
    const revoked = new Set([...this.users].filter(([name, hash]) => users.get(name) !== hash).map(([name]) => name))
    this.users = users
    this.verified.clear()
    return {users: users.size, revoked}
  }

  /**
   * Would checking this login start a scrypt? Not when it was found right before, nor while the
   * same login is being checked (twenty cron jobs starting at once share one check).
   */
  needsScrypt(user: unknown, password: unknown): boolean {
    if (typeof user !== 'string' || typeof password !== 'string') return false
    const digest = digestOf(user, password)
    const stored = this.users.get(user)
    return !(stored !== undefined && this.verified.get(digest) === stored) && !this.checking.has(digest)
  }

  check(user: unknown, password: unknown): Promise<boolean> {
    if (typeof user !== 'string' || typeof password !== 'string') return Promise.resolve(false)
    const digest = digestOf(user, password)
    let checking = this.checking.get(digest)
    if (!checking) {
      checking = this.checkOnce(user, password, digest).finally(() => this.checking.delete(digest))
      this.checking.set(digest, checking)
    }
    return checking
  }

  private async checkOnce(user: string, password: string, digest: string): Promise<boolean> {
    const stored = this.users.get(user)
    // A user not in the file costs the same scrypt as a wrong password: answered at once, a
    // refusal told anyone timing it which user names exist (~75 ms apart on a laptop).
    if (stored === undefined) {
      await this.verify(password, UNKNOWN_USER_HASH)
      return false
    }
    if (this.verified.get(digest) === stored) return true
    const ok = await this.verify(password, stored)
    // A reload while scrypt ran may have taken this password away: the file in force decides.
    if (this.users.get(user) !== stored) return false
    if (ok) this.verified.set(digest, stored)
    return ok
  }
}

function digestOf(user: string, password: string): string {
  return createHash('sha256').update(user).update('\0').update(password).digest('hex')
}
