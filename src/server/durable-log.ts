import {close, closeSync, existsSync, fdatasyncSync, fsync, fsyncSync, ftruncateSync, openSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeSync} from 'node:fs'
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
 * Records are states, not deltas (a key's holders, or a token's grant), so replaying a record
 * that a snapshot already covers changes nothing: that is what lets a snapshot be written a slice
 * at a time while lockd goes on (each lock as it is when its slice is written), with the log it
 * started replayed over it.
 *
 * Files in the data dir:
 *   fence           crc32 + msgpack {reserved}: no fence above `reserved` has ever been used
 *   snapshot        8-byte magic, then frames as the log's: msgpack {locks} slices, with msgpack
 *                   records, and last {gen, fence, count} (written to snapshot.tmp, fsynced,
 *                   renamed); or, as written before, crc32 + msgpack {gen, fence, locks}
 *   wal-<gen>.log   from the snapshot's gen up, one per generation, replayed in order (a
 *                   snapshot being written has switched to the next); 8-byte magic, then records:
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
  /** Start a snapshot once the log is this big (or as big as the last snapshot, if that is bigger). */
  snapshotBytes?: number
  /** Locks written per slice of a snapshot: the longest a snapshot keeps lockd from other work. */
  snapshotSlice?: number
  /** Told how long each group commit's write and fdatasync took (metrics). */
  onFlush?: (seconds: number) => void
}

export class DurableLog {
  private pending: Buffer[] = []
  private pendingBytes = 0
  private waiters: {durable: boolean; done: () => void}[] = []
  /** Records written to the current log since its last fdatasync. */
  private unsynced = false
  private flushing: Promise<void> | null = null
  private failure: Error | null = null
  private size: number
  private closed = false
  /** The snapshot being written, if one is. */
  private snapshotRun: SnapshotRun | null = null
  /** Log size at which the next snapshot starts: at least the last snapshot's size, so that snapshots cost O(1) per record. */
  private nextSnapshotAt: number
  private readonly snapshotSlice: number

  private constructor(
    private readonly dir: string,
    private gen: number,
    private fd: number,
    size: number,
    private reservedFence: number,
    private readonly snapshotSource: SnapshotSource,
    private readonly snapshotBytes: number,
    options: DurableLogOptions,
  ) {
    this.size = size
    this.nextSnapshotAt = snapshotBytes
    this.snapshotSlice = options.snapshotSlice ?? 2000
    this.onFlush = options.onFlush
  }

  private readonly onFlush?: (seconds: number) => void

  /** Bytes in the current log file. */
  get bytes(): number {
    return this.size
  }

  /** Read the state on disk, repair a torn tail, reserve fences, and open the log for appending. */
  static async open(dir: string, snapshotSource: SnapshotSource, options: DurableLogOptions = {}): Promise<{log: DurableLog; state: RecoveredState}> {
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
    const hasSnapshot = existsSync(snapshotPath)
    if (hasSnapshot) gen = readSnapshot(snapshotPath, state)
    // The logs to replay: the snapshot's generation and every later one, without a gap (a
    // snapshot being written had switched to the next log; it was not finished).
    const gens = readdirSync(dir)
      .map((name) => /^wal-(\d+)\.log$/.exec(name))
      .filter((match) => match !== null)
      .map((match) => Number(match[1]))
      .sort((a, b) => a - b)
    const last = Math.max(gen, ...gens)
    let size = 0
    let legacy = false
    for (let g = gen; g <= last; g++) {
      const walPath = join(dir, `wal-${g}.log`)
      const data = existsSync(walPath) ? readFileSync(walPath) : null
      const isLast = g === last
      // No records yet: empty, or its magic cut short by a crash as the file was made.
      const unstarted = data !== null && data.length < WAL_MAGIC.length && WAL_MAGIC.subarray(0, data.length).equals(data)
      const versioned = data !== null && data.subarray(0, WAL_MAGIC.length).equals(WAL_MAGIC)
      // The unversioned format began with a record's u32 length, always under 64 KiB; anything
      // else in place of the magic is damage, not an old log.
      const unversioned = data !== null && !unstarted && !versioned && data[0] === 0 && data[1] === 0
      if (data !== null && !unstarted && !versioned && !unversioned) throw corrupt(walPath, 0, "the file does not start with the log format's magic")
      if (data === null && (hadFenceFile || hasSnapshot || !isLast)) {
        // Every start and every snapshot creates the log before anything names it: gone is damage.
        throw new LogCorruptError(`${walPath} is missing; refusing to start rather than forget grants. ${MOVE_ASIDE}`)
      }
      if (!hadFenceFile && versioned && (data.length > WAL_MAGIC.length || hasSnapshot)) {
        // The mark is written before the first record: without it, a lost tail could repeat fences.
        throw new LogCorruptError(`${fencePath} is missing; refusing to start rather than repeat a fence. ${MOVE_ASIDE}`)
      }
      if (data === null || unstarted) {
        if (!isLast) throw corrupt(walPath, 0, 'a log followed by another one has no records header')
        continue
      }
      legacy ||= unversioned
      const {intact, torn} = unversioned ? replayLegacy(data, walPath, state) : replay(data, walPath, state)
      if (intact < data.length) {
        // Only the last log can end in a write cut short: a log was complete (written and
        // fdatasynced) before the next one was started.
        if (!isLast) throw corrupt(walPath, intact, `${torn}, in a log followed by another one`)
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
      if (isLast) size = intact
    }
    // Fences at or under the mark may have been handed out in records that are now lost.
    if (reserved > state.fence) state.fence = reserved
    // Logs of older generations are leftovers of a snapshot that was named but not yet cleaned
    // up after; a snapshot.tmp is one that was never finished.
    for (const g of gens) if (g < gen) unlinkSync(join(dir, `wal-${g}.log`))
    rmSync(join(dir, 'snapshot.tmp'), {force: true})
    const walPath = join(dir, `wal-${last}.log`)
    if (size < WAL_MAGIC.length) {
      // A new (or empty) log starts with the magic, durably, before any record.
      writeNewLog(walPath)
      size = WAL_MAGIC.length
    }
    const fd = openSync(walPath, 'a')
    fsyncDir(dir)
    const log = new DurableLog(dir, last, fd, size, 0, snapshotSource, options.snapshotBytes ?? 16 * 1024 * 1024, options)
    log.reserveFences(state.fence)
    if (legacy) {
      // Rewrite the old format as a snapshot: every later write is in the new format.
      state.notes.push(`${join(dir, `wal-${gen}.log`)}: converted from the unversioned log format`)
    }
    // Several logs (or the old format) are folded into one snapshot once the table holds the state.
    log.pendingSnapshot = legacy || last > gen
    return {log, state}
  }

  /** Set when the state must be rewritten as a snapshot once the caller has restored the table. */
  private pendingSnapshot = false

  /** Called once the table holds the recovered state: folds several logs (or the old format) into a snapshot. */
  recovered(): void {
    if (this.pendingSnapshot) {
      this.pendingSnapshot = false
      this.startSnapshot()
    }
  }

  /** Whether a snapshot is being written (tests and metrics). */
  get snapshotting(): boolean {
    return this.snapshotRun !== null
  }

  /**
   * Queue records for the next commit. `fence` is the fencing counter after them: before any
   * fence above the durable mark can leave the server (acks wait for the commit that follows),
   * a new mark is written, synchronously, a whole block ahead.
   */
  append(records: LogRecord[], fence: number): void {
    if (fence > this.reservedFence - FENCE_BLOCK / 2) this.reserveFences(fence)
    for (const record of records) {
      const framed = frame(packr.pack(encode(record)))
      this.pending.push(framed)
      this.pendingBytes += framed.length
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
   * Resolves once everything appended so far is on disk (`durable`), or written to the file
   * without waiting for the disk (not `durable`: a batch of releases, which nothing waits for;
   * docs/recovery.md, "What is durable when"). Callers that arrive while a write is in flight
   * share the next one (group commit): one fdatasync for many acknowledgements, and a fdatasync
   * makes every earlier write of the file durable too.
   */
  commit(durable = true): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    if (this.pendingBytes === 0 && !this.flushing && !(durable && this.unsynced)) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({durable, done: () => (this.failure ? reject(this.failure) : resolve())})
      if (!this.flushing) this.flushing = this.flushLoop()
    })
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.commit().catch(() => {})
    await this.flushing
    this.closed = true
    if (this.unsynced) fdatasyncSync(this.fd)
    // An unfinished snapshot is dropped: the logs it would have replaced are all still there.
    if (this.snapshotRun) this.abandonSnapshot(this.snapshotRun)
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
        // In this thread, as Redis's appendfsync always does: the thread pool's two round trips
        // cost more than the write and the flush themselves (bench: durable pair p50 ~0.72x,
        // hand-off ~0.70x, pairs/s ~1.08x of the async calls, same run). The price: a disk
        // that stalls stalls lockd (docs/recovery.md).
        if (batch.length > 0) {
          writeSync(this.fd, batch, 0, batch.length, null)
          this.size += batch.length
          this.unsynced = true
        }
        // Only a batch someone waits on is flushed to the disk: a release's record (answered
        // already) becomes durable with the next grant's fdatasync, which covers every earlier
        // write of the file; a process crash keeps it anyway (the kernel has it).
        if (this.unsynced && waiters.some((w) => w.durable)) {
          const started = performance.now()
          fdatasyncSync(this.fd)
          this.unsynced = false
          this.onFlush?.((performance.now() - started) / 1000)
        }
        if (this.size >= this.nextSnapshotAt && this.pendingBytes === 0 && !this.snapshotRun) this.startSnapshot()
        for (const {done} of waiters) done()
      }
    } catch (error) {
      // A log that cannot be written must not acknowledge anything again: fail every waiter.
      this.failure = new Error(`cannot write the lock log in ${this.dir}: ${(error as Error).message}`)
      for (const {done} of this.waiters.splice(0)) done()
    } finally {
      this.flushing = null
    }
  }

  /**
   * Start a snapshot without stopping lockd (docs/recovery.md, "Snapshots"). First switch to a
   * fresh log, durably named before any record goes in it: every change from now on is in a log
   * this snapshot does not replace. Then write the held locks a slice per turn of the event loop
   * while requests go on. A lock that changes after its slice was written has its record in the
   * new log, and records are states (a key's holders, or a token's grant), so recovery, replaying
   * the new log over the snapshot, ends at the latest state whatever the slice caught. Once the
   * whole snapshot is durable and named, the logs before the switch are removed.
   */
  private startSnapshot(): void {
    // The log being left must be whole on disk: later grants are made durable in the next one
    // only, and recovery takes a torn end only in the last log.
    if (this.unsynced) {
      const started = performance.now()
      fdatasyncSync(this.fd)
      this.unsynced = false
      this.onFlush?.((performance.now() - started) / 1000)
    }
    const gen = this.gen + 1
    const path = join(this.dir, `wal-${gen}.log`)
    writeNewLog(path)
    fsyncDir(this.dir)
    closeSync(this.fd)
    this.fd = openSync(path, 'a')
    this.gen = gen
    this.size = WAL_MAGIC.length
    const tmp = join(this.dir, 'snapshot.tmp')
    const run: SnapshotRun = {gen, tmp, fd: openSync(tmp, 'w'), locks: this.snapshotSource.locks(), count: 0, bytes: 0, state: 'writing'}
    this.snapshotRun = run
    try {
      this.writeToSnapshot(run, SNAPSHOT_MAGIC)
    } catch (error) {
      this.abandonSnapshot(run, error as Error)
      return
    }
    setImmediate(() => this.writeSnapshotSlice(run))
  }

  private writeSnapshotSlice(run: SnapshotRun): void {
    if (run.state !== 'writing') return
    try {
      const locks: SnapshotEntry[] = []
      let done = false
      while (locks.length < this.snapshotSlice) {
        const next = run.locks.next()
        if (next.done) {
          done = true
          break
        }
        const h = onDisk(next.value.holders)
        if (h !== null) locks.push(Array.isArray(h) ? {key: next.value.key, holders: h} : {key: next.value.key, holder: h})
      }
      if (locks.length > 0) this.writeToSnapshot(run, frame(snapshotPackr.pack({locks})))
      run.count += locks.length
      if (!done) {
        setImmediate(() => this.writeSnapshotSlice(run))
        return
      }
      // The fence now is above every fence in the slices, written before it.
      this.writeToSnapshot(run, frame(snapshotPackr.pack({gen: run.gen, fence: this.snapshotSource.fence(), count: run.count})))
    } catch (error) {
      this.abandonSnapshot(run, error as Error)
      return
    }
    // The whole file to disk off the event loop (a snapshot can be a hundred MB), then named.
    run.state = 'syncing'
    fsync(run.fd, (error) => {
      if (run.state === 'abandoned') {
        closeSync(run.fd)
        rmSync(run.tmp, {force: true})
        return
      }
      try {
        if (error) throw error
        closeSync(run.fd)
        run.state = 'done'
        renameSync(run.tmp, join(this.dir, 'snapshot'))
        fsyncDir(this.dir)
        for (const name of readdirSync(this.dir)) {
          const match = /^wal-(\d+)\.log$/.exec(name)
          if (match && Number(match[1]) < run.gen) unlinkSync(join(this.dir, name))
        }
        this.nextSnapshotAt = Math.max(this.snapshotBytes, run.bytes)
        this.snapshotRun = null
      } catch (failure) {
        this.abandonSnapshot(run, failure as Error)
      }
    })
  }

  private writeToSnapshot(run: SnapshotRun, data: Buffer): void {
    writeSync(run.fd, data)
    run.bytes += data.length
  }

  /**
   * Drop a snapshot being written (lockd closing, or the disk refusing it). Nothing is lost: the
   * logs it would have replaced are kept and replayed. After a failure the next try waits for the
   * log to grow again.
   */
  private abandonSnapshot(run: SnapshotRun, error?: Error): void {
    const syncing = run.state === 'syncing'
    run.state = 'abandoned'
    this.snapshotRun = null
    if (error) {
      this.snapshotFailure = error
      this.nextSnapshotAt = this.size + Math.max(this.snapshotBytes, run.bytes)
    }
    // A flush in flight closes the file when it ends.
    if (syncing) return
    try {
      closeSync(run.fd)
    } catch {}
    rmSync(run.tmp, {force: true})
  }

  /** Why the last snapshot failed, if it did (it is tried again later; nothing is lost meanwhile). */
  snapshotFailure: Error | null = null
}

interface SnapshotRun {
  gen: number
  tmp: string
  fd: number
  locks: Iterator<{key: string; holders: LoggedHolder[]}>
  count: number
  bytes: number
  state: 'writing' | 'syncing' | 'done' | 'abandoned'
}

/** A record or snapshot frame: u32 length, u32 crc32(body), u32 crc32(the first 8 bytes), body. */
function frame(body: Buffer): Buffer {
  const framed = Buffer.allocUnsafe(RECORD_HEADER + body.length)
  framed.writeUInt32BE(body.length, 0)
  framed.writeUInt32BE(crc32(body), 4)
  framed.writeUInt32BE(crc32(framed.subarray(0, 8)), 8)
  body.copy(framed, RECORD_HEADER)
  return framed
}

/**
 * Load a snapshot into `state` and return the generation of the log that follows it. A snapshot
 * was complete and synced before it was named: any damage in it is refused.
 */
function readSnapshot(path: string, state: RecoveredState): number {
  const data = readFileSync(path)
  const refuse = (why: string) => new LogCorruptError(`${path} is corrupt (${why}); refusing to start rather than forget locks. ${MOVE_ASIDE}`)
  const load = (locks: unknown) => {
    if (!Array.isArray(locks)) throw refuse('not a snapshot')
    for (const entry of locks as SnapshotEntry[]) {
      const holders = decodeHolders(entry?.holders ?? entry?.holder)
      if (typeof entry?.key !== 'string' || !holders) throw refuse('not a snapshot')
      if (holders.length > 0) state.holders.set(entry.key, holders)
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
    if (data.length - offset < RECORD_HEADER || crc32(data.subarray(offset, offset + 8)) !== data.readUInt32BE(offset + 8)) throw refuse(`bad frame header at byte ${offset}`)
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
