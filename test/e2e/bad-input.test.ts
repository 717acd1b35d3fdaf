import {join} from 'node:path'
import {pathToFileURL} from 'node:url'
import {afterEach, beforeAll, describe, expect, it, vi} from 'vitest'

/**
 * Bad input, parsed in-process by the built CLI (dist/bundle: what `bin/run.js` runs): each
 * row is one line on stderr, exit 2, nothing on stdout, and nothing sent anywhere. A few of
 * these also run as real processes in cli.test.ts; here they cost milliseconds each.
 */
type Bundle = {execute(options: {dir: string; args: string[]}): Promise<unknown>; settings: {enableAutoTranspile?: boolean}}
const BIN = pathToFileURL(join(import.meta.dirname, '../../bin/run.js')).href
let bundle: Bundle

beforeAll(async () => {
  bundle = (await import(pathToFileURL(join(import.meta.dirname, '../../dist/bundle/lockctl.js')).href)) as Bundle
  bundle.settings.enableAutoTranspile = false
  process.env.OCLIF_DISABLE_ENGINE_WARNING = '1'
  // oclif's flush waits on 'drain' once per run: many runs in one process are not a leak.
  process.stdout.setMaxListeners(0)
  process.stderr.setMaxListeners(0)
})

afterEach(() => {
  vi.restoreAllMocks()
  process.exitCode = undefined
})

/** Run `lockctl ARGS` in this process: what it wrote and the exit code it set (or exited with). */
async function runInProcess(args: string[]): Promise<{code: number; stdout: string; stderr: string}> {
  let stdout = ''
  let stderr = ''
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => ((stdout += chunk.toString()), true))
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => ((stderr += chunk.toString()), true))
  class Exit extends Error {
    constructor(readonly code: number) {
      super(`exit ${code}`)
    }
  }
  // The first exit is the process's end; what oclif does after our throw would never run.
  let exited: number | undefined
  vi.spyOn(process, 'exit').mockImplementation((code?: number | string | null) => {
    exited ??= Number(code ?? 0)
    throw new Exit(exited)
  })
  // No endpoint from the developer's environment: bad input must fail before any connection.
  const saved = process.env.LOCKCTL_ENDPOINTS
  process.env.LOCKCTL_ENDPOINTS = 'lockd://127.0.0.1:1'
  process.exitCode = undefined
  let code: number
  try {
    await bundle.execute({dir: BIN, args})
    code = exited ?? Number(process.exitCode ?? 0)
  } catch (error) {
    if (!(error instanceof Exit)) throw error
    code = exited ?? error.code
  } finally {
    process.env.LOCKCTL_ENDPOINTS = saved
    vi.restoreAllMocks()
  }
  return {code, stdout, stderr}
}

describe('bad input, in-process', () => {
  it.each([
    [['lock', ''], /KEY "": a key must not be empty/],
    [['lock', 'a\u0001b'], /control characters/],
    [['lock', 'x'.repeat(513)], /^lockctl: KEY "x{40}…": a key is at most 512 bytes of UTF-8 \(this one is 513\)$/m],
    [['lock', 'k', '--lease', 'abc'], /--lease: "abc" is not a duration/],
    [['lock', 'k', '--lease', '30'], /a bare number has no unit: write 30s/],
    [['lock', 'k', '--lease', '200ms'], /--lease: 200ms is too short; the minimum is 1s/],
    [['lock', 'k', '--lease', '25h'], /--lease: 25h is too long; the maximum is 24h/],
    [['lock', 'k', '--wait', 'soon'], /--wait: "soon" is not a duration.*or forever/],
    [['lock', 'k', '--limit', '0'], /--limit: "0" is not a whole number from 1 to 10000/],
    [['lock', 'k', '--limit', '2.5'], /--limit: "2.5" is not a whole number/],
    [['hold', 'k', '--limit', '3', '--shared', '--', 'true'], /no shared mode/],
    [['unlock', 'k', '--token', 'has space'], /--token: .*characters/],
    [['unlock', 'k'], /missing --token/],
    [['lock', 'k', '--endpoints', 'localhost:7070'], /endpoint "localhost:7070": no scheme/],
    [['lock', 'k', '--endpoints', 'ftp://x'], /unknown scheme "ftp"/],
    [['server', '--in-memory', '--listen', '127.0.0.1:0', '--admin', 'alice'], /^lockctl: --admin names a user: give --auth-file \(or --tls-client-ca, whose certificates name their users\) too$/m],
    [['lock', 'k', '--endpoints', `unix:///tmp/${'s'.repeat(110)}.sock`], /a unix socket path is at most 107 bytes, and this one is 120/],
    [['hold', 'k', '--retry', 'often', '--', 'true'], /--retry: "often" is not a list of durations/],
    [['hold', 'k', '--kill-signal', 'SIGNOPE', '--', 'true'], /--kill-signal: "SIGNOPE" is not a signal/],
    [['hold', 'k', '--kill-signal', '99', '--', 'true'], /--kill-signal: "99" is not a signal/],
    [['lock', 'k', '--user', ''], /^lockctl: --user: a user name must not be empty$/m],
    [['hold', 'k', '--'], /missing command after --/],
    [['status', 'k', '--prefix', 'p/'], /give KEY or --prefix, not both/],
    [['status', '--token', 'abcdefghijkl'], /--token needs KEY/],
    [['lokc', 'k'], /^lockctl: unknown command "lokc"; did you mean lock\?$/m],
    [['z'.repeat(5000)], /^lockctl: unknown command "z{40}…"; commands: /m],
    [['help', 'lokc'], /^lockctl: unknown command "lokc"; did you mean lock\?$/m],
    [['help', 'constructor'], /^lockctl: unknown command "constructor"; commands: /m],
    // help and completion are not lockctl's base command: oclif's boxed text (with a stack and exit 1 for help).
    [['help', '--owner', 'x'], /^lockctl: Nonexistent flag: --owner \(see --help\)$/m],
    [['completion', 'nope'], /^lockctl: Expected nope to be one of: bash, zsh, fish \(see --help\)$/m],
    [['completion'], /^lockctl: missing SHELL \(see --help\)$/m],
    [['lock', 'k', '--nope'], /Nonexistent flag: --nope/],
    [['server', '--listen', 'nope'], /--listen: "nope" is not HOST:PORT/],
    [['lock'], /^lockctl: missing KEY \(see --help\)$/m],
    [['watch', 'k', '--prefix', 'p/'], /give KEY or --prefix, not both/],
  ])('%j exits 2 with one line', async (args, message) => {
    const result = await runInProcess(args)
    expect(result.stderr).toMatch(message)
    expect(result.code, result.stderr).toBe(2)
    expect(result.stderr.trim().split('\n'), result.stderr).toHaveLength(1)
    expect(result.stdout).toBe('')
  })
})

describe('help asked with stray words after the command', () => {
  it.each([[['server', '-h', '1s', ',']], [['repl', '--help', 'x', 'y']], [['help', 'lock', 'extra']]])('%j: the command’s help, exit 0', async (args) => {
    // oclif joined the words into one command id ("server:1s:,") and printed a boxed "not found"
    // on stderr, exit 2. (The help itself goes out through console.log, past this capture.)
    const result = await runInProcess(args)
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
  })
})
