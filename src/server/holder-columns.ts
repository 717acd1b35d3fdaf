import type {Holder, ListedHolder, PersistedHolder, WaiterRef} from './lock-table.js'

/** A token as TokenSource makes it: 18 bytes, written as 24 characters of base64url. */
const TOKEN_BYTES = 18
/**
 * 24 characters of base64url carry exactly 144 bits (no padding, no spare bits), so such a token
 * and its 18 bytes turn into each other both ways: it is kept as bytes. Anything else (a token
 * from an older log, or one a test makes) is kept as the string it is. Only the 64 characters of
 * base64url are read as such ('+', '/' and '=', which Node's decoder also takes, are not): no
 * other string matches a kept token.
 */
const TOKEN_CHARS = 24
/** Each base64url character's 6 bits, by character code; -1 for any other character. */
const SIXES = Int8Array.from({length: 128}, (_, code) => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.indexOf(String.fromCharCode(code)))

/**
 * The token's 18 bytes as six 24-bit numbers (four characters each) when it is 24 characters of
 * base64url; null for any other token. By hand, not Buffer.write: no call into C++ per token (a
 * restart reads a million), and a token is compared with a kept one without a string or a buffer.
 */
function tokenWords(token: string): number[] | null {
  if (token.length !== TOKEN_CHARS) return null
  const words: number[] = []
  for (let i = 0; i < TOKEN_CHARS; i += 4) {
    let word = 0
    for (let j = i; j < i + 4; j++) {
      const code = token.charCodeAt(j)
      const six = code < 128 ? SIXES[code] : -1
      if (six < 0) return null
      word = (word << 6) | six
    }
    words.push(word)
  }
  return words
}

/** What few grants have: kept beside the columns, by slot, only for those that do. */
interface RareFields {
  origin?: WaiterRef
  attempt?: string
  shared?: boolean
  limit?: number
}

/**
 * The lock table's grants, one slot each, a field per column: numbers in typed arrays (outside
 * the garbage-collected heap, unboxed), the token as its 18 bytes, strings the grant shares with
 * others (its key, owner and connection) by reference. A grant is an index, not an object: a
 * million held locks take ~160 bytes each, key and map entry included, where an object per
 * grant, its token string and boxed time came to ~240 (docs/memory.md).
 *
 * A slot is live from add() until free(); a freed slot is given to a later grant. Whoever keeps a
 * slot number past free() (the deadline heap does) checks that what it finds is still what it
 * meant (the lock table compares the lease's end).
 *
 * The Holder objects the table hands out are views made on demand: copies of the slot at that
 * moment, which never change after.
 */
export class HolderColumns {
  private capacity = 0
  /** One past the highest slot ever used. */
  private used = 0
  private readonly freeSlots: number[] = []
  private readonly keys = new Chunked<string>()
  private readonly owners = new Chunked<string>()
  private readonly sessions = new Chunked<string>()
  private fences = new Float64Array(0)
  /**
   * A double, though lockd grants at most 24 h: a recovered log may say anything, and a lease
   * cut to 32 bits would end before its holder's.
   */
  private leases = new Float64Array(0)
  private ends = new Float64Array(0)
  private sinces = new Float64Array(0)
  private tokens = Buffer.alloc(0)
  private readonly stringTokens = new Map<number, string>()
  private readonly rare = new Map<number, RareFields>()

  /** Slots in use. */
  get live(): number {
    return this.used - this.freeSlots.length
  }

  /** A new grant's slot. */
  add(holder: Holder): number {
    const slot = this.freeSlots.length > 0 ? this.freeSlots.pop()! : this.used++
    if (slot >= this.capacity) this.grow()
    this.keys.set(slot, holder.key)
    this.owners.set(slot, holder.owner)
    this.sessions.set(slot, holder.session)
    this.fences[slot] = holder.fence
    this.leases[slot] = holder.leaseMs
    this.ends[slot] = holder.expiresAt
    this.sinces[slot] = holder.since
    const words = tokenWords(holder.token)
    if (words === null) {
      this.stringTokens.set(slot, holder.token)
    } else {
      const {tokens} = this
      for (let i = 0, at = slot * TOKEN_BYTES; i < words.length; i++, at += 3) {
        tokens[at] = words[i] >> 16
        tokens[at + 1] = (words[i] >> 8) & 0xff
        tokens[at + 2] = words[i] & 0xff
      }
    }
    if (holder.origin !== undefined || holder.attempt !== undefined || holder.shared === true || holder.limit !== undefined) {
      const fields: RareFields = {}
      if (holder.origin !== undefined) fields.origin = {session: holder.origin.session, wid: holder.origin.wid}
      if (holder.attempt !== undefined) fields.attempt = holder.attempt
      if (holder.shared === true) fields.shared = true
      if (holder.limit !== undefined) fields.limit = holder.limit
      this.rare.set(slot, fields)
    }
    return slot
  }

  /**
   * The grant is gone: its slot (and the strings it referred to) can go to another. Freed twice,
   * a slot would be given to two grants at once, each overwriting the other's token: refused.
   */
  free(slot: number): void {
    if (!this.isLive(slot)) throw new Error(`slot ${slot} is not in use: freed twice`)
    this.keys.set(slot, undefined)
    this.owners.set(slot, undefined)
    this.sessions.set(slot, undefined)
    if (this.stringTokens.size > 0) this.stringTokens.delete(slot)
    if (this.rare.size > 0) this.rare.delete(slot)
    this.freeSlots.push(slot)
  }

  isLive(slot: number): boolean {
    return this.keys.get(slot) !== undefined
  }

  keyOf(slot: number): string {
    return this.keys.get(slot)!
  }

  sessionOf(slot: number): string | undefined {
    return this.sessions.get(slot)
  }

  setSession(slot: number, session: string): void {
    this.sessions.set(slot, session)
  }

  fenceOf(slot: number): number {
    return this.fences[slot]
  }

  /** The grant's name's limit: N for a semaphore of N, else 1. */
  limitOf(slot: number): number {
    return (this.rare.size > 0 ? this.rare.get(slot)?.limit : undefined) ?? 1
  }

  leaseOf(slot: number): number {
    return this.leases[slot]
  }

  endOf(slot: number): number {
    return this.ends[slot]
  }

  setLease(slot: number, leaseMs: number, expiresAt: number): void {
    this.leases[slot] = leaseMs
    this.ends[slot] = expiresAt
  }

  tokenOf(slot: number): string {
    const kept = this.stringTokens.size > 0 ? this.stringTokens.get(slot) : undefined
    if (kept !== undefined) return kept
    const at = slot * TOKEN_BYTES
    return this.tokens.toString('base64url', at, at + TOKEN_BYTES)
  }

  /**
   * A test for "this slot's token is `token`", for one or several slots: the token is decoded
   * once, and each slot compared as bytes (no string made per slot).
   */
  tokenIs(token: string): (slot: number) => boolean {
    const words = tokenWords(token)
    return (slot) => {
      const kept = this.stringTokens.size > 0 ? this.stringTokens.get(slot) : undefined
      if (kept !== undefined) return kept === token
      if (words === null) return false
      const {tokens} = this
      for (let i = 0, at = slot * TOKEN_BYTES; i < words.length; i++, at += 3) {
        if (((tokens[at] << 16) | (tokens[at + 1] << 8) | tokens[at + 2]) !== words[i]) return false
      }
      return true
    }
  }

  attemptOf(slot: number): string | undefined {
    return this.rare.size > 0 ? this.rare.get(slot)?.attempt : undefined
  }

  originOf(slot: number): WaiterRef | undefined {
    return this.rare.size > 0 ? this.rare.get(slot)?.origin : undefined
  }

  isShared(slot: number): boolean {
    return this.rare.size > 0 && this.rare.get(slot)?.shared === true
  }

  /** The grant as an object, as it is now (a copy: it does not follow later changes). */
  view(slot: number): Holder {
    const holder: Holder = {
      key: this.keys.get(slot)!,
      session: this.sessions.get(slot),
      token: this.tokenOf(slot),
      fence: this.fences[slot],
      owner: this.owners.get(slot)!,
      leaseMs: this.leases[slot],
      expiresAt: this.ends[slot],
      since: this.sinces[slot],
    }
    const fields = this.rare.size > 0 ? this.rare.get(slot) : undefined
    if (fields !== undefined) {
      if (fields.origin !== undefined) holder.origin = fields.origin
      if (fields.attempt !== undefined) holder.attempt = fields.attempt
      if (fields.shared === true) holder.shared = true
      if (fields.limit !== undefined) holder.limit = fields.limit
    }
    return holder
  }

  /** The grant as `status` and `watch` show it (ListedHolder: no token, nothing they do not show). */
  listed(slot: number): ListedHolder {
    const holder: ListedHolder = {owner: this.owners.get(slot)!, fence: this.fences[slot], leaseMs: this.leases[slot], expiresAt: this.ends[slot], since: this.sinces[slot]}
    if (this.isShared(slot)) holder.shared = true
    return holder
  }

  /** The grant as the durable log writes it. */
  persisted(slot: number): PersistedHolder {
    const saved: PersistedHolder = {token: this.tokenOf(slot), fence: this.fences[slot], owner: this.owners.get(slot)!, leaseMs: this.leases[slot], since: this.sinces[slot]}
    const fields = this.rare.size > 0 ? this.rare.get(slot) : undefined
    if (fields !== undefined) {
      if (fields.attempt !== undefined) saved.attempt = fields.attempt
      if (fields.shared === true) saved.shared = true
      if (fields.limit !== undefined) saved.limit = fields.limit
    }
    return saved
  }

  /** Twice the room (typed arrays are zeroed lazily by the system: room not yet used costs no memory). */
  private grow(): void {
    const capacity = Math.max(1024, this.capacity * 2)
    this.fences = grown(this.fences, new Float64Array(capacity))
    this.leases = grown(this.leases, new Float64Array(capacity))
    this.ends = grown(this.ends, new Float64Array(capacity))
    this.sinces = grown(this.sinces, new Float64Array(capacity))
    this.tokens = grown(this.tokens, Buffer.alloc(capacity * TOKEN_BYTES))
    this.capacity = capacity
  }
}

/** `larger`, with what `column` held at its start. */
function grown<T extends Float64Array | Uint8Array>(column: T, larger: T): T {
  larger.set(column)
  return larger
}

/** Slots per chunk: 8,192 (64 KB of references), an ordinary heap object (not a large one, which V8 keeps apart). */
const CHUNK_BITS = 13
const CHUNK = 1 << CHUNK_BITS

/**
 * An array by slot, in chunks that never move: one array grown by copying left each old copy
 * (megabytes, for a million slots) as garbage until the next full collection, and lockd at rest
 * collects rarely.
 */
class Chunked<T> {
  private readonly chunks: (T | undefined)[][] = []

  get(slot: number): T | undefined {
    return this.chunks[slot >> CHUNK_BITS]?.[slot & (CHUNK - 1)]
  }

  set(slot: number, value: T | undefined): void {
    const index = slot >> CHUNK_BITS
    while (this.chunks.length <= index) this.chunks.push(Array.from<T | undefined>({length: CHUNK}))
    this.chunks[index][slot & (CHUNK - 1)] = value
  }
}
