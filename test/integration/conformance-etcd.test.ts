import {beforeAll, describe} from 'vitest'
import {conformanceSuite} from '../helpers/conformance.js'
import {semaphoreSuite} from '../helpers/semaphore-conformance.js'
import {describeEtcd, startEtcd, type EtcdCluster} from '../helpers/etcd.js'

describeEtcd('lock semantics on etcd', () => {
  let etcd: EtcdCluster
  beforeAll(async () => {
    etcd = await startEtcd(1)
  })
  // etcd leases are whole seconds with a minimum TTL (1.5 × election timeout here): 2 s.
  conformanceSuite(() => etcd.endpoint, {shortLeaseMs: 2000})
  describe('semaphores and shared locks', () => semaphoreSuite(() => etcd.endpoint))
})
