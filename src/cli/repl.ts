import {appendFileSync, readFileSync} from 'node:fs'
import {dirname} from 'node:path'
import {clearLine, cursorTo} from 'node:readline'
import {createInterface} from 'node:readline/promises'
import {loadHelpClass, type Config} from '@oclif/core'
import {AbortedError, quoteStart} from '../client/errors.js'
import type {LockClient} from '../client/lock-client.js'
import {describeError, type BaseCommand} from './base-command.js'
import {signalNumber} from './child.js'
import {ExitCode} from './exit-codes.js'
import {formatMs} from './output.js'
import type {ReplSession, SessionLock} from './session.js'
import {tokenize} from './tokenize.js'
import {makeDirectories} from '../util/fs.js'

const BUILTINS = ['help', 'locks', 'exit', 'quit']
/** Commands that make no sense inside a session (they would nest or block it). */
const NOT_IN_REPL = new Set(['repl', 'server'])
const HISTORY_LINES = 1000
/** Signals that end the REPL as `exit` does (SIGINT cancels the running command instead). */
const STOP_SIGNALS = ['SIGTERM', 'SIGHUP'] as const

export interface ReplOptions {
  input: NodeJS.ReadStream
  output: NodeJS.WriteStream
  historyFile: string
  /** Every command at the prompt answers in JSON (`repl --json`). */
  json?: boolean
}

/**
 * The REPL: one client and one session for every line; each line is tokenized like a shell line
 * and run through the same oclif command classes as the CLI (flags, help and validation are
 * identical). On a terminal: prompt, history, tab completion, Ctrl-C cancels the running command
 * (never the REPL), exit asks what to do with held locks. Piped: a script, run in order, nothing
 * asked, errors prefixed with their line number; the exit code is that of the first failing line.
 */
export async function runRepl(config: Config, client: LockClient, options: ReplOptions): Promise<number> {
  const interactive = Boolean(options.input.isTTY && options.output.isTTY)
  const commandIds = config.commandIDs.filter((id) => !NOT_IN_REPL.has(id)).sort()
  let controller = new AbortController()
  let running = false
  let lineNumber = 0
  let firstFailure: number | undefined
  const seenKeys = new Set<string>()

  const newInterface = () =>
    createInterface({
      input: options.input,
      output: interactive ? options.output : undefined,
      terminal: interactive,
      prompt: 'lockctl> ',
      history: interactive ? loadHistory(options.historyFile) : [],
      historySize: HISTORY_LINES,
      completer: interactive ? (line: string) => complete(line) : undefined,
    })
  let rl = newInterface()

  const session: ReplSession & {errorPrefix: string} = {
    client,
    locks: new Map(),
    holds: new Map(),
    interactive,
    get signal() {
      return controller.signal
    },
    errorPrefix: '',
    print(line: string) {
      if (!interactive) {
        options.output.write(`${line}\n`)
        return
      }
      // Above the prompt: wipe the prompt line, print, then redraw the prompt and what was typed.
      clearLine(options.output, 0)
      cursorTo(options.output, 0)
      options.output.write(`${line}\n`)
      if (!running) rl.prompt(true)
    },
    async ask(query: string) {
      if (!interactive) throw new AbortedError('no terminal to ask on')
      try {
        return await rl.question(query, {signal: controller.signal})
      } catch (error) {
        if ((error as Error).name === 'AbortError') throw new AbortedError('cancelled at the prompt')
        throw error
      }
    },
  }

  /**
   * Tab: commands, then a command's flags after "-", else keys — inserted quoted as a shell word
   * when they need it ("release train"), replacing the word as typed (an open quote included).
   */
  function complete(line: string): [string[], string] {
    const start = lastWordStart(line)
    const raw = line.slice(start)
    let words: string[]
    try {
      words = tokenize(line.slice(0, start))
    } catch {
      return [[], raw]
    }
    const partial = raw.replace(/^["']/, '')
    let candidates: string[]
    if (words.length === 0) {
      candidates = [...commandIds, ...BUILTINS]
    } else if (partial.startsWith('-')) {
      const command = config.findCommand(words[0])
      candidates = command ? Object.keys(command.flags).map((f) => `--${f}`) : []
    } else {
      candidates = [...new Set([...session.locks.keys(), ...session.holds.keys(), ...seenKeys])].map(shellWord)
      return [candidates.filter((c) => c.replace(/^'/, '').startsWith(partial)).sort(), raw]
    }
    return [candidates.filter((c) => c.startsWith(partial)).sort(), raw]
  }

  async function runLine(line: string): Promise<'exit' | void> {
    lineNumber++
    session.errorPrefix = interactive ? '' : `line ${lineNumber}: `
    let words: string[]
    try {
      words = tokenize(line)
    } catch (error) {
      fail((error as Error).message, ExitCode.USAGE)
      return
    }
    if (words.length === 0) return
    if (interactive) appendHistory(options.historyFile, line)
    const [id, ...argv] = words
    if (id === 'exit' || id === 'quit') return 'exit'
    const wantsHelp = id === 'help' || argv.includes('--help') || argv.includes('-h')
    if (wantsHelp) {
      const topic = id === 'help' ? argv[0] : id
      if (topic !== undefined && config.findCommand(topic) && !NOT_IN_REPL.has(topic)) {
        // The command's own help, as outside the REPL (oclif handles --help before a command runs).
        const HelpClass = await loadHelpClass(config)
        await new HelpClass(config).showHelp([topic])
        return
      }
      const width = Math.max(...commandIds.map((c) => c.length), 6)
      const lines = commandIds.map((c) => `  ${c.padEnd(width)}  ${config.findCommand(c)?.summary ?? ''}`)
      lines.push(`  ${'locks'.padEnd(width)}  what this session holds`, `  ${'exit'.padEnd(width)}  leave (or Ctrl-D)`)
      options.output.write(`commands:\n${lines.join('\n')}\n"help COMMAND" or "COMMAND --help" for a command's flags.\n`)
      return
    }
    if (id === 'locks') {
      printLocks()
      return
    }
    if (NOT_IN_REPL.has(id) || !config.findCommand(id)) {
      fail(NOT_IN_REPL.has(id) ? `${id} cannot run inside the REPL` : `unknown command ${quoteStart(id)} (try help)`, ExitCode.USAGE)
      return
    }
    if (options.json && !argv.includes('--json')) {
      // `repl --json`: every command answers in JSON (before `--`: after it is hold's command).
      const dashes = argv.indexOf('--')
      argv.splice(dashes === -1 ? argv.length : dashes, 0, '--json')
    }
    const key = argv.find((a) => !a.startsWith('-'))
    if (key) seenKeys.add(key)
    controller = new AbortController()
    running = true
    let code = 0
    try {
      code = await runInSession(config, id, argv, session)
    } catch (error) {
      // Errors the command did not handle itself (oclif's own, before the command ran).
      const {message, exitCode} = describeError(error as Error)
      if (exitCode !== 0) fail(message, exitCode)
    } finally {
      running = false
    }
    if (code !== 0) firstFailure ??= code
  }

  function fail(message: string, code: number): void {
    process.stderr.write(`${session.errorPrefix}lockctl: ${message}\n`)
    firstFailure ??= code
  }

  function printLocks(): void {
    const now = client.backend.leaseClock.now()
    const rows: string[] = []
    for (const lock of session.locks.values()) rows.push(describeLock(lock, now))
    for (const [key, hold] of session.holds) {
      rows.push(`${key}  ${hold.isHeldByCurrentClient() ? `fence ${hold.fence}, ${formatMs(hold.leaseRestMillis())} left, renewing (hold)` : 'waiting (hold)'}`)
    }
    options.output.write(rows.length ? `${rows.join('\n')}\n` : 'this session holds no locks\n')
  }

  /**
   * SIGTERM, or SIGHUP (its terminal closed): leave as `exit` does, releasing what the session
   * holds without asking (nobody is there to answer), and end with 128+N. The signal used to end
   * the REPL on the spot, every lock and background hold left held until its lease ran out.
   */
  let stoppedBy: NodeJS.Signals | null = null
  const stopHandlers = STOP_SIGNALS.map(
    (signal) =>
      [
        signal,
        () => {
          stoppedBy = signal
          controller.abort()
          rl.close()
        },
      ] as const,
  )
  for (const [signal, handler] of stopHandlers) process.once(signal, handler)
  const exitCode = (code: number) => {
    for (const [signal, handler] of stopHandlers) process.off(signal, handler)
    return stoppedBy ? 128 + signalNumber(stoppedBy) : code
  }

  /** Leaving: release what the session holds (on a terminal, ask first). Answers false to stay. */
  const UNHEARD = 'the lock service did not answer: it holds the lock until its lease runs out'
  async function leave(): Promise<boolean> {
    if (session.locks.size === 0 && session.holds.size === 0) return true
    let choice: 'release' | 'keep' | 'cancel' = 'release'
    if (interactive && !stoppedBy) {
      const {select} = await import('@inquirer/prompts')
      const count = session.locks.size + session.holds.size
      choice = await select(
        {
          message: `This session holds ${count} lock(s). On exit:`,
          choices: [
            {name: 'release them all', value: 'release' as const},
            {name: 'keep them until their leases end (background holds stop renewing)', value: 'keep' as const},
            {name: 'cancel: stay in the REPL', value: 'cancel' as const},
          ],
        },
        {output: options.output},
      ).catch(() => 'cancel' as const)
    }
    if (choice === 'cancel') return false
    await Promise.all(
      [...session.holds.values()].map(async (hold) => {
        const held = hold.isHeldByCurrentClient()
        const givenBack = await hold.close({release: choice === 'release'})
        // As a foreground hold says it, and as the session's plain locks below do. A release the
        // service did not hear of leaves the lock held there until its lease runs out: said so,
        // and a script's exit code tells of it (4), as a plain lock's failed release does.
        if (held && choice === 'release') options.output.write(`released ${hold.key}${givenBack ? '' : ` (${UNHEARD})`}\n`)
        if (!givenBack) firstFailure ??= ExitCode.UNREACHABLE
      }),
    )
    if (choice === 'release') {
      for (const lock of session.locks.values()) {
        await client.release(lock.key, lock.token).then(
          () => options.output.write(`released ${lock.key}\n`),
          (error: Error) => {
            const {message, exitCode} = describeError(error)
            process.stderr.write(`lockctl: ${lock.key}: ${message}\n`)
            firstFailure ??= exitCode
          },
        )
      }
    }
    return true
  }

  if (!interactive) {
    for await (const line of rl) {
      if ((await runLine(line)) === 'exit') break
    }
    await leave()
    return exitCode(firstFailure ?? 0)
  }

  options.output.write(`lockctl REPL on ${client.endpoint}: "help" for commands, Ctrl-D to leave\n`)
  // One readline per round: Ctrl-D closes it, and "cancel" at the exit question starts another.
  for (;;) {
    if ((await interactiveRound()) === 'exit') return exitCode(0)
    rl = newInterface()
  }

  function interactiveRound(): Promise<'exit' | 'again'> {
    return new Promise((resolve) => {
      let queue = Promise.resolve()
      let leaving = false
      let closed = false
      // From the line queue (exit) the queue is this very call; from Ctrl-D, let running lines end.
      const finish = async (fromQueue: boolean) => {
        if (leaving) return
        leaving = true
        if (!fromQueue) await queue
        // The exit question is a prompt library's, which needs the terminal to itself (it leaves
        // it in cooked mode when done): close this line editor first; staying makes a new one.
        if (!closed) rl.close()
        resolve((await leave()) ? 'exit' : 'again')
      }
      rl.on('line', (line) => {
        queue = queue.then(async () => {
          if ((await runLine(line)) === 'exit') await finish(true)
          else if (!leaving) rl.prompt()
        })
      })
      // Ctrl-C: cancel the command that is running (a wait leaves the queue); at an idle
      // prompt, drop the line being typed, as shells do. Never leave the REPL.
      rl.on('SIGINT', () => {
        if (running) {
          controller.abort()
        } else {
          options.output.write('^C\n')
          rl.write(null, {ctrl: true, name: 'u'})
          rl.prompt()
        }
      })
      rl.on('close', () => {
        closed = true
        if (!leaving) void finish(false)
      })
      rl.prompt()
    })
  }
}

function describeLock(lock: SessionLock, now: number): string {
  const left = lock.deadline - now
  return `${lock.key}  fence ${lock.fence}, ${left > 0 ? `${formatMs(left)} left` : 'lease over'} (lock)`
}

function loadHistory(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).slice(-HISTORY_LINES).reverse()
  } catch {
    return []
  }
}

function appendHistory(file: string, line: string): void {
  try {
    makeDirectories(dirname(file))
    appendFileSync(file, `${line.replaceAll('\n', ' ')}\n`, {mode: 0o600})
  } catch {
    // History is a convenience: never fail a command over it.
  }
}

/**
 * Run one command with the session handed to it (never through module state): a subclass made
 * for this run sets `session` as the command object is built, before oclif runs it. Answers
 * the command's exit code.
 */
async function runInSession(config: Config, id: string, argv: string[], session: ReplSession): Promise<number> {
  const CommandClass = (await config.findCommand(id)!.load()) as unknown as BaseCommandClass
  let command: SessionCommand | undefined
  const InSession = class extends CommandClass {
    constructor(...args: ConstructorParameters<BaseCommandClass>) {
      super(...args)
      this.session = session
      // eslint-disable-next-line @typescript-eslint/no-this-alias -- the run's object, to read its exit code after
      command = this
    }
  }
  await InSession.run(argv, config)
  return command?.exitStatus ?? 0
}

/** What the REPL needs of a command (BaseCommand): its session in, its exit code out. */
type SessionCommand = Pick<BaseCommand, 'session' | 'exitStatus'>
type BaseCommandClass = (new (argv: string[], config: Config) => SessionCommand) & {run(argv: string[], config: Config): Promise<unknown>}

/** Where the last word of a line starts (after the last space outside quotes). */
function lastWordStart(line: string): number {
  let start = 0
  let quote: string | null = null
  for (let i = 0; i < line.length; i++) {
    const c = line[i]
    if (quote) {
      if (c === quote) quote = null
      else if (c === '\\' && quote === '"') i++
    } else if (c === '"' || c === "'") {
      quote = c
    } else if (c === '\\') {
      i++
    } else if (/\s/.test(c)) {
      start = i + 1
    }
  }
  return start
}

/** A key as one shell word: bare when it can be, else in single quotes. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`
}
