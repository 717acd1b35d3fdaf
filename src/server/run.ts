import {isIP} from 'node:net'
import {AlreadyRunningError, LockServer, type LockServerOptions} from './lockd.js'

export {AlreadyRunningError}

/**
 * Run lockd in the foreground until SIGTERM/SIGINT (or idle exit): the shared body of
 * `lockctl server` and of the embedded daemon. Resolves when the server has stopped.
 */
export async function runServer(options: LockServerOptions, announce = true): Promise<void> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`))
  const server = new LockServer({...options, log})
  await server.start()
  const stop = (signal: string) => {
    log(`lockd: ${signal}, shutting down`)
    void server.close()
  }
  const onTerm = () => stop('SIGTERM')
  const onInt = () => stop('SIGINT')
  process.on('SIGTERM', onTerm)
  process.on('SIGINT', onInt)
  // A closed terminal must not take the server down; an operator's SIGHUP re-reads the auth
  // file and the TLS files.
  const onHup = () => server.reload()
  process.on('SIGHUP', onHup)
  // Announced only now: whoever waits for this line (systemd, a script, a test) may signal at once.
  if (announce) {
    const where = [
      ...server.addresses.tcp.map((a) => `${options.tls ? 'lockds' : 'lockd'}://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`),
      ...(server.addresses.socket ? [`unix://${server.addresses.socket}`] : []),
    ]
    log(
      `lockd ${process.pid} listening on ${where.join(', ')}; ` +
        (options.dataDir ? `state in ${options.dataDir}` : 'state in memory only (no --data-dir)') +
        (server.metricsPort !== undefined ? `; metrics on http://${options.metrics!.host}:${server.metricsPort}/metrics` : '') +
        (options.authFile ? `; users from ${options.authFile}` : ''),
    )
    const exposed = options.authFile && !options.tls ? server.addresses.tcp.filter((a) => !isLoopback(a.host)) : []
    if (exposed.length > 0) {
      log(`lockd: warning: passwords reach ${exposed.map((a) => `${a.host}:${a.port}`).join(', ')} in clear text (no TLS): give --tls-cert and --tls-key, or listen on loopback or a unix socket`)
    }
  }
  try {
    await server.closed
  } finally {
    process.off('SIGTERM', onTerm)
    process.off('SIGINT', onInt)
    process.off('SIGHUP', onHup)
  }
}

/** An address only this machine reaches (127.0.0.0/8, ::1, ::ffff:127.x): where a clear-text password does not travel. */
export function isLoopback(host: string): boolean {
  if (isIP(host) === 4) return host.startsWith('127.')
  const lower = host.toLowerCase()
  return lower === '::1' || lower.startsWith('::ffff:127.')
}
