// Prometheus metrics, served on the management listener. Each worker counts its own
// (labelled `worker`); with several workers the primary process gathers them all.
import cluster from 'node:cluster';

import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  registry: Registry;
  tokensIssued: Counter<'client_id' | 'method' | 'binding'>;
  refusals: Counter<'endpoint' | 'error' | 'reason'>;
  requestDuration: Histogram<'endpoint' | 'status'>;
  keyAge: Gauge<'kid' | 'state'>;
  keyRotations: Counter<'event'>;
  poolConnections: Gauge<'state'>;
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
  const requestDuration = new Histogram({
    name: 'm2m_request_duration_seconds',
    help: 'Request latency by endpoint',
    labelNames: ['endpoint', 'status'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const series = new Map<string, { observe(value: number): void }>();
  let revocationState: (() => { size: number; behindSeconds: number }) | undefined;
  let keyState: (() => { kid: string; state: string; ageSeconds: number }[]) | undefined;
  let poolState: (() => { used: number; free: number; pending: number }) | undefined;
  let inFlightCount: (() => number) | undefined;
  new Gauge({
    name: 'm2m_requests_in_flight', help: 'Requests this process is answering now (MAX_IN_FLIGHT caps it)', registers: [registry],
    collect() {
      if (inFlightCount) this.set(inFlightCount());
    },
  });
  new Gauge({
    name: 'm2m_revoked_tokens', help: 'Unexpired revoked tokens in this process\'s revocation list', registers: [registry],
    collect() {
      if (revocationState) this.set(revocationState().size);
    },
  });
  new Gauge({
    name: 'm2m_revocations_behind_seconds', aggregator: 'max', registers: [registry],
    help: 'Seconds since this process\'s revocation list last caught up with the database (past 3, lookups go to the database)',
    collect() {
      if (revocationState) this.set(revocationState().behindSeconds);
    },
  });
  return {
    registry,
    requestDuration,
    observeRequest(endpoint, status, seconds) {
      const key = `${endpoint} ${status}`;
      let child = series.get(key);
      if (!child) {
        child = requestDuration.labels(endpoint, String(status));
        series.set(key, child);
      }
      child.observe(seconds);
    },
    tokensIssued: new Counter({ name: 'm2m_tokens_issued_total', help: 'Access tokens issued, by client, authentication method and binding (bearer, certificate, dpop, certificate+dpop)', labelNames: ['client_id', 'method', 'binding'], registers: [registry] }),
    refusals: new Counter({ name: 'm2m_refusals_total', help: 'Requests refused, by endpoint, error code and internal reason', labelNames: ['endpoint', 'error', 'reason'], registers: [registry] }),
    // Read at collection, so that every worker's values are current when the primary gathers them.
    keyAge: new Gauge({
      name: 'm2m_signing_key_age_seconds', help: 'Age of each published signing key', labelNames: ['kid', 'state'], registers: [registry], aggregator: 'max',
      collect() {
        if (!keyState) return;
        this.reset();
        for (const key of keyState()) this.set({ kid: key.kid, state: key.state }, key.ageSeconds);
      },
    }),
    keyRotations: new Counter({ name: 'm2m_signing_key_rotations_total', help: 'Automatic signing-key rotation done by this process: successors generated, replaced keys retired', labelNames: ['event'], registers: [registry] }),
    poolConnections: new Gauge({
      name: 'm2m_db_pool_connections', help: 'Database pool connections by state', labelNames: ['state'], registers: [registry],
      collect() {
        if (!poolState) return;
        const pool = poolState();
        this.set({ state: 'used' }, pool.used);
        this.set({ state: 'free' }, pool.free);
        this.set({ state: 'pending' }, pool.pending);
      },
    }),
    revocationsLearnt: new Counter({ name: 'm2m_revocations_learnt_total', help: 'Revocations added to this process\'s list, by how it learnt of them (self, worker, notification, poll, lookup)', labelNames: ['source'], registers: [registry] }),
    watchRevocations(state) {
      revocationState = state;
    },
    watchKeys(keys) {
      keyState = keys;
    },
    watchPool(stats) {
      poolState = stats;
    },
    watchInFlight(count) {
      inFlightCount = count;
    },
    requestsShed: new Counter({ name: 'm2m_requests_shed_total', help: 'Requests refused with 503 at once because MAX_IN_FLIGHT requests were being answered (overload)', registers: [registry] }),
    logLinesDropped: new Counter({ name: 'm2m_log_lines_dropped_total', help: 'Log lines dropped because stdout was not read for as long as LOG_BUFFER_KB lasts, or was closed (a token whose line is dropped is withheld)', registers: [registry] }),
    clientCache: new Counter({ name: 'm2m_client_cache_lookups_total', help: 'Client lookups by cache result (hit, miss, stale during an outage)', labelNames: ['result'], registers: [registry] }),
  };
}

/** Primary process (WORKERS > 1): every worker's metrics, for the management listener. */
export function clusterMetricsSource(): () => Promise<string> {
  const aggregator = new AggregatorRegistry();
  return () => aggregator.clusterMetrics();
}
