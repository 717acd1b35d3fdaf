import {randomFillSync} from 'node:crypto'

const TOKEN_BYTES = 18
const TOKENS_PER_FILL = 256

/** A first byte whose top six bits are 62 encodes as base64url '-'. */
const DASH = 62

/**
 * Grant tokens: 18 bytes from the operating system's CSPRNG each (144 bits, unguessable: a token
 * proves ownership), read 256 tokens at a time — one getrandom call per grant was ~5% of lockd's
 * CPU under load. Each token is used once; none is derived from another.
 *
 * A token never begins with '-' (docs/protocol.md): scripts pass it as `--token "$token"`, and an
 * option parser takes `-y...` for flags (oclif read `unlock --token -yK3...` as --yes; one token in
 * 4096 began with those two characters). A candidate that would is skipped, not altered: the
 * others stay uniformly random, at 0.02 bits less entropy.
 */
export class TokenSource {
  private readonly pool = Buffer.alloc(TOKEN_BYTES * TOKENS_PER_FILL)
  private at = this.pool.length

  next(): string {
    for (;;) {
      if (this.at === this.pool.length) {
        randomFillSync(this.pool)
        this.at = 0
      }
      const start = this.at
      this.at += TOKEN_BYTES
      if (this.pool[start] >> 2 !== DASH) return this.pool.toString('base64url', start, start + TOKEN_BYTES)
    }
  }
}
