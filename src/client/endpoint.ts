import {isAbsolute} from 'node:path'
import {socketPathProblem} from '../util/fs.js'
import {BadInputError} from './errors.js'

export type Endpoint = {kind: 'unix'; path: string} | {kind: 'tcp'; host: string; port: number; tls: boolean} | {kind: 'etcd'; hosts: {host: string; port: number}[]; tls: boolean}

export const ENDPOINT_FORMS = 'unix:///path/lockd.sock, lockd://host:port (lockds:// for TLS), or etcd://host1:2379,host2:2379'

/** Parse one endpoint string; every problem is a BadInputError naming the accepted forms. */
export function parseEndpoint(value: string): Endpoint {
  const text = value.trim()
  const bad = (why: string) => new BadInputError(`endpoint ${JSON.stringify(value)}: ${why} (use ${ENDPOINT_FORMS})`)
  const scheme = /^([a-z][a-z0-9+]*):\/\/(.*)$/i.exec(text)
  if (!scheme) throw bad('no scheme')
  const [, name, rest] = scheme
  switch (name.toLowerCase()) {
    case 'unix': {
      const path = decodeURIComponent(rest)
      if (!isAbsolute(path)) throw bad('a unix socket path must be absolute')
      const tooLong = socketPathProblem(path)
      if (tooLong) throw bad(tooLong)
      return {kind: 'unix', path}
    }
    case 'lockd':
    case 'lockds':
    case 'tcp': {
      const hosts = parseHosts(rest, 7070, bad)
      if (hosts.length !== 1) throw bad('lockd takes exactly one host:port')
      return {kind: 'tcp', ...hosts[0], tls: name.toLowerCase() === 'lockds'}
    }
    case 'etcd':
    case 'etcds':
      return {kind: 'etcd', hosts: parseHosts(rest, 2379, bad), tls: name.toLowerCase() === 'etcds'}
    default:
      throw bad(`unknown scheme ${JSON.stringify(name)}`)
  }
}

function parseHosts(list: string, defaultPort: number, bad: (why: string) => Error): {host: string; port: number}[] {
  const trimmed = list.replace(/\/+$/, '')
  if (trimmed === '') throw bad('no host')
  return trimmed.split(',').map((item) => {
    const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]/\s]+))(?::(\d+))?$/.exec(item.trim())
    if (!match) throw bad(`${JSON.stringify(item)} is not host:port`)
    const host = match[1] ?? match[2]
    const port = match[3] === undefined ? defaultPort : Number(match[3])
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`port ${match[3]} is out of range`)
    return {host, port}
  })
}

export function describeEndpoint(endpoint: Endpoint): string {
  switch (endpoint.kind) {
    case 'unix':
      return `unix://${endpoint.path}`
    case 'tcp':
      return `${endpoint.tls ? 'lockds' : 'lockd'}://${endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`
    case 'etcd':
      return `${endpoint.tls ? 'etcds' : 'etcd'}://${endpoint.hosts.map((h) => `${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`).join(',')}`
  }
}
