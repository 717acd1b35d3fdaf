import {EventEmitter} from 'node:events'
import type {Etcd3} from 'etcd3'
import {describe, expect, it, vi} from 'vitest'
import {SessionPool} from '../../src/client/backends/etcd/sessions.js'
import {LeaseClock} from '../../src/client/lease-clock.js'

/** A keepalive stream that answers each keepalive with a TTL of 10 s. */
function answeringStream() {
  const stream = Object.assign(new EventEmitter(), {
    ended: false,
    write(request: {ID: string}) {
      queueMicrotask(() => stream.emit('data', {ID: request.ID, TTL: '10'}))
    },
    end() {
      stream.ended = true
    },
  })
  return stream
}

describe('etcd SessionPool keepalives', () => {
  it('a keepalive whose stream never opens fails within the request deadline, and the next one opens a stream anew', async () => {
    const openings: ((stream: ReturnType<typeof answeringStream>) => void)[] = []
    const client = {
      leaseClient: {
        // The first opening never ends (etcd3 waiting on something of its own).
        leaseKeepAlive: () => new Promise((resolve) => openings.push(resolve)),
      },
    } as unknown as Etcd3
    const pool = new SessionPool(client, (_what, operation) => operation(), 'etcd://127.0.0.1:1', 100, new LeaseClock())

    await expect(pool.keepalive('1')).rejects.toMatchObject({code: 'UNREACHABLE', message: expect.stringMatching(/no answer within 100ms/)})
    expect(openings).toHaveLength(1)

    const next = pool.keepalive('1')
    await vi.waitFor(() => expect(openings).toHaveLength(2)) // (before: it waited on the first opening, for ever)
    const fresh = answeringStream()
    openings[1](fresh)
    await expect(next).resolves.toBe(10)

    // The first opening, if it ever ends, is closed: the stream in use stays.
    const late = answeringStream()
    openings[0](late)
    await vi.waitFor(() => expect(late.ended).toBe(true))
    await expect(pool.keepalive('1')).resolves.toBe(10)
    expect(openings).toHaveLength(2)
    await pool.close()
  })
})
