/**
 * The checker of the randomized fault test (docs: ../../../shared/fault-testing.md): reads
 * protected writes and reports every way a lock failed to protect them.
 */
export interface ProtectedWrite {
  key: string
  token: string
  fence: number
  worker: number
  /** CLOCK_MONOTONIC nanoseconds, read before the check that said "held". */
  t: bigint
  /** A shared (read) grant of a lock (only on the keys check() is told are read/write). */
  shared?: boolean
}

export interface Verdict {
  /** Two grants of one key whose write intervals overlap: two holders at once. */
  overlaps: string[]
  /** One fence carried by two different grants. */
  repeatedFences: string[]
  /** A grant whose fence is not above the previous grant's (in order of first write), per key. */
  fenceOrder: string[]
  /** Writes a fencing store would refuse: a fence below the highest already written to the key. */
  staleWrites: number
  grants: number
  writes: number
}

export function parseWrites(text: string): ProtectedWrite[] {
  return text
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => {
      const w = JSON.parse(line) as Omit<ProtectedWrite, 't'> & {t: string}
      return {...w, t: BigInt(w.t)}
    })
}

/**
 * `limits`: keys that are semaphores, by their limit. On those, up to `limit` grants may write at
 * once (more is an overlap) and grants run side by side, so the order of fences and stale
 * writes — a lock's rules — are not checked there; a fence still belongs to one grant.
 */
/**
 * `readWrite`: locks taken shared or exclusive. There shared grants may write side by side; an
 * exclusive grant's writes overlap nobody's. A write is stale if a grant made after it (a higher
 * fence) wrote before it and one of the two is exclusive: each excludes the other, so the lower
 * one's lease had ended.
 */
export function check(writes: ProtectedWrite[], limits: Record<string, number> = {}, readWrite: readonly string[] = []): Verdict {
  const verdict: Verdict = {overlaps: [], repeatedFences: [], fenceOrder: [], staleWrites: 0, grants: 0, writes: writes.length}
  const byKey = new Map<string, ProtectedWrite[]>()
  for (const w of writes) byKey.set(w.key, [...(byKey.get(w.key) ?? []), w])
  const fenceOwner = new Map<number, string>()
  /** A fence belongs to one grant (one counter on lockd, the store revision on etcd), whatever the key. */
  const claimFence = (key: string, grant: {token: string; fence: number}) => {
    const owner = fenceOwner.get(grant.fence)
    if (owner !== undefined && owner !== grant.token) verdict.repeatedFences.push(`${key}: fence ${grant.fence}`)
    fenceOwner.set(grant.fence, grant.token)
  }
  for (const [key, list] of byKey) {
    const grants = new Map<string, {token: string; fence: number; first: bigint; last: bigint; shared: boolean}>()
    for (const w of list) {
      const g = grants.get(w.token)
      if (!g) grants.set(w.token, {token: w.token, fence: w.fence, first: w.t, last: w.t, shared: w.shared === true})
      else {
        if (w.t < g.first) g.first = w.t
        if (w.t > g.last) g.last = w.t
      }
    }
    const ordered = [...grants.values()].sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0))
    verdict.grants += ordered.length
    const limit = limits[key]
    if (limit !== undefined) {
      for (const a of ordered) claimFence(key, a)
      // Sweep the write intervals in time: at no moment more than `limit` grants inside.
      const points = ordered.flatMap((g) => [
        {at: g.first, delta: 1, fence: g.fence},
        {at: g.last, delta: -1, fence: g.fence},
      ])
      points.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : b.delta - a.delta))
      let inside = 0
      for (const p of points) {
        inside += p.delta
        if (inside > limit) verdict.overlaps.push(`${key}: ${inside} grants at once (limit ${limit}) at ${p.at}, fence ${p.fence} entering`)
      }
      continue
    }
    if (readWrite.includes(key)) {
      for (let i = 0; i < ordered.length; i++) {
        const a = ordered[i]
        claimFence(key, a)
        for (let j = i + 1; j < ordered.length && ordered[j].first <= a.last; j++) {
          if (a.shared && ordered[j].shared) continue
          verdict.overlaps.push(
            `${key}: ${a.shared ? 'shared' : 'exclusive'} fence ${a.fence} [${a.first}..${a.last}] overlaps ${ordered[j].shared ? 'shared' : 'exclusive'} fence ${ordered[j].fence} from ${ordered[j].first}`,
          )
        }
      }
      let highest = -1
      let highestExclusive = -1
      for (const w of [...list].sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0))) {
        if (w.fence < (w.shared ? highestExclusive : highest)) verdict.staleWrites++
        highest = Math.max(highest, w.fence)
        if (!w.shared) highestExclusive = Math.max(highestExclusive, w.fence)
      }
      continue
    }
    for (let i = 0; i < ordered.length; i++) {
      const a = ordered[i]
      claimFence(key, a)
      if (i > 0 && a.fence <= ordered[i - 1].fence) verdict.fenceOrder.push(`${key}: fence ${a.fence} after ${ordered[i - 1].fence}`)
      for (let j = i + 1; j < ordered.length && ordered[j].first <= a.last; j++) {
        verdict.overlaps.push(`${key}: fence ${a.fence} [${a.first}..${a.last}] overlaps fence ${ordered[j].fence} from ${ordered[j].first}`)
      }
    }
    let highest = -1
    for (const w of [...list].sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0))) {
      if (w.fence < highest) verdict.staleWrites++
      highest = Math.max(highest, w.fence)
    }
  }
  return verdict
}
