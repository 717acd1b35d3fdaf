import {describe, expect, it} from 'vitest'
import {callRetry} from '../../src/client/backends/etcd/call-retry.js'

class TimedOut extends Error {}
class Refused extends Error {}
class Denied extends Error {}

/**
 * A call whose tries fail with `failures` in turn, then answer, through the policy for `members`
 * members: how it ended (`answered`, or the failure's class) and how many tries it took.
 */
async function outcome(members: number, failures: Error[]): Promise<{ended: string; tries: number}> {
  const policy = callRetry({retryable: (e) => e instanceof TimedOut || e instanceof Refused, timedOut: (e) => e instanceof TimedOut, members, attempts: 4})
  let tries = 0
  const run = () => {
    const failure = failures[tries++]
    if (failure) throw failure
    return 'answered'
  }
  const ended = await policy.execute(run).catch((error: Error) => error.constructor.name)
  return {ended, tries}
}

const many = (make: () => Error) => Array.from({length: 5}, make)

describe('callRetry: the etcd client policy for a whole call', () => {
  it('a call that runs into its deadline is tried again at most once per member plus once (an election): twice for one member, four times for three', async () => {
    expect(
      await outcome(
        1,
        many(() => new TimedOut()),
      ),
    ).toEqual({ended: 'TimedOut', tries: 2})
    // An election that outlasts one deadline: the member answers the next try.
    expect(await outcome(1, [new TimedOut()])).toEqual({ended: 'answered', tries: 2})
    expect(
      await outcome(
        3,
        many(() => new TimedOut()),
      ),
    ).toEqual({ended: 'TimedOut', tries: 4})
    expect(
      await outcome(
        2,
        many(() => new TimedOut()),
      ),
    ).toEqual({ended: 'TimedOut', tries: 3})
    // A paused member among healthy ones: its deadline, then another member answers.
    expect(await outcome(3, [new TimedOut()])).toEqual({ended: 'answered', tries: 2})
  })

  it('a failure that comes at once is tried again up to four tries in all; one not worth another try is not', async () => {
    expect(
      await outcome(
        1,
        many(() => new Refused()),
      ),
    ).toEqual({ended: 'Refused', tries: 4})
    expect(await outcome(1, [new Refused(), new Refused()])).toEqual({ended: 'answered', tries: 3})
    expect(await outcome(3, [new Denied()])).toEqual({ended: 'Denied', tries: 1})
  })
})
