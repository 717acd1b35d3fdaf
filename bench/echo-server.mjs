// The floor of the side-by-side benchmark (bench/run.js): a bare Node TCP server that sends back
// whatever it reads, with no protocol, no lock and nothing on disk. A pair against it is two
// round trips of 64 bytes, what a lock+unlock is on the wire. lockd cannot go below what Node
// itself costs for that on this machine; the figures say how far above it lockd's own work is.
//
//   node bench/echo-server.mjs    prints the port it listens on (loopback), then serves until killed
import {createServer} from 'node:net'

const server = createServer((socket) => {
  socket.setNoDelay(true)
  socket.on('data', (chunk) => socket.write(chunk))
  socket.on('error', () => socket.destroy())
})
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`))
