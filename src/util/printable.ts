// C0 and C1 control characters and DEL.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g

/**
 * Text from the lock service, as a terminal may show it: control characters as JSON writes them
 * (`\u001b`). lockd refuses them in keys and owners, but anyone who can write to etcd can name
 * a key `evil\e[2J/...`, and `status` or `watch` would have sent the escape sequence to the
 * terminal; a peer that is not lockd can put anything in an error's text (which must also stay
 * one line).
 */
export function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}
