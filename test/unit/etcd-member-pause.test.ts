import {describe, expect, it} from 'vitest'
import {memberPause} from '../../src/client/backends/etcd/member-pause.js'

class Down extends Error {}
class Refused extends Error {}
class Other extends Error {}

function policy() {
  const clock = {now: 0}
  const p = memberPause({counts: (error) => error instanceof Down, refusal: () => new Refused('paused'), failures: 3, pauseMs: 1000, now: () => clock.now})
  const fail = () =>
    p.execute(() => {
      throw new Down('no answer')
    })
  return {p, clock, fail}
}

describe('memberPause: the etcd client policy for one member', () => {
  it('three failures in a row pause the member: calls are refused at once until the pause ends, and the next failure pauses again', async () => {
    const {p, clock, fail} = policy()
    await expect(fail()).rejects.toBeInstanceOf(Down)
    await expect(fail()).rejects.toBeInstanceOf(Down)
    await expect(p.execute(() => 'ok')).resolves.toBe('ok') // a success starts the count again
    for (let i = 0; i < 3; i++) await expect(fail()).rejects.toBeInstanceOf(Down)
    let called = false
    await expect(
      p.execute(() => {
        called = true
        return 'ok'
      }),
    ).rejects.toBeInstanceOf(Refused)
    expect(called).toBe(false)
    clock.now = 999
    await expect(p.execute(() => 'ok')).rejects.toBeInstanceOf(Refused)
    clock.now = 1000
    await expect(fail()).rejects.toBeInstanceOf(Down)
    await expect(p.execute(() => 'ok')).rejects.toBeInstanceOf(Refused)
    clock.now = 2000
    await expect(p.execute(() => 'ok')).resolves.toBe('ok')
  })

  it('errors that are not the member failing (a refused password, a compare that failed) do not count', async () => {
    const {p} = policy()
    for (let i = 0; i < 10; i++)
      await expect(
        p.execute(() => {
          throw new Other('permission denied')
        }),
      ).rejects.toBeInstanceOf(Other)
    await expect(p.execute(() => 'ok')).resolves.toBe('ok')
  })

  it("after a pause, a call made from inside another (etcd3's retry after a refused token) does not wait for it", async () => {
    const {p, clock, fail} = policy()
    for (let i = 0; i < 3; i++) await expect(fail()).rejects.toBeInstanceOf(Down)
    clock.now = 1500
    // The first call after the pause is refused its token; etcd3 logs in again and retries it
    // through the same policy, from inside the call. (cockatiel's half-open breaker made the
    // retry wait for the call it was part of: for ever.)
    const retried = p.execute(async () => p.execute(async () => 'answered after logging in again'))
    const hung = new Promise((resolve) => setTimeout(() => resolve('still waiting'), 1000).unref())
    await expect(Promise.race([retried, hung])).resolves.toBe('answered after logging in again')
    // And other calls at the same moment go through, none waiting for another.
    const slow = p.execute(() => new Promise((resolve) => setTimeout(() => resolve('slow'), 50)))
    await expect(p.execute(() => 'fast')).resolves.toBe('fast')
    await expect(slow).resolves.toBe('slow')
  })
})
