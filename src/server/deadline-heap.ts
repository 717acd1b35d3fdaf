/**
 * Min-heap of deadlines with lazy deletion: entries are never removed early, the owner checks on
 * pop whether an entry is still current. One timer for the whole table instead of one per lease.
 *
 * Two parallel arrays, deadlines and items, instead of an {at, item} object per entry: with a
 * million held locks that is a million objects less to allocate, keep and trace (the numbers sit
 * unboxed in a packed double array).
 */
export class DeadlineHeap<T> {
  private ats: number[] = []
  private items: T[] = []

  get size(): number {
    return this.ats.length
  }

  /** The earliest deadline, if any. */
  peekAt(): number | undefined {
    return this.ats[0]
  }

  push(at: number, item: T): void {
    this.ats.push(at)
    this.items.push(item)
    this.siftUp(this.ats.length - 1)
  }

  /** Many at once (a restart's every lease): appended, then one O(n) heapify instead of n pushes. */
  pushAll(ats: number[], items: T[]): void {
    if (ats.length < 64) {
      for (let i = 0; i < ats.length; i++) this.push(ats[i], items[i])
      return
    }
    for (let i = 0; i < ats.length; i++) {
      this.ats.push(ats[i])
      this.items.push(items[i])
    }
    for (let i = (this.ats.length >> 1) - 1; i >= 0; i--) this.siftDown(i)
  }

  /** Remove the entry with the earliest deadline and return its item (read peekAt() first for its deadline). */
  pop(): T | undefined {
    const {ats, items} = this
    if (ats.length === 0) return undefined
    const top = items[0]
    const lastAt = ats.pop()!
    const lastItem = items.pop()!
    if (ats.length > 0) {
      ats[0] = lastAt
      items[0] = lastItem
      this.siftDown(0)
    }
    return top
  }

  /** Rebuild keeping only live entries (bounds growth when leases are renewed often). */
  compact(isLive: (item: T, at: number) => boolean): void {
    const ats: number[] = []
    const items: T[] = []
    for (let i = 0; i < this.ats.length; i++) {
      if (!isLive(this.items[i], this.ats[i])) continue
      ats.push(this.ats[i])
      items.push(this.items[i])
    }
    this.ats = []
    this.items = []
    this.pushAll(ats, items)
  }

  private siftUp(start: number): void {
    const {ats} = this
    let i = start
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (ats[parent] <= ats[i]) return
      this.swap(parent, i)
      i = parent
    }
  }

  private siftDown(start: number): void {
    const {ats} = this
    const n = ats.length
    let i = start
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let smallest = i
      if (l < n && ats[l] < ats[smallest]) smallest = l
      if (r < n && ats[r] < ats[smallest]) smallest = r
      if (smallest === i) return
      this.swap(smallest, i)
      i = smallest
    }
  }

  private swap(a: number, b: number): void {
    const {ats, items} = this
    const at = ats[a]
    ats[a] = ats[b]
    ats[b] = at
    const item = items[a]
    items[a] = items[b]
    items[b] = item
  }
}
