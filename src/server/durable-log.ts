import {close, closeSync, existsSync, fdatasyncSync, fsyncSync, ftruncateSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'
import {crc32} from 'node:zlib'
import {Packr} from 'msgpackr/pack'
import {makeDirectories} from '../util/fs.js'

/**
 * Durable state of lockd: an append-only log of "key K now has holders H... (or none)" records,
 * bounded by snapshots, plus a fence high-water mark. The format and the recovery rules are
 * specified in docs/recovery.md; this file implements them.
 *
 * Records are absolute states, not deltas, so replaying a record that a snapshot already covers
 * changes nothing: that is what lets a snapshot be taken at any moment between batches.
 *
 * Files in the data dir:
 *   fence           crc32 + msgpack {reserved}: no fence above `reserved` has ever been used
 *   snapshot        crc32 + msgpack {gen, fence, locks}, with records (written to snapshot.tmp, fsynced, renamed)
 *   wal-<gen>.log   8-byte magic, then records:
 *                   u32 length, u32 crc32(body), u32 crc32(first 8 header bytes), then
 *                   msgpack {k, h, f}: key K's holders are exactly h (null: free; one holder: a
 *                   plain lock's, as before semaphores; an array), or
 *                   msgpack {k, s, x, f}: of K's holders, those in s are set (by token) and the
 *                   tokens in x are gone — a name with many holders logs only what changed.
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

/** What a snapshot stores: the fencing counter and every held lock. */
export interface LoggedSnapshot {
  fence: number
  locks: {key: string; holders: LoggedHolder[]}[]
}

export interface LogRecord {
  key: string
  /** Every holder of the key now; empty: it is free. */
  holders: LoggedHolder[]
  /** The tokens of the grants that changed; given, a name with several holders logs only those. */
  changed?: string[]
  fence: number
}

export interface RecoveredState {
  fence: number
  holders: Map<string, LoggedHolder[]>
  /** What recovery had to do that an operator should know about. */
  notes: string[]
}

/** The state on disk cannot be trusted; lockd refuses to start rather than forget a grant. */
export class LogCorruptError extends Error {
  readonly exitCode = 1
}

export const WAL_MAGIC = Buffer.from('lockwal2', 'latin1')
const RECORD_HEADER = 12
/** Header of the logs written before the format was versioned (no magic, no header checksum). */
const LEGACY_RECORD_HEADER = 8
/**
 * Fences are reserved this many at a time: one small synchronous write per block, and after a
 * restart fences continue from the reserved mark (a gap of at most this many), which is above
 * anything that can have been handed out, whatever happened to the log's tail.
 */
export const FENCE_BLOCK = 10_000
const MOVE_ASIDE = 'Inspect it, or move the data directory aside to start empty (every lock is then forgotten).'
const closeAsync = promisify(close)
const packr = new Packr({useRecords: false, mapsAsObjects: true})
/**
 * Snapshots use msgpack records (msgpackr's extension: each object shape is written once, then
 * only values): a million locks take 67 MB instead of 114 and decode in 0.9 s instead of 1.2.
 * The plain reader above reads both forms, so snapshots of either kind load.
 */
const snapshotPackr = new Packr({useRecords: true, mapsAsObjects: true})

export interface DurableLogOptions {
  /** Take a snapshot and start a new log once the log is this big. */
  snapshotBytes?: number
  /** Told how long each group commit's write and fdatasync took (metrics). */
  onFlush?: (seconds: number) => void
}

export class DurableLog {
  private pending: Buffer[] = []
  private pendingBytes = 0
  private waiters: (() => void)[] = []
  private flushing: Promise<void> | null = null
  private failure: Error | null = null
  private size: number
  private closed = false

  private constructor(
    private readonly dir: string,
    private gen: number,
    private fd: number,
    size: number,
    private reservedFence: number,
    private readonly snapshotSource: () => LoggedSnapshot,
    private readonly snapshotBytes: number,
    private readonly onFlush?: (seconds: number) => void,
  ) {
    this.size = size
  }

  /** Bytes in the current log file. */
  get bytes(): number {
    return this.size
  }

  /** Read the state on disk, repair a torn tail, reserve fences, and open the log for appending. */
  static async open(dir: string, snapshotSource: () => LoggedSnapshot, options: DurableLogOptions = {}): Promise<{log: DurableLog; state: RecoveredState}> {
    makeDirectories(dir)
    const state: RecoveredState = {fence: 0, holders: new Map(), notes: []}
    let gen = 0
    const snapshotPath = join(dir, 'snapshot')
    const fencePath = join(dir, 'fence')
    const hadFenceFile = existsSync(fencePath)
    const reserved = hadFenceFile ? (readChecked(fencePath) as {reserved?: unknown}).reserved : 0
    if (typeof reserved !== 'number' || !Number.isSafeInteger(reserved) || reserved < 0) {
      throw new LogCorruptError(`${fencePath} is corrupt (no fence mark in it); refusing to start rather than repeat a fence. ${MOVE_ASIDE}`)
    }
    if (existsSync(snapshotPath)) {
      const snapshot = readChecked(snapshotPath) as {gen: number; fence: number; locks: SnapshotEntry[]}
      if (!Number.isSafeInteger(snapshot?.gen) || !Number.isSafeInteger(snapshot.fence) || !Array.isArray(snapshot.locks)) {
        throw new LogCorruptError(`${snapshotPath} is corrupt (not a snapshot); refusing to start rather than forget locks. ${MOVE_ASIDE}`)
      }
      gen = snapshot.gen
      state.fence = snapshot.fence
      for (const entry of snapshot.locks) {
        const holders = decodeHolders(entry?.holders ?? entry?.holder)
        if (typeof entry?.key !== 'string' || !holders) throw new LogCorruptError(`${snapshotPath} is corrupt (not a snapshot); refusing to start rather than forget locks. ${MOVE_ASIDE}`)
        if (holders.length > 0) state.holders.set(entry.key, holders)
      }
    }
    const walPath = join(dir, `wal-${gen}.log`)
    const data = existsSync(walPath) ? readFileSync(walPath) : null
    const hasSnapshot = existsSync(snapshotPath)
    // No records yet: empty, or its magic cut short by a crash as the file was made.
    const unstarted = data !== null && data.length < WAL_MAGIC.length && WAL_MAGIC.subarray(0, data.length).equals(data)
    const versioned = data !== null && data.subarray(0, WAL_MAGIC.length).equals(WAL_MAGIC)
    // The unversioned format began with a record's u32 length, always under 64 KiB; anything
    // else in place of the magic is damage, not an old log.
    const legacy = data !== null && !unstarted && !versioned && data[0] === 0 && data[1] === 0
    if (data !== null && !unstarted && !versioned && !legacy) throw corrupt(walPath, 0, "the file does not start with the log format's magic")
    if (data === null && (hadFenceFile || hasSnapshot)) {
      // Every start and every snapshot creates the log before anything names it: gone is damage.
      throw new LogCorruptError(`${walPath} is missing; refusing to start rather than forget grants. ${MOVE_ASIDE}`)
    }
    if (!hadFenceFile && versioned && (data.length > WAL_MAGIC.length || hasSnapshot)) {
      // The mark is written before the first record: without it, a lost tail could repeat fences.
      throw new LogCorruptError(`${fencePath} is missing; refusing to start rather than repeat a fence. ${MOVE_ASIDE}`)
    }
    let size = 0
    if (data !== null && !unstarted) {
      const {intact, torn} = legacy ? replayLegacy(data, walPath, state) : replay(data, walPath, state)
      if (intact < data.length) {
        state.notes.push(`${walPath}: dropped ${data.length - intact} bytes at its end: ${torn}`)
        const fd = openSync(walPath, 'r+')
        try {
          // Truncate and sync before appending, so the repair itself is durable.
          ftruncateSync(fd, intact)
          fsyncSync(fd)
        } finally {
          closeSync(fd)
        }
      }
      size = intact
    }
    // Fences at or under the mark may have been handed out in records that are now lost.
    if (reserved > state.fence) state.fence = reserved
    // Logs of older generations are leftovers of an interrupted snapshot switch.
    for (const name of readdirSync(dir)) {
      const match = /^wal-(\d+)\.log$/.exec(name)
      if (match && Number(match[1]) !== gen) unlinkSync(join(dir, name))
    }
    if (size < WAL_MAGIC.length) {
      // A new (or empty) log starts with the magic, durably, before any record.
      writeNewLog(walPath)
      size = WAL_MAGIC.length
    }
    const fd = openSync(walPath, 'a')
    fsyncDir(dir)
    const log = new DurableLog(dir, gen, fd, size, 0, snapshotSource, options.snapshotBytes ?? 16 * 1024 * 1024, options.onFlush)
    log.reserveFences(state.fence)
    if (legacy) {
      // Rewrite the old format as a snapshot at once: every later write is in the new format.
      state.notes.push(`${walPath}: converted from the unversioned log format`)
      log.pendingSnapshot = true
    }
    return {log, state}
  }

  /** Set when the state must be rewritten as a snapshot once the caller has restored the table. */
  private pendingSnapshot = false

  /** Called once the table holds the recovered state: finishes a format conversion. */
  recovered(): void {
    if (this.pendingSnapshot) {
      this.pendingSnapshot = false
      this.takeSnapshot()
    }
  }

  /**
   * Queue records for the next commit. `fence` is the fencing counter after them: before any
   * fence above the durable mark can leave the server (acks wait for the commit that follows),
   * a new mark is written, synchronously, a whole block ahead.
   */
  append(records: LogRecord[], fence: number): void {
    if (fence > this.reservedFence - FENCE_BLOCK / 2) this.reserveFences(fence)
    for (const record of records) {
      const body = packr.pack(encode(record))
      const frame = Buffer.allocUnsafe(RECORD_HEADER + body.length)
      frame.writeUInt32BE(body.length, 0)
      frame.writeUInt32BE(crc32(body), 4)
      frame.writeUInt32BE(crc32(frame.subarray(0, 8)), 8)
      body.copy(frame, RECORD_HEADER)
      this.pending.push(frame)
      this.pendingBytes += frame.length
    }
  }

  /** The fence mark on disk: no fence above it has been used. */
  get reserved(): number {
    return this.reservedFence
  }

  private reserveFences(fence: number): void {
    const reserved = fence + FENCE_BLOCK
    writeChecked(this.dir, 'fence', packr, {reserved})
    this.reservedFence = reserved
  }

  /**
   * Resolves once everything appended so far is on disk. Callers that arrive while a write is
   * in flight share the next one (group commit): one fdatasync for many acknowledgements.
   */
  commit(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    if (this.pendingBytes === 0 && !this.flushing) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      this.waiters.push(() => (this.failure ? reject(this.failure) : resolve()))
      if (!this.flushing) this.flushing = this.flushLoop()
    })
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.commit().catch(() => {})
    await this.flushing
    this.closed = true
    await closeAsync(this.fd)
  }

  private async flushLoop(): Promise<void> {
    // Let the current tick finish so requests from other connections join this batch.
    await new Promise((resolve) => setImmediate(resolve))
    try {
      while (this.waiters.length > 0) {
        const batch = Buffer.concat(this.pending, this.pendingBytes)
        const waiters = this.waiters
        this.pending = []
        this.pendingBytes = 0
        this.waiters = []
        if (batch.length > 0) {
          const started = performance.now()
          // In this thread, as Redis's appendfsync always does: the thread pool's two round trips
          // cost more than the write and the flush themselves (bench: durable pair p50 ~0.72x,
          // hand-off ~0.70x, pairs/s ~1.08x of the async calls, same run). The price: a disk
          // that stalls stalls lockd (docs/recovery.md).
          writeSync(this.fd, batch, 0, batch.length, null)
          fdatasyncSync(this.fd)
          this.onFlush?.((performance.now() - started) / 1000)
          this.size += batch.length
        }
        if (this.size >= this.snapshotBytes && this.pendingBytes === 0) this.takeSnapshot()
        for (const done of waiters) done()
      }
    } catch (error) {
      // A log that cannot be written must not acknowledge anything again: fail every waiter.
      this.failure = new Error(`cannot write the lock log in ${this.dir}: ${(error as Error).message}`)
      for (const done of this.waiters.splice(0)) done()
    } finally {
      this.flushing = null
    }
  }

  /**
   * Snapshot the table and switch to a fresh log. The new log file exists before the snapshot
   * names its generation, and the old log is removed only after the rename is durable, so a
   * crash at any step leaves a readable state.
   */
  private takeSnapshot(): void {
    const nextGen = this.gen + 1
    const nextPath = join(this.dir, `wal-${nextGen}.log`)
    writeNewLog(nextPath)
    const snapshot = this.snapshotSource()
    writeChecked(this.dir, 'snapshot', snapshotPackr, {
      gen: nextGen,
      fence: snapshot.fence,
      locks: snapshot.locks.map(({key, holders}) => {
        const h = onDisk(holders)
        return Array.isArray(h) ? {key, holders: h} : {key, holder: h}
      }),
    })
    const oldFd = this.fd
    const oldPath = join(this.dir, `wal-${this.gen}.log`)
    this.gen = nextGen
    this.size = WAL_MAGIC.length
    this.fd = openSync(nextPath, 'a')
    closeSync(oldFd)
    unlinkSync(oldPath)
  }
}

/** Write these bytes as the whole file, and fsync it. */
function writeFileDurably(path: string, ...parts: Uint8Array[]): void {
  const fd = openSync(path, 'w')
  try {
    for (const part of parts) writeSync(fd, part)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/** Create a log file holding just the magic, durably. */
function writeNewLog(path: string): void {
  writeFileDurably(path, WAL_MAGIC)
}

/** Write crc32 + msgpack(value) to dir/name atomically: a temporary file, fsync, rename, fsync of the directory. */
function writeChecked(dir: string, name: string, packer: Packr, value: unknown): void {
  const body = packer.pack(value)
  const header = Buffer.allocUnsafe(4)
  header.writeUInt32BE(crc32(body), 0)
  const tmp = join(dir, `${name}.tmp`)
  writeFileDurably(tmp, header, body)
  renameSync(tmp, join(dir, name))
  fsyncDir(dir)
}

function readChecked(path: string): unknown {
  const data = readFileSync(path)
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
function replay(data: Buffer, path: string, state: RecoveredState): Replayed {
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
    if (crc32(data.subarray(offset, offset + 8)) !== data.readUInt32BE(offset + 8)) {
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

/**
 * The unversioned format (u32 length, u32 crc32(body)): its lengths carry no checksum, so a
 * record that runs past the end of the file is taken for a torn write only as before. Read once,
 * then rewritten as a snapshot in the current format.
 */
function replayLegacy(data: Buffer, path: string, state: RecoveredState): Replayed {
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
function encode(record: LogRecord): DecodedRecord {
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
interface SnapshotEntry {
  key: string
  holder?: LoggedHolder
  holders?: LoggedHolder[]
}

const isHolder = (h: unknown): h is LoggedHolder => typeof h === 'object' && h !== null && typeof (h as LoggedHolder).token === 'string' && Number.isSafeInteger((h as LoggedHolder).fence)

/** The holders a record or snapshot entry names, or null when it is not a valid holder field. */
function decodeHolders(h: unknown): LoggedHolder[] | null {
  if (h === null) return []
  if (Array.isArray(h)) return h.every(isHolder) ? h : null
  return isHolder(h) ? [h] : null
}

/**
 * What `h` is written as: null (free), the holder itself for a plain lock (the format of
 * lockd before semaphores, which can still read it), else the array.
 */
function onDisk(holders: LoggedHolder[]): LoggedHolder | LoggedHolder[] | null {
  if (holders.length === 0) return null
  if (holders.length === 1 && !holders[0].shared && holders[0].limit === undefined) return holders[0]
  return holders
}

function decode(body: Buffer, path: string, offset: number): DecodedRecord {
  let record: DecodedRecord
  try {
    record = packr.unpack(body) as DecodedRecord
  } catch {
    throw corrupt(path, offset, 'it cannot be decoded')
  }
  const byToken = record?.h === undefined && Array.isArray(record?.s) && record.s.every(isHolder) && Array.isArray(record.x) && record.x.every((t) => typeof t === 'string')
  if (typeof record?.k !== 'string' || !Number.isSafeInteger(record.f) || (!byToken && decodeHolders(record.h) === null)) throw corrupt(path, offset, 'it is not a lock record')
  return record
}

function apply(record: DecodedRecord, state: RecoveredState): void {
  let holders: LoggedHolder[]
  if (record.h === undefined) {
    const gone = new Set([...record.x!, ...record.s!.map((h) => h.token)])
    holders = [...(state.holders.get(record.k) ?? []).filter((h) => !gone.has(h.token)), ...record.s!]
    // Grant order is fence order: recovery keeps the oldest holder first.
    holders.sort((a, b) => a.fence - b.fence)
  } else {
    holders = decodeHolders(record.h)!
  }
  if (holders.length > 0) state.holders.set(record.k, holders)
  else state.holders.delete(record.k)
  state.fence = Math.max(state.fence, record.f)
}

function corrupt(path: string, offset: number, why: string): LogCorruptError {
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

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r')
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}
