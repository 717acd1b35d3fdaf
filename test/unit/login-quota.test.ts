import {describe, expect, it} from 'vitest'
import {LoginQuota} from '../../src/server/login-quota.js'

describe('LoginQuota', () => {
  it('gives at most `perAddress` places to one address and `overall` in all; a place given back is free again, once', () => {
    const quota = new LoginQuota(3, 2)
    const a1 = quota.admit('10.0.0.1')
    const a2 = quota.admit('10.0.0.1')
    expect(quota.admit('10.0.0.1')).toEqual({refused: 'lockd is checking 2 logins from 10.0.0.1 already; try again in a moment'})
    const b1 = quota.admit('10.0.0.2')
    expect(quota.admit('10.0.0.3')).toEqual({refused: 'lockd is checking 3 logins already; try again in a moment'})
    if (!('done' in a1) || !('done' in a2) || !('done' in b1)) throw new Error('expected places')
    a1.done()
    a1.done() // twice is once
    expect('done' in quota.admit('10.0.0.3')).toBe(true)
    expect(quota.admit('10.0.0.4')).toMatchObject({refused: expect.stringMatching(/checking 3 logins already/)})
    a2.done()
    expect('done' in quota.admit('10.0.0.1')).toBe(true)
  })
})
