import {mkdirSync, statSync} from 'node:fs'
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

/**
 * The permission bits of the file `path` that let every user read (0o004) or write (0o002) it,
 * and all its bits in octal for a message ("644"); null when it is not a file one can look at
 * (a directory is refused for what it is, elsewhere).
 */
export function openTo(path: string): {read: boolean; write: boolean; mode: string} | null {
  try {
    const stat = statSync(path)
    if (!stat.isFile()) return null
    const mode = stat.mode & 0o777
    return {read: (mode & 0o004) !== 0, write: (mode & 0o002) !== 0, mode: mode.toString(8)}
  } catch {
    return null
  }
}

/** The longest path a unix socket can have on Linux: `sun_path` is 108 bytes, with its NUL. */
export const MAX_SOCKET_PATH_BYTES = 107

/**
 * Why `path` cannot name a unix socket, or null. A longer one is cut short on its way to the
 * kernel: lockd listened on the shortened path and then failed (a stack trace, exit 70), and a
 * client connected to the shortened one ("connection refused").
 */
export function socketPathProblem(path: string): string | null {
  const bytes = Buffer.byteLength(path)
  return bytes > MAX_SOCKET_PATH_BYTES ? `a unix socket path is at most ${MAX_SOCKET_PATH_BYTES} bytes, and this one is ${bytes}` : null
}
