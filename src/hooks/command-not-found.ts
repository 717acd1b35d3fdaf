import type {Hook} from '@oclif/core'
import {ExitCode} from '../cli/exit-codes.js'
import {quoteStart} from '../client/errors.js'

/**
 * `lockctl lokc`: one line in lockctl's own format (or JSON with --json), the closest command
 * as a hint, exit 2 — instead of oclif's boxed "command not found".
 */
const hook: Hook.CommandNotFound = async function ({id: fullId, argv}) {
  // With spaces as topic separators oclif joins the following words in: "lokc k" → "lokc:k".
  const id = fullId.split(':')[0]
  const known = this.config.commandIDs
  const closest = known.map((name) => ({name, distance: editDistance(id, name)})).sort((a, b) => a.distance - b.distance)[0]
  const hint = closest && closest.distance <= 2 ? `did you mean ${closest.name}?` : `commands: ${[...known].sort().join(', ')}`
  const message = `unknown command ${quoteStart(id)}; ${hint}`
  if (argv?.includes('--json')) {
    process.stdout.write(`${JSON.stringify({error: {code: 'BAD_INPUT', message, exitCode: ExitCode.USAGE}})}\n`)
  } else {
    process.stderr.write(`lockctl: ${message}\n`)
  }
  // oclif would otherwise go on to print its own error: stop here, output is already written.
  process.exit(ExitCode.USAGE)
}

/** Levenshtein distance (short words only). */
function editDistance(a: string, b: string): number {
  let previous = Array.from({length: b.length + 1}, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]
}

export default hook
