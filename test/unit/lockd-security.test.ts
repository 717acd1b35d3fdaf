import {execFileSync} from 'node:child_process'
import {X509Certificate} from 'node:crypto'
import {mkdtempSync, readFileSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {hashPassword, parseHash, PasswordCheck, UNKNOWN_USER_HASH, verifyPassword} from '../../src/server/auth.js'
import {certificateDatesProblem} from '../../src/server/tls-files.js'

describe('PasswordCheck', () => {
  it('checks a user who is not in the file with a full scrypt too (a refusal at once told which names exist), and never lets them in', async () => {
    const stored = await hashPassword('alice-secret')
    const file = join(mkdtempSync(join(tmpdir(), 'lockctl-auth-')), 'users')
    writeFileSync(file, `alice:${stored}\n`, {mode: 0o600})
    const seen: string[] = []
    const check = new PasswordCheck(file, async (password, hash) => {
      seen.push(hash)
      return verifyPassword(password, hash)
    })

    expect(await check.check('mallory', 'alice-secret')).toBe(false)
    expect(seen).toEqual([UNKNOWN_USER_HASH])
    expect(await check.check('alice', 'wrong')).toBe(false)
    expect(await check.check('alice', 'alice-secret')).toBe(true)
    expect(seen).toEqual([UNKNOWN_USER_HASH, stored, stored])

    // The stand-in costs what a real user's check costs: the same scrypt parameters and sizes.
    const real = parseHash(stored)
    const standIn = parseHash(UNKNOWN_USER_HASH)
    if (typeof real === 'string' || typeof standIn === 'string') throw new Error(`a hash did not parse: ${typeof real === 'string' ? real : ''} ${typeof standIn === 'string' ? standIn : ''}`)
    expect({n: standIn.n, r: standIn.r, p: standIn.p, salt: standIn.salt.length, hash: standIn.hash.length}).toEqual({n: real.n, r: real.r, p: real.p, salt: real.salt.length, hash: real.hash.length})
    for (const password of ['', 'alice-secret', 'x'.repeat(100)]) expect(await verifyPassword(password, UNKNOWN_USER_HASH)).toBe(false)
  })
})

describe("lockd's certificate dates", () => {
  it('says when the certificate is expired, not yet valid, or ends within 14 days, and nothing otherwise', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lockctl-cert-'))
    const key = join(dir, 'key.pem')
    const cert = join(dir, 'cert.pem')
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30', '-subj', '/CN=127.0.0.1', '-keyout', key, '-out', cert], {stdio: 'pipe'})
    const pem = readFileSync(cert)
    const {validFrom, validTo} = new X509Certificate(pem)
    const [from, to] = [Date.parse(validFrom), Date.parse(validTo)]
    const day = 86_400_000
    expect(certificateDatesProblem(pem, 'c.pem', from - day)).toMatch(/^--tls-cert c\.pem is not valid before \d{4}-\d\d-\d\d: clients refuse it until then/)
    expect(certificateDatesProblem(pem, 'c.pem', from + day)).toBeNull()
    expect(certificateDatesProblem(pem, 'c.pem', to - 20 * day)).toBeNull()
    expect(certificateDatesProblem(pem, 'c.pem', to - 3 * day + 1000)).toMatch(/^--tls-cert c\.pem expires on \d{4}-\d\d-\d\d, in 3 day\(s\): renew it, then SIGHUP lockd$/)
    expect(certificateDatesProblem(pem, 'c.pem', to)).toMatch(/^--tls-cert c\.pem expired on \d{4}-\d\d-\d\d: clients refuse it; renew it, then SIGHUP lockd$/)
    expect(certificateDatesProblem('not a certificate', 'c.pem', to)).toBeNull()
  })
})
