import {setFlagsFromString} from 'node:v8'
import {runInNewContext} from 'node:vm'

/**
 * V8's full garbage collection as a function, or null where it cannot be had. Node gives it only
 * to a process started with --expose-gc; the flag set now is seen by contexts made after it, and
 * a new context's `gc` collects the whole isolate (what Jest does for --logHeapUsage). lockd
 * makes no other contexts.
 */
export function fullCollection(): (() => void) | null {
  try {
    setFlagsFromString('--expose-gc')
    const gc: unknown = runInNewContext('gc')
    return typeof gc === 'function'
      ? () => {
          ;(gc as () => void)()
          ;(gc as () => void)()
        }
      : null
  } catch {
    return null
  }
}
