/** "a lock" or "a semaphore of N": how a name's limit is named in messages, by server and client alike. */
export function describeLimit(limit: number): string {
  return limit > 1 ? `a semaphore of ${limit} (--limit ${limit})` : 'a lock (no --limit)'
}
