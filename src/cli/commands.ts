/**
 * Every command of the CLI, and what oclif finds by name in the module its package.json points to
 * (the "explicit" strategy): COMMANDS, the command-not-found hook and the help class. Re-exported
 * by the bundle's entry (src/bundle/lockctl.ts) and evaluated into the start-up snapshot
 * (src/snapshot/entry.ts): one list for both.
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
export {LockctlHelp} from './help.js'

export const COMMANDS = {completion: Completion, help: Help, hold: Hold, lock: Lock, renew: Renew, repl: Repl, server: Server, status: Status, unlock: Unlock, watch: Watch}
