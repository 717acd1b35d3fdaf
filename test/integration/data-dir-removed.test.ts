import {existsSync, rmSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {connect} from '../../src/client/index.js'
import {eventually, startLockd, tempDir} from '../helpers/processes.js'

/**
 * Files of the data directory removed while lockd runs (docs/recovery.md, "Files removed while
 * lockd runs"). Before: lockd went on answering grants into a log nobody could find again; after a
 * restart the directory was empty and fences began again at 1 (or, with the fence mark gone, the
 * directory was refused).
 */
describe('a data directory whose files are removed under a running lockd', () => {
  for (const removed of ['the whole directory', 'the fence mark', 'the snapshot'] as const) {
    it(`${removed}: written again from memory; after kill -9 every lock is back and fences go on above the old ones`, async () => {
      const dataDir = tempDir()
      const lockd = await startLockd({dataDir})
      const client = await connect({endpoints: lockd.endpoint, owner: 'worker', requestTimeoutMs: 3000})
      const before = []
      for (const key of ['a', 'b']) before.push(await client.createLock(key).acquire({leaseMs: 600_000}))
      const rewrites = () => lockd.stderr().split('was removed while lockd ran; writing').length - 1
      if (removed === 'the snapshot') {
        // A snapshot to remove: the rewrite after a removed fence mark makes one.
        rmSync(join(dataDir, 'fence'))
        await eventually(() => rewrites() === 1 && existsSync(join(dataDir, 'snapshot')))
      }
      const target = {
        'the whole directory': dataDir,
        'the fence mark': join(dataDir, 'fence'),
        'the snapshot': join(dataDir, 'snapshot'),
      }[removed]
      rmSync(target, {recursive: true, force: true, maxRetries: 10})
      const expected = removed === 'the snapshot' ? 2 : 1
      await eventually(() => rewrites() === expected)
      // The rewrite is whole once its snapshot is named.
      await eventually(() => existsSync(join(dataDir, 'snapshot')) && existsSync(join(dataDir, 'fence')))
      const again = await connect({endpoints: lockd.endpoint, owner: 'worker', requestTimeoutMs: 3000})
      const after = await again.createLock('c').acquire({leaseMs: 600_000})
      before.push(after)
      await again.close()
      await client.close()

      lockd.child.kill('SIGKILL')
      await lockd.exited
      const restarted = await startLockd({dataDir})
      const check = await connect({endpoints: restarted.endpoint, owner: 'checker'})
      for (const grant of before) {
        const view = await check.inspect(grant.key)
        expect(view?.holder?.fence, `${grant.key} after the restart`).toBe(grant.fence)
      }
      const next = await check.createLock('d').acquire({leaseMs: 10_000})
      expect(next.fence).toBeGreaterThan(Math.max(...before.map((g) => g.fence)))
      expect(restarted.stderr()).not.toMatch(/refus|missing/)
      await check.close()
      await restarted.stop()
    })
  }
})
