/** Quote for POSIX sh, so `eval "$(lockctl lock k --export)"` is safe with any key. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`
}

/** A word as a command to copy shows it: as it is when the shell reads it so, else quoted. */
export function shellWord(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : shellQuote(value)
}
