import {afterAll, beforeAll, describe} from 'vitest'
import {conformanceSuite} from '../helpers/conformance.js'
import {semaphoreSuite} from '../helpers/semaphore-conformance.js'
import {startLockd, tempDir, type LockdProcess} from '../helpers/processes.js'

describe('lock semantics on lockd', () => {
  let lockd: LockdProcess
  beforeAll(async () => {
    lockd = await startLockd({dataDir: tempDir()})
  })
  afterAll(async () => {
    await lockd.stop()
  })
  conformanceSuite(() => lockd.endpoint, {shortLeaseMs: 1000})
  describe('semaphores and shared locks', () => semaphoreSuite(() => lockd.endpoint))
})
