// Prometheus metrics, served on the management listener. Each worker counts its own
// (labelled `worker`); with several workers the primary process gathers them all.
import cluster from 'node:cluster';

import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  registry: Registry;
  tokensIssued: Counter<'client_id' | 'method' | 'binding'>;
  refusals: Counter<'endpoint' | 'error' | 'reason'>;
  keyRotations: Counter<'event'>;
  clientCache: Counter<'result'>;
  logLinesDropped: Counter;
  revocationsLearnt: Counter<'source'>;
  requestsShed: Counter;
  /** Requests being answered, read at each collection. */
  watchInFlight(count: () => number): void;
  /** The revocation list the gauges read at each collection (in every worker). */
  watchRevocations(state: () => { size: number; behindSeconds: number }): void;
  /** The published signing keys, read at each collection. */
  watchKeys(keys: () => { kid: string; state: string; ageSeconds: number }[]): void;
  /** The database pool, read at each collection. */
  watchPool(stats: () => { used: number; free: number; pending: number }): void;
  /** Records a request's latency (the labelled series are looked up once, not per request). */
  observeRequest(endpoint: string, status: number, seconds: number): void;
}

/** What the gauges read when metrics are collected, so that every worker's values are current when the primary gathers them. */
interface Watched {
  revocations?: () => { size: number; behindSeconds: number };
  keys?: () => { kid: string; state: string; ageSeconds: number }[];
  pool?: () => { used: number; free: number; pending: number };
  inFlight?: () => number;
}

function watchedGauges(registry: Registry, watched: Watched): void {
  new Gauge({
    name: 'm2m_requests_in_flight', help: 'Requests this process is answering now (MAX_IN_FLIGHT caps it)', registers: [registry],
    collect() {
      if (watched.inFlight) this.set(watched.inFlight());
    },
  });
  new Gauge({
    name: 'm2m_revoked_tokens', help: 'Unexpired revoked tokens in this process\'s revocation list', registers: [registry],
    collect() {
      if (watched.revocations) this.set(watched.revocations().size);
    },
  });
  new Gauge({
    name: 'm2m_revocations_behind_seconds', aggregator: 'max', registers: [registry],
    help: 'Seconds since this process\'s revocation list last caught up with the database (past 3, lookups go to the database)',
    collect() {
      if (watched.revocations) this.set(watched.revocations().behindSeconds);
    },
  });
  new Gauge({
    name: 'm2m_signing_key_age_seconds', help: 'Age of each published signing key', labelNames: ['kid', 'state'], registers: [registry], aggregator: 'max',
    collect() {
      if (!watched.keys) return;
      this.reset();
      for (const key of watched.keys()) this.set({ kid: key.kid, state: key.state }, key.ageSeconds);
    },
  });
  new Gauge({
    name: 'm2m_db_pool_connections', help: 'Database pool connections by state', labelNames: ['state'], registers: [registry],
    collect() {
      if (!watched.pool) return;
      const pool = watched.pool();
      this.set({ state: 'used' }, pool.used);
      this.set({ state: 'free' }, pool.free);
      this.set({ state: 'pending' }, pool.pending);
    },
  });
}

/** Request latency by endpoint and status; each labelled series is looked up once. */
function requestLatency(registry: Registry): Metrics['observeRequest'] {
  const histogram = new Histogram({
    name: 'm2m_request_duration_seconds',
    help: 'Request latency by endpoint',
    labelNames: ['endpoint', 'status'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const series = new Map<string, { observe(value: number): void }>();
  return (endpoint, status, seconds) => {
    const key = `${endpoint} ${status}`;
    let child = series.get(key);
    if (!child) {
      child = histogram.labels(endpoint, String(status));
      series.set(key, child);
    }
    child.observe(seconds);
  };
}

export function createMetrics(): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels({ worker: String(cluster.worker?.id ?? 0) });
  // The event-loop delay is sampled every 100 ms, not prom-client's 10: each sample wakes an
  // idle process, and at 10 ms that alone cost 0.8% of a core here, doing nothing.
  collectDefaultMetrics({ register: registry, prefix: 'm2m_process_', eventLoopMonitoringPrecision: 100 });
  // prom-client answers the primary's collection requests from these registries; the
  // listener that answers is installed by constructing an AggregatorRegistry.
  if (cluster.isWorker) {
    AggregatorRegistry.setRegistries([registry]);
    void new AggregatorRegistry();
  }
  const watched: Watched = {};
  watchedGauges(registry, watched);
  const registers = [registry];
  return {
    registry,
    observeRequest: requestLatency(registry),
    tokensIssued: new Counter({ name: 'm2m_tokens_issued_total', help: 'Access tokens issued, by client, authentication method and binding (bearer, certificate, dpop, certificate+dpop)', labelNames: ['client_id', 'method', 'binding'], registers }),
    refusals: new Counter({ name: 'm2m_refusals_total', help: 'Requests refused, by endpoint, error code and internal reason', labelNames: ['endpoint', 'error', 'reason'], registers }),
    keyRotations: new Counter({ name: 'm2m_signing_key_rotations_total', help: 'Automatic signing-key rotation done by this process: successors generated, replaced keys retired', labelNames: ['event'], registers }),
    revocationsLearnt: new Counter({ name: 'm2m_revocations_learnt_total', help: 'Revocations added to this process\'s list, by how it learnt of them (self, worker, notification, poll, lookup)', labelNames: ['source'], registers }),
    requestsShed: new Counter({ name: 'm2m_requests_shed_total', help: 'Requests refused with 503 at once because MAX_IN_FLIGHT requests were being answered (overload)', registers }),
    logLinesDropped: new Counter({ name: 'm2m_log_lines_dropped_total', help: 'Log lines dropped because stdout was not read for as long as LOG_BUFFER_KB lasts, or was closed (a token whose line is dropped is withheld)', registers }),
    clientCache: new Counter({ name: 'm2m_client_cache_lookups_total', help: 'Client lookups by cache result (hit, miss, stale during an outage)', labelNames: ['result'], registers }),
    watchRevocations: (state) => { watched.revocations = state; },
    watchKeys: (keys) => { watched.keys = keys; },
    watchPool: (stats) => { watched.pool = stats; },
    watchInFlight: (count) => { watched.inFlight = count; },
  };
}

/** Primary process (WORKERS > 1): every worker's metrics, for the management listener. */
export function clusterMetricsSource(): () => Promise<string> {
  const aggregator = new AggregatorRegistry();
  return () => aggregator.clusterMetrics();
}
