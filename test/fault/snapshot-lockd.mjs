// Used by test/integration/snapshot-crash.test.ts: a real lockd on a loopback port whose
// snapshots are tiny and written in tiny slices, so that a kill -9 lands in the middle of one
// (docs/recovery.md, "Snapshots").
//
//   node snapshot-lockd.mjs DATA_DIR SNAPSHOT_BYTES SLICE [forget]
//
// forget: start with --forget-all-locks (a directory it refused).
//
// Prints "port N" once it listens, then serves until it is killed.
import {LockServer} from '../../dist/server/lockd.js'

const [dataDir, snapshotBytes, snapshotSlice, forget] = process.argv.slice(2)
const server = await new LockServer({
  dataDir,
  listen: [{host: '127.0.0.1', port: 0}],
  snapshotBytes: Number(snapshotBytes),
  snapshotSlice: Number(snapshotSlice),
  forgetAllLocks: forget === 'forget',
  log: (line) => process.stderr.write(`${line}\n`),
})
  .start()
  .catch((error) => {
    process.stderr.write(`${error.message}\n`)
    process.exit(1)
  })
process.stdout.write(`port ${server.addresses.tcp[0].port}\n`)
