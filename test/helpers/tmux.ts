import {spawnSync} from 'node:child_process'
import {join} from 'node:path'
import {expect} from 'vitest'
import {LAUNCHER, eventually, tempDir} from './processes.js'

/** Whether tmux is installed; CI installs it, so there a missing tmux is an error, not a skip. */
export const hasTmux = spawnSync('tmux', ['-V']).status === 0

export interface Terminal {
  /** tmux send-keys: text, or key names such as Enter, Tab, C-c, Up. */
  keys(...keys: string[]): void
  /** Wait for the screen to show `pattern`; on failure the error shows the screen. */
  waitScreen(pattern: RegExp, timeoutMs?: number): Promise<unknown>
  screen(): string
  /** HOME of the lockctl process (its state directory is under it). */
  home: string
}

/**
 * Run `lockctl ARGS` in a real terminal (a detached tmux session, 120x40), then `run`.
 * tmux drops trailing blanks: a prompt "lockctl> " shows as "lockctl>" at the end of a line.
 */
export async function inTerminal(args: string, environment: NodeJS.ProcessEnv, run: (terminal: Terminal) => Promise<void>): Promise<void> {
  if (!hasTmux) throw new Error('tmux is required in CI (apt-get install tmux)')
  const dir = tempDir()
  const socket = join(dir, 'tmux.sock')
  const session = 'lockctl'
  const t = (...tmuxArgs: string[]) => spawnSync('tmux', ['-S', socket, ...tmuxArgs], {encoding: 'utf8'})
  const screen = () => t('capture-pane', '-p', '-t', session, '-S', '-100').stdout
  const waitScreen = (pattern: RegExp, timeoutMs = 10_000) =>
    eventually(() => pattern.test(screen()), timeoutMs).catch((error: Error) => {
      throw new Error(`${error.message}: waiting for ${pattern} on the screen:\n${screen()}`)
    })
  const home = join(dir, 'home')
  const variables = Object.entries({...environment, HOME: home, XDG_STATE_HOME: `${home}/state`})
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${name}='${String(value).replaceAll("'", "'\\''")}'`)
  // A person at a terminal: no CI variable (with it, spinners print one plain line instead).
  const command = `env -u CI ${variables.join(' ')} ${LAUNCHER} ${args}; echo "exited $?"; sleep 30`
  expect(t('new-session', '-d', '-s', session, '-x', '120', '-y', '40', command).status).toBe(0)
  try {
    await run({keys: (...keys) => void t('send-keys', '-t', session, ...keys), waitScreen, screen, home})
  } finally {
    t('kill-server')
  }
}
