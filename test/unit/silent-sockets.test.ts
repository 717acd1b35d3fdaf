import {EventEmitter} from 'node:events'
import type {Socket} from 'node:net'
import {describe, expect, it} from 'vitest'
import {SilentSockets} from '../../src/server/silent-sockets.js'

/** Just what SilentSockets uses of a socket: `once('close')` and `destroy()`. */
function fakeSocket(): Socket & {destroyedByUs: boolean} {
  const socket = new EventEmitter() as unknown as Socket & {destroyedByUs: boolean}
  socket.destroyedByUs = false
  socket.destroy = () => {
    socket.destroyedByUs = true
    socket.emit('close')
    return socket
  }
  return socket
}

describe('SilentSockets', () => {
  it('closes the oldest silent socket, only once it has been silent long enough; one that spoke or closed is never closed', () => {
    let now = 0
    const silent = new SilentSockets<string>(1000, () => now)
    const [a, b, c] = [fakeSocket(), fakeSocket(), fakeSocket()]
    silent.add('a', a)
    now = 100
    silent.add('b', b)
    now = 200
    silent.add('c', c)

    now = 999
    expect(silent.closeOldest()).toBe(false) // a: 999 ms, not yet
    expect(a.destroyedByUs).toBe(false)

    silent.spoke('a') // a said something: not a candidate any more
    now = 1150
    expect(silent.closeOldest()).toBe(true) // b: 1050 ms
    expect([a.destroyedByUs, b.destroyedByUs, c.destroyedByUs]).toEqual([false, true, false])

    c.emit('close') // closed by its peer: forgotten
    now = 5000
    expect(silent.closeOldest()).toBe(false)
  })

  it('a key taken over by a newer socket is not forgotten when the older one closes', () => {
    let now = 0
    const silent = new SilentSockets<string>(10, () => now)
    const [older, newer] = [fakeSocket(), fakeSocket()]
    silent.add('peer', older)
    silent.add('peer', newer)
    older.emit('close')
    now = 50
    expect(silent.closeOldest()).toBe(true)
    expect(newer.destroyedByUs).toBe(true)
  })
})
