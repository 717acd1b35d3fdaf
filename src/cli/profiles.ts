import {readFileSync} from 'node:fs'
import {homedir} from 'node:os'
import {join} from 'node:path'
import {UsageError} from './usage-error.js'

/** What a profile may set: the endpoint and etcd's TLS/auth settings. */
export interface Profile {
  endpoints?: string
  cacert?: string
  cert?: string
  key?: string
  user?: string
}

/**
 * $XDG_CONFIG_HOME/lockctl/config.json (else ~/.config/lockctl/config.json):
 *   {"profiles": {"prod": {"endpoints": "etcd://10.0.0.1:2379", "cacert": "/etc/ssl/etcd-ca.pem"}},
 *    "defaultProfile": "prod"}
 */
export function configFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME?.startsWith('/') ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), '.config')
  return join(base, 'lockctl', 'config.json')
}

const FIELDS = ['endpoints', 'cacert', 'cert', 'key', 'user'] as const

/**
 * The profile to use: `name` if given (an unknown one is an error), else the file's
 * defaultProfile, else none. A missing file is no error unless a profile was asked for.
 */
export function loadProfile(name: string | undefined, file = configFile()): Profile | undefined {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      if (name) throw new UsageError(`--profile ${name}: there is no config file (${file})`)
      return undefined
    }
    throw new UsageError(`cannot read ${file}: ${(error as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (error) {
    throw new UsageError(`${file} is not valid JSON: ${(error as Error).message}`)
  }
  const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
  if (!isObject(parsed))
    throw new UsageError(`${file} must hold a JSON object ({"profiles": {...}, "defaultProfile": "..."}), not ${parsed === null ? 'null' : Array.isArray(parsed) ? 'an array' : typeof parsed}`)
  if (parsed.profiles !== undefined && !isObject(parsed.profiles)) throw new UsageError(`${file}: "profiles" must be an object of named profiles`)
  if (parsed.defaultProfile !== undefined && typeof parsed.defaultProfile !== 'string') throw new UsageError(`${file}: "defaultProfile" must be a profile's name`)
  const config = parsed as {profiles?: Record<string, unknown>; defaultProfile?: string}
  const chosen = name ?? config.defaultProfile
  if (!chosen) return undefined
  // (The file's own names only: `toString` is not a profile because every object has one.)
  const profile = config.profiles && Object.hasOwn(config.profiles, chosen) ? config.profiles[chosen] : undefined
  if (profile !== undefined && !isObject(profile))
    throw new UsageError(`profile ${JSON.stringify(chosen)} in ${file} must be an object (endpoints, cacert, cert, key, user), not ${JSON.stringify(profile)}`)
  if (!profile) {
    const known = Object.keys(config.profiles ?? {})
    throw new UsageError(`profile ${JSON.stringify(chosen)} is not in ${file} (${known.length ? `known: ${known.join(', ')}` : 'it has no profiles'})`)
  }
  const result: Profile = {}
  for (const [field, value] of Object.entries(profile)) {
    const where = `profile ${JSON.stringify(chosen)} in ${file}`
    if (field === 'password') throw new UsageError(`${where}: a password never goes in the file; give it in LOCKCTL_PASSWORD, or let lockctl ask on a terminal`)
    if (!(FIELDS as readonly string[]).includes(field)) throw new UsageError(`${where}: ${JSON.stringify(field)} is not a profile field (known: ${FIELDS.join(', ')})`)
    if (typeof value !== 'string') throw new UsageError(`${where}: ${JSON.stringify(field)} must be a string, not ${JSON.stringify(value)}`)
    result[field as (typeof FIELDS)[number]] = value
  }
  return result
}
