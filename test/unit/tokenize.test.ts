import {describe, expect, it} from 'vitest'
import {tokenize} from '../../src/cli/tokenize.js'

describe('tokenize (REPL lines, like a shell splits words)', () => {
  it.each([
    ['lock deploy --lease 2m', ['lock', 'deploy', '--lease', '2m']],
    ['  lock   a  ', ['lock', 'a']],
    [`lock 'with space'`, ['lock', 'with space']],
    [`lock "double \\"quoted\\" \\\\ x"`, ['lock', 'double "quoted" \\ x']],
    [`lock "keeps \\n as is"`, ['lock', 'keeps \\n as is']],
    [`lock a\\ b`, ['lock', 'a b']],
    [`lock 'a'"b"c`, ['lock', 'abc']],
    [`lock ''`, ['lock', '']],
    ['lock a # a comment', ['lock', 'a']],
    ['lock a#b', ['lock', 'a#b']],
    ['', []],
    ['# only a comment', []],
    [`hold k -- sh -c 'echo $X; exit 3'`, ['hold', 'k', '--', 'sh', '-c', 'echo $X; exit 3']],
  ])('%j', (line, words) => expect(tokenize(line)).toEqual(words))

  it.each([`lock 'open`, `lock "open`, 'lock trailing\\'])('rejects %j with a clear error', (line) => expect(() => tokenize(line)).toThrow(/unterminated|backslash at the end/))
})
