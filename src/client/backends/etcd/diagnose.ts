import {isIP} from 'node:net'
import type {TlsFiles} from '../../tls-files.js'
import {describeTlsError} from '../../tls-errors.js'

/**
 * Why no etcd member answers when TLS may be the reason. gRPC reports a handshake failure as a
 * message only ("Failed to connect", or OpenSSL's text), so the member is asked directly with a
 * TLS handshake of the client's own, and the answer is decided by its error code:
 * - etcds:// (or --cacert): the handshake's error, said as for lockd (not signed by a trusted
 *   CA, not for this address, expired, not TLS at all);
 * - etcd://: a handshake that succeeds means the member serves TLS.
 * Undefined when the handshake tells nothing (a member that is down, a timeout).
 * Runs only after a first call failed, before any call succeeded: it costs a working client nothing.
 */
export async function diagnoseTls(member: {host: string; port: number}, secure: boolean, files: TlsFiles, timeoutMs: number): Promise<string | undefined> {
  const {connect} = await import('node:tls')
  return new Promise((resolve) => {
    const socket = connect({
      host: member.host,
      port: member.port,
      ALPNProtocols: ['h2'],
      ...(isIP(member.host) ? {} : {servername: member.host}),
      ...(secure ? files : {rejectUnauthorized: false}),
    })
    const done = (hint: string | undefined) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(hint)
    }
    let timer = setTimeout(() => done(undefined), timeoutMs)
    let handshaken = false
    socket.once('secureConnect', () => {
      if (!secure) return done('the member serves TLS: use etcds:// (with --cacert for its CA)')
      // TLS 1.3: the client's side of the handshake ends before the server has looked at the
      // client's certificate; a member that wants one (--client-cert-auth) says no just after.
      handshaken = true
      clearTimeout(timer)
      timer = setTimeout(() => done(undefined), CERTIFICATE_VERDICT_MS)
    })
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (!secure) return done(undefined)
      // A plain etcd's listener drops a TLS hello without a word.
      if (error.code === 'ECONNRESET' && !handshaken) return done('the member closed the connection during the TLS handshake (if it does not serve TLS, use etcd:// without --cacert)')
      // Without a certificate to refuse, a refusal means one is required (etcd says "bad certificate").
      if (files.cert === undefined && CERTIFICATE_REFUSALS.has(error.code ?? ''))
        return done('etcd requires a client certificate (--client-cert-auth): give --cert and --key, signed by the CA etcd trusts for clients')
      done(describeTlsError(error, 'etcd', 'etcd://'))
    })
  })
}

/** How long after its handshake a member is given to refuse the client's certificate (or its absence). */
const CERTIFICATE_VERDICT_MS = 500

/** The alerts a server sends for a client certificate it will not take, or did not get. */
const CERTIFICATE_REFUSALS = new Set(['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE'])
