import {X509Certificate} from 'node:crypto'
import {createSecureContext, type SecureContextOptions} from 'node:tls'
import {readPemFile, type PemKind} from '../util/pem.js'
import {ServerStartError} from './errors.js'

/** lockd's TLS files, as paths: its certificate and key, and the CA of client certificates. */
export interface ServerTlsPaths {
  cert: string
  key: string
  clientCa?: string
}

/**
 * Read lockd's TLS files (at start, and again on SIGHUP) and check that they make a working
 * context, so that a mistake is one line naming the flag (exit 1 at start; on SIGHUP the old files
 * stay in force) rather than OpenSSL's text with a stack, or — a client CA file that is not
 * PEM — a lockd that refuses every client certificate without saying why.
 */
export function readServerTls(paths: ServerTlsPaths): SecureContextOptions {
  const read = (path: string, flag: string, kind: PemKind) => readPemFile(path, flag, kind, (message) => new ServerStartError(message))
  const files: SecureContextOptions = {
    cert: read(paths.cert, '--tls-cert', 'certificate'),
    key: read(paths.key, '--tls-key', 'privateKey'),
    ...(paths.clientCa ? {ca: read(paths.clientCa, '--tls-client-ca', 'certificate')} : {}),
  }
  try {
    createSecureContext(files)
  } catch (error) {
    const {code, message} = error as NodeJS.ErrnoException
    if (code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH') throw new ServerStartError(`--tls-key ${paths.key} is not the private key of --tls-cert ${paths.cert}`)
    if (code === 'ERR_OSSL_BAD_DECRYPT' || code === 'ERR_MISSING_PASSPHRASE')
      throw new ServerStartError(`--tls-key ${paths.key} is encrypted: lockd takes an unencrypted key (openssl pkey -in KEY -out PLAIN)`)
    throw new ServerStartError(`--tls-cert ${paths.cert} / --tls-key ${paths.key}: ${message.replace(/^error:[0-9A-F]+:/, '')}`)
  }
  return files
}

/** How long before its end a certificate is said to be expiring: time to renew it unhurried. */
const EXPIRY_WARNING_MS = 14 * 24 * 3600 * 1000

/**
 * What is wrong with the dates of lockd's certificate, if anything: one expired (or not yet
 * valid) is served all the same — the files are whole, and refusing to start would take every
 * plain lock down with it — but every client refuses it, and the SRE should hear so from lockd,
 * not from each client. Read at start and on SIGHUP; `now` in wall-clock milliseconds.
 */
export function certificateDatesProblem(certPem: string | Buffer, path: string, now: number): string | null {
  let cert: X509Certificate
  try {
    cert = new X509Certificate(certPem)
  } catch {
    return null
  }
  const from = Date.parse(cert.validFrom)
  const to = Date.parse(cert.validTo)
  const day = (at: number) => new Date(at).toISOString().slice(0, 10)
  if (now < from) return `--tls-cert ${path} is not valid before ${day(from)}: clients refuse it until then (is this machine's clock right?)`
  if (now >= to) return `--tls-cert ${path} expired on ${day(to)}: clients refuse it; renew it, then SIGHUP lockd`
  if (to - now < EXPIRY_WARNING_MS) return `--tls-cert ${path} expires on ${day(to)}, in ${Math.ceil((to - now) / 86_400_000)} day(s): renew it, then SIGHUP lockd`
  return null
}
