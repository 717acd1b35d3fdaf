import {UsageError} from './usage-error.js'

/**
 * Split a line as a POSIX shell would for words: whitespace separates, 'single quotes' are
 * literal, "double quotes" allow \" \\ \$ \` escapes, a backslash outside quotes escapes the
 * next character, # at the start of a word begins a comment. No expansion of any kind.
 */
export function tokenize(line: string): string[] {
  const words: string[] = []
  let word = ''
  let inWord = false
  for (let i = 0; i < line.length; i++) {
    const c = line[i]
    if (c === "'") {
      const end = line.indexOf("'", i + 1)
      if (end === -1) throw new UsageError('unterminated single quote')
      word += line.slice(i + 1, end)
      i = end
      inWord = true
    } else if (c === '"') {
      inWord = true
      let closed = false
      for (i++; i < line.length; i++) {
        const d = line[i]
        if (d === '"') {
          closed = true
          break
        }
        if (d === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) word += line[++i]
        else word += d
      }
      if (!closed) throw new UsageError('unterminated double quote')
    } else if (c === '\\') {
      if (i + 1 >= line.length) throw new UsageError('a backslash at the end of the line')
      word += line[++i]
      inWord = true
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word)
      word = ''
      inWord = false
    } else if (c === '#' && !inWord) {
      break
    } else {
      word += c
      inWord = true
    }
  }
  if (inWord) words.push(word)
  return words
}
