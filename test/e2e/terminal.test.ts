import {spawnSync} from 'node:child_process'
import {describe, expect, it} from 'vitest'
import {LAUNCHER, runCli, sharedLockd} from '../helpers/processes.js'

/**
 * The CLI on a terminal (a pseudo-terminal made by `script`, from util-linux): a spinner while it
 * waits. A pseudo-terminal nobody sized reports a width of 0, as `script` without a terminal of its
 * own, some `docker exec -t` and CI runners do; ora then cleared an endless number of lines, so
 * `lock --wait 1s` spun a CPU and never gave up.
 */
describe('on a terminal', () => {
  const {env} = sharedLockd()

  /** The command's output and exit code, run on a new pseudo-terminal (first sized with `stty`, if asked). */
  function onTerminal(command: string, size?: {cols: number; rows: number}) {
    const sized = size ? `stty cols ${size.cols} rows ${size.rows}; ` : ''
    const run = spawnSync('script', ['-qec', `${sized}${command}`, '/dev/null'], {env: {...process.env, ...env}, encoding: 'utf8', timeout: 20_000})
    return {code: run.status, signal: run.signal, output: run.stdout}
  }

  it('waiting for a held lock: a spinner on a terminal that has a width, none on one of width 0, and the wait gives up in time on both', async () => {
    const held = await runCli(['lock', 'tty/held', '--lease', '60s'], {env})
    expect(held.code, held.stderr).toBe(0)
    for (const size of [undefined, {cols: 80, rows: 24}]) {
      for (const command of [`${LAUNCHER} lock tty/held --wait 1s`, `${LAUNCHER} hold tty/held --wait 1s -- true`]) {
        const started = Date.now()
        const waited = onTerminal(command, size)
        const label = `${command} on ${size ? `${size.cols}x${size.rows}` : 'a terminal of width 0'}`
        expect({code: waited.code, signal: waited.signal}, label).toEqual({code: 1, signal: null})
        expect(waited.output, label).toContain('gave up waiting for "tty/held" after 1s')
        // The spinner's line names what it waits for; only a terminal with a width shows it.
        expect(waited.output.includes('waiting for tty/held'), label).toBe(size !== undefined)
        expect(Date.now() - started, label).toBeLessThan(15_000)
      }
    }
  })
})
