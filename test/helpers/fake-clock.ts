import type {Clock} from '../../src/server/lock-table.js'

/** A clock that moves only when the test says so. */
export class FakeClock implements Clock {
  private t = 1_000_000
  now(): number {
    return this.t
  }
  wall(): number {
    return 1_700_000_000_000 + this.t
  }
  advance(ms: number): void {
    this.t += ms
  }
}
