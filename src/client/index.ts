/**
 * lockctl's client library: distributed locks with leases and fencing tokens.
 *
 *   import {connect} from 'lockctl'
 *   const client = await connect({endpoints: 'lockd://127.0.0.1:7070'})
 *   const lock = client.createLock('deploy')
 *   if (await lock.tryLock({leaseMs: 30_000, waitMs: 5_000})) { ...use lock.fence...; await lock.unlock() }
 *   await client.close()
 */
export {connect, defaultOwner, LockClient, type ConnectOptions} from './lock-client.js'
export {DistributedLock, DEFAULT_LEASE_MS, type DistributedLockOptions, type TryLockOptions} from './distributed-lock.js'
export {AutoRenewalLock, DEFAULT_RETRY_MILLIS, type AutoRenewalLockOptions} from './auto-renewal-lock.js'
export type {ConnectionState, GrantInfo, HolderInfo, LockBackend, LockInfo} from './backend.js'
export {parseEndpoint, describeEndpoint, type Endpoint} from './endpoint.js'
export {stateDir} from './embedded.js'
export type {LockEvent, WatchOptions, WatchTarget, WatchUpdate} from './watch.js'
export {WAIT_FOREVER} from '../protocol/messages.js'
export * from './errors.js'
