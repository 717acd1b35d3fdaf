import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {join} from 'node:path'
import {afterAll, describe} from 'vitest'
import {eventually, tempDir} from './processes.js'

/** Is an etcd binary on PATH? CI sets LOCKCTL_REQUIRE_ETCD=1 so that a missing etcd fails. */
export const etcdInstalled = spawnSync('etcd', ['--version'], {encoding: 'utf8'}).status === 0

/**
 * describe() for suites that need a real etcd: skipped locally with a one-line hint when etcd
 * is not installed, a failure in CI (LOCKCTL_REQUIRE_ETCD=1), never silently passed.
 */
export function describeEtcd(name: string, body: () => void): void {
  if (etcdInstalled) {
    describe(name, body)
  } else if (process.env.LOCKCTL_REQUIRE_ETCD) {
    describe(name, () => {
      throw new Error('etcd is required here (LOCKCTL_REQUIRE_ETCD is set) but `etcd` is not on PATH: apt-get install etcd-server')
    })
  } else {
    console.warn(`skipping "${name}": etcd is not installed (apt-get install etcd-server)`)
    describe.skip(name, body)
  }
}

export interface EtcdMember {
  name: string
  clientPort: number
  peerPort: number
  dataDir: string
  child: ChildProcess | null
  exited: Promise<void>
}

export interface EtcdCluster {
  members: EtcdMember[]
  /** etcd://host:port,... for LOCKCTL_ENDPOINTS */
  endpoint: string
  kill(member: EtcdMember): Promise<void>
  /** Kill (if running) and start again on the same ports and data; resolves when it answers. */
  restart(member: EtcdMember): Promise<void>
  leader(): Promise<EtcdMember>
  stop(): Promise<void>
}

const clusters: EtcdCluster[] = []
afterAll(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.stop()))
})

// Distinct loopback ports per test worker and cluster, away from Debian's system etcd (2379/2380).
let nextPort = 21000 + (Number(process.env.VITEST_POOL_ID ?? process.pid % 50) % 50) * 100 + Math.floor(Math.random() * 20) * 4

export interface EtcdStartOptions {
  /** Serve clients over TLS with this certificate and key (PEM files); `ca` verifies it. */
  tls?: {cert: string; key: string; ca: string; client?: {cert: string; key: string}}
  /** More flags for every member (e.g. a small --quota-backend-bytes). */
  args?: string[]
}

/**
 * Start an n-member etcd cluster on loopback ports and wait until it answers. A port another
 * test's etcd took already (another worker's range) made a member exit at once while the health
 * check answered from the other cluster, whose end then took this one's tests down with it: a
 * cluster whose ports another etcd answers is started again on the next ports.
 */
export async function startEtcd(size = 1, options: EtcdStartOptions = {}): Promise<EtcdCluster> {
  for (let tries = 1; ; tries++) {
    const cluster = await startEtcdOnce(size, options)
    if (cluster.answersAsItself()) return cluster
    await cluster.stop()
    if (tries === 3) throw new Error('another etcd answered on the ports of a new test cluster, three times')
  }
}

async function startEtcdOnce(size: number, options: EtcdStartOptions): Promise<EtcdCluster & {answersAsItself(): boolean}> {
  const scheme = options.tls ? 'https' : 'http'
  const tlsArgs = options.tls ? ['--cert-file', options.tls.cert, '--key-file', options.tls.key] : []
  // (A member started with --client-cert-auth answers etcdctl only with a client certificate.)
  const clientTls = options.tls?.client ? ['--cert', options.tls.client.cert, '--key', options.tls.client.key] : []
  const etcdctlTls = options.tls ? ['--cacert', options.tls.ca, ...clientTls] : []
  const base = tempDir('lockctl-etcd-')
  const members: EtcdMember[] = Array.from({length: size}, (_, i) => {
    const clientPort = nextPort++
    const peerPort = nextPort++
    return {name: `m${i}`, clientPort, peerPort, dataDir: join(base, `m${i}`), child: null, exited: Promise.resolve()}
  })
  const initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(',')
  const launch = (m: EtcdMember) => {
    const child = spawn(
      'etcd',
      [
        '--name',
        m.name,
        '--data-dir',
        m.dataDir,
        '--listen-client-urls',
        `${scheme}://127.0.0.1:${m.clientPort}`,
        '--advertise-client-urls',
        `${scheme}://127.0.0.1:${m.clientPort}`,
        ...tlsArgs,
        '--listen-peer-urls',
        `http://127.0.0.1:${m.peerPort}`,
        '--initial-advertise-peer-urls',
        `http://127.0.0.1:${m.peerPort}`,
        '--initial-cluster',
        initialCluster,
        '--initial-cluster-state',
        'new',
        '--initial-cluster-token',
        `lockctl-test-${process.pid}-${members[0].clientPort}`,
        '--heartbeat-interval',
        '100',
        '--election-timeout',
        '1000',
        '--log-level',
        'error',
        ...(options.args ?? []),
      ],
      {stdio: 'ignore'},
    )
    m.child = child
    m.exited = new Promise((resolve) => child.on('exit', () => resolve()))
  }
  for (const m of members) launch(m)
  const endpoint = `etcd://${members.map((m) => `127.0.0.1:${m.clientPort}`).join(',')}`
  const cluster: EtcdCluster = {
    members,
    endpoint,
    async kill(member) {
      member.child?.kill('SIGKILL')
      await member.exited
      member.child = null
    },
    async restart(member) {
      // Its data directory is kept: it comes back as the same member (the flags for a new
      // cluster are ignored when the data directory exists).
      if (member.child) await cluster.kill(member)
      launch(member)
      await eventually(() => {
        const health = spawnSync('etcdctl', [...etcdctlTls, '--endpoints', `${scheme}://127.0.0.1:${member.clientPort}`, 'endpoint', 'health'], {encoding: 'utf8', timeout: 3000})
        // With authentication enabled, etcdctl's anonymous health check is refused for want of
        // a user: the member answered it, through its log, which is what is asked.
        return health.status === 0 || /user name is empty|permission denied/.test(health.stderr)
      }, 20_000)
    },
    async leader() {
      return eventually(() => {
        for (const m of members) {
          if (!m.child) continue
          const out = spawnSync('etcdctl', [...etcdctlTls, '--endpoints', `${scheme}://127.0.0.1:${m.clientPort}`, 'endpoint', 'status', '-w', 'json'], {encoding: 'utf8', timeout: 3000})
          if (out.status !== 0) continue
          const [status] = JSON.parse(out.stdout)
          if (status.Status.leader === status.Status.header.member_id) return m
        }
        return undefined
      }, 15_000) as Promise<EtcdMember>
    },
    async stop() {
      await Promise.all(members.filter((m) => m.child).map((m) => cluster.kill(m)))
    },
  }
  clusters.push(cluster)
  await eventually(() => {
    const out = spawnSync('etcdctl', [...etcdctlTls, '--endpoints', members.map((m) => `${scheme}://127.0.0.1:${m.clientPort}`).join(','), 'endpoint', 'health'], {encoding: 'utf8', timeout: 5000})
    return out.status === 0
  }, 20_000)
  /** Each client port answers with this cluster's members (their peer ports), not another's. */
  const answersAsItself = () =>
    members.every((m) => {
      const out = spawnSync('etcdctl', [...etcdctlTls, '--endpoints', `${scheme}://127.0.0.1:${m.clientPort}`, 'member', 'list', '-w', 'json'], {encoding: 'utf8', timeout: 5000})
      if (out.status !== 0) return false
      const peers = new Set((JSON.parse(out.stdout) as {members?: {peerURLs?: string[]}[]}).members?.flatMap((each) => each.peerURLs ?? []))
      return members.every((ours) => peers.has(`http://127.0.0.1:${ours.peerPort}`))
    })
  return {...cluster, answersAsItself}
}
