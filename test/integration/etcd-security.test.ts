import {execFileSync, spawnSync} from 'node:child_process'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {beforeAll, expect, it} from 'vitest'
import {describeEtcd, startEtcd, type EtcdCluster} from '../helpers/etcd.js'
import {runCli, tempDir} from '../helpers/processes.js'

/** A CA and a server certificate for 127.0.0.1, made with openssl for this test only. */
function makeCertificates(dir: string): {ca: string; cert: string; key: string} {
  const file = (name: string) => join(dir, name)
  const openssl = (...args: string[]) => execFileSync('openssl', args, {stdio: 'pipe'})
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=lockctl test CA', '-keyout', file('ca-key.pem'), '-out', file('ca.pem'))
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', file('server-key.pem'), '-out', file('server.csr'))
  writeFileSync(file('san.cnf'), 'subjectAltName=IP:127.0.0.1\n')
  openssl('x509', '-req', '-in', file('server.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca-key.pem'), '-CAcreateserial', '-days', '1', '-extfile', file('san.cnf'), '-out', file('server.pem'))
  return {ca: file('ca.pem'), cert: file('server.pem'), key: file('server-key.pem')}
}

describeEtcd('etcd over TLS with authentication', () => {
  let etcd: EtcdCluster
  let certs: {ca: string; cert: string; key: string}
  let endpoint: string
  beforeAll(async () => {
    certs = makeCertificates(tempDir())
    etcd = await startEtcd(1, {tls: certs})
    const url = `https://127.0.0.1:${etcd.members[0].clientPort}`
    const etcdctl = (...args: string[]) => {
      const result = spawnSync('etcdctl', ['--cacert', certs.ca, '--endpoints', url, ...args], {encoding: 'utf8', input: ''})
      if (result.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${result.stderr}`)
    }
    etcdctl('user', 'add', 'root:root-secret')
    etcdctl('user', 'add', 'locker:locker-secret')
    etcdctl('role', 'add', 'locks')
    etcdctl('role', 'grant-permission', 'locks', '--prefix=true', 'readwrite', 'tls/')
    etcdctl('user', 'grant-role', 'locker', 'locks')
    etcdctl('auth', 'enable')
    endpoint = `etcd://127.0.0.1:${etcd.members[0].clientPort}`
  })

  it('locks with --cacert and --user (password from LOCKCTL_ETCD_PASSWORD)', async () => {
    const env = {LOCKCTL_ENDPOINTS: endpoint, LOCKCTL_ETCD_PASSWORD: 'locker-secret'}
    const lock = await runCli(['lock', 'tls/k', '--cacert', certs.ca, '--user', 'locker', '--json'], {env})
    expect(lock.code).toBe(0)
    const {token, fence} = JSON.parse(lock.stdout)
    expect(fence).toBeGreaterThan(0)
    // The same through environment variables.
    const viaEnv = {...env, LOCKCTL_ETCD_CACERT: certs.ca, LOCKCTL_ETCD_USER: 'locker'}
    expect((await runCli(['lock', 'tls/k', '--wait', '0'], {env: viaEnv})).code).toBe(1)
    expect((await runCli(['unlock', 'tls/k', '--token', token], {env: viaEnv})).code).toBe(0)
    // hold watches its own key (to notice a loss at once) and still ends when its command does.
    const hold = await runCli(['hold', 'tls/h', '--', 'true'], {env: viaEnv})
    expect(hold.stderr).toMatch(/released tls\/h/)
    expect(hold.code).toBe(0)
  })

  it('a wrong password is "not permitted" (exit 6, as on lockd), not an outage', async () => {
    const result = await runCli(['lock', 'tls/k', '--cacert', certs.ca, '--user', 'locker'], {env: {LOCKCTL_ENDPOINTS: endpoint, LOCKCTL_ETCD_PASSWORD: 'wrong'}})
    expect(result.stderr).toMatch(/^lockctl: .*etcd refused the credentials/)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.code).toBe(6)
  })

  it('a key outside the user\'s role is "not permitted" (exit 6) and says what is missing', async () => {
    const env = {LOCKCTL_ENDPOINTS: endpoint, LOCKCTL_ETCD_PASSWORD: 'locker-secret', LOCKCTL_ETCD_CACERT: certs.ca, LOCKCTL_ETCD_USER: 'locker'}
    for (const args of [
      ['lock', 'elsewhere/k'],
      ['hold', 'elsewhere/h', '--wait', '5s', '--', 'true'],
      ['status', 'elsewhere/k'],
    ]) {
      const result = await runCli(args, {env})
      expect(result.stderr, args.join(' ')).toMatch(/does not permit this user/)
      expect(result.code, args.join(' ')).toBe(6)
    }
  })

  it('--user without a password and no terminal: a clear usage error', async () => {
    const result = await runCli(['lock', 'tls/k', '--cacert', certs.ca, '--user', 'locker'], {env: {LOCKCTL_ENDPOINTS: endpoint}})
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/--user needs a password \(\$LOCKCTL_PASSWORD\)/)
  })

  it('TLS mistakes say what to do (exit 4, one line): a plain client on a TLS member, no CA for it, a TLS client on a plain member', async () => {
    const port = etcd.members[0].clientPort
    const plain = await startEtcd(1)
    try {
      for (const [args, message] of [
        [['--endpoints', `etcd://127.0.0.1:${port}`], /the member serves TLS: use etcds:\/\//],
        [['--endpoints', `etcds://127.0.0.1:${port}`], /etcd's certificate is not signed by a CA this client trusts \(give that CA with --cacert\)/],
        [
          ['--endpoints', `etcd://127.0.0.1:${plain.members[0].clientPort}`, '--cacert', certs.ca],
          /closed the connection during the TLS handshake \(if it does not serve TLS, use etcd:\/\/ without --cacert\)/,
        ],
      ] as const) {
        const result = await runCli(['lock', 'tls/x', ...args, '--timeout', '3s'])
        expect(result.stderr.trim().split('\n'), result.stderr).toHaveLength(1)
        expect(result.stderr, args.join(' ')).toMatch(message)
        expect(result.code).toBe(4)
      }
      // --user against a cluster without authentication: a flag to drop (exit 2), not an outage (4).
      const login = await runCli(['lock', 'tls/x', '--endpoints', `etcd://127.0.0.1:${plain.members[0].clientPort}`, '--user', 'bob'], {env: {LOCKCTL_PASSWORD: 'pw'}})
      expect(login.stderr).toMatch(/^lockctl: .*authentication is not enabled.*give no --user\n$/)
      expect(login.code).toBe(2)
    } finally {
      await plain.stop()
    }
  })

  it('a CA file that cannot be read is named in the error', async () => {
    const result = await runCli(['lock', 'tls/k', '--cacert', '/nonexistent/ca.pem'], {env: {LOCKCTL_ENDPOINTS: endpoint}})
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/--cacert: cannot read \/nonexistent\/ca\.pem: ENOENT/)
  })
})

/** A client certificate (and its key) for `name`, signed by `ca` or, without one, by itself. */
function makeClientCertificate(dir: string, name: string, ca?: {cert: string; key: string}): {cert: string; key: string} {
  const file = (suffix: string) => join(dir, `${name}-${suffix}`)
  const openssl = (...args: string[]) => execFileSync('openssl', args, {stdio: 'pipe'})
  if (!ca) {
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${name}`, '-keyout', file('key.pem'), '-out', file('cert.pem'))
    return {cert: file('cert.pem'), key: file('key.pem')}
  }
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', file('key.pem'), '-out', file('csr.pem'))
  writeFileSync(file('ext.cnf'), 'extendedKeyUsage=clientAuth\n')
  openssl('x509', '-req', '-in', file('csr.pem'), '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '1', '-extfile', file('ext.cnf'), '-out', file('cert.pem'))
  return {cert: file('cert.pem'), key: file('key.pem')}
}

describeEtcd('etcd that requires client certificates (--client-cert-auth)', () => {
  it('a signed certificate locks; none, or one from another CA, is one line saying which (exit 4)', async () => {
    const dir = tempDir()
    const certs = makeCertificates(dir)
    const signed = makeClientCertificate(dir, 'locker', {cert: certs.ca, key: join(dir, 'ca-key.pem')})
    const etcd = await startEtcd(1, {tls: {...certs, client: signed}, args: ['--client-cert-auth', '--trusted-ca-file', certs.ca]})
    try {
      const endpoint = `etcds://127.0.0.1:${etcd.members[0].clientPort}`
      const foreign = makeClientCertificate(dir, 'mallory')
      const good = await runCli(['lock', 'mtls/k', '--endpoints', endpoint, '--cacert', certs.ca, '--cert', signed.cert, '--key', signed.key])
      expect(good.code, good.stderr).toBe(0)
      for (const [files, message] of [
        [[], /^lockctl: etcds:\/\/\S+: lease grant: etcd requires a client certificate \(--client-cert-auth\): give --cert and --key, signed by the CA etcd trusts for clients$/],
        [
          ['--cert', foreign.cert, '--key', foreign.key],
          /^lockctl: etcds:\/\/\S+: lease grant: etcd refused this client's certificate \(is it signed by the CA etcd trusts for clients, and still valid\?\)$/,
        ],
      ] as const) {
        const refused = await runCli(['lock', 'mtls/k2', '--endpoints', endpoint, '--cacert', certs.ca, ...files, '--timeout', '3s'])
        expect(refused.code, refused.stderr).toBe(4)
        expect(refused.stderr.trim(), files.join(' ')).toMatch(message)
      }
    } finally {
      await etcd.stop()
    }
  })
})
