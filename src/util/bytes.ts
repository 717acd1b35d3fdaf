/** Bytes as whole megabytes (MiB), for lockd's log lines and refusals. */
export function megabytes(bytes: number): number {
  return Math.round(bytes / 1048576)
}
