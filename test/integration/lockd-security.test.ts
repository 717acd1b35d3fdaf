import {execFileSync, spawn, spawnSync} from 'node:child_process'
import {chmodSync, chownSync, copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync} from 'node:fs'
import type {Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {beforeAll, describe, expect, it} from 'vitest'
import {createCodec, encodeFrame} from '../../src/protocol/framing.js'
import {BIN, eventually, runCli, startLockd, tempDir, type CliResult} from '../helpers/processes.js'
import {idleSockets, rawConnection} from '../helpers/wire.js'

/** A CA, a server certificate for 127.0.0.1, client certificates, and a second (wrong) CA. */
function makeCertificates(dir: string) {
  const file = (name: string) => join(dir, name)
  const openssl = (...args: string[]) => execFileSync('openssl', args, {stdio: 'pipe'})
  const ca = (name: string) => openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${name}`, '-keyout', file(`${name}-key.pem`), '-out', file(`${name}.pem`))
  const signed = (name: string, cn: string, extensions: string, by = 'ca') => {
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', file(`${name}-key.pem`), '-out', file(`${name}.csr`))
    writeFileSync(file(`${name}.cnf`), extensions)
    openssl(
      'x509',
      '-req',
      '-in',
      file(`${name}.csr`),
      '-CA',
      file(`${by}.pem`),
      '-CAkey',
      file(`${by}-key.pem`),
      '-CAcreateserial',
      '-days',
      '1',
      '-extfile',
      file(`${name}.cnf`),
      '-out',
      file(`${name}.pem`),
    )
  }
  ca('ca')
  ca('other-ca')
  signed('server', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\n')
  signed('alice', 'alice', 'extendedKeyUsage=clientAuth\n')
  signed('named', 'localhost', 'subjectAltName=DNS:localhost\n')
  signed('mallory', 'mallory', 'extendedKeyUsage=clientAuth\n', 'other-ca')
  return {
    ca: file('ca.pem'),
    otherCa: file('other-ca.pem'),
    cert: file('server.pem'),
    key: file('server-key.pem'),
    aliceCert: file('alice.pem'),
    aliceKey: file('alice-key.pem'),
    namedCert: file('named.pem'),
    namedKey: file('named-key.pem'),
    malloryCert: file('mallory.pem'),
    malloryKey: file('mallory-key.pem'),
    notPem: file('named.cnf'),
  }
}

/** `lockctl server --hash-password`, the password piped on stdin. */
function hash(password: string): string {
  const result = spawnSync(process.execPath, [BIN, 'server', '--hash-password'], {input: `${password}\n`, encoding: 'utf8'})
  expect(result.status, result.stderr).toBe(0)
  return result.stdout.trim()
}

function oneLine(result: CliResult): string {
  const lines = result.stderr.trim().split('\n')
  expect(lines, result.stderr).toHaveLength(1)
  expect(result.stderr).not.toMatch(/\n\s+at /)
  return lines[0]
}

let certs: ReturnType<typeof makeCertificates>
beforeAll(() => {
  certs = makeCertificates(tempDir())
})

describe('lockd over TLS', () => {
  it('the right CA works; the wrong CA, a plain client on a TLS port and a TLS client on a plain port each fail in one line, exit 4, within the deadline', async () => {
    const secure = await startLockd({args: ['--tls-cert', certs.cert, '--tls-key', certs.key]})
    const plain = await startLockd()
    const tlsUrl = `lockds://127.0.0.1:${secure.port}`
    const ok = await runCli(['lock', 'tls/k', '--endpoints', tlsUrl, '--cacert', certs.ca])
    expect(ok.code, ok.stderr).toBe(0)
    // The test's certificates are good for one day: lockd says so when it starts.
    expect(secure.stderr()).toMatch(/lockd: warning: --tls-cert \S+server\.pem expires on \d{4}-\d\d-\d\d, in [12] day\(s\): renew it, then SIGHUP lockd/)
    // --cacert alone switches lockd:// to TLS too.
    expect((await runCli(['status', 'tls/k', '--endpoints', `lockd://127.0.0.1:${secure.port}`, '--cacert', certs.ca])).code).toBe(0)
    const started = Date.now()
    const failures = await Promise.all([
      runCli(['lock', 'tls/k2', '--endpoints', tlsUrl, '--cacert', certs.otherCa, '--timeout', '2s']),
      runCli(['lock', 'tls/k2', '--endpoints', tlsUrl, '--timeout', '2s']), // system CAs do not know ours
      runCli(['lock', 'tls/k2', '--endpoints', `lockd://127.0.0.1:${secure.port}`, '--timeout', '2s']),
      runCli(['lock', 'tls/k2', '--endpoints', `lockds://127.0.0.1:${plain.port}`, '--cacert', certs.ca, '--timeout', '2s']),
    ])
    for (const failure of failures) {
      expect(failure.code, failure.stderr).toBe(4)
      expect(oneLine(failure)).toMatch(/^lockctl: /)
    }
    // Each says what to do about it.
    for (const failure of failures.slice(0, 2)) expect(oneLine(failure)).toMatch(/: lockd's certificate is not signed by a CA this client trusts \(give that CA with --cacert\)$/)
    expect(oneLine(failures[2])).toBe(
      `lockctl: lockd://127.0.0.1:${secure.port}: closed before answering the hello (if it serves TLS, use lockds:// or --cacert; if not, it may have no room for more connections: see its log)`,
    )
    expect(oneLine(failures[3])).toBe(`lockctl: lockds://127.0.0.1:${plain.port}: the server does not speak TLS (for a plain lockd, use lockd:// without --cacert)`)
    expect(Date.now() - started).toBeLessThan(15_000) // never a hang
    expect(secure.stderr()).not.toMatch(/warning: every user can read/) // its key is 600
    await secure.stop()
    await plain.stop()
    // A private key every user can read: served, with a warning (anyone could pose as this lockd).
    const keyCopy = join(tempDir(), 'readable-key.pem')
    copyFileSync(certs.key, keyCopy)
    chmodSync(keyCopy, 0o644)
    const exposed = await startLockd({args: ['--tls-cert', certs.cert, '--tls-key', keyCopy]})
    expect(exposed.stderr()).toMatch(/lockd: warning: every user can read lockd's TLS private key .*readable-key\.pem \(mode 644\): chmod o-r/)
    await exposed.stop()
  })

  it('a certificate that does not name the address: one line saying which names it has, exit 4', async () => {
    const lockd = await startLockd({args: ['--tls-cert', certs.namedCert, '--tls-key', certs.namedKey]})
    const result = await runCli(['lock', 'tls/named', '--endpoints', `lockds://127.0.0.1:${lockd.port}`, '--cacert', certs.ca, '--timeout', '2s'])
    expect(result.code).toBe(4)
    expect(oneLine(result)).toBe(`lockctl: lockds://127.0.0.1:${lockd.port}: lockd's certificate is not for this address (it names DNS:localhost): connect by one of its names, or add this one to it`)
    await lockd.stop()
  })

  it('TLS files that are not what their flag needs: the client says so before connecting (exit 2), lockd before listening (exit 1), SIGHUP keeps the files in force', async () => {
    for (const [args, message] of [
      [['--cacert', certs.notPem], `^lockctl: --cacert: .*named\\.cnf holds no PEM certificate`],
      [['--cacert', certs.ca, '--cert', certs.aliceCert], '^lockctl: --cert needs --key: a client certificate and its private key go together$'],
      [['--cacert', certs.ca, '--key', certs.aliceKey], '^lockctl: --key needs --cert'],
      [['--cacert', certs.ca, '--cert', certs.aliceCert, '--key', certs.aliceCert], `^lockctl: --key: .*alice\\.pem holds no PEM private key`],
    ] as const) {
      for (const endpoint of ['lockds://127.0.0.1:1', 'etcd://127.0.0.1:1']) {
        const result = await runCli(['lock', 'tls/files', '--endpoints', endpoint, ...args])
        expect(result.code, result.stderr).toBe(2)
        expect(oneLine(result)).toMatch(new RegExp(message))
      }
    }
    for (const [args, message] of [
      [['--tls-cert', certs.notPem, '--tls-key', certs.key], `^lockctl: --tls-cert: .*named\\.cnf holds no PEM certificate`],
      [['--tls-cert', certs.cert, '--tls-key', certs.aliceKey], `^lockctl: --tls-key .*alice-key\\.pem is not the private key of --tls-cert .*server\\.pem$`],
      [['--tls-cert', certs.cert, '--tls-key', certs.key, '--tls-client-ca', certs.notPem], `^lockctl: --tls-client-ca: .*named\\.cnf holds no PEM certificate`],
    ] as const) {
      const result = await runCli(['server', '--listen', '127.0.0.1:0', '--in-memory', ...args])
      expect(result.code, result.stderr).toBe(1)
      expect(oneLine(result)).toMatch(new RegExp(message))
    }
    // A key replaced by one that does not match: the reload is refused, the old pair serves on.
    // The same reload's new user is refused with it: a reload is taken whole or not at all (it
    // put the users in force, then said "keeping the previous configuration").
    const dir = tempDir()
    const [cert, key, users] = [join(dir, 'cert.pem'), join(dir, 'key.pem'), join(dir, 'users')]
    writeFileSync(cert, readFileSync(certs.cert))
    writeFileSync(key, readFileSync(certs.key))
    writeFileSync(users, `bob:${hash('bob-secret')}\n`, {mode: 0o600})
    const lockd = await startLockd({args: ['--tls-cert', cert, '--tls-key', key, '--auth-file', users]})
    const as = (user: string) => ['--endpoints', `lockds://127.0.0.1:${lockd.port}`, '--cacert', certs.ca, '--user', user]
    writeFileSync(key, readFileSync(certs.aliceKey))
    writeFileSync(users, `bob:${hash('bob-secret')}\ncarol:${hash('carol-secret')}\n`)
    lockd.child.kill('SIGHUP')
    await eventually(() => expect(lockd.stderr()).toMatch(/reload failed, keeping the previous configuration: --tls-key .* is not the private key of --tls-cert/))
    expect(lockd.stderr()).not.toMatch(/reloaded/)
    const still = await runCli(['lock', 'tls/reload', ...as('bob')], {env: {LOCKCTL_PASSWORD: 'bob-secret'}})
    expect(still.code, still.stderr).toBe(0)
    const carolEarly = await runCli(['lock', 'tls/carol', ...as('carol')], {env: {LOCKCTL_PASSWORD: 'carol-secret'}})
    expect(carolEarly.code, carolEarly.stderr).toBe(6)
    // The key mended: the next SIGHUP takes both.
    writeFileSync(key, readFileSync(certs.key))
    lockd.child.kill('SIGHUP')
    await eventually(() => expect(lockd.stderr()).toMatch(/reloaded the TLS certificate and key/))
    expect(lockd.stderr()).toMatch(/reloaded .*users: 2 user\(s\)/)
    const carol = await runCli(['lock', 'tls/carol', ...as('carol')], {env: {LOCKCTL_PASSWORD: 'carol-secret'}})
    expect(carol.code, carol.stderr).toBe(0)
    await lockd.stop()
  })

  it('a flood of connections that never begin TLS, past the open-file limit, keeps nobody out, and each is closed within the hello time', async () => {
    // Before: lockd saw a TLS connection only once its handshake was done, so sockets that never
    // began one held every descriptor for Node's 120 s handshake timeout, and every client was
    // closed unanswered (exit 4) all that time.
    const lockd = await startLockd({args: ['--tls-cert', certs.cert, '--tls-key', certs.key], fileLimit: 120})
    const flood: Socket[] = []
    try {
      await idleSockets(lockd.port, 300, flood)
      // (Its first tries are closed unanswered: a stalled handshake gives its place up after 1 s.)
      const newcomer = await runCli(['lock', 'after-the-flood', '--wait', '5s', '--endpoints', `lockds://127.0.0.1:${lockd.port}`, '--cacert', certs.ca])
      expect(newcomer.code, newcomer.stderr).toBe(0)
      // Every flood socket is closed by lockd: made room for someone, or out of handshake time (10 s).
      await eventually(() => flood.every((socket) => socket.destroyed), 20_000)
      expect(lockd.stderr()).not.toMatch(/EMFILE|stopping|at .*\.js/)
      expect(lockd.child.exitCode).toBeNull()
    } finally {
      for (const socket of flood) socket.destroy()
      await lockd.stop()
    }
  })

  it('--tls-client-ca: a client without a certificate signed by it is refused; with one it works', async () => {
    const lockd = await startLockd({args: ['--tls-cert', certs.cert, '--tls-key', certs.key, '--tls-client-ca', certs.ca]})
    const url = `lockds://127.0.0.1:${lockd.port}`
    const without = await runCli(['lock', 'mtls/k', '--endpoints', url, '--cacert', certs.ca, '--timeout', '2s'])
    expect(without.code).toBe(4)
    expect(oneLine(without)).toMatch(/lockd requires a client certificate: give --cert and --key/)
    // Signed by another CA: TLS 1.3 lets the client finish its handshake, then lockd closes.
    const foreign = await runCli(['lock', 'mtls/k', '--endpoints', url, '--cacert', certs.ca, '--cert', certs.malloryCert, '--key', certs.malloryKey, '--timeout', '2s'])
    expect(foreign.code).toBe(4)
    expect(oneLine(foreign)).toMatch(/lockd refused this client's certificate/)
    const withCert = await runCli(['lock', 'mtls/k', '--endpoints', url, '--cacert', certs.ca, '--cert', certs.aliceCert, '--key', certs.aliceKey])
    expect(withCert.code, withCert.stderr).toBe(0)
    await lockd.stop()
  })
})

describe('lockd with users', () => {
  it('a flood of guessed passwords from one address is refused past 8 at once; logins from elsewhere, and ones checked before, go on', async () => {
    // Before: every login not checked before queued a scrypt on the thread pool's four threads,
    // without a bound: a flood of guesses put every other first login behind it, without end.
    const dir = tempDir()
    const authFile = join(dir, 'users')
    writeFileSync(authFile, `dave:${hash('dave-secret')}\nerin:${hash('erin-secret')}\nfrank:${hash('frank-secret')}\n`)
    const lockd = await startLockd({args: ['--auth-file', authFile]})
    const codec = createCodec()
    const login = async (user: string, password: string, from?: string) => {
      const connection = await rawConnection(lockd.port, from)
      connection.socket.write(encodeFrame(codec, {t: 'hello', v: 1, user, password}))
      return connection
    }
    const first = await login('dave', 'dave-secret')
    await eventually(() => first.messages.length > 0)
    expect(first.messages[0]).toMatchObject({t: 'hello'}) // checked once: remembered from now on
    first.socket.destroy()

    const guesses = await Promise.all(Array.from({length: 30}, (_, i) => login('erin', `guess-${i}`)))
    await Promise.all(guesses.map((guess) => guess.received))
    const answers = guesses.map((guess) => guess.messages[0])
    const refusedAtOnce = answers.filter((m) => m?.code === 'LIMIT')
    expect(refusedAtOnce.length, JSON.stringify(answers)).toBeGreaterThanOrEqual(22)
    expect(refusedAtOnce[0]).toMatchObject({msg: expect.stringMatching(/^lockd is checking 8 logins from 127\.0\.0\.1 already; try again in a moment$/)})
    expect(answers.filter((m) => m?.code === 'NOT_PERMITTED').length).toBeLessThanOrEqual(8)

    // While another flood is being checked: a first login from another address, and dave's
    // remembered one from the flooding address, are both let in.
    const flood = await Promise.all(Array.from({length: 30}, (_, i) => login('erin', `another-guess-${i}`)))
    const elsewhere = await login('erin', 'erin-secret', '127.0.0.2')
    const remembered = await login('dave', 'dave-secret')
    await eventually(() => elsewhere.messages.length > 0 && remembered.messages.length > 0, 20_000)
    expect([elsewhere.messages[0]?.t, remembered.messages[0]?.t]).toEqual(['hello', 'hello'])
    for (const connection of [...flood, elsewhere, remembered]) connection.socket.destroy()

    // A guess with a 10,000-character name is one short line in the log, not 10 KB.
    const long = await login('x'.repeat(10_000), 'guess', '127.0.0.3')
    await long.received
    await eventually(() => /refused a login from 127\.0\.0\.3:\d+: authentication failed for user "x{64}…"\n/.test(lockd.stderr()))

    // Twenty jobs of one host starting at once with the same login, not checked before: one
    // check for them all, and every one is let in.
    const burst = await Promise.all(Array.from({length: 20}, () => login('frank', 'frank-secret')))
    await eventually(() => burst.every((connection) => connection.messages.length > 0), 20_000)
    expect(burst.map((connection) => connection.messages[0]?.t)).toEqual(Array.from({length: 20}, () => 'hello'))
    for (const connection of burst) connection.socket.destroy()
    expect(await lockd.stop()).toBe(0)
  })

  it('before its hello is done, a connection cannot make lockd hold a large frame for it; what it sends meanwhile waits, in order', async () => {
    const dir = tempDir()
    const authFile = join(dir, 'users')
    writeFileSync(authFile, `carol:${hash('carol-secret')}\n`)
    const lockd = await startLockd({args: ['--auth-file', authFile]})
    // Before: a frame up to --max-frame (1 MB) was buffered for anyone, logged in or not; 400
    // such connections took ~480 MB of lockd's memory, 10,000 would take ~10 GB.
    const stranger = await rawConnection(lockd.port)
    const header = Buffer.alloc(4)
    header.writeUInt32BE(1024 * 1024)
    stranger.socket.write(Buffer.concat([header, Buffer.alloc(64 * 1024, 0x61)]))
    await stranger.received
    expect(stranger.messages).toContainEqual(expect.objectContaining({t: 'error', code: 'PROTOCOL', msg: expect.stringMatching(/frame of 1048576 bytes is over the limit of 16384/)}))

    // A client that does not wait for the login to be checked: its requests, written with the
    // hello, are answered once it is, in order — those that came in the hello's read and those
    // lockd read only after the check.
    const carol = await rawConnection(lockd.port)
    const codec = createCodec()
    const requests = Array.from({length: 3000}, (_, i) => encodeFrame(codec, {t: 'req', id: i + 1, op: 'acquire', key: `carol/${i % 7}`, leaseMs: 60_000, waitMs: 0, owner: 'carol'}))
    carol.socket.write(Buffer.concat([encodeFrame(codec, {t: 'hello', v: 1, user: 'carol', password: 'carol-secret'}), ...requests]))
    await eventually(() => carol.messages.length >= 3001, 20_000)
    expect(carol.messages[0]).toMatchObject({t: 'hello'})
    const answers = carol.messages.slice(1)
    expect(answers.map((m) => m.id)).toEqual(Array.from({length: 3000}, (_, i) => i + 1))
    // The first of each key is granted, every later one finds it held by carol's own grant.
    expect(answers.filter((m) => m.code === 'OK')).toHaveLength(7)
    carol.socket.destroy()
    expect(await lockd.stop()).toBe(0)
  })

  it("no password or a wrong one: exit 6; a non-admin's unlock --force: exit 6 and the lock untouched; an admin's works; SIGHUP reads new users", async () => {
    const dir = tempDir()
    const authFile = join(dir, 'users')
    writeFileSync(authFile, `# team lockd\nalice:${hash('alice-secret')}\nbob:${hash('bob-secret')}\n`)
    expect(readFileSync(authFile, 'utf8')).not.toMatch(/secret/)
    const lockd = await startLockd({args: ['--auth-file', authFile, '--admin', 'alice']})
    const endpoints = ['--endpoints', lockd.endpoint]
    const as = (user: string, password: string) => ({env: {LOCKCTL_PASSWORD: password}, user: ['--user', user]})

    const anonymous = await runCli(['lock', 'team/k', ...endpoints])
    expect(anonymous.code).toBe(6)
    expect(oneLine(anonymous)).toMatch(/requires a user and a password/)
    const wrong = await runCli(['lock', 'team/k', ...endpoints, '--user', 'bob'], {env: {LOCKCTL_PASSWORD: 'nope'}})
    expect(wrong.code).toBe(6)
    expect(oneLine(wrong)).toMatch(/authentication failed for user "bob"/)
    // Each refused login is in lockd's log with where it came from (what fail2ban reads).
    await eventually(() => /lockd: refused a login from 127\.0\.0\.1:\d+: authentication failed for user "bob"/.test(lockd.stderr()))
    // A hello without credentials guesses nothing: refused at once, and not a line each.
    expect(lockd.stderr()).not.toMatch(/refused a login .* requires a user/)
    // hold waits forever by default for a service it cannot reach, but not for one that refuses
    // it: the same answer on every try (it said "suspended ... retrying" until killed).
    for (const args of [['--user', 'bob'], []]) {
      const holdRefused = await runCli(['hold', 'team/h', ...endpoints, ...args, '--', 'true'], {env: {LOCKCTL_PASSWORD: 'nope'}, timeoutMs: 15_000})
      expect(holdRefused.stderr).not.toMatch(/suspended/)
      expect(holdRefused.code, holdRefused.stderr).toBe(6)
    }

    const bob = as('bob', 'bob-secret')
    const taken = await runCli(['lock', 'team/k', '--json', ...endpoints, ...bob.user], {env: bob.env})
    expect(taken.code, taken.stderr).toBe(0)
    const {token, fence} = JSON.parse(taken.stdout)

    const carol = await runCli(['lock', 'team/other', ...endpoints, '--user', 'carol'], {env: {LOCKCTL_PASSWORD: 'carol-secret'}})
    expect(carol.code).toBe(6)
    const forcedByBob = await runCli(['unlock', 'team/k', '--force', '--yes', ...endpoints, ...bob.user], {env: bob.env})
    expect(forcedByBob.code).toBe(6)
    expect(oneLine(forcedByBob)).toMatch(/user "bob" may not force-release/)
    const stillHeld = await runCli(['status', 'team/k', '--token', token, '--json', ...endpoints, ...bob.user], {env: bob.env})
    expect(stillHeld.code).toBe(0)
    expect(JSON.parse(stillHeld.stdout).holder.fence).toBe(fence)

    const alice = as('alice', 'alice-secret')
    const forcedByAlice = await runCli(['unlock', 'team/k', '--force', '--yes', ...endpoints, ...alice.user], {env: alice.env})
    expect(forcedByAlice.code, forcedByAlice.stderr).toBe(0)

    // A new user, read on SIGHUP.
    writeFileSync(authFile, `${readFileSync(authFile, 'utf8')}carol:${hash('carol-secret')}\n`)
    lockd.child.kill('SIGHUP')
    await eventually(() => /reloaded .*users: 3 user\(s\)/.test(lockd.stderr()))
    const carolAgain = await runCli(['lock', 'team/other', ...endpoints, '--user', 'carol'], {env: {LOCKCTL_PASSWORD: 'carol-secret'}})
    expect(carolAgain.code, carolAgain.stderr).toBe(0)

    // A second line for a user (which password would count?) is refused; the users in force stay.
    writeFileSync(authFile, `${readFileSync(authFile, 'utf8')}carol:${hash('another')}\n`)
    lockd.child.kill('SIGHUP')
    await eventually(() => /reload failed, keeping the previous configuration: --auth-file: .* line 5 names "carol" again \(line 4\): one line per user/.test(lockd.stderr()))
    expect((await runCli(['lock', 'team/third', ...endpoints, '--user', 'carol'], {env: {LOCKCTL_PASSWORD: 'carol-secret'}})).code).toBe(0)
    await lockd.stop()
  })

  it('SIGHUP that removes a user (or changes a password) closes the connections opened with it; the others go on', async () => {
    const dir = tempDir()
    const authFile = join(dir, 'users')
    const alice = `alice:${hash('alice-secret')}\n`
    writeFileSync(authFile, `${alice}bob:${hash('bob-secret')}\n`)
    const lockd = await startLockd({args: ['--auth-file', authFile]})
    const env = (password: string) => ({env: {LOCKCTL_ENDPOINTS: lockd.endpoint, LOCKCTL_PASSWORD: password}})
    // bob holds a lock under hold (one connection, renewing); alice watches (another).
    const bobHold = runCli(['hold', 'team/bob', '--user', 'bob', '--lease', '2s', '--', 'sleep', '30'], env('bob-secret'))
    const aliceWatch = runCli(['watch', 'team/bob', '--user', 'alice'], {...env('alice-secret'), timeoutMs: 30_000})
    let watched = ''
    aliceWatch.child.stdout!.on('data', (chunk) => (watched += chunk))
    // Seen held: in its first state, or as an event if the watch came first.
    await eventually(() => /(state|acquired) +team\/bob holder=\S+ fence=\d/.test(watched))

    writeFileSync(authFile, alice)
    lockd.child.kill('SIGHUP')
    await eventually(() => /reloaded .*users: 1 user\(s\); closed 1 connection\(s\) of removed or changed users/.test(lockd.stderr()))
    // bob cannot renew (nor connect again): lost when the lease runs out, the command killed.
    const held = await bobHold
    expect(held.stderr).toMatch(/lost team\/bob/)
    expect(held.code).toBe(3)
    expect((await runCli(['lock', 'team/x', '--user', 'bob'], env('bob-secret'))).code).toBe(6)
    // alice's connection stayed: her watch saw bob's grant end without a disconnect.
    await eventually(() => /(expired|released) +team\/bob/.test(watched))
    expect(watched).not.toMatch(/disconnected/)
    aliceWatch.child.kill('SIGINT')
    await aliceWatch
    await lockd.stop()
  })

  it('an auth file that cannot be used: lockd does not start, one line, exit 1', async () => {
    const dir = tempDir()
    const file = (name: string, text: string) => {
      writeFileSync(join(dir, name), text)
      return join(dir, name)
    }
    const writable = (path: string) => {
      chmodSync(path, 0o666)
      return path
    }
    const line = `alice:${hash('pw')}\n`
    for (const [path, message] of [
      [join(dir, 'missing'), /^lockctl: --auth-file: cannot read .*missing: ENOENT$/],
      // A directory (here /tmp, which every user may write): what it is, not its mode.
      [tmpdir(), /^lockctl: --auth-file: cannot read .*: EISDIR$/],
      [file('plain', 'alice:pw\n'), /^lockctl: --auth-file: .*plain line 1 is not NAME:HASH \(make HASH with lockctl server --hash-password\)$/],
      [file('twice', `# users\n${line}${line}`), /^lockctl: --auth-file: .*twice line 3 names "alice" again \(line 2\): one line per user$/],
      // scrypt parameters it would throw on (lockd went down at alice's next login), would take a
      // GiB per login, or a hash cut off to nothing (it would have matched every password).
      [file('bad-n', line.replace('scrypt$32768$', 'scrypt$3$')), /^lockctl: --auth-file: .*bad-n line 1 has scrypt N 3: not a power of two from 2 to 2\^30 \(make HASH/],
      [file('huge', line.replace('scrypt$32768$', `scrypt$${2 ** 30}$`)), /^lockctl: --auth-file: .*huge line 1 has scrypt N 1073741824 and r 8: each login would take 1048576 MiB \(at most 256\)/],
      [file('cut', line.replace(/\$[^$]*$/, '$=\n')), /^lockctl: --auth-file: .*cut line 1 has a salt or hash too short \(cut off\?\)/],
      // Anyone could add a user of their own (an admin's name among them).
      [writable(file('open', line)), /^lockctl: --auth-file: every user can write .*open \(mode 666\), and so add a user of their own: chmod o-w .*open \(600 or 640\)$/],
    ] as const) {
      const result = await runCli(['server', '--listen', '127.0.0.1:0', '--in-memory', '--auth-file', path])
      expect(result.code, result.stderr).toBe(1)
      expect(oneLine(result)).toMatch(message)
    }
    // Readable by every user: it serves, and says so (offline guessing of the hashes).
    const readable = file('readable', line)
    chmodSync(readable, 0o644)
    const lockd = await startLockd({args: ['--auth-file', readable]})
    expect(lockd.stderr()).toMatch(/lockd: warning: every user can read the password hashes in .*readable \(mode 644\): chmod o-r/)
    await lockd.stop()
  })
})

describe('a machine-wide lockd shared by two users', () => {
  const asRoot = process.getuid?.() === 0
  it.skipIf(!asRoot && !process.env.CI)('root and nobody share a 0660 socket (group nogroup) and exclude each other; a 0600 socket keeps nobody out', async () => {
    const dir = tempDir()
    chmodSync(dir, 0o755) // nobody must reach the socket
    const shared = join(dir, 'shared.sock')
    const privateSocket = join(dir, 'private.sock')
    const home = join(dir, 'nobody-home')
    mkdirSync(home)
    chownSync(home, 65534, 65534)
    const lockd = await startLockd({args: ['--socket', shared, '--socket-mode', '0660']})
    expect(statSync(shared).mode & 0o777).toBe(0o660)
    chownSync(shared, 0, 65534)
    const asNobody = (args: string[]) =>
      spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, BIN, ...args], {
        encoding: 'utf8',
        env: {...process.env, HOME: home, XDG_STATE_HOME: join(home, 'state'), XDG_CONFIG_HOME: join(home, 'config')},
      })
    const nobodyLock = asNobody(['lock', 'machine/k', '--endpoints', `unix://${shared}`, '--owner', 'nobody-job'])
    expect(nobodyLock.status, nobodyLock.stderr).toBe(0)
    const rootTry = await runCli(['lock', 'machine/k', '--endpoints', `unix://${shared}`])
    expect(rootTry.code).toBe(1)
    expect(rootTry.stderr).toMatch(/held by nobody-job/)

    const other = await startLockd({args: ['--socket', privateSocket]})
    expect(statSync(privateSocket).mode & 0o777).toBe(0o600)
    const refused = asNobody(['lock', 'machine/k', '--endpoints', `unix://${privateSocket}`])
    expect(refused.status).toBe(4)
    expect(refused.stderr).toMatch(/permission denied/)
    await lockd.stop()
    await other.stop()
  })

  it.skipIf(!asRoot && !process.env.CI)('a user (not root) can serve on a socket in directories lockd makes (0700, as the state directory)', async () => {
    const dir = tempDir()
    chmodSync(dir, 0o755)
    const home = join(dir, 'home')
    mkdirSync(home)
    chownSync(home, 65534, 65534)
    const socket = join(home, 'run', 'lockd', 'lockd.sock')
    // Made under the socket's own umask, the directories came out 0600: nobody could not enter them.
    const server = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, BIN, 'server', '--in-memory', '--socket', socket], {stdio: ['ignore', 'ignore', 'pipe']})
    let stderr = ''
    server.stderr.on('data', (chunk) => (stderr += chunk))
    try {
      await eventually(() => expect(stderr).toMatch(/listening on unix:/))
      // HOME is root's here, which nobody cannot read: oclif's look for user plugins there
      // printed "(node:PID) [EACCES] ..." before lockd's own line.
      expect(stderr).not.toMatch(/\(node:\d+\)|EACCES/)
      expect(statSync(join(home, 'run')).mode & 0o777).toBe(0o700)
      expect(statSync(socket).mode & 0o777).toBe(0o600)
    } finally {
      server.kill('SIGTERM')
    }
  })
})

describe('lockd metrics', () => {
  it('/metrics moves as locks are taken and released; /healthz answers', async () => {
    const lockd = await startLockd({dataDir: tempDir(), args: ['--metrics', '127.0.0.1:0']})
    const port = Number(/metrics on http:\/\/127\.0\.0\.1:(\d+)/.exec(lockd.stderr())?.[1])
    expect(port).toBeGreaterThan(0)
    const scrape = async () => {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
      const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN)
      return {text, value}
    }
    const before = await scrape()
    expect(before.value('lockd_locks_held')).toBe(0)
    // The process's own figures, as every exporter has them.
    expect(before.value('process_resident_memory_bytes')).toBeGreaterThan(1_000_000)
    expect(before.value('process_open_fds')).toBeGreaterThan(2)
    expect(before.value('nodejs_heap_size_used_bytes')).toBeGreaterThan(1_000_000)
    expect(before.text).toMatch(/^nodejs_eventloop_lag_seconds /m)
    const taken = await runCli(['lock', 'm/k', '--endpoints', lockd.endpoint])
    const after = await scrape()
    expect(after.value('lockd_locks_held')).toBe(1)
    expect(after.value('lockd_lock_events_total{event="granted"}')).toBe(1)
    expect(after.text).toMatch(/lockd_request_duration_seconds_count\{op="acquire"\} [1-9]/)
    expect(after.text).toMatch(/lockd_fsync_duration_seconds_count [1-9]/)
    expect(after.value('lockd_log_bytes')).toBeGreaterThan(8)
    await runCli(['unlock', 'm/k', '--token', taken.stdout.trim(), '--endpoints', lockd.endpoint])
    const released = await scrape()
    expect(released.value('lockd_locks_held')).toBe(0)
    expect(released.value('lockd_lock_events_total{event="released"}')).toBe(1)
    const health = await fetch(`http://127.0.0.1:${port}/healthz`)
    expect(health.status).toBe(200)
    // A query string is not another page; only reads are served (POST answered 200).
    expect((await fetch(`http://127.0.0.1:${port}/metrics?name[]=lockd_locks_held`)).status).toBe(200)
    const post = await fetch(`http://127.0.0.1:${port}/metrics`, {method: 'POST'})
    expect([post.status, post.headers.get('allow')]).toEqual([405, 'GET, HEAD'])
    expect((await fetch(`http://127.0.0.1:${port}/nope`)).status).toBe(404)
    await lockd.stop()
  })

  it('idle connections to the metrics port keep neither /healthz nor /metrics away, and are closed within seconds', async () => {
    // Before: 16 sockets that sent nothing took every place for a minute or more, and every
    // health check failed (connection reset, or no answer) all that time.
    const lockd = await startLockd({args: ['--metrics', '127.0.0.1:0']})
    const port = Number(/metrics on http:\/\/127\.0\.0\.1:(\d+)/.exec(lockd.stderr())?.[1])
    const idle: Socket[] = []
    try {
      await idleSockets(port, 20, idle)
      // (A try that comes within the first second may be refused: a silent socket gives its place up after 1 s.)
      const status = await eventually(() =>
        fetch(`http://127.0.0.1:${port}/healthz`, {signal: AbortSignal.timeout(1500)}).then(
          (response) => response.status,
          () => 0,
        ),
      )
      expect(status).toBe(200)
      expect((await fetch(`http://127.0.0.1:${port}/metrics`, {signal: AbortSignal.timeout(1500)})).status).toBe(200)
      // The rest are ended by lockd: 10 s without a word.
      await eventually(() => idle.every((socket) => socket.destroyed), 20_000)
    } finally {
      for (const socket of idle) socket.destroy()
      await lockd.stop()
    }
  })
})
