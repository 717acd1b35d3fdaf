import {describe, expect, it} from 'vitest'
import {Packr} from 'msgpackr'
import {createCodec, encodeFrame, FrameDecoder} from '../../src/protocol/framing.js'
import {markDashTokens, parseDuration} from '../../src/cli/flags.js'
import {describeEndpoint, parseEndpoint} from '../../src/client/endpoint.js'
import {keyProblem, tokenProblem} from '../../src/protocol/validate.js'

describe('durations', () => {
  it.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['1m30s', 90_000],
    ['2h', 7_200_000],
    ['1.5s', 1500],
    ['0', 0],
    ['1d', 86_400_000],
  ])('%s = %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms))

  it.each(['', 'abc', '30', '5x', 's', '-1s', '1m 30s'])('rejects %j', (text) => expect(parseDuration(text)).toBeNull())
})

describe('endpoints', () => {
  it('parses the three forms', () => {
    expect(parseEndpoint('unix:///run/lockd.sock')).toEqual({kind: 'unix', path: '/run/lockd.sock'})
    expect(parseEndpoint('lockd://127.0.0.1:7070')).toEqual({kind: 'tcp', host: '127.0.0.1', port: 7070, tls: false})
    expect(parseEndpoint('lockd://[::1]:9')).toEqual({kind: 'tcp', host: '::1', port: 9, tls: false})
    expect(parseEndpoint('lockds://lockd.example:7443')).toEqual({kind: 'tcp', host: 'lockd.example', port: 7443, tls: true})
    expect(describeEndpoint(parseEndpoint('lockds://[::1]:7443'))).toBe('lockds://[::1]:7443')
    // Echoed back as given: brackets for IPv6, and the TLS scheme.
    expect(describeEndpoint(parseEndpoint('etcds://[::1]:2379,h2'))).toBe('etcds://[::1]:2379,h2:2379')
    expect(parseEndpoint('etcd://a:2379,b:2380')).toMatchObject({
      kind: 'etcd',
      hosts: [
        {host: 'a', port: 2379},
        {host: 'b', port: 2380},
      ],
    })
  })

  it.each(['127.0.0.1:7070', 'http://x', 'unix://relative', 'lockd://h:99999', 'lockd://', 'lockd://a:1,b:2'])('rejects %j with the accepted forms', (text) =>
    expect(() => parseEndpoint(text)).toThrow(/use unix:\/\/\/path/),
  )
})

describe('keys and tokens', () => {
  it('accepts UTF-8 up to 512 bytes', () => {
    expect(keyProblem('deploy/prod')).toBeNull()
    expect(keyProblem('é'.repeat(256))).toBeNull()
    expect(keyProblem('é'.repeat(257))).toMatch(/at most 512 bytes/)
  })
  it.each(['', 'a\nb', 'tab\there', 'nul\u0000', 'del\u007f', 'c1\u0085', 'lone\ud800'])('rejects %j', (key) => expect(keyProblem(key)).not.toBeNull())
  it('rejects tokens with spaces or too long', () => {
    expect(tokenProblem('abc DEF')).not.toBeNull()
    expect(tokenProblem('x'.repeat(257))).not.toBeNull()
    expect(tokenProblem('F45pk2zoNpOOObNw-l3PjGVd')).toBeNull()
  })
})

describe('framing', () => {
  it('decodes frames split at every byte boundary', () => {
    const codec = createCodec()
    const frames = Buffer.concat([encodeFrame(codec, {t: 'req', id: 1}), encodeFrame(codec, {t: 'req', id: 2, key: 'é'})])
    for (let cut = 0; cut <= frames.length; cut++) {
      const decoder = new FrameDecoder(createCodec())
      const got = [...decoder.push(frames.subarray(0, cut)), ...decoder.push(frames.subarray(cut))]
      expect(got).toEqual([
        {t: 'req', id: 1},
        {t: 'req', id: 2, key: 'é'},
      ])
    }
  })

  it('rejects a frame over the limit from its header alone', () => {
    const header = Buffer.alloc(4)
    header.writeUInt32BE(2 * 1024 * 1024)
    expect(() => new FrameDecoder(createCodec()).push(header)).toThrow(/over the limit/)
  })

  it('rejects a body that is not msgpack', () => {
    const bad = Buffer.from([0, 0, 0, 3, 0xd9, 5, 0x61]) // str8 of length 5 with one byte of data
    expect(() => new FrameDecoder(createCodec()).push(bad)).toThrow(/malformed/)
  })

  it('decodes 64-bit integers as BigInt', () => {
    const body = new Packr({useRecords: false}).pack({big: 2n ** 60n})
    const frame = Buffer.concat([Buffer.from([0, 0, 0, body.length]), body])
    expect(new FrameDecoder(createCodec()).push(frame)).toEqual([{big: 2n ** 60n}])
  })
})

describe('formatMs', () => {
  it('shows a tenth under 10 s (a 1.5s wait is not "2s"), whole units above', async () => {
    const {formatMs} = await import('../../src/client/errors.js')
    expect([500, 1500, 2000, 9949, 15_000, 90_000, 3_600_000].map(formatMs)).toEqual(['500ms', '1.5s', '2s', '9.9s', '15s', '1m30s', '1h'])
    // Just under a second rounds to one: "1000ms" was what a 1s wait said when it ended 0.3 ms early.
    expect([999.4, 999.5, 999.7].map(formatMs)).toEqual(['999ms', '1s', '1s'])
  })
})

describe("--token values that begin with '-'", () => {
  it('are marked for tokenFlag (oclif would take them for short flags); nothing else is touched', () => {
    const token = '-yK3abcdefghijklmnopqr'
    expect(markDashTokens(['unlock', 'k', '--token', token])).toEqual(['unlock', 'k', '--token', `\u0000${token}`])
    // Not after `--` (hold's command), not a value of another flag, not a flag's shape.
    expect(markDashTokens(['hold', 'k', '--', 'cmd', '--token', token])).toEqual(['hold', 'k', '--', 'cmd', '--token', token])
    expect(markDashTokens(['lock', 'k', '--owner', token])).toEqual(['lock', 'k', '--owner', token])
    for (const value of ['-y', '--yes', '--token', '-abc']) expect(markDashTokens(['unlock', 'k', '--token', value])).toEqual(['unlock', 'k', '--token', value])
    // A token that does not begin with '-' is left as it is.
    expect(markDashTokens(['unlock', 'k', '--token', 'yK3abcdefghijklmnopqr'])).toEqual(['unlock', 'k', '--token', 'yK3abcdefghijklmnopqr'])
  })
})
