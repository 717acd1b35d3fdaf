import {createServer, type Server} from 'node:http'
import type {Socket} from 'node:net'
import {METRICS_CONNECTIONS} from './descriptors.js'
import {SilentSockets} from './silent-sockets.js'
import type {Counter, Histogram, Registry} from 'prom-client'
import type {TableEvent} from './lock-table.js'

/** How long a metrics connection that has asked nothing keeps its place when all are taken. */
const SILENT_MS = 1000

/** What the metrics read from the server when scraped. */
export interface MetricsSource {
  locks(): number
  waiters(): number
  connections(): number
  logBytes(): number
  healthy(): boolean
}

/**
 * lockd's `/metrics` (Prometheus text format, through prom-client, loaded only by a server
 * started with --metrics) and `/healthz`, on their own HTTP listener.
 */
export class ServerMetrics {
  private constructor(
    private readonly registry: Registry,
    private readonly events: Counter<'event'>,
    private readonly requests: Histogram<'op'>,
    private readonly fsyncs: Histogram,
    private readonly http: Server,
  ) {}

  static async start(address: {host: string; port: number}, source: MetricsSource): Promise<ServerMetrics> {
    const client = await import('prom-client')
    const registry = new client.Registry()
    // The process's own figures, as every Prometheus exporter has them: resident memory, CPU,
    // open file descriptors, heap, event loop lag, GC (an SRE watching a million held locks, or
    // a lockd that leaks, looks at these first).
    client.collectDefaultMetrics({register: registry})
    const gauge = (name: string, help: string, read: () => number) =>
      new client.Gauge({
        name,
        help,
        registers: [registry],
        collect() {
          this.set(read())
        },
      })
    gauge('lockd_locks_held', 'Locks held now', () => source.locks())
    gauge('lockd_waiters', 'Acquires waiting in a queue now', () => source.waiters())
    gauge('lockd_connections', 'Client connections open now', () => source.connections())
    gauge('lockd_log_bytes', 'Size of the current durable log file', () => source.logBytes())
    const events = new client.Counter({
      name: 'lockd_lock_events_total',
      help: 'Lock table events: granted, released, forced (force-released), expired, queued, wait_timeout',
      labelNames: ['event'] as const,
      registers: [registry],
    })
    const requests = new client.Histogram({
      name: 'lockd_request_duration_seconds',
      help: 'Time from a request to its answer being sent (including the wait for the log)',
      labelNames: ['op'] as const,
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
      registers: [registry],
    })
    const fsyncs = new client.Histogram({
      name: 'lockd_fsync_duration_seconds',
      help: 'Write and fdatasync of one group commit of the log',
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1],
      registers: [registry],
    })
    // A connection that asks nothing is closed within seconds (Node's default: a minute or more),
    // and when all METRICS_CONNECTIONS are taken, one silent for a second makes room: a handful
    // of idle sockets kept every scrape and health check out (a failing /healthz can get lockd
    // restarted by its supervisor).
    const http = createServer({connectionsCheckingInterval: 1000, headersTimeout: 5000, requestTimeout: 10_000}, (request, response) => {
      silent.spoke(request.socket)
      // The path alone: a scraper's `?name[]=...` is not another page. Only reads are served.
      const path = (request.url ?? '').split('?')[0]
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        response.writeHead(405, {'content-type': 'text/plain', allow: 'GET, HEAD'}).end('only GET and HEAD\n')
        return
      }
      if (path === '/healthz') {
        const ok = source.healthy()
        response.writeHead(ok ? 200 : 503, {'content-type': 'text/plain'}).end(ok ? 'ok\n' : 'stopping\n')
        return
      }
      if (path !== '/metrics') {
        response.writeHead(404, {'content-type': 'text/plain'}).end('not found: /metrics, /healthz\n')
        return
      }
      registry.metrics().then(
        (text) => response.writeHead(200, {'content-type': registry.contentType}).end(text),
        (error: Error) => response.writeHead(500).end(`${error.message}\n`),
      )
    })
    // Its descriptors come out of lockd's reserve (descriptors.ts): a scraper needs one or two.
    http.maxConnections = METRICS_CONNECTIONS
    // (headersTimeout counts from a request's first byte: a socket that sends none is ended by this.)
    http.timeout = 10_000
    const silent = new SilentSockets<Socket>(SILENT_MS)
    let open = 0
    http.on('connection', (socket: Socket) => {
      open++
      socket.once('close', () => open--)
      silent.add(socket, socket)
      // It took the last place: the next connection would be closed unanswered.
      if (open >= METRICS_CONNECTIONS) silent.closeOldest()
    })
    http.on('drop', () => silent.closeOldest())
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject)
      http.listen(address.port, address.host, () => {
        http.off('error', reject)
        resolve()
      })
    })
    return new ServerMetrics(registry, events, requests, fsyncs, http)
  }

  get port(): number {
    return (this.http.address() as {port: number}).port
  }

  countEvents(events: TableEvent[]): void {
    for (const event of events) {
      if (event.type === 'renewed' || event.type === 'dequeued') continue
      this.events.inc({event: event.type === 'released' && event.force ? 'forced' : event.type})
    }
  }

  observeRequest(op: string, seconds: number): void {
    this.requests.observe({op}, seconds)
  }

  observeFsync(seconds: number): void {
    this.fsyncs.observe(seconds)
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.http.close(() => resolve()))
  }
}
