/**
 * The CLI as one module (bundled by scripts/bundle.js into dist/bundle/lockctl.js): oclif, its
 * dependencies and every command, so that a run loads one file instead of a few hundred.
 * oclif finds the commands through COMMANDS (its "explicit" strategy) in this same module, and
 * the command-not-found hook through commandNotFound; heavy modules stay lazy (separate chunks,
 * or left to node_modules: etcd3, prom-client, prompts, spinners, tables).
 */
import Completion from '../commands/completion.js'
import Help from '../commands/help.js'
import Hold from '../commands/hold.js'
import Lock from '../commands/lock.js'
import Renew from '../commands/renew.js'
import Repl from '../commands/repl.js'
import Server from '../commands/server.js'
import Status from '../commands/status.js'
import Unlock from '../commands/unlock.js'
import Watch from '../commands/watch.js'

export {execute, settings} from '@oclif/core'
export {default as commandNotFound} from '../hooks/command-not-found.js'
export {LockctlHelp} from '../cli/help.js'

export const COMMANDS = {completion: Completion, help: Help, hold: Hold, lock: Lock, renew: Renew, repl: Repl, server: Server, status: Status, unlock: Unlock, watch: Watch}
