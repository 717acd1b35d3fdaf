// The pure-JS entry: the package's main entry also loads streams and a native string decoder,
// ~30 ms of every CLI start, for no gain on frames this small.
import {Packr} from 'msgpackr/pack'
import {ErrorCode} from './errors.js'

/** Default largest frame body either side accepts. */
export const DEFAULT_MAX_FRAME = 1024 * 1024
/** The smallest frame limit a peer may announce in its hello (smaller ones are ignored). */
export const MIN_PEER_FRAME = 64 * 1024
const HEADER = 4

export class FrameError extends Error {
  readonly code = ErrorCode.PROTOCOL
}

/**
 * One codec per connection (msgpackr keeps per-instance state). `useRecords: false` because
 * the peer may not be msgpackr; 64-bit integers decode as BigInt so nothing silently rounds.
 */
export function createCodec(): Packr {
  return new Packr({useRecords: false, int64AsType: 'bigint', mapsAsObjects: true})
}

export function encodeFrame(codec: Packr, message: unknown, maxFrame = DEFAULT_MAX_FRAME): Buffer {
  const body = codec.pack(message)
  if (body.length > maxFrame) throw new FrameError(`frame of ${body.length} bytes is over the limit of ${maxFrame}`)
  const frame = Buffer.allocUnsafe(HEADER + body.length)
  frame.writeUInt32BE(body.length, 0)
  body.copy(frame, HEADER)
  return frame
}

/**
 * Incremental frame reader: feed it socket chunks, get decoded messages back.
 * The length is checked before anything is buffered for the body, so an oversized
 * header costs nothing; any error leaves the decoder unusable (the connection must close).
 */
export class FrameDecoder {
  private buffer: Buffer = Buffer.alloc(0)
  private failed = false

  /** `maxFrame`: the largest body accepted; it may change between pushes (lockd's is small until the hello). */
  constructor(
    private readonly codec: Packr,
    public maxFrame = DEFAULT_MAX_FRAME,
  ) {}

  /** Bytes received that do not yet make a whole frame (a half-sent frame at close). */
  get pendingBytes(): number {
    return this.buffer.length
  }

  push(chunk: Buffer): unknown[] {
    if (this.failed) throw new FrameError('decoder already failed')
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk])
    const messages: unknown[] = []
    let offset = 0
    while (this.buffer.length - offset >= HEADER) {
      const length = this.buffer.readUInt32BE(offset)
      if (length === 0 || length > this.maxFrame) {
        this.failed = true
        throw new FrameError(length === 0 ? 'empty frame' : `frame of ${length} bytes is over the limit of ${this.maxFrame}`)
      }
      if (this.buffer.length - offset - HEADER < length) break
      const body = this.buffer.subarray(offset + HEADER, offset + HEADER + length)
      offset += HEADER + length
      try {
        messages.push(this.codec.unpack(body))
      } catch (error) {
        this.failed = true
        throw new FrameError(`malformed frame: ${(error as Error).message}`)
      }
    }
    this.buffer = offset === this.buffer.length ? Buffer.alloc(0) : this.buffer.subarray(offset)
    return messages
  }
}
