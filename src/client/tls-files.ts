import {readPemFile, type PemKind} from '../util/pem.js'
import {BadInputError} from './errors.js'

/** The PEM files of a TLS connection (lockds:// or etcd), as paths. */
export interface TlsFilePaths {
  cacert?: string
  cert?: string
  key?: string
}

/** The files read: `ca` verifies the server, `cert` and `key` are a client certificate. */
export interface TlsFiles {
  ca?: Buffer
  cert?: Buffer
  key?: Buffer
}

/** What each flag's file must hold. */
const KIND: Record<'cacert' | 'cert' | 'key', PemKind> = {cacert: 'certificate', cert: 'certificate', key: 'privateKey'}

/**
 * Read the PEM files now, so that a mistake is a usage error (exit 2) naming the flag, not a
 * handshake failure later: a file that cannot be read, a file with no PEM block of its kind (a
 * CA file that is not PEM made every server "unable to verify"), or a client certificate
 * without its key (or a key without its certificate), which was ignored.
 */
export function readTlsFiles(paths: TlsFilePaths): TlsFiles {
  if ((paths.cert === undefined) !== (paths.key === undefined)) {
    throw new BadInputError(`--${paths.cert === undefined ? 'key' : 'cert'} needs --${paths.cert === undefined ? 'cert' : 'key'}: a client certificate and its private key go together`)
  }
  const read = (flag: keyof typeof KIND): Buffer | undefined => {
    const path = paths[flag]
    return path === undefined ? undefined : readPemFile(path, `--${flag}`, KIND[flag], (message) => new BadInputError(message))
  }
  const [ca, cert, key] = [read('cacert'), read('cert'), read('key')]
  // Only the files given: the result is spread into tls.connect's options as it is.
  return {...(ca && {ca}), ...(cert && {cert}), ...(key && {key})}
}

/** Whether any TLS file is given: each of them switches a TCP endpoint to TLS. */
export function anyTlsFile(paths: TlsFilePaths): boolean {
  return paths.cacert !== undefined || paths.cert !== undefined || paths.key !== undefined
}
