import {describe, expect, it} from 'vitest'
import {connectionLimits, REFUSING_ROOM} from '../../src/server/descriptors.js'

describe('connection limits under the open-file limit', () => {
  it('--max-connections bounds the served connections when the limit leaves room for them', () => {
    expect(connectionLimits(10_000, {limit: 1_048_576, open: 30}, 32)).toEqual({sockets: 1_048_576 - 30 - 32, served: 10_000, boundByFiles: null, files: 1_048_576})
  })

  it('the open-file limit bounds them when it leaves less: lockd keeps its reserve and room to refuse', () => {
    const limits = connectionLimits(10_000, {limit: 1024, open: 26}, 48)
    expect(limits).toEqual({sockets: 1024 - 26 - 48, served: 1024 - 26 - 48 - REFUSING_ROOM, boundByFiles: 1024, files: 1024})
    // Every socket, served or being refused, fits in what the files leave.
    expect(limits.sockets + 26 + 48).toBeLessThanOrEqual(1024)
  })

  it('no room at all is said as such (served below 1), never a negative socket count', () => {
    const limits = connectionLimits(10_000, {limit: 64, open: 26}, 32)
    expect(limits.served).toBeLessThan(1)
    expect(limits.sockets).toBe(6)
    expect(connectionLimits(10_000, {limit: 40, open: 26}, 32).sockets).toBe(0)
  })

  it('unknown (not Linux, or unlimited): --max-connections alone', () => {
    expect(connectionLimits(500, null, 32)).toEqual({sockets: Number.POSITIVE_INFINITY, served: 500, boundByFiles: null, files: null})
  })
})
