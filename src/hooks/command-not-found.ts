import type {Hook} from '@oclif/core'
import {ExitCode} from '../cli/exit-codes.js'
import {unknownCommandMessage} from '../cli/unknown-command.js'

/**
 * `lockctl lokc`: one line in lockctl's own format (or JSON with --json), the closest command
 * as a hint, exit 2 — instead of oclif's boxed "command not found".
 */
const hook: Hook.CommandNotFound = async function ({id: fullId, argv}) {
  // With spaces as topic separators oclif joins the following words in: "lokc k" → "lokc:k".
  const message = unknownCommandMessage(fullId.split(':')[0], this.config.commandIDs)
  if (argv?.includes('--json')) {
    process.stdout.write(`${JSON.stringify({error: {code: 'BAD_INPUT', message, exitCode: ExitCode.USAGE}})}\n`)
  } else {
    process.stderr.write(`lockctl: ${message}\n`)
  }
  // oclif would otherwise go on to print its own error: stop here, output is already written.
  process.exit(ExitCode.USAGE)
}

export default hook
