import type {Socket} from 'node:net'
import type {Packr} from 'msgpackr/pack'
import {createCodec, FrameDecoder} from '../protocol/framing.js'
import type {Holder} from './lock-table.js'

/** A watch subscription: the id of its watch request, and what it watches. */
export interface Subscription {
  conn: Connection
  sub: number
  key?: string
  prefix?: string
}

/** One client connection, as the server keeps it. */
export interface Connection {
  /** Names the connection in the lock table (waiters, holders' connections). */
  session: string
  socket: Socket
  codec: Packr
  decoder: FrameDecoder
  greeted: boolean
  helloTimer?: NodeJS.Timeout
  /**
   * Largest frame the peer accepts, as its hello says. A peer whose hello does not say (a client
   * from before answers came in parts) gets every answer whole, as it always did.
   */
  peerMaxFrame: number | null
  subscriptions: Map<number, Subscription>
  /** Who is on the other end: the user of its password, or its client certificate's CN. */
  user: string | null
  /** Messages that came while the hello's password was being checked, in order. */
  held: Record<string, unknown>[] | null
  /**
   * The owner name of this connection's last acquire. A client names the same owner in every
   * acquire; each holder keeps this one string instead of its own decoded copy (a million locks
   * of one client process: one string, not a million).
   */
  owner: string | null
  /**
   * Bytes of unread output allowed beyond the limit: the largest answer written since the output
   * was last empty. A large answer the peer asked for (status --json of a million locks) is read
   * over a while; smaller answers and pushes meanwhile must not count it against the peer.
   */
  answerAllowance: number
  /**
   * The last few grants made at once to this connection's acquires, by request id: a client
   * that got no answer in time cancels its acquire, and a grant made after it gave up is
   * released instead of held, by a token nobody knows, for its whole lease (docs/protocol.md).
   */
  recentGrants: Map<number, Holder>
}

/** How many of a connection's direct grants a late cancel can still find. */
export const RECENT_GRANTS = 16

/** `owner` as the connection's one copy of it. */
export function sharedOwner(conn: Connection, owner: string): string {
  if (conn.owner === owner) return conn.owner
  conn.owner = owner
  return owner
}

export function newConnection(socket: Socket, session: string, maxFrame: number): Connection {
  const codec = createCodec()
  return {
    session,
    socket,
    codec,
    decoder: new FrameDecoder(codec, maxFrame),
    greeted: false,
    peerMaxFrame: null,
    subscriptions: new Map(),
    user: null,
    held: null,
    owner: null,
    answerAllowance: 0,
    recentGrants: new Map(),
  }
}

/** Where a connection comes from, for lockd's log: `ADDRESS:PORT`, or the Unix socket. */
export function peerOf(socket: Socket): string {
  const {remoteAddress, remotePort} = socket
  if (remoteAddress === undefined) return 'the Unix socket'
  return remoteAddress.includes(':') ? `[${remoteAddress}]:${remotePort}` : `${remoteAddress}:${remotePort}`
}
