import {connect as netConnect, type Socket} from 'node:net'
import {createCodec, encodeFrame, FrameDecoder} from '../../src/protocol/framing.js'

/**
 * A connection to lockd that speaks the protocol by hand: write frames to `socket`, read every
 * message lockd sent in `messages`; `received` resolves with them all once the connection closes.
 * `localAddress`: another loopback address to come from (127.0.0.2: another peer).
 */
export async function rawConnection(port: number, localAddress?: string): Promise<{socket: Socket; messages: Record<string, unknown>[]; received: Promise<Record<string, unknown>[]>}> {
  const socket = netConnect({host: '127.0.0.1', port, localAddress})
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  const decoder = new FrameDecoder(createCodec())
  const messages: Record<string, unknown>[] = []
  socket.on('data', (chunk) => messages.push(...(decoder.push(chunk) as Record<string, unknown>[])))
  const received = new Promise<Record<string, unknown>[]>((resolve) => socket.once('close', () => resolve(messages)))
  return {socket, messages, received}
}

/** A hello frame of protocol version 1, without credentials. */
export const helloFrame = (): Buffer => encodeFrame(createCodec(), {t: 'hello', v: 1})

/**
 * `count` sockets to `port` on loopback that never say anything (a scan, a flood, a client hung
 * before its hello); what comes back is read and dropped, so a close by the server is seen
 * (`destroyed`). Resolves once each has connected or been closed. `into`: where they are kept,
 * for the caller to destroy.
 */
export async function idleSockets(port: number, count: number, into: Socket[] = []): Promise<Socket[]> {
  const sockets = Array.from({length: count}, () => {
    const socket = netConnect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.resume()
    into.push(socket)
    return socket
  })
  await Promise.all(sockets.map((socket) => new Promise<void>((resolve) => (socket.once('connect', () => resolve()), socket.once('close', () => resolve())))))
  return sockets
}
