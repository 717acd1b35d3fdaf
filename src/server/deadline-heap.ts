/**
 * Min-heap of deadlines with lazy deletion: entries are never removed early, the owner checks on
 * pop whether an entry is still current. One timer for the whole table instead of one per lease.
 */
export interface HeapEntry<T> {
  at: number
  item: T
}

export class DeadlineHeap<T> {
  private heap: HeapEntry<T>[] = []

  get size(): number {
    return this.heap.length
  }

  peek(): HeapEntry<T> | undefined {
    return this.heap[0]
  }

  push(at: number, item: T): void {
    const heap = this.heap
    heap.push({at, item})
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (heap[parent].at <= heap[i].at) break
      ;[heap[parent], heap[i]] = [heap[i], heap[parent]]
      i = parent
    }
  }

  /** Many at once (a restart's every lease): appended, then one O(n) heapify instead of n pushes. */
  pushAll(entries: HeapEntry<T>[]): void {
    if (entries.length < 64) {
      for (const e of entries) this.push(e.at, e.item)
      return
    }
    const heap = this.heap
    for (const e of entries) heap.push(e)
    for (let i = (heap.length >> 1) - 1; i >= 0; i--) this.siftDown(i)
  }

  private siftDown(start: number): void {
    const heap = this.heap
    let i = start
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let smallest = i
      if (l < heap.length && heap[l].at < heap[smallest].at) smallest = l
      if (r < heap.length && heap[r].at < heap[smallest].at) smallest = r
      if (smallest === i) return
      ;[heap[smallest], heap[i]] = [heap[i], heap[smallest]]
      i = smallest
    }
  }

  pop(): HeapEntry<T> | undefined {
    const heap = this.heap
    if (heap.length === 0) return undefined
    const top = heap[0]
    const last = heap.pop()!
    if (heap.length > 0) {
      heap[0] = last
      this.siftDown(0)
    }
    return top
  }

  /** Rebuild keeping only live entries (bounds growth when leases are renewed often). */
  compact(isLive: (item: T, at: number) => boolean): void {
    const live = this.heap.filter((e) => isLive(e.item, e.at))
    this.heap = []
    this.pushAll(live)
  }
}
