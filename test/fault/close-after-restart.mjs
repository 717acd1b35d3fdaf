// Used by test/integration/etcd-cluster.test.ts: a waiter whose etcd member restarts while it
// waits takes the lock, gives it back and closes; then this process must end by itself.
//
//   node close-after-restart.mjs ENDPOINT
//
// Reads "go" lines on stdin: the first after the member has been restarted (then the holder
// releases). Prints "closed" when everything is closed; the test times how long the process
// lives after that.
import {createInterface} from 'node:readline'
import {connect} from '../../dist/client/index.js'

const [endpoint] = process.argv.slice(2)
const lines = createInterface({input: process.stdin})[Symbol.asyncIterator]()
const holder = await connect({endpoints: endpoint})
const waiter = await connect({endpoints: endpoint})
const held = holder.createLock('restart-mid-wait', {leaseMs: 30_000})
if (!(await held.tryLock({waitMs: 0}))) throw new Error('the holder did not get the lock')
const waiting = waiter.createLock('restart-mid-wait', {leaseMs: 30_000})
let queued
const inQueue = new Promise((resolve) => (queued = resolve))
const granted = waiting.tryLock({waitMs: 60_000, onQueued: () => queued()})
await inQueue
console.log('waiting')
await lines.next() // the member was restarted
await held.unlock()
if (!(await granted)) throw new Error('the waiter did not get the lock')
await waiting.unlock()
await holder.close()
await waiter.close()
process.stdin.destroy()
console.log('closed')
