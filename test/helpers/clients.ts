import {afterEach} from 'vitest'
import {connect, type LockClient} from '../../src/client/index.js'

/** Clients for a test file, each closed after its test. */
export function clientFactory(): (endpoint: string, owner: string) => Promise<LockClient> {
  const clients: LockClient[] = []
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()))
  })
  return async (endpoint, owner) => {
    const c = await connect({endpoints: endpoint, owner, requestTimeoutMs: 3000})
    clients.push(c)
    return c
  }
}
