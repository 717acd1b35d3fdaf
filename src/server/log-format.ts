import {readFileSync} from 'node:fs'
import {crc32} from 'node:zlib'
import {Packr} from 'msgpackr/pack'

/**
 * lockd's data on disk, as bytes (docs/recovery.md): log records and their framing, the snapshot
 * file, and replaying them into a recovered state. The files and when they are written are
 * durable-log.ts's; this module only says what is in them.
 *
 * Records are states, not deltas (a key's holders, or a token's grant), so replaying a record
 * that a snapshot already covers changes nothing: that is what lets a snapshot be written a slice
 * at a time while lockd goes on (each lock as it is when its slice is written), with the log it
 * started replayed over it.
 *
 *   snapshot        8-byte magic, then frames as the log's: msgpack {locks} slices, with msgpack
 *                   records, and last {gen, fence, count}; or, as written before, crc32 + msgpack
 *                   {gen, fence, locks}
 *   wal-<gen>.log   8-byte magic, then records:
 *                   u32 length, u32 crc32(body), u32 crc32(first 8 header bytes), then
 *                   msgpack {k, h, f}: key K's holders are exactly h (null: free; one holder: a
 *                   plain lock's, as before semaphores; an array), or
 *                   msgpack {k, s, x, f}: of K's holders, those in s are set (by token) and the
 *                   tokens in x are gone — a name with many holders logs only what changed.
 *   fence           crc32 + msgpack {reserved}
 *
 * The header checksum is what tells a torn final write from damage: a length is trusted only
 * once its checksum matches, so a record can run past the end of the file only when it really
 * was the last write, cut short.
 */

/** A holder as the log stores it. The log owns this format; the server maps the table's state to it. */
export interface LoggedHolder {
  token: string
  fence: number
  owner: string
  leaseMs: number
  /** Wall-clock ms of the grant (display only). */
  since: number
  attempt?: string
  /** A shared grant (of a lock that is held shared). */
  shared?: boolean
  /** The name's limit when it is a semaphore. */
  limit?: number
}

/** What a snapshot reads from the lock table: every held lock (lazily, a slice at a time) and the fencing counter. */
export interface SnapshotSource {
  /** The held locks; the iterator is read across turns of the event loop while the table changes. */
  locks(): Iterator<{key: string; holders: LoggedHolder[]}>
  fence(): number
}

export interface LogRecord {
  key: string
  /** Every holder of the key now; empty: it is free. */
  holders: LoggedHolder[]
  /** The tokens of the grants that changed; given, a name with several holders logs only those. */
  changed?: string[]
  fence: number
}

/** A name's recovered holders: its one holder itself (most names: no array around it), or several in grant order. */
export type RecoveredHolders<R = LoggedHolder> = R | R[]

/**
 * A name's holders as an array, from what recovery (and the lock table) keep for it: its one
 * holder itself, or the array of several (empty: none). For reading: a single holder gets a new
 * array, an array is returned as it is.
 */
export function holdersOf<H>(value: H | H[] | undefined): H[] {
  if (value === undefined) return []
  return Array.isArray(value) ? value : [value]
}

/**
 * Turns each holder read from the files into what the recovered state keeps (R). The default
 * keeps the decoded object. lockd's lock table gives one that writes each holder into its own
 * columns and keeps the slot number (LockTable.restorer), so that a million decoded objects die
 * young and no second map of a million names is built after the first.
 */
export interface Restorer<R> {
  restore(key: string, logged: LoggedHolder): R
  /** What replaying a record of a name with several holders needs of each. */
  tokenOf(restored: R): string
  fenceOf(restored: R): number
  /** A restored holder that a later record released or replaced. */
  drop(restored: R): void
}

export const KEEP_DECODED: Restorer<LoggedHolder> = Object.freeze({
  restore: (_key: string, logged: LoggedHolder) => logged,
  tokenOf: (holder: LoggedHolder) => holder.token,
  fenceOf: (holder: LoggedHolder) => holder.fence,
  drop: () => {},
})

export interface RecoveredState<R = LoggedHolder> {
  fence: number
  holders: Map<string, RecoveredHolders<R>>
  /** What recovery had to do that an operator should know about. */
  notes: string[]
  restorer: Restorer<R>
}

/** The state on disk cannot be trusted; lockd refuses to start rather than forget a grant. */
export class LogCorruptError extends Error {
  readonly exitCode = 1
}

export const WAL_MAGIC = Buffer.from('lockwal2', 'latin1')
export const SNAPSHOT_MAGIC = Buffer.from('locksnp2', 'latin1')
const RECORD_HEADER = 12
/** Header of the logs written before the format was versioned (no magic, no header checksum). */
const LEGACY_RECORD_HEADER = 8
/**
 * Fences are reserved this many at a time: one small synchronous write per block, and after a
 * restart fences continue from the reserved mark (a gap of at most this many), which is above
 * anything that can have been handed out, whatever happened to the log's tail.
 */
export const FENCE_BLOCK = 10_000
export const MOVE_ASIDE = 'Inspect it, or start lockd on it once with --forget-all-locks to start empty (every lock is then forgotten; fences go on above the old ones).'
export const packr = new Packr({useRecords: false, mapsAsObjects: true})
/**
 * Snapshots use msgpack records (msgpackr's extension: each object shape is written once, then
 * only values): a million locks take 67 MB instead of 114 and decode in 0.9 s instead of 1.2.
 * The plain reader above reads both forms, so snapshots of either kind load.
 */
export const snapshotPackr = new Packr({useRecords: true, mapsAsObjects: true})

/**
 * A file of the data directory, whole. Node's read errors do not name the file (a directory where
 * the file belongs gives a bare EISDIR): the error is given its path, for the one-line refusal.
 */
export function readWhole(path: string): Buffer {
  try {
    return readFileSync(path)
  } catch (error) {
    const failure = error as NodeJS.ErrnoException
    failure.path ??= path
    throw failure
  }
}

/** A record or snapshot frame: u32 length, u32 crc32(body), u32 crc32(the first 8 bytes), body. */
export function frame(body: Buffer): Buffer {
  const framed = Buffer.allocUnsafe(RECORD_HEADER + body.length)
  framed.writeUInt32BE(body.length, 0)
  framed.writeUInt32BE(crc32(body), 4)
  framed.writeUInt32BE(headerCrc(framed, 0), 8)
  body.copy(framed, RECORD_HEADER)
  return framed
}

/**
 * Load a snapshot into `state` and return the generation of the log that follows it. A snapshot
 * was complete and synced before it was named: any damage in it is refused.
 */
export function readSnapshot<R>(path: string, state: RecoveredState<R>): number {
  const data = readWhole(path)
  const refuse = (why: string) => new LogCorruptError(`${path} is corrupt (${why}); refusing to start rather than forget locks. ${MOVE_ASIDE}`)
  const load = (locks: unknown) => {
    if (!Array.isArray(locks)) throw refuse('not a snapshot')
    for (const entry of locks as SnapshotEntry[]) {
      const h = entry?.holders ?? entry?.holder
      if (typeof entry?.key !== 'string' || !isHolderField(h)) throw refuse('not a snapshot')
      replace(state, entry.key, keptHolders(state, entry.key, h))
    }
  }
  if (!data.subarray(0, SNAPSHOT_MAGIC.length).equals(SNAPSHOT_MAGIC)) {
    // The format written before snapshots were sliced: one checksummed document.
    const snapshot = readChecked(path) as {gen: number; fence: number; locks: SnapshotEntry[]}
    if (!Number.isSafeInteger(snapshot?.gen) || !Number.isSafeInteger(snapshot.fence)) throw refuse('not a snapshot')
    load(snapshot.locks)
    state.fence = Math.max(state.fence, snapshot.fence)
    return snapshot.gen
  }
  let offset = SNAPSHOT_MAGIC.length
  let count = 0
  while (offset < data.length) {
    if (data.length - offset < RECORD_HEADER || headerCrc(data, offset) !== data.readUInt32BE(offset + 8)) throw refuse(`bad frame header at byte ${offset}`)
    const length = data.readUInt32BE(offset)
    const body = data.subarray(offset + RECORD_HEADER, offset + RECORD_HEADER + length)
    if (body.length !== length || crc32(body) !== data.readUInt32BE(offset + 4)) throw refuse(`bad frame at byte ${offset}`)
    let value: {locks?: unknown; gen?: unknown; fence?: unknown; count?: unknown}
    try {
      value = snapshotPackr.unpack(body) as typeof value
    } catch {
      throw refuse(`undecodable frame at byte ${offset}`)
    }
    offset += RECORD_HEADER + length
    if (value?.locks !== undefined) {
      load(value.locks)
      count += (value.locks as unknown[]).length
      continue
    }
    // The end: the generation of the log that follows, the fence, and how many locks came before.
    const {gen, fence} = value ?? {}
    if (!Number.isSafeInteger(gen) || !Number.isSafeInteger(fence) || value.count !== count || offset !== data.length) throw refuse('bad end')
    state.fence = Math.max(state.fence, fence as number)
    return gen as number
  }
  throw refuse('it has no end')
}

/** The msgpack value of a file written by writeChecked (crc32 + msgpack), or why it is refused. */
export function readChecked(path: string): unknown {
  const data = readWhole(path)
  if (data.length < 5 || crc32(data.subarray(4)) !== data.readUInt32BE(0)) {
    throw new LogCorruptError(`${path} is corrupt (checksum mismatch); refusing to start rather than forget locks or repeat a fence. ${MOVE_ASIDE}`)
  }
  try {
    return packr.unpack(data.subarray(4))
  } catch {
    throw new LogCorruptError(`${path} is corrupt (cannot be decoded); refusing to start. ${MOVE_ASIDE}`)
  }
}

interface Replayed {
  /** Length of the intact prefix. */
  intact: number
  /** Why the bytes after it were dropped (when there are any). */
  torn: string
}

/**
 * Apply every intact record. Only a final write cut short is dropped: a record header that ends
 * past the end of the file, a checksummed record whose body does, or zeros from a record's start
 * to the end of the file (blocks allocated, never written). Anything else is corruption.
 */
export function replay<R>(data: Buffer, path: string, state: RecoveredState<R>): Replayed {
  const torn = 'a final write cut short by a crash (it was never acknowledged)'
  // A write cut short can leave zeros (allocated, never written) from somewhere inside the
  // last record to the end of the file; damage elsewhere is refused.
  const zerosFrom = trailingZerosFrom(data)
  let offset = WAL_MAGIC.length
  while (offset < data.length) {
    const rest = data.length - offset
    if (zerosFrom <= offset) return {intact: offset, torn: 'zeros after the last record (blocks allocated by a crash, never written)'}
    if (rest < RECORD_HEADER) return {intact: offset, torn}
    const length = data.readUInt32BE(offset)
    const bodyCrc = data.readUInt32BE(offset + 4)
    if (headerCrc(data, offset) !== data.readUInt32BE(offset + 8)) {
      if (zerosFrom <= offset + RECORD_HEADER) return {intact: offset, torn}
      throw corrupt(path, offset, 'its header fails its checksum')
    }
    if (RECORD_HEADER + length > rest) return {intact: offset, torn}
    const body = data.subarray(offset + RECORD_HEADER, offset + RECORD_HEADER + length)
    if (crc32(body) !== bodyCrc) {
      if (RECORD_HEADER + length === rest && zerosFrom < data.length) return {intact: offset, torn}
      throw corrupt(path, offset, 'its body fails its checksum')
    }
    apply(decode(body, path, offset), state)
    offset += RECORD_HEADER + length
  }
  return {intact: offset, torn}
}

/** CRC-32 (zlib's) of the 8 bytes at `offset`: a record header's, read a million times in a restart without a Buffer view each. */
export function headerCrc(data: Buffer, offset: number): number {
  let crc = 0xffffffff
  for (let i = offset; i < offset + 8; i++) crc = CRC_TABLE[(crc ^ data[i]) & 0xff] ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

const CRC_TABLE = Uint32Array.from({length: 256}, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

/**
 * The unversioned format (u32 length, u32 crc32(body)): its lengths carry no checksum, so a
 * record that runs past the end of the file is taken for a torn write only as before. Read once,
 * then rewritten as a snapshot in the current format.
 */
export function replayLegacy<R>(data: Buffer, path: string, state: RecoveredState<R>): Replayed {
  const torn = 'a final write cut short by a crash (it was never acknowledged)'
  let offset = 0
  while (offset < data.length) {
    const rest = data.length - offset
    if (isZero(data, offset)) return {intact: offset, torn}
    if (rest < LEGACY_RECORD_HEADER) return {intact: offset, torn}
    const length = data.readUInt32BE(offset)
    if (LEGACY_RECORD_HEADER + length > rest) return {intact: offset, torn}
    const body = data.subarray(offset + LEGACY_RECORD_HEADER, offset + LEGACY_RECORD_HEADER + length)
    if (length === 0 || crc32(body) !== data.readUInt32BE(offset + 4)) throw corrupt(path, offset, 'it fails its checksum')
    apply(decode(body, path, offset), state)
    offset += LEGACY_RECORD_HEADER + length
  }
  return {intact: offset, torn}
}

/** Absolute (`h`) or by token (`s` set, `x` gone); see the file comment. */
interface DecodedRecord {
  k: string
  h?: LoggedHolder | LoggedHolder[] | null
  s?: LoggedHolder[]
  x?: string[]
  f: number
}

/**
 * The record for one key: by token when the name has or had several holders (a semaphore's or
 * shared lock's: only what changed is written), else absolute (a plain lock's, or a free key).
 */
export function encode(record: LogRecord): DecodedRecord {
  const {key, holders, changed, fence} = record
  const several = holders.length > 1 || holders.some((h) => h.shared || h.limit !== undefined)
  if (!changed || !several) return {k: key, h: onDisk(holders), f: fence}
  const now = new Map(holders.map((h) => [h.token, h]))
  const set: LoggedHolder[] = []
  const gone: string[] = []
  for (const token of changed) {
    const holder = now.get(token)
    if (holder) set.push(holder)
    else gone.push(token)
  }
  return {k: key, s: set, x: gone, f: fence}
}

/** A snapshot's entry: `holder` as written before semaphores (and still for a plain lock), or `holders`. */
export interface SnapshotEntry {
  key: string
  holder?: LoggedHolder
  holders?: LoggedHolder[]
}

const isHolder = (h: unknown): h is LoggedHolder => typeof h === 'object' && h !== null && typeof (h as LoggedHolder).token === 'string' && Number.isSafeInteger((h as LoggedHolder).fence)

/** A record's `h` or a snapshot entry's holder(s): null (free), one holder, or an array of them. */
const isHolderField = (h: unknown): h is LoggedHolder | LoggedHolder[] | null => h === null || isHolder(h) || (Array.isArray(h) && h.every(isHolder))

/**
 * What `h` is written as: null (free), the holder itself for a plain lock (the format of
 * lockd before semaphores, which can still read it), else the array.
 */
export function onDisk(holders: LoggedHolder[]): LoggedHolder | LoggedHolder[] | null {
  if (holders.length === 0) return null
  if (holders.length === 1 && !holders[0].shared && holders[0].limit === undefined) return holders[0]
  return holders
}

/** A record: its holders whole (`h`), or by token (`s` and `x`, no `h`). */
function decode(body: Buffer, path: string, offset: number): DecodedRecord {
  let record: DecodedRecord
  try {
    record = packr.unpack(body) as DecodedRecord
  } catch {
    throw corrupt(path, offset, 'it cannot be decoded')
  }
  const byToken = record?.h === undefined && Array.isArray(record?.s) && record.s.every(isHolder) && Array.isArray(record.x) && record.x.every((t) => typeof t === 'string')
  if (typeof record?.k !== 'string' || !Number.isSafeInteger(record.f) || (!byToken && !isHolderField(record?.h))) throw corrupt(path, offset, 'it is not a lock record')
  return record
}

function apply<R>(record: DecodedRecord, state: RecoveredState<R>): void {
  const {restorer} = state
  if (record.h === undefined) {
    const gone = new Set([...record.x!, ...record.s!.map((h) => h.token)])
    const holders: R[] = []
    for (const restored of holdersOf(state.holders.get(record.k))) {
      if (gone.has(restorer.tokenOf(restored))) restorer.drop(restored)
      else holders.push(restored)
    }
    for (const logged of record.s!) holders.push(restorer.restore(record.k, logged))
    // Grant order is fence order: recovery keeps the oldest holder first.
    holders.sort((a, b) => restorer.fenceOf(a) - restorer.fenceOf(b))
    if (holders.length === 0) state.holders.delete(record.k)
    else state.holders.set(record.k, kept(holders))
  } else {
    replace(state, record.k, keptHolders(state, record.k, record.h))
  }
  state.fence = Math.max(state.fence, record.f)
}

/** The name's holders are now `value` (undefined: it is free); those it had before are dropped. */
function replace<R>(state: RecoveredState<R>, key: string, value: RecoveredHolders<R> | undefined): void {
  for (const before of holdersOf(state.holders.get(key))) state.restorer.drop(before)
  if (value !== undefined) state.holders.set(key, value)
  else state.holders.delete(key)
}

/**
 * A name's holder field as the state keeps it, each holder restored: the one holder itself (a
 * plain lock, most names: no array around it), the array of several, or undefined (free).
 */
function keptHolders<R>(state: RecoveredState<R>, key: string, h: LoggedHolder | LoggedHolder[] | null): RecoveredHolders<R> | undefined {
  if (h === null) return undefined
  if (!Array.isArray(h)) return state.restorer.restore(key, h)
  return h.length === 0 ? undefined : kept(h.map((logged) => state.restorer.restore(key, logged)))
}

/** What the state keeps for a name with these holders (at least one): the one holder itself, or the array. */
function kept<R>(holders: R[]): RecoveredHolders<R> {
  return holders.length === 1 ? holders[0] : holders
}

export function corrupt(path: string, offset: number, why: string): LogCorruptError {
  return new LogCorruptError(`${path}: corrupt at byte ${offset} (${why}); refusing to start rather than forget a grant. ${MOVE_ASIDE}`)
}

/** Where the run of zero bytes that ends the file starts (data.length when the last byte is not zero). */
function trailingZerosFrom(data: Buffer): number {
  let at = data.length
  while (at > 0 && data[at - 1] === 0) at--
  return at
}

function isZero(data: Buffer, from: number): boolean {
  for (let i = from; i < data.length; i++) if (data[i] !== 0) return false
  return true
}
