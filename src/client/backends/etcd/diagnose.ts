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
    const timer = setTimeout(() => done(undefined), timeoutMs)
    socket.once('secureConnect', () => done(secure ? undefined : 'the member serves TLS: use etcds:// (with --cacert for its CA)'))
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (!secure) return done(undefined)
      // A plain etcd's listener drops a TLS hello without a word.
      if (error.code === 'ECONNRESET') return done('the member closed the connection during the TLS handshake (if it does not serve TLS, use etcd:// without --cacert)')
      done(describeTlsError(error, 'etcd', 'etcd://'))
    })
  })
}
