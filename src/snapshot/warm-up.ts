/**
 * Runs the hot commands once while the start-up snapshot is built (docs/startup.md, "Warm-up"),
 * against a throw-away in-memory lockd that bin/snapshot.js started for the build: V8 keeps the
 * bytecode of every function that ran in the snapshot, so a run does not compile oclif's run,
 * flag parsing, the connection and the commands again (they are compiled lazily otherwise, on
 * every run, from the source the snapshot holds).
 *
 * Nothing of the warm-up may stay behind in the heap except compiled code: its output is
 * captured and dropped, its exit code and the signal listeners the commands added are removed,
 * and every command closes its connection before it ends (the build waits for an empty event
 * loop). A warm-up that goes wrong fails the build, and bin/snapshot.js builds again without one:
 * the snapshot is the same without it, only slower to run.
 */
import type {execute, Interfaces} from '@oclif/core'

export interface WarmUpCli {
  execute: typeof execute
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const
const KEY = 'lockctl-snapshot-warm-up'

export async function warmUp(cli: WarmUpCli, endpoint: string, loadOptions: Interfaces.LoadOptions): Promise<void> {
  let output = ''
  const restore = [
    // (A caller that waits for its write, as `lock` does, is told at once that it is done.)
    override(process.stdout, 'write', (chunk: string | Uint8Array, ...rest: unknown[]) => {
      output += String(chunk)
      const done = rest.find((arg) => typeof arg === 'function') as (() => void) | undefined
      if (done) process.nextTick(done)
      return true
    }),
    override(process.stderr, 'write', () => true),
    // oclif exits on an error it did not expect: that must fail the build, not end it quietly.
    override(process, 'exit', (code?: number) => {
      throw new Error(`the snapshot's warm-up tried to exit (${code})`)
    }),
  ]
  const listeners = new Map(SIGNALS.map((signal) => [signal, process.listeners(signal)]))
  // Each command watches stdout for write errors (cli/stdout.ts).
  const stdoutErrorListeners = process.stdout.listeners('error')
  const run = async (...args: string[]): Promise<string> => {
    output = ''
    await cli.execute({args: [args[0], '--endpoints', endpoint, ...args.slice(1)], loadOptions})
    return output.trim()
  }
  try {
    await cli.execute({args: ['--version'], loadOptions})
    const token = await run('lock', KEY, '--lease', '30s')
    // Not the path a run takes (the lockd did not answer as it should): build without it.
    if (!/^[\w-]{16,}$/.test(token)) throw new Error(`the warm-up's lock printed ${JSON.stringify(token)}, not a token`)
    await run('lock', KEY) // held: the refusal's path
    await run('status', KEY)
    await run('status', KEY, '--json')
    await run('renew', KEY, '--token', token)
    await run('unlock', KEY, '--token', token)
    await run('lock', KEY, '--json')
    await run('unlock', KEY, '--force')
  } finally {
    for (const undo of restore) undo()
    process.exitCode = undefined
    for (const signal of SIGNALS) {
      const before = new Set(listeners.get(signal))
      for (const listener of process.listeners(signal)) if (!before.has(listener)) process.removeListener(signal, listener)
    }
    process.stdout.removeAllListeners('error')
    for (const listener of stdoutErrorListeners) process.stdout.on('error', listener as (...args: unknown[]) => void)
  }
}

/** Gives an object its own property `name` = value; the function returned puts back what was there. */
function override(target: object, name: string, value: unknown): () => void {
  const own = Object.getOwnPropertyDescriptor(target, name)
  Object.defineProperty(target, name, {value, configurable: true, writable: true})
  return () => {
    if (own) Object.defineProperty(target, name, own)
    else Reflect.deleteProperty(target, name)
  }
}
