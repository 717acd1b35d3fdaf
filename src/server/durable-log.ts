import {
  close,
  closeSync,
  existsSync,
  fdatasync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  write,
  writeSync,
} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'
import {crc32} from 'node:zlib'
import {Packr} from 'msgpackr/pack'
import {makeDirectories} from '../util/fs.js'
import type {PersistedHolder, TableSnapshot} from './lock-table.js'

/**
 * Durable state of lockd: an append-only log of "key K now has holder H (or none)" records plus
 * the fencing counter, bounded by snapshots.
 *
 * Records are absolute states, not deltas, so replaying a record that a snapshot already covers
 * changes nothing: that is what lets a snapshot be taken at any moment between batches.
 *
 * Files in the data dir:
 *   snapshot        crc32 + msgpack {gen, fence, locks}   (written to snapshot.tmp, fsynced, renamed)
 *   wal-<gen>.log   records: u32 length, u32 crc32, msgpack {k, h, f}
 */

export interface LogRecord {
  key: string
  holder: PersistedHolder | null
  fence: number
}

export interface RecoveredState {
  fence: number
  holders: Map<string, PersistedHolder>
  /** What recovery had to do that an operator should know about. */
  notes: string[]
}

/** The state on disk cannot be trusted; lockd refuses to start rather than forget a grant. */
export class LogCorruptError extends Error {
  readonly exitCode = 1
}

const RECORD_HEADER = 8
const writeAsync = promisify(write)
const fdatasyncAsync = promisify(fdatasync)
const closeAsync = promisify(close)
const packr = new Packr({useRecords: false, mapsAsObjects: true})

export interface DurableLogOptions {
  /** Take a snapshot and start a new log once the log is this big. */
  snapshotBytes?: number
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
    private readonly snapshotSource: () => TableSnapshot,
    private readonly snapshotBytes: number,
  ) {
    this.size = size
  }

  /** Read the state on disk, repair a torn tail, and open the log for appending. */
  static async open(
    dir: string,
    snapshotSource: () => TableSnapshot,
    options: DurableLogOptions = {},
  ): Promise<{log: DurableLog; state: RecoveredState}> {
    makeDirectories(dir)
    const state: RecoveredState = {fence: 0, holders: new Map(), notes: []}
    let gen = 0
    const snapshotPath = join(dir, 'snapshot')
    if (existsSync(snapshotPath)) {
      const snapshot = readSnapshot(snapshotPath)
      gen = snapshot.gen
      state.fence = snapshot.fence
      for (const {key, holder} of snapshot.locks) state.holders.set(key, holder)
    }
    const walPath = join(dir, `wal-${gen}.log`)
    let size = 0
    if (existsSync(walPath)) {
      const data = readFileSync(walPath)
      const intact = replay(data, walPath, state)
      if (intact < data.length) {
        state.notes.push(
          `${walPath}: dropped a torn tail of ${data.length - intact} bytes (a write cut short by a crash; never acknowledged)`,
        )
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
    // Logs of older generations are leftovers of an interrupted snapshot switch.
    for (const name of readdirSync(dir)) {
      const match = /^wal-(\d+)\.log$/.exec(name)
      if (match && Number(match[1]) !== gen) unlinkSync(join(dir, name))
    }
    const fd = openSync(walPath, 'a')
    fsyncDir(dir)
    const log = new DurableLog(dir, gen, fd, size, snapshotSource, options.snapshotBytes ?? 16 * 1024 * 1024)
    return {log, state}
  }

  append(records: LogRecord[]): void {
    for (const record of records) {
      const body = packr.pack({k: record.key, h: record.holder, f: record.fence})
      const frame = Buffer.allocUnsafe(RECORD_HEADER + body.length)
      frame.writeUInt32BE(body.length, 0)
      frame.writeUInt32BE(crc32(body), 4)
      body.copy(frame, RECORD_HEADER)
      this.pending.push(frame)
      this.pendingBytes += frame.length
    }
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
          await writeAsync(this.fd, batch, 0, batch.length, null)
          await fdatasyncAsync(this.fd)
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
    closeSync(openSync(nextPath, 'w'))
    const snapshot = this.snapshotSource()
    const body = packr.pack({gen: nextGen, fence: snapshot.fence, locks: snapshot.locks})
    const header = Buffer.allocUnsafe(4)
    header.writeUInt32BE(crc32(body), 0)
    const tmp = join(this.dir, 'snapshot.tmp')
    const fd = openSync(tmp, 'w')
    try {
      writeSync(fd, header)
      writeSync(fd, body)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, join(this.dir, 'snapshot'))
    fsyncDir(this.dir)
    const oldFd = this.fd
    const oldPath = join(this.dir, `wal-${this.gen}.log`)
    this.gen = nextGen
    this.size = 0
    this.fd = openSync(nextPath, 'a')
    closeSync(oldFd)
    unlinkSync(oldPath)
  }
}

function readSnapshot(path: string): {gen: number; fence: number; locks: {key: string; holder: PersistedHolder}[]} {
  const data = readFileSync(path)
  if (data.length < 4 || crc32(data.subarray(4)) !== data.readUInt32BE(0)) {
    throw new LogCorruptError(
      `${path} is corrupt (checksum mismatch); refusing to start rather than forget locks. ` +
        `Move the data directory aside to start empty.`,
    )
  }
  return packr.unpack(data.subarray(4))
}

/** Apply every intact record; returns the length of the intact prefix. */
function replay(data: Buffer, path: string, state: RecoveredState): number {
  let offset = 0
  while (offset < data.length) {
    const rest = data.length - offset
    if (rest < RECORD_HEADER) return offset
    const length = data.readUInt32BE(offset)
    const crc = data.readUInt32BE(offset + 4)
    if (length === 0 && isZero(data, offset)) return offset // preallocated or zero-filled torn tail
    if (RECORD_HEADER + length > rest) return offset // the last write was cut short
    const body = data.subarray(offset + RECORD_HEADER, offset + RECORD_HEADER + length)
    if (crc32(body) !== crc) {
      throw new LogCorruptError(
        `${path}: record at byte ${offset} is corrupt (checksum mismatch); refusing to start ` +
          `rather than forget a grant. Inspect the file, or move the data directory aside to start empty.`,
      )
    }
    const record = packr.unpack(body) as {k: string; h: PersistedHolder | null; f: number}
    if (record.h) state.holders.set(record.k, record.h)
    else state.holders.delete(record.k)
    state.fence = Math.max(state.fence, record.f)
    offset += RECORD_HEADER + length
  }
  return offset
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
