import {MIN_PEER_FRAME} from '../protocol/framing.js'
import {PROTOCOL_VERSION, type HelloReply} from '../protocol/messages.js'
import type {Connection} from './connection.js'

/**
 * The first message of a connection (docs/protocol.md, "Hello and versioning"): check it, note
 * what the peer announces, and say what to answer. Nothing else is accepted before it; the
 * caller marks the connection greeted once any password in it is checked.
 */
export function greet(conn: Connection, message: Record<string, unknown>, server: Omit<HelloReply, 't' | 'v'>): {reply: HelloReply} | {refuse: string} {
  if (message.t !== 'hello') return {refuse: 'the first message must be hello'}
  if (message.v !== PROTOCOL_VERSION) {
    return {refuse: `protocol version ${describeVersion(message.v)} is not supported (this lockd speaks ${PROTOCOL_VERSION})`}
  }
  clearTimeout(conn.helloTimer)
  if (typeof message.maxFrame === 'number' && Number.isInteger(message.maxFrame)) conn.peerMaxFrame = Math.max(MIN_PEER_FRAME, message.maxFrame)
  return {reply: {t: 'hello', v: PROTOCOL_VERSION, ...server}}
}

/** A peer's version as said back to it: String() of a map with a `toString` key throws (it crashed lockd). */
function describeVersion(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v)
  if (typeof v === 'string') return JSON.stringify(v.slice(0, 32))
  return v === null || v === undefined ? 'none' : `of type ${Array.isArray(v) ? 'array' : typeof v}`
}
