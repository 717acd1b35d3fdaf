/**
 * What a failed TLS handshake means to the user, decided by Node's and OpenSSL's error codes
 * (never by message text), with what to do about it. Shared by lockd's connection and the etcd
 * backend's diagnosis (gRPC reports only a message, so that backend asks the server itself).
 *
 * `service`: who is on the other end ("lockd", "etcd"); `plainScheme`: its scheme without TLS.
 * Undefined for a code that says nothing about TLS.
 */
export function describeTlsError(error: NodeJS.ErrnoException, service: string, plainScheme: string): string | undefined {
  switch (error.code) {
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      // What OpenSSL says when the answer to its TLS handshake is not TLS.
      return `the server does not speak TLS (for a plain ${service}, use ${plainScheme} without --cacert)`
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
      return `${error.message}: ${service}'s certificate is not signed by a CA this client trusts (give that CA with --cacert)`
    case 'CERT_HAS_EXPIRED':
    case 'CERT_NOT_YET_VALID':
      return `${error.message}: ${service}'s certificate is outside its validity dates (renew it${service === 'lockd' ? ', then SIGHUP lockd' : ''})`
    case 'ERR_TLS_CERT_ALTNAME_INVALID': {
      // Node's text ends "... is not in the cert's list: " when the list is of the other kind.
      const names = (error as NodeJS.ErrnoException & {cert?: {subjectaltname?: string}}).cert?.subjectaltname
      return `${service}'s certificate is not for this address${names ? ` (it names ${names})` : ''}: connect by one of its names, or add this one to it`
    }
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
    case 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE':
      return `${service} requires a client certificate: give --cert and --key (signed by the CA ${service} trusts for clients)`
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
    case 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED':
    case 'ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR':
      return `${service} refused this client's certificate (is it signed by the CA ${service} trusts for clients, and still valid?)`
    default:
      return undefined
  }
}
