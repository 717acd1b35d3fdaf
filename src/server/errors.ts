import {makeDirectories} from '../util/fs.js'

/** lockd could not start; the message says why in one line. Exit code 1 from the CLI. */
export class ServerStartError extends Error {
  readonly exitCode = 1
}

/** A listener or the data directory is already owned by another lockd. */
export class AlreadyRunningError extends ServerStartError {}

/**
 * Open the data directory, saying in one line (exit 1) why it cannot be used when the file
 * system refuses: the directory is a file, a log or the fence mark is a directory, a file cannot
 * be read (docs/recovery.md, "When lockd refuses to start"). Damage to the contents is the log's
 * own LogCorruptError, which passes through as it is.
 */
export async function unreadableAsStartError<T>(dataDir: string, open: () => Promise<T>): Promise<T> {
  try {
    return await open()
  } catch (error) {
    const {code, syscall, path} = error as NodeJS.ErrnoException
    if (typeof code !== 'string' || typeof syscall !== 'string') throw error
    const what = FS_ERRORS[code] ?? code
    throw new ServerStartError(`--data-dir ${dataDir}: cannot ${syscall} ${path ?? 'a file in it'}: ${what} (${code}); refusing to start`)
  }
}

/** What the file-system errors a damaged or misplaced data directory gives mean, in words. */
const FS_ERRORS: Record<string, string> = {
  ENOTDIR: 'not a directory',
  EISDIR: 'a directory where a file belongs',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on the device',
  EIO: 'input/output error',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'name too long',
}

/** mkdir -p of a directory lockd needs (`what`: the flag that names it), or one line saying why not (exit 1). */
export function makeDirectoriesOrStartError(what: string, dir: string): void {
  try {
    makeDirectories(dir)
  } catch (error) {
    const {code, path} = error as NodeJS.ErrnoException
    throw new ServerStartError(`${what}: cannot create ${path ?? dir}: ${code ?? (error as Error).message}`)
  }
}
