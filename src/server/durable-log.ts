import {close, closeSync, existsSync, fdatasyncSync, fstatSync, fsync, fsyncSync, ftruncateSync, openSync, readdirSync, renameSync, rmSync, unlinkSync, writeSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'
import {crc32} from 'node:zlib'
import type {Packr} from 'msgpackr/pack'
import {makeDirectories} from '../util/fs.js'
import {
  corrupt,
  FENCE_BLOCK,
  frame,
  LogCorruptError,
  MOVE_ASIDE,
  onDisk,
  packr,
  readChecked,
  readSnapshot,
  readWhole,
  replay,
  replayLegacy,
  SNAPSHOT_MAGIC,
  snapshotPackr,
  WAL_MAGIC,
  encode,
  type LoggedHolder,
  type LogRecord,
  type RecoveredState,
  type Restorer,
  KEEP_DECODED,
  type SnapshotEntry,
  type SnapshotSource,
} from './log-format.js'

/**
 * Durable state of lockd: an append-only log bounded by snapshots, plus a fence high-water mark;
 * the files, when each is written and flushed, and recovery's order (docs/recovery.md). What is
 * in them is log-format.ts's.
 *
 * Files in the data dir:
 *   fence           no fence above `reserved` has ever been used
 *   snapshot        every held lock, and which log continues it (written to snapshot.tmp,
 *                   fsynced, renamed)
 *   wal-<gen>.log   from the snapshot's gen up, one per generation, replayed in order (a
 *                   snapshot being written has switched to the next)
 */
const closeAsync = promisify(close)
const isDurable = (waiter: {durable: boolean}) => waiter.durable

export interface DurableLogOptions {
  /** Start a snapshot once the log is this big (or half the last snapshot's size, if that is bigger). */
  snapshotBytes?: number
  /** Locks written per slice of a snapshot: the longest a snapshot keeps lockd from other work. */
  snapshotSlice?: number
  /** Told when a snapshot could not be written (it is tried again later; nothing is lost meanwhile). */
  onSnapshotFailed?: (error: Error) => void
  /** Told how long each group commit's write and fdatasync took (metrics). */
  onFlush?: (seconds: number) => void
  /** Told when files found removed are written again from memory (checkFiles), before the snapshot. */
  onFilesRewritten?: (missing: string) => void
}

/** How open() keeps each recovered holder (default: the decoded object, KEEP_DECODED). */
export interface RestoreOption<R> {
  restorer?: Restorer<R>
}

export class DurableLog {
  private pending: Buffer[] = []
  private pendingBytes = 0
  private waiters: {durable: boolean; done: () => void}[] = []
  /** Records written to the current log since its last fdatasync. */
  private unsynced = false
  /** A flush is due at the next turn of the event loop (setImmediate). */
  private flushScheduled = false
  private failure: Error | null = null
  private size: number
  private closed = false
  /** The snapshot being written, if one is. */
  private snapshotRun: SnapshotRun | null = null
  /**
   * Log size at which the next snapshot starts: at least half the last snapshot's size, so that
   * snapshots cost O(1) per record. Half, not all of it: a log record is about twice a snapshot
   * entry's size and costs about twice as much to replay, so a restart replays at most about as
   * much work again as the snapshot's own (1M locks: a 46 MB snapshot, at most ~23 MB of log).
   */
  private nextSnapshotAt: number
  private readonly snapshotSlice: number
  /** A snapshot file belongs in the directory (one was there at start, or has been named since). */
  private snapshotNamed = false

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
    this.onSnapshotFailed = options.onSnapshotFailed
    this.onFilesRewritten = options.onFilesRewritten
  }

  private readonly onFilesRewritten?: (missing: string) => void

  private readonly onFlush?: (seconds: number) => void
  private readonly onSnapshotFailed?: (error: Error) => void

  /** Bytes in the current log file. */
  get bytes(): number {
    return this.size
  }

  /** Read the state on disk, repair a torn tail, reserve fences, and open the log for appending. */
  static async open<R = LoggedHolder>(dir: string, snapshotSource: SnapshotSource, options: DurableLogOptions & RestoreOption<R> = {}): Promise<{log: DurableLog; state: RecoveredState<R>}> {
    makeDirectories(dir)
    const restorer = options.restorer ?? (KEEP_DECODED as unknown as Restorer<R>)
    const state: RecoveredState<R> = {fence: 0, holders: new Map(), notes: [], restorer}
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
    const gens = logGenerations(dir)
    if (!hasSnapshot && gens.length > 0 && gens[0] > 0) {
      // Only a snapshot lets the logs before a generation go: without one, they begin at wal-0.log.
      throw new LogCorruptError(`${snapshotPath} is missing (the logs begin at wal-${gens[0]}.log, which only a snapshot can come before); refusing to start rather than forget locks. ${MOVE_ASIDE}`)
    }
    const last = Math.max(gen, ...gens)
    let size = 0
    let legacy = false
    for (let g = gen; g <= last; g++) {
      const walPath = join(dir, `wal-${g}.log`)
      const data = existsSync(walPath) ? readWhole(walPath) : null
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
        // Shorter than its magic is a crash while the log was being made, which only a log newer
        // than everything else can show: one a snapshot had just started (a generation after the
        // snapshot's), or a new data directory's first log (its fence mark is written once the
        // log's magic is on disk). The snapshot's own log, or a first log beside a fence mark, was
        // whole on disk before they were written: cut short now, it is damage that would forget
        // every grant in it (docs/recovery.md).
        if (unstarted && g === gen && (hasSnapshot || hadFenceFile)) {
          throw corrupt(
            walPath,
            data.length,
            `the log is cut shorter than its ${WAL_MAGIC.length}-byte magic, yet the ${hasSnapshot ? 'snapshot' : 'fence mark'} beside it was written after it was whole`,
          )
        }
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
    log.snapshotNamed = hasSnapshot
    if (legacy) {
      // Rewrite the old format as a snapshot: every later write is in the new format.
      state.notes.push(`${join(dir, `wal-${gen}.log`)}: converted from the unversioned log format`)
    }
    // Several logs (or the old format) are folded into one snapshot once the table holds the state.
    log.pendingSnapshot = legacy || last > gen
    return {log, state}
  }

  /**
   * `lockd --forget-all-locks` (docs/recovery.md): a one-time repair of a data directory lockd
   * refuses as damaged. Its logs and snapshot go to DIR/forgotten-TIME (kept for inspection),
   * and a new empty log starts; the fence mark stays, so every fence handed out from now is above
   * every one handed out before — which moving the whole directory aside would start again at 1.
   * Crash-safe at every step: until the new log is there, a start without the flag refuses (the
   * log the mark names is gone), and a start with it goes on where this one stopped.
   * Null when there was nothing to forget.
   */
  static forgetAllLocks(dir: string): {aside: string; moved: number; fence: number} | null {
    const names = readdirSync(dir).filter((name) => /^wal-\d+\.log$/.test(name) || name === 'snapshot' || name === 'snapshot.tmp')
    const fencePath = join(dir, 'fence')
    if (!existsSync(fencePath)) {
      if (names.length === 0) return null
      throw new LogCorruptError(
        `--forget-all-locks: ${fencePath} is missing, so lockd cannot tell which fences it handed out; moving the whole directory aside starts them again at 1 (reset every fencing store that saw higher ones)`,
      )
    }
    let reserved: unknown
    try {
      reserved = (readChecked(fencePath) as {reserved?: unknown}).reserved
    } catch {
      reserved = undefined
    }
    if (typeof reserved !== 'number' || !Number.isSafeInteger(reserved) || reserved < 0) {
      throw new LogCorruptError(
        `--forget-all-locks: ${fencePath} is damaged, so lockd cannot tell which fences it handed out; moving the whole directory aside starts them again at 1 (reset every fencing store that saw higher ones)`,
      )
    }
    const aside = join(dir, `forgotten-${new Date().toISOString().replaceAll(':', '-')}`)
    makeDirectories(aside)
    for (const name of names) renameSync(join(dir, name), join(aside, name))
    fsyncDir(aside)
    fsyncDir(dir)
    writeNewLog(join(dir, 'wal-0.log'))
    fsyncDir(dir)
    return {aside, moved: names.length, fence: reserved}
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

  /**
   * Files of the data directory removed while lockd runs (the whole directory, by a clean-up
   * gone wrong, or one file): they would be gone at the next restart, which would then start
   * fences again at 1 or refuse the directory. Everything is still in memory, so the directory
   * is written again at once (docs/recovery.md, "Files removed while lockd runs"). lockd calls
   * this once a second; a fence mark or snapshot about to be written into a directory that is
   * gone does the same on its own.
   */
  checkFiles(): void {
    if (this.closed || this.failure) return
    const missing = this.missingFile()
    if (missing !== null) this.rewriteFiles(missing)
  }

  private missingFile(): string | null {
    if (!existsSync(this.dir)) return this.dir
    if (fstatSync(this.fd).nlink === 0) return join(this.dir, `wal-${this.gen}.log`)
    const fencePath = join(this.dir, 'fence')
    if (!existsSync(fencePath)) return fencePath
    // (A snapshot being renamed into place is there all along: the rename replaces it.)
    const snapshotPath = join(this.dir, 'snapshot')
    if (this.snapshotNamed && !existsSync(snapshotPath)) return snapshotPath
    return null
  }

  /**
   * Write the data directory again from memory: the directory, a fence mark at least as high as
   * the last (above every fence handed out), a new log and a snapshot of every held lock (a
   * slice at a time, as usual). Until that snapshot is named, a restart refuses the directory
   * (its logs begin past wal-0 without one) rather than forget a lock. A failure here is the
   * log's failure: lockd stops.
   */
  private rewriteFiles(missing: string): void {
    makeDirectories(this.dir)
    if (this.snapshotRun) this.abandonSnapshot(this.snapshotRun)
    this.snapshotNamed = false
    this.writeFenceMark(this.snapshotSource.fence())
    this.onFilesRewritten?.(missing)
    this.startSnapshot(true)
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
    if (this.failure) return
    if (fence > this.reservedFence - FENCE_BLOCK / 2) {
      try {
        this.reserveFences(fence)
      } catch (error) {
        // The next commit fails (lockd stops, saying why): no fence above the old mark leaves.
        this.failure = new Error(`cannot write the fence mark in ${this.dir}: ${(error as Error).message}`)
        return
      }
    }
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
    try {
      this.writeFenceMark(fence)
    } catch (error) {
      // A directory removed since the last mark: the mark alone would not bring back its locks;
      // the whole directory again does, with a mark (from the same fence counter) first.
      this.rewriteIfRemoved(error)
    }
  }

  /** After `error` writing into the directory: write it all again if it was removed, else throw `error`. */
  private rewriteIfRemoved(error: unknown): void {
    if (this.closed || existsSync(this.dir)) throw error
    this.rewriteFiles(this.dir)
  }

  private writeFenceMark(fence: number): void {
    const reserved = Math.max(fence + FENCE_BLOCK, this.reservedFence)
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
    if (this.pendingBytes === 0 && !this.flushScheduled && !(durable && this.unsynced)) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({durable, done: () => (this.failure ? reject(this.failure) : resolve())})
      if (!this.flushScheduled) {
        this.flushScheduled = true
        // Let the current turn finish so requests from other connections join this batch.
        setImmediate(this.flush)
      }
    })
  }

  async close(): Promise<void> {
    if (this.closed) return
    // (The flush runs whole in one turn: once this commit has resolved, no write is under way.)
    await this.commit().catch(() => {})
    try {
      // Files removed under lockd are written again before it goes: its next start needs them.
      if (!this.failure) this.checkFiles()
      this.flushToDisk()
      const run = this.snapshotRun
      // An unfinished snapshot is dropped (the logs it would have replaced are all still there),
      // unless it rewrites removed files.
      if (run?.rewrite) this.finishSnapshotNow(run)
      else if (run) this.abandonSnapshot(run)
    } catch (error) {
      // (Closing goes on: the next start says what it finds.)
      this.onSnapshotFailed?.(error as Error)
    } finally {
      this.closed = true
    }
    await closeAsync(this.fd)
  }

  /**
   * Write (and flush, when someone waits for the disk) everything appended, then tell the
   * waiters. A plain callback, not an async function: it runs once per batch, and its promises
   * were a good part of the garbage of each durable lock+unlock.
   */
  private readonly flush = (): void => {
    // The batch being written: told of a failure too, not left waiting forever.
    let waiters: DurableLog['waiters'] = []
    try {
      while (this.waiters.length > 0) {
        const batch = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes)
        waiters = this.waiters
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
        if (waiters.some(isDurable)) this.flushToDisk()
        if (this.size >= this.nextSnapshotAt && this.pendingBytes === 0 && !this.snapshotRun) this.startSnapshot()
        for (const {done} of waiters.splice(0)) done()
      }
    } catch (error) {
      // A log that cannot be written must not acknowledge anything again: fail every waiter.
      this.failure = new Error(`cannot write the lock log in ${this.dir}: ${(error as Error).message}`)
      for (const {done} of [...waiters.splice(0), ...this.waiters.splice(0)]) done()
    } finally {
      this.flushScheduled = false
    }
  }

  /** fdatasync the current log if anything was written since the last one (timed for the metrics). */
  private flushToDisk(): void {
    if (!this.unsynced) return
    const started = performance.now()
    fdatasyncSync(this.fd)
    this.unsynced = false
    this.onFlush?.((performance.now() - started) / 1000)
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
  private startSnapshot(rewrite = false): void {
    try {
      this.switchLog()
    } catch (error) {
      // A directory removed since (before, or while, the new log was made): the whole directory
      // again, which snapshots too. Nothing had switched: the batch behind it is in the old log.
      // (A rewrite's own snapshot does not start another.)
      if (rewrite) throw error
      this.rewriteIfRemoved(error)
      return
    }
    const {gen} = this
    const tmp = join(this.dir, 'snapshot.tmp')
    const run: SnapshotRun = {gen, tmp, fd: -1, locks: this.snapshotSource.locks(), count: 0, bytes: 0, state: 'writing', rewrite}
    this.snapshotRun = run
    // From here a failure costs the snapshot only, never the log (which has everything).
    try {
      run.fd = openSync(tmp, 'w')
      this.writeToSnapshot(run, SNAPSHOT_MAGIC)
    } catch (error) {
      this.abandonSnapshot(run, error as Error)
      return
    }
    setImmediate(() => this.writeSnapshotSlice(run))
  }

  /** A snapshot's first step: a fresh log, durably named, that every later record goes to. */
  private switchLog(): void {
    // The log being left must be whole on disk: later grants are made durable in the next one
    // only, and recovery takes a torn end only in the last log.
    this.flushToDisk()
    const gen = this.gen + 1
    const path = join(this.dir, `wal-${gen}.log`)
    writeNewLog(path)
    fsyncDir(this.dir)
    // (Opened before the old one is closed: a failure leaves the old one in use.)
    const fd = openSync(path, 'a')
    closeSync(this.fd)
    this.fd = fd
    this.gen = gen
    this.size = WAL_MAGIC.length
  }

  private writeSnapshotSlice(run: SnapshotRun): void {
    if (run.state !== 'writing') return
    let done: boolean
    try {
      done = this.writeSnapshotPart(run, this.snapshotSlice)
    } catch (error) {
      this.abandonSnapshot(run, error as Error)
      return
    }
    if (!done) {
      setImmediate(() => this.writeSnapshotSlice(run))
      return
    }
    // The whole file to disk off the event loop (a snapshot can be a hundred MB), then named.
    run.state = 'syncing'
    fsync(run.fd, (error) => {
      // (Named already by close(), which could not wait for this.)
      if (run.state === 'done') return
      if (run.state === 'abandoned') {
        closeSync(run.fd)
        // (Not the file of a run started since, which writes the same name: rewriteFiles.)
        if (this.snapshotRun === null) rmSync(run.tmp, {force: true})
        return
      }
      try {
        if (error) throw error
        this.nameSnapshot(run)
      } catch (failure) {
        this.abandonSnapshot(run, failure as Error)
      }
    })
  }

  /** Up to `max` more locks into the snapshot; once they are all in, its end frame. Whether it is whole. */
  private writeSnapshotPart(run: SnapshotRun, max: number): boolean {
    const locks: SnapshotEntry[] = []
    let done = false
    while (locks.length < max) {
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
    // The fence now is above every fence in the slices, written before it.
    if (done) this.writeToSnapshot(run, frame(snapshotPackr.pack({gen: run.gen, fence: this.snapshotSource.fence(), count: run.count})))
    return done
  }

  /** A snapshot whole on disk takes the name `snapshot`; the logs before its own go. */
  private nameSnapshot(run: SnapshotRun): void {
    closeSync(run.fd)
    run.state = 'done'
    renameSync(run.tmp, join(this.dir, 'snapshot'))
    fsyncDir(this.dir)
    this.snapshotNamed = true
    for (const g of logGenerations(this.dir)) if (g < run.gen) unlinkSync(join(this.dir, `wal-${g}.log`))
    this.nextSnapshotAt = Math.max(this.snapshotBytes, Math.ceil(run.bytes / 2))
    this.snapshotRun = null
  }

  /**
   * At close, a snapshot that rewrites removed files is finished here rather than dropped: the
   * logs it replaces are gone, and without it the next start would refuse the directory.
   */
  private finishSnapshotNow(run: SnapshotRun): void {
    if (run.state === 'writing') this.writeSnapshotPart(run, Number.POSITIVE_INFINITY)
    fsyncSync(run.fd)
    this.nameSnapshot(run)
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
      this.onSnapshotFailed?.(error)
      this.nextSnapshotAt = this.size + Math.max(this.snapshotBytes, Math.ceil(run.bytes / 2))
    }
    // A flush in flight closes the file when it ends.
    if (syncing) return
    try {
      closeSync(run.fd)
    } catch {}
    try {
      rmSync(run.tmp, {force: true})
    } catch {}
  }
}

interface SnapshotRun {
  gen: number
  tmp: string
  fd: number
  locks: Iterator<{key: string; holders: LoggedHolder[]}>
  count: number
  bytes: number
  state: 'writing' | 'syncing' | 'done' | 'abandoned'
  /** Written because files were removed (rewriteFiles): the logs before it are gone. */
  rewrite: boolean
}

function writeFileDurably(path: string, ...parts: Uint8Array[]): void {
  const fd = openSync(path, 'w')
  try {
    for (const part of parts) writeSync(fd, part)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/** The generations of the log files in `dir`, in order. */
function logGenerations(dir: string): number[] {
  return readdirSync(dir)
    .map((name) => /^wal-(\d+)\.log$/.exec(name))
    .filter((match) => match !== null)
    .map((match) => Number(match[1]))
    .sort((a, b) => a - b)
}

function writeNewLog(path: string): void {
  writeFileDurably(path, WAL_MAGIC)
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r')
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
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
