import {quoteStart} from '../client/errors.js'

/**
 * The line for a command lockctl does not have (`lockctl lokc`, `lockctl help lokc`): the
 * closest command as a hint, or the list of them.
 */
export function unknownCommandMessage(id: string, known: readonly string[]): string {
  const closest = known.map((name) => ({name, distance: editDistance(id, name)})).sort((a, b) => a.distance - b.distance)[0]
  const hint = closest && closest.distance <= 2 ? `did you mean ${closest.name}?` : `commands: ${[...known].sort().join(', ')}`
  return `unknown command ${quoteStart(id)}; ${hint}`
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
