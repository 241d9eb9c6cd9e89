// One serving process (the only one with WORKERS=1, each worker otherwise): the stores and
// caches, the HTTP app, the key reloader, the database notifications, the listener. Each
// step is a function below, in the order `serve` runs them.
import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { IssuerRegistry } from '../clients/issuers.ts';
import { ClientRegistry } from '../clients/registry.ts';
import { answerPrimary, primary, READY, request, REVOKED } from '../cluster.ts';
import { buildApp, type AppDeps } from '../http/app.ts';
import { shedLoad } from '../http/load-shedding.ts';
import { closeManagement, readiness, startManagement } from '../http/management.ts';
import { createServer, readTlsMaterial, type Handler, type TlsMaterial } from '../http/server.ts';
import { ensureDevTls } from '../keys/dev-tls.ts';
import { keyEncryption, type KeyEncryption } from '../keys/key-encryption.ts';
import { reloadKeys, type KeyReloader } from '../keys/key-reloader.ts';
import { loadKeys, requireDecryptable, type KeySet } from '../keys/signing-keys.ts';
import { onDroppedLine, type Logger } from '../log.ts';
import { createMetrics, type Metrics } from '../metrics.ts';
import { createBruteForce } from '../oauth/brute-force.ts';
import { certificateHooks, parseCertificateBundle, type CertificateHooks } from '../oauth/client-certificates.ts';
import { CurrentKeys } from '../oauth/current-keys.ts';
import { IssuerKeys } from '../oauth/issuer-keys.ts';
import { invalidSetting, type Settings } from '../settings.ts';
import type { OpenDatabase } from '../storage/database.ts';
import { databaseAnswered } from '../storage/errors.ts';
import { CLIENT_CHANNEL, KEYS_CHANNEL, listen, REVOCATION_CHANNEL } from '../storage/notifications.ts';
import { ReplayStore } from '../storage/replay.ts';
import { RevocationStore } from '../storage/revocations.ts';
import { sharedSecret } from '../storage/shared-secrets.ts';
import { Closers, stopOnSignals } from './shutdown.ts';

/** The keys as this process schedules them; without a usable signer it does not start. */
async function signingKeys(database: OpenDatabase, encryption: KeyEncryption, settings: Settings): Promise<KeySet> {
  const keys = await loadKeys(database.db, encryption, settings.schedule);
  requireDecryptable(keys);
  if (!keys.signer?.privateKey) throw new Error('no signing key in the database: run `npm run keys -- generate`');
  return keys;
}

async function tlsMaterial(settings: Settings): Promise<TlsMaterial | undefined> {
  if (settings.tlsMode === 'proxy') return undefined;
  if (settings.tlsCert && settings.tlsKey) return readTlsMaterial({ cert: settings.tlsCert, key: settings.tlsKey });
  const dev = await ensureDevTls(settings.keysDir);
  return readTlsMaterial({ cert: dev.serverCert, key: dev.serverKey });
}

/**
 * The CAs trusted for tls_client_auth: TLS_CLIENT_CA, or outside production the dev CA.
 * Without one (production), no certificate can pass tls_client_auth: the start says so
 * when such clients are registered, instead of leaving each refusal to explain it.
 */
async function clientCertificates(settings: Settings, registry: ClientRegistry, logger: Logger): Promise<CertificateHooks> {
  const caFile = settings.tlsClientCa ?? (settings.production ? undefined : join(settings.keysDir, 'dev-ca.crt'));
  if (!caFile && (!cluster.isWorker || cluster.worker?.id === 1)) {
    const refused = (await registry.list()).filter((client) => client.authMethod === 'tls_client_auth' && client.enabled).map((client) => client.clientId);
    if (refused.length > 0) {
      logger.warn({ clients: refused.slice(0, 20), count: refused.length }, 'TLS_CLIENT_CA is not set: clients registered with tls_client_auth are refused (self_signed_tls_client_auth is not affected)');
    }
  }
  return certificateHooks(settings, caFile ? parseCertificateBundle(readFileSync(caFile, 'utf8')) : [], logger);
}

/** Read once: every process and instance signs and checks DPoP nonces with this one secret. */
async function dpopNonceSecret(settings: Settings, database: OpenDatabase, encryption: KeyEncryption): Promise<Buffer | undefined> {
  if (!settings.dpopNonce) return undefined;
  return sharedSecret(database.db, 'dpop_nonce', encryption).catch((err: unknown) => {
    throw (err as Error).message.includes('key-encryption key') ? invalidSetting('KEYS_ENCRYPTION_KEY', '<redacted>', (err as Error).message) : err;
  });
}

/** In a cluster, every other worker knows of a revocation before the revoking one answers. */
function revocationStore(database: OpenDatabase, metrics: Metrics): RevocationStore {
  const revocations = new RevocationStore(database.db, {
    shared: !database.embedded,
    onLearnt: (source) => metrics.revocationsLearnt.inc({ source }),
    ...(cluster.isWorker ? { announce: (jti, exp) => request<void>(primary(), REVOKED, { jti, exp }, 1000).catch(() => {}) } : {}),
  });
  if (cluster.isWorker) {
    answerPrimary(REVOKED, (body) => revocations.remember((body as { jti: string }).jti, (body as { exp: number }).exp, 'worker'));
  }
  return revocations;
}

/** Everything the app is built from, opened in this order; what must close is added to `closers`. */
async function openDeps(settings: Settings, database: OpenDatabase, encryption: KeyEncryption, logger: Logger, closers: Closers): Promise<AppDeps> {
  const metrics = createMetrics();
  onDroppedLine(logger, () => metrics.logLinesDropped.inc());
  const caching = { cacheSeconds: settings.clientCacheSeconds, outageGraceSeconds: settings.dbOutageGraceSeconds };
  const registry = new ClientRegistry(database.db, { ...caching, onLookup: (result) => metrics.clientCache.inc({ result }) });
  const revocations = revocationStore(database, metrics);
  await revocations.start();
  closers.add(async () => revocations.stop());
  const bruteForce = createBruteForce({
    perClient: settings.authFailureLimit,
    perAddress: settings.authFailureAddressLimit,
    windowSeconds: settings.authFailureWindow,
  }, database.embedded ? undefined : database.db);
  closers.add(() => bruteForce.close());
  return {
    settings,
    registry,
    issuers: new IssuerRegistry(database.db, caching),
    issuerKeys: new IssuerKeys({ caFile: settings.jwksUriCa, logger }),
    replay: new ReplayStore(database.db),
    revocations,
    logger,
    certificates: await clientCertificates(settings, registry, logger),
    bruteForce,
    metrics,
    lifecycle: { draining: false, inFlight: 0 },
    dpopNonceSecret: await dpopNonceSecret(settings, database, encryption),
    pingDatabase: async () => {
      await database.db.raw('select 1').timeout(settings.databaseTimeout * 1000);
      databaseAnswered();
    },
  };
}

/** What /metrics reads at each collection. */
function watchState(metrics: Metrics, database: OpenDatabase, revocations: RevocationStore, keys: () => KeySet): void {
  const pool = (database.db.client as { pool?: { numUsed(): number; numFree(): number; numPendingAcquires(): number } }).pool;
  metrics.watchRevocations(() => revocations.state());
  metrics.watchPool(() => ({ used: pool?.numUsed() ?? 0, free: pool?.numFree() ?? 0, pending: pool?.numPendingAcquires() ?? 0 }));
  metrics.watchKeys(() => {
    const now = Date.now() / 1000;
    const current = keys();
    return current.published.map((key) => ({
      kid: key.kid, state: key === current.signer ? 'signing' : key.retiredAt ? 'retired' : 'published', ageSeconds: now - key.publishedAt,
    }));
  });
}

/** Readiness: a worker answers the primary's question; a single process runs the management listener itself. */
async function answerReadiness(deps: AppDeps, keys: () => KeySet, closers: Closers): Promise<void> {
  const ready = () => readiness(deps.pingDatabase, deps.lifecycle.notSigning ? undefined : keys().signer?.kid);
  if (cluster.isWorker) {
    answerPrimary(READY, async () => ({ worker: cluster.worker?.id, ...await ready() }));
    return;
  }
  const management = await startManagement(deps.settings, deps.logger, { metrics: () => deps.metrics.registry.metrics(), readiness: ready });
  if (management) closers.add(() => closeManagement(management));
}

/**
 * What the database tells every process: expired rows to purge, and (PostgreSQL) changes of
 * clients, issuers, revocations and keys as they happen. Whatever changed while nobody
 * listened is unknown: the caches start clean and the keys are read again (revocations are
 * caught up by polling).
 */
function followDatabase(deps: AppDeps, keyReloader: KeyReloader, closers: Closers): void {
  const { settings, registry, issuers, replay, revocations, logger } = deps;
  const purge = setInterval(() => {
    void Promise.all([replay.purgeExpired(), revocations.purgeExpired()])
      .catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'purging expired rows failed'));
  }, 60_000);
  purge.unref();
  closers.add(async () => clearInterval(purge));
  if (!settings.databaseUrl) return;
  const listener = listen(
    settings.databaseUrl,
    {
      [CLIENT_CHANNEL]: (clientId) => {
        registry.invalidate(clientId || undefined);
        // A client's federated identity or an issuer changed (an issuer's change says no client id).
        issuers.invalidate();
      },
      [REVOCATION_CHANNEL]: (payload) => revocations.notified(payload),
      [KEYS_CHANNEL]: () => void keyReloader.reload('notify'),
    },
    () => {
      registry.invalidate(undefined);
      issuers.invalidate();
      void keyReloader.reload('listening');
    },
    (err) => logger.warn({ err: err.message }, 'database notifications interrupted'),
  );
  closers.add(() => listener.close());
}

/** The public listener, behind load shedding (MAX_IN_FLIGHT). */
async function listenPublic(settings: Settings, metrics: Metrics, handler: Handler, tls: TlsMaterial | undefined, logger: Logger) {
  const shedding = shedLoad(settings.maxInFlight, handler, () => metrics.requestsShed.inc(), logger);
  metrics.watchInFlight(shedding.inFlight);
  const server = createServer(settings, shedding.handler, tls);
  if (settings.tlsTicketKeys && settings.tlsMode === 'direct') (server as HttpsServer).setTicketKeys(settings.tlsTicketKeys);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // `::` is Node's own default, which falls back to 0.0.0.0 where IPv6 is off.
    server.listen(settings.port, settings.host === '::' ? undefined : settings.host, () => resolve());
  });
  return server;
}

export async function serve(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
  const closers = new Closers();
  closers.add(() => database.close());
  try {
    const encryption = keyEncryption(settings);
    const keys = await signingKeys(database, encryption, settings);
    const tls = await tlsMaterial(settings);
    const deps = await openDeps(settings, database, encryption, logger, closers);
    const { metrics, lifecycle } = deps;

    // Built once: a key-set change swaps the keys inside it, and every cache is kept.
    const current = new CurrentKeys(settings.issuer, keys);
    watchState(metrics, database, deps.revocations, () => current.set);
    await answerReadiness(deps, () => current.set, closers);
    const handler: Handler = buildApp(deps, current).callback();
    const keyReloader = reloadKeys({
      db: database.db,
      encryption,
      times: settings.schedule,
      rotationSeconds: Math.round(settings.keyRotationDays * 86400),
      logger,
      current: keys,
      onChange: (next: KeySet) => {
        current.use(next);
        lifecycle.notSigning = false;
      },
      onHalt: () => {
        lifecycle.notSigning = true;
      },
      onRotation: (event) => metrics.keyRotations.inc({ event }),
    });
    closers.add(async () => keyReloader.stop());
    followDatabase(deps, keyReloader, closers);

    const server = await listenPublic(settings, metrics, handler, tls, logger);
    const { address: host, port } = server.address() as AddressInfo;
    logger.info({ issuer: settings.issuer, host, port, tls_mode: settings.tlsMode, signer: current.signingKid, database: database.embedded ? 'embedded' : 'postgres' }, 'listening');
    stopOnSignals(server, lifecycle, closers, logger);
  } catch (err) {
    await closers.closeAll();
    throw err;
  }
}
