import {spawn} from 'node:child_process'
import {createConnection, createServer, type Server, type Socket} from 'node:net'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {createCodec, encodeFrame, FrameDecoder} from '../../src/protocol/framing.js'
import {LAUNCHER, startLockd, tempDir, type LockdProcess} from '../helpers/processes.js'
import {rng} from '../helpers/random.js'

/**
 * A real lockd behind a proxy that damages some of what lockd sends (seeded, bounded;
 * LOCKCTL_ANSWER_SEEDS=1,2 replays or adds seeds): a message replaced by junk (nil, a number, a
 * list, an unknown type), a field removed, or a field given a value of another type, at any
 * depth. The commands users run go through it as processes. Whatever arrives, lockctl never shows
 * a stack trace or an internal error (exit 70), never prints "undefined" or the peer's control characters, and a refusal is one
 * line. Without the checks of src/protocol/server-messages.ts, a frame holding nil threw out of
 * the socket handler (a stack trace, exit 1) and an answer without its code came out as "lockd:
 * undefined".
 */

const SEEDS = (process.env.LOCKCTL_ANSWER_SEEDS ?? '1').split(',').map(Number)
const RUNS_PER_SEED = 40
const RUN_LIMIT_MS = 4000
/** How often a message from lockd is damaged. */
const DAMAGE = 0.3
const JUNK: unknown[] = [null, 0, -1, 1.5, 2 ** 53, 'x', '', '\u001b[2J\nrm -rf', true, [], {}, [1, 'a'], {t: 'res'}]
const STREAMING = new Set(['hold', 'watch'])

function damage(message: unknown, random: () => number): unknown {
  const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)]
  if (random() < 0.15) return pick([...JUNK, {t: 'nope'}, {t: 'push', ev: 'granted'}])
  // A path of nested maps and lists, then one change at its end.
  const copy = structuredClone(message) as Record<string, unknown>
  let node: Record<string, unknown> = copy
  for (;;) {
    const names = Object.keys(node)
    if (names.length === 0) return copy
    const name = pick(names)
    const child = node[name]
    if (child !== null && typeof child === 'object' && random() < 0.5) {
      node = child as Record<string, unknown>
      continue
    }
    if (random() < 0.4) delete node[name]
    else node[name] = pick(JUNK)
    return copy
  }
}

/** Forwards clients to lockd; damages some of lockd's messages on their way back. */
function damagingProxy(target: number, random: () => number): Promise<{server: Server; port: number}> {
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = createConnection({host: '127.0.0.1', port: target})
    sockets.add(client).add(upstream)
    const codec = createCodec()
    const decoder = new FrameDecoder(codec, 64 * 1024 * 1024)
    client.on('data', (chunk) => upstream.write(chunk))
    upstream.on('data', (chunk) => {
      for (const message of decoder.push(chunk)) client.write(encodeFrame(codec, random() < DAMAGE ? damage(message, random) : message, 64 * 1024 * 1024))
    })
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    for (const socket of [client, upstream]) socket.on('close', end).on('error', end)
  })
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      server.on('close', () => sockets.forEach((s) => s.destroy()))
      resolve({server, port: (server.address() as {port: number}).port})
    }),
  )
}

interface Run {
  args: string[]
  code: number | null
  stdout: string
  stderr: string
}

function run(args: string[], endpoint: string, home: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(LAUNCHER, args, {
      env: {...process.env, HOME: home, XDG_STATE_HOME: `${home}/state`, XDG_CONFIG_HOME: `${home}/config`, LOCKCTL_ENDPOINTS: endpoint, LOCKCTL_PROFILE: undefined},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_LIMIT_MS)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({args, code, stdout, stderr})
    })
  })
}

describe('lockctl against a lockd whose answers are damaged on the way', () => {
  let lockd: LockdProcess
  beforeAll(async () => {
    lockd = await startLockd()
  })
  afterAll(() => {
    lockd.child.kill('SIGKILL')
  })

  for (const seed of SEEDS) {
    it(`seed ${seed}: no stack trace, no internal error, no "undefined", a refusal in one line`, async () => {
      const random = rng(seed)
      const {server, port} = await damagingProxy(lockd.port, random)
      const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)]
      const key = () => pick(['k', 'a/b', 'deploy', 'x y'])
      const lines = Array.from({length: RUNS_PER_SEED}, () =>
        pick([
          ['lock', key(), '--json'],
          ['lock', key(), '--wait', '1s'],
          ['lock', key(), '--limit', '2', '--json'],
          ['lock', key(), '--shared'],
          ['unlock', key(), '--token', 'tok-abc'],
          ['unlock', key(), '--force', '--yes'],
          ['renew', key(), '--token', 'tok-abc', '--lease', '30s'],
          ['status'],
          ['status', '--json'],
          ['status', key(), '--json'],
          ['status', key(), '--token', 'tok-abc'],
          ['hold', key(), '--wait', '1s', '--', 'true'],
          ['watch', key()],
        ]),
      )
      const home = tempDir('lockctl-answers-fuzz-')
      const runs: Run[] = []
      try {
        // One at a time: the damage drawn for each message then follows from the seed alone.
        for (const args of lines) runs.push(await run(args, `lockd://127.0.0.1:${port}`, home))
      } finally {
        server.close()
      }
      for (const {args, code, stdout, stderr} of runs) {
        const what = `seed ${seed}: lockctl ${JSON.stringify(args)} (exit ${code}): ${stderr.slice(0, 300)}`
        expect(stderr, what).not.toMatch(/unexpected error|\n\s+at |TypeError|RangeError|ReferenceError/)
        expect(`${stdout}${stderr}`, what).not.toMatch(/\bundefined\b|\bNaN\b|\[object Object\]/)
        expect(code, what).not.toBe(70)
        // A terminal never gets the peer's control characters (an escape sequence, a new line).
        expect(`${stdout}${stderr}`, what).not.toMatch(new RegExp(`${String.fromCharCode(27)}|\\nrm -rf`))
        if (code !== 0 && code !== null && !STREAMING.has(args[0])) expect(stderr.trim().split('\n'), what).toHaveLength(1)
      }
      // Both damaged and whole answers got through (or the test shows nothing): some commands
      // were refused for what they were sent, some succeeded.
      expect(runs.some((r) => /cannot use|not lockd/.test(r.stderr))).toBe(true)
      expect(runs.some((r) => r.code === 0)).toBe(true)
    }, 120_000)
  }
})
