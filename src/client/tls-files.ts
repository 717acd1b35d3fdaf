import {readFileSync} from 'node:fs'
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

/** What each file must hold: Node's TLS takes PEM only, and ignores a file without it in silence. */
const PEM = {
  cacert: {block: /-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----/, what: 'PEM certificate (-----BEGIN CERTIFICATE-----)'},
  cert: {block: /-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----/, what: 'PEM certificate (-----BEGIN CERTIFICATE-----)'},
  key: {block: /-----BEGIN ([A-Z]+ )?PRIVATE KEY-----/, what: 'PEM private key (-----BEGIN PRIVATE KEY-----)'},
} as const

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
  const read = (flag: keyof typeof PEM): Buffer | undefined => {
    const path = paths[flag]
    if (path === undefined) return undefined
    let data: Buffer
    try {
      data = readFileSync(path)
    } catch (error) {
      throw new BadInputError(`--${flag}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
    }
    if (!PEM[flag].block.test(data.toString('latin1'))) throw new BadInputError(`--${flag}: ${path} holds no ${PEM[flag].what}`)
    return data
  }
  const files: TlsFiles = {}
  const ca = read('cacert')
  const cert = read('cert')
  const key = read('key')
  if (ca) files.ca = ca
  if (cert) files.cert = cert
  if (key) files.key = key
  return files
}

/** Whether any TLS file is given: each of them switches a TCP endpoint to TLS. */
export function anyTlsFile(paths: TlsFilePaths): boolean {
  return paths.cacert !== undefined || paths.cert !== undefined || paths.key !== undefined
}
