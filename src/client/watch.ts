import type {LockEvent, LockInfo} from '../protocol/messages.js'

export type {LockEvent}

/** What a watch yields: the state first, then events in order; a fresh state after a reconnect. */
export type WatchUpdate =
  {type: 'snapshot'; locks: LockInfo[]; /** true after a reconnect: events may have been missed. */ resync: boolean} | {type: 'event'; event: LockEvent} | {type: 'disconnected'; reason: string}

export type WatchTarget = {key: string; prefix?: undefined} | {prefix: string; key?: undefined}

export interface WatchOptions {
  signal?: AbortSignal
  /** Keep watching across connection losses (default true); false ends the stream instead. */
  reconnect?: boolean
}
