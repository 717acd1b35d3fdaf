import {mkdtempSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {hashPassword, parseHash, PasswordCheck, UNKNOWN_USER_HASH, verifyPassword} from '../../src/server/auth.js'

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
