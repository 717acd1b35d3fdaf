/** The `limit` smallest keys offered (in code-unit order, as `status` sorts), without sorting them all. */
export class FirstKeys {
  /** A max-heap: the largest kept key on top, the first to go when a smaller one comes. */
  private readonly heap: string[] = []

  constructor(private readonly limit: number) {}

  offer(key: string): void {
    const {heap} = this
    // No limit: every key is kept, and sorted() orders them all (no heap to keep up).
    if (this.limit === Number.POSITIVE_INFINITY) {
      heap.push(key)
    } else if (heap.length < this.limit) {
      heap.push(key)
      let i = heap.length - 1
      while (i > 0) {
        const parent = (i - 1) >> 1
        if (heap[parent] >= heap[i]) break
        ;[heap[parent], heap[i]] = [heap[i], heap[parent]]
        i = parent
      }
    } else if (heap.length > 0 && key < heap[0]) {
      heap[0] = key
      let i = 0
      for (;;) {
        const left = 2 * i + 1
        const right = left + 1
        let largest = i
        if (left < heap.length && heap[left] > heap[largest]) largest = left
        if (right < heap.length && heap[right] > heap[largest]) largest = right
        if (largest === i) break
        ;[heap[largest], heap[i]] = [heap[i], heap[largest]]
        i = largest
      }
    }
  }

  sorted(): string[] {
    // The default sort orders strings by UTF-16 code units, as `<` does, without a call per
    // comparison: a million names in ~0.36 s instead of ~0.52 (a watch snapshot of them all).
    return this.heap.sort()
  }
}
