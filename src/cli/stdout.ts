import {LockError} from '../client/errors.js'
import {ErrorCode} from '../protocol/errors.js'
import {ExitCode} from './exit-codes.js'

/**
 * stdout could not be written: the disk behind it is full (ENOSPC), or whoever read it is gone
 * (EPIPE: `lockctl watch | head -3` once head has its lines). docs/exit-codes.md, exit 74.
 */
export class OutputError extends LockError {
  constructor(
    message: string,
    /** The system's code (EPIPE, ENOSPC, EIO, ...). */
    readonly errno: string,
    /** What went wrong, for a caller's own sentence: "nobody reads it (EPIPE)", "ENOSPC: no space left on device". */
    readonly detail: string = message,
  ) {
    super(ErrorCode.OUTPUT, message)
  }

  /** The reader went away: the normal end of a pipeline, not a failure to report. */
  get readerGone(): boolean {
    return this.errno === 'EPIPE'
  }
}

const describe = (error: NodeJS.ErrnoException): string => (error.code === 'EPIPE' ? 'nobody reads it (EPIPE)' : `${error.message.replace(/, write$/, '')}`)

/**
 * What a command knows of its stdout. Node drops a failed write of console.log (oclif's
 * `this.log`) without a word, and a failed process.stdout.write is an 'error' event that ends
 * the process with a stack trace (oclif swallows only EPIPE, and only where its module ran).
 * So a `lock` whose token went to a full disk exited 0 with its lock held and the token lost,
 * and `hold --json | consumer` held on after the consumer died. Here every failed write is seen:
 * `gone` is aborted (watch and hold stop on it), `write` rejects (lock releases what it could
 * not hand over), and a failure no command reported itself is one line and exit 74 — except
 * EPIPE, the reader's normal way to say "enough" (`status | head -1`).
 */
export class StdoutGuard {
  private readonly controller = new AbortController()
  private failure: OutputError | null = null
  private reported = false

  /** Aborted at the first write that fails, with the OutputError as its reason. */
  readonly gone: AbortSignal = this.controller.signal

  /**
   * Watch process.stdout for this command: the listeners before it (oclif's, an earlier command's
   * guard in the same process) go. `report`: a one-shot command reports a failure that nobody
   * reported in its own words, in one line, and its process exits 74 (the REPL keeps its own exit
   * code). The report waits a turn of the event loop: a caller that awaited the failed write
   * (`lock`) or stops on `gone` (`hold`) claims it first, and says it better.
   */
  static install(report: boolean): StdoutGuard {
    const guard = new StdoutGuard()
    const stream = process.stdout
    for (const listener of stream.listeners('error')) stream.off('error', listener as (...args: unknown[]) => void)
    stream.on('error', (error: NodeJS.ErrnoException) => {
      guard.failed(error)
      if (report) setImmediate(() => guard.reportUnclaimed())
    })
    return guard
  }

  /**
   * Write and wait until the text is written: rejects with an OutputError (which the caller
   * then reports: no second line at exit).
   */
  async write(text: string): Promise<void> {
    if (this.failure) throw this.claim()
    await new Promise<void>((resolve, reject) => {
      process.stdout.write(text, (error) => {
        if (!error) return resolve()
        this.failed(error)
        reject(this.claim())
      })
    })
  }

  /**
   * stdout is not this command's output from now on (`hold -- CMD`: the command owns it, and says
   * itself when it cannot write; oclif's empty flush at the end fails on /dev/full), so a failure
   * is not lockctl's to report.
   */
  handOver(): void {
    this.reported = true
  }

  /** The failure, taken over by a caller that reports it in its own words. */
  claim(): OutputError {
    this.reported = true
    return this.failure!
  }

  private failed(error: NodeJS.ErrnoException): void {
    if (this.failure) return
    const code = error.code ?? 'EIO'
    const detail = describe(error)
    this.failure = new OutputError(`cannot write to stdout: ${detail}`, code, detail)
    this.controller.abort(this.failure)
  }

  private reportUnclaimed(): void {
    const failure = this.failure
    if (!failure || this.reported || failure.readerGone) return
    this.reported = true
    process.stderr.write(`lockctl: ${failure.message}\n`)
    if (!process.exitCode) process.exitCode = ExitCode.OUTPUT
  }
}
