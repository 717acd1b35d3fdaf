import {readFileSync} from 'node:fs'

/**
 * The PEM blocks a TLS file must hold, for the client's and lockd's checks alike: Node's TLS takes
 * PEM only, and a file without the block it needs is ignored in silence (or fails in OpenSSL's words).
 */
const PEM_BLOCKS = {
  certificate: {block: /-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----/, what: 'PEM certificate (-----BEGIN CERTIFICATE-----)'},
  privateKey: {block: /-----BEGIN ([A-Z]+ )?PRIVATE KEY-----/, what: 'PEM private key (-----BEGIN PRIVATE KEY-----)'},
} as const

export type PemKind = keyof typeof PEM_BLOCKS

/**
 * The file a TLS flag names, read now: a file that cannot be read, or that holds no PEM block of
 * its kind, is `fail`'s error (the client's usage error, lockd's start error) naming the flag.
 */
export function readPemFile(path: string, flag: string, kind: PemKind, fail: (message: string) => Error): Buffer {
  let data: Buffer
  try {
    data = readFileSync(path)
  } catch (error) {
    throw fail(`${flag}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
  }
  if (!PEM_BLOCKS[kind].block.test(data.toString('latin1'))) throw fail(`${flag}: ${path} holds no ${PEM_BLOCKS[kind].what}`)
  return data
}
