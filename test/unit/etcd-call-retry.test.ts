import {describe, expect, it} from 'vitest'
import {callRetry} from '../../src/client/backends/etcd/call-retry.js'

class TimedOut extends Error {}
class Refused extends Error {}
class Denied extends Error {}

/** A call whose tries fail with these errors in turn, then succeed; counts the tries. */
function call(failures: Error[]) {
  let tries = 0
  return {
    run: () => {
      const error = failures[tries++]
      if (error) throw error
      return 'answered'
    },
    get tries() {
      return tries
    },
  }
}

const policy = (members: number) => callRetry({retryable: (e) => e instanceof TimedOut || e instanceof Refused, timedOut: (e) => e instanceof TimedOut, members, attempts: 4})

describe('callRetry: the etcd client policy for a whole call', () => {
  it('a call that runs into its deadline is tried again at most once per member plus once (an election): twice for one member, four times for three', async () => {
    const one = call([new TimedOut(), new TimedOut(), new TimedOut(), new TimedOut()])
    await expect(policy(1).execute(one.run)).rejects.toBeInstanceOf(TimedOut)
    expect(one.tries).toBe(2)
    // An election that outlasts one deadline: the member answers the next try.
    const election = call([new TimedOut()])
    await expect(policy(1).execute(election.run)).resolves.toBe('answered')
    expect(election.tries).toBe(2)
    const three = call([new TimedOut(), new TimedOut(), new TimedOut(), new TimedOut()])
    await expect(policy(3).execute(three.run)).rejects.toBeInstanceOf(TimedOut)
    expect(three.tries).toBe(4)
    const two = call([new TimedOut(), new TimedOut(), new TimedOut(), new TimedOut()])
    await expect(policy(2).execute(two.run)).rejects.toBeInstanceOf(TimedOut)
    expect(two.tries).toBe(3)
    // A paused member among healthy ones: its deadline, then another member answers.
    const failover = call([new TimedOut()])
    await expect(policy(3).execute(failover.run)).resolves.toBe('answered')
    expect(failover.tries).toBe(2)
  })

  it('a failure that comes at once is tried again up to four tries in all; one not worth another try is not', async () => {
    const refused = call([new Refused(), new Refused(), new Refused(), new Refused(), new Refused()])
    await expect(policy(1).execute(refused.run)).rejects.toBeInstanceOf(Refused)
    expect(refused.tries).toBe(4)
    const then = call([new Refused(), new Refused()])
    await expect(policy(1).execute(then.run)).resolves.toBe('answered')
    expect(then.tries).toBe(3)
    const denied = call([new Denied()])
    await expect(policy(3).execute(denied.run)).rejects.toBeInstanceOf(Denied)
    expect(denied.tries).toBe(1)
  })
})
