import {spawn, type ChildProcess} from 'node:child_process'
import {existsSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {afterEach, expect} from 'vitest'
import {ROOT} from '../helpers/processes.js'
import {check, parseWrites, type ProtectedWrite} from './check.js'

/** The workers of the randomized fault tests (worker.mjs), stopped after each test however it ends. */
const WORKER = join(ROOT, 'test', 'fault', 'worker.mjs')
const running = new Set<ChildProcess>()
afterEach(() => {
  for (const child of running) {
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  }
  running.clear()
})

/**
 * One worker: `keys` is worker.mjs's KEYS, comma-separated: `KEY`, `KEY:N` for a semaphore of N,
 * or `KEY:rw` for a lock it takes shared or exclusive at random.
 */
export function startWorker(options: {endpoint: string; log: string; mode: string; keys: string; seed: number; leaseMs?: number}): ChildProcess {
  const args = [WORKER, options.endpoint, options.log, options.mode, options.keys, String(options.seed)]
  if (options.leaseMs !== undefined) args.push(String(options.leaseMs))
  const child = spawn(process.execPath, args, {stdio: ['ignore', 'ignore', 'inherit']})
  running.add(child)
  return child
}

/** Every protected write the workers logged so far. */
export function readWrites(logs: string[]): ProtectedWrite[] {
  return logs.flatMap((log) => (existsSync(log) ? parseWrites(readFileSync(log, 'utf8')) : []))
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The verdict of one seeded run: nothing the locks should have prevented, and a run that did
 * something (several grants written under, the semaphore granted more than twice, faults made).
 */
export function expectSafeRun(options: {writes: ProtectedWrite[]; semaphore: string; limit: number; readWrite: string; faults: string[]; seed: number}): void {
  const {writes, semaphore, readWrite, faults} = options
  const verdict = check(writes, {[semaphore]: options.limit}, [readWrite])
  const context = `seed ${options.seed}; faults: ${faults.join('; ')}`
  expect(verdict.overlaps, context).toEqual([])
  expect(verdict.repeatedFences, context).toEqual([])
  expect(verdict.fenceOrder, context).toEqual([])
  expect(verdict.staleWrites, context).toBe(0)
  expect(verdict.grants, context).toBeGreaterThan(5)
  expect(new Set(writes.filter((w) => w.key === semaphore).map((w) => w.token)).size, context).toBeGreaterThan(2)
  const readWrites = writes.filter((w) => w.key === readWrite)
  expect(new Set(readWrites.filter((w) => w.shared).map((w) => w.token)).size, context).toBeGreaterThan(1)
  expect(new Set(readWrites.filter((w) => !w.shared).map((w) => w.token)).size, context).toBeGreaterThan(0)
  expect(faults.length, context).toBeGreaterThan(3)
}
