/**
 * The PEM blocks a TLS file must hold, for the client's and lockd's checks alike: Node's TLS takes
 * PEM only, and a file without the block it needs is ignored in silence (or fails in OpenSSL's words).
 */
export const PEM_BLOCKS = {
  certificate: {block: /-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----/, what: 'PEM certificate (-----BEGIN CERTIFICATE-----)'},
  privateKey: {block: /-----BEGIN ([A-Z]+ )?PRIVATE KEY-----/, what: 'PEM private key (-----BEGIN PRIVATE KEY-----)'},
} as const

export type PemKind = keyof typeof PEM_BLOCKS

/** Whether `data` holds a PEM block of this kind. */
export function holdsPem(data: Buffer, kind: PemKind): boolean {
  return PEM_BLOCKS[kind].block.test(data.toString('latin1'))
}
