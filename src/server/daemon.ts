/**
 * Entry point of the embedded lockd that the CLI starts in the background. Kept free of oclif so
 * that it starts fast; `lockctl server` is the user-facing way to run the same server.
 *
 *   node dist/server/daemon.js --socket PATH --data-dir DIR [--idle-exit-ms N]
 */
import {parseArgs} from 'node:util'
import {DAMAGED_DATA_EXIT} from '../util/daemon-exit.js'
import {LogCorruptError} from './log-format.js'
import {AlreadyRunningError, runServer} from './run.js'

const {values} = parseArgs({
  options: {
    socket: {type: 'string'},
    'data-dir': {type: 'string'},
    'idle-exit-ms': {type: 'string'},
  },
})

try {
  await runServer({
    socket: values.socket,
    dataDir: values['data-dir'],
    idleExitMs: values['idle-exit-ms'] ? Number(values['idle-exit-ms']) : undefined,
    exitWhenSocketRemoved: true,
  })
  process.exit(process.exitCode ?? 0)
} catch (error) {
  process.stderr.write(`${new Date().toISOString()} lockd: ${(error as Error).message}\n`)
  // Losing a start race to another lockd is not a failure: the CLI connects to the winner.
  process.exit(error instanceof AlreadyRunningError ? 0 : error instanceof LogCorruptError ? DAMAGED_DATA_EXIT : 1)
}
