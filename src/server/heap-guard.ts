import {getHeapStatistics} from 'node:v8'
import {megabytes} from '../util/bytes.js'

/** What the guard reads of the heap: bytes in use, and the most the heap may grow to. */
export interface HeapReading {
  used: number
  limit: number
}

/** Past this share of the heap limit, new names and waits are refused. */
const FULL_AT = 0.5
/** The most often the guard collects garbage before it refuses. */
const COLLECT_EVERY_MS = 10_000

/** The heap now, as V8 counts it. */
export const readHeap = (): HeapReading => {
  const {used_heap_size: used, heap_size_limit: limit} = getHeapStatistics()
  return {used, limit}
}

/**
 * Keeps lockd from running out of heap (docs/protocol.md, "Limits"). --max-locks counts names,
 * but what a name costs depends on its key (up to 512 bytes) and on the machine, whose memory
 * sets Node's heap limit: a lockd filled with long keys on a small heap died of a V8 fatal
 * error (an abort, a native stack trace in its log, every client cut off). Past half of
 * the heap limit, new names and waits are refused with LIMIT — renewals, releases and tries of
 * held names go on — and the room above is
 * what a growing hash table, a snapshot and garbage collection need. Read every `everyMs`
 * (not per request: a reading costs microseconds, and the heap cannot fill in that time).
 */
export class HeapGuard {
  private timer: NodeJS.Timeout | null = null
  private reading: HeapReading | null = null
  private lastCollection = Number.NEGATIVE_INFINITY
  /** The heap in use that the last collection left. */
  private afterCollection = 0

  constructor(
    private readonly onChange: (full: boolean, reading: HeapReading) => void,
    private readonly options: {
      everyMs?: number
      read?: () => HeapReading
      /**
       * A full garbage collection (full-collection.ts): before the guard refuses, garbage is
       * collected, so that only what is in use counts (at most once every COLLECT_EVERY_MS).
       */
      collect?: () => void
      now?: () => number
    } = {},
  ) {}

  /** Past the threshold at the last reading? */
  get full(): boolean {
    return this.reading !== null && this.isFull(this.reading)
  }

  /** Why a new name or a wait is refused now, for the client (null: it is not). */
  refusal(): string | null {
    const reading = this.reading
    if (reading === null || !this.isFull(reading)) return null
    return `lockd uses ${megabytes(reading.used)} MB of its ${megabytes(reading.limit)} MB heap, past the ${Math.round(FULL_AT * 100)}% it keeps new names and waits within: release some locks, or give lockd more memory (NODE_OPTIONS=--max-old-space-size=MB)`
  }

  start(): void {
    this.check()
    this.timer = setInterval(() => this.check(), this.options.everyMs ?? 250)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  /** Read the heap now (the timer's work; tests call it directly). */
  check(): void {
    const wasFull = this.full
    const read = this.options.read ?? readHeap
    this.reading = read()
    const now = (this.options.now ?? performance.now.bind(performance))()
    // Not again and again while the heap really is full: only once it has grown by a tenth of
    // the limit since the last collection (each stops lockd for a moment, longer on a big heap).
    const grown = this.reading.used > this.afterCollection + 0.1 * this.reading.limit
    if (this.isFull(this.reading) && this.options.collect && grown && now - this.lastCollection >= COLLECT_EVERY_MS) {
      this.lastCollection = now
      this.options.collect()
      this.reading = read()
      this.afterCollection = this.reading.used
    }
    const full = this.isFull(this.reading)
    if (full !== wasFull) this.onChange(full, this.reading)
  }

  private isFull(reading: HeapReading): boolean {
    return reading.used > FULL_AT * reading.limit
  }
}
