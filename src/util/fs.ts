import {mkdirSync} from 'node:fs'
import {dirname} from 'node:path'

/**
 * mkdir -p (mode 0700), one level at a time: Node's own recursive mkdirSync never returns for
 * some paths (e.g. under /proc), and a CLI or server that hangs is worse than one that says
 * what is wrong.
 */
export function makeDirectories(dir: string): void {
  try {
    mkdirSync(dir, {mode: 0o700})
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EEXIST') return
    if (code !== 'ENOENT' || dirname(dir) === dir) throw error
    makeDirectories(dirname(dir))
    try {
      mkdirSync(dir, {mode: 0o700})
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again
    }
  }
}
