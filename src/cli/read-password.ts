import {UsageError} from './usage-error.js'

/**
 * A password from stdin: on a terminal it is asked for without echo; piped, the first line is
 * taken (`echo -n secret | lockctl server --hash-password`).
 */
export async function readPassword(): Promise<string> {
  if (process.stdin.isTTY) {
    const {password} = await import('@inquirer/prompts')
    return password({message: 'password:', mask: true}, {output: process.stderr})
  }
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  const text = Buffer.concat(chunks).toString('utf8').split('\n')[0].replace(/\r$/, '')
  if (text === '') throw new UsageError('--hash-password: no password on stdin')
  return text
}
