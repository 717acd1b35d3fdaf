import {spawn} from 'node:child_process'
import {describe, expect, it} from 'vitest'
import {LAUNCHER, tempDir} from '../helpers/processes.js'
import {rng} from '../helpers/random.js'

/**
 * Random command lines (seeded, bounded; LOCKCTL_CLI_SEEDS=1,2 replays or adds seeds), run as
 * processes against a lock service that is not there: commands, flags and values drawn from what
 * users type and mistype. Whatever the line, lockctl never shows a stack trace or an internal
 * error (exit 70), and a refusal is one line. It found `help --owner x` (oclif's box, a stack
 * trace, exit 1) and `completion nope` (oclif's box).
 */

const SEEDS = (process.env.LOCKCTL_CLI_SEEDS ?? '1').split(',').map(Number)
const RUNS_PER_SEED = 60
const AT_ONCE = 8
/** A command that waits (hold or watch for a service that is not there) is stopped after this. */
const RUN_LIMIT_MS = 3000
const COMMANDS = ['lock', 'unlock', 'renew', 'status', 'hold', 'watch', 'repl', 'server', 'completion', 'help']
const FLAGS = [
  '--lease',
  '--wait',
  '--owner',
  '--token',
  '--json',
  '--export',
  '--force',
  '--yes',
  '--limit',
  '--shared',
  '--timeout',
  '--endpoints',
  '--cacert',
  '--cert',
  '--key',
  '--user',
  '--prefix',
  '--no-headers',
  '--conflict-exit-code',
  '--retry',
  '--kill-signal',
  '--grace',
  '--on-lost',
  '--quiet',
  '-q',
  '-h',
  '--watch',
  '--profile',
  '--listen',
  '--socket',
  '--in-memory',
  '--data-dir',
  '--max-connections',
  '--version',
  '--',
  '-',
]
const VALUES = [
  '',
  '0',
  '-1',
  '1',
  '1s',
  '500ms',
  '1e9',
  'NaN',
  '999999999999999999999',
  'x'.repeat(600),
  'é',
  '\u200b',
  'lockd://127.0.0.1:1',
  'etcd://127.0.0.1:1',
  'unix:///nonexistent.sock',
  'etcds://',
  'lockds://[::1',
  '/dev/null',
  '/etc/passwd',
  'ignore',
  'kill',
  'SIGTERM',
  '1s,2s',
  ',',
  'true',
  '%s%n',
  '$(id)',
  '../../x',
  'k',
  'a/b',
  'toString',
  '__proto__',
  '"',
  "'",
]
/** Commands that stream or serve: several lines on stderr are theirs to write. */
const STREAMING = new Set(['hold', 'watch', 'repl', 'server'])

interface Run {
  args: string[]
  code: number | null
  stderr: string
}

function run(args: string[], home: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(LAUNCHER, args, {
      env: {
        ...process.env,
        HOME: home,
        XDG_STATE_HOME: `${home}/state`,
        XDG_CONFIG_HOME: `${home}/config`,
        LOCKCTL_ENDPOINTS: 'lockd://127.0.0.1:1',
        LOCKCTL_TOKEN: undefined,
        LOCKCTL_KEY: undefined,
        LOCKCTL_PROFILE: undefined,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_LIMIT_MS)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({args, code, stderr})
    })
  })
}

describe('lockctl under random command lines', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: no stack trace, no internal error, a refusal in one line`, async () => {
      const random = rng(seed)
      const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)]
      const lines: string[][] = []
      for (let i = 0; i < RUNS_PER_SEED; i++) {
        const args = [pick(COMMANDS)]
        for (let n = Math.floor(random() * 5); n > 0; n--) {
          if (random() < 0.5) {
            args.push(pick(FLAGS))
            if (random() < 0.7) args.push(pick(VALUES))
          } else {
            args.push(pick(VALUES))
          }
        }
        // (A server that listens somewhere is stopped by the limit; never on a real data directory.)
        if (args[0] === 'server' && !args.includes('--in-memory')) args.push('--in-memory')
        lines.push(args)
      }
      const home = tempDir('lockctl-cli-fuzz-')
      const runs: Run[] = []
      for (let i = 0; i < lines.length; i += AT_ONCE) runs.push(...(await Promise.all(lines.slice(i, i + AT_ONCE).map((args) => run(args, home)))))
      for (const {args, code, stderr} of runs) {
        const what = `seed ${seed}: lockctl ${JSON.stringify(args)} (exit ${code}): ${stderr.slice(0, 300)}`
        expect(stderr, what).not.toMatch(/unexpected error|\n\s+at |TypeError|RangeError|ReferenceError|›/)
        expect(code, what).not.toBe(70)
        if (code !== 0 && code !== null && !STREAMING.has(args[0])) expect(stderr.trim().split('\n'), what).toHaveLength(1)
      }
    }, 120_000)
  }
})
