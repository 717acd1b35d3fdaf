import {setFlagsFromString} from 'node:v8'
import {runInNewContext} from 'node:vm'

/**
 * V8's full garbage collection as a function, or null where it cannot be had. Node gives it only
 * to a process started with --expose-gc; the flag set now is seen by contexts made after it, and
 * a new context's `gc` collects the whole isolate (what Jest does for --logHeapUsage). lockd
 * makes no other contexts.
 *
 * The collection also compacts: a plain one left half of the old generation's pages committed but
 * free (1M locks: 128 MB committed for 61 MB in use, ~65 MB more RSS), because V8 moves objects
 * only out of the emptiest pages. The flag that makes it compact is V8's, set for this collection
 * only; where it cannot be set, the collection is a plain one.
 */
export function fullCollection(): (() => void) | null {
  let gc: unknown
  try {
    setFlagsFromString('--expose-gc')
    gc = runInNewContext('gc')
  } catch {
    return null
  }
  if (typeof gc !== 'function') return null
  const collect = gc as () => void
  return () => {
    const compacting = setFlag('--compact-on-every-full-gc')
    try {
      collect()
    } finally {
      if (compacting) setFlag('--no-compact-on-every-full-gc')
    }
  }
}

function setFlag(flag: string): boolean {
  try {
    setFlagsFromString(flag)
    return true
  } catch {
    return false
  }
}
