// `npm start`: settings -> storage -> keys -> engine -> HTTP, in that order. The primary
// process prepares (migrations, development material); it serves itself when WORKERS=1,
// and otherwise forks the workers, replaces any that dies, and runs the management
// listener (metrics and readiness gathered from every worker).
import cluster from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { insertClient } from './clients/register.ts';
import { answerPrimary, answerWorkers, askOtherWorkers, askWorkers, primary, request } from './cluster.ts';
import { IssuerRegistry } from './clients/issuers.ts';
import { ClientRegistry } from './clients/registry.ts';
import { digestSecret, generateSecret } from './clients/secrets.ts';
import { buildApp, type Lifecycle } from './http/app.ts';
import { closeManagement, createManagementServer, listenManagement, readiness, type ManagementProbes, type Readiness } from './http/management.ts';
import { shedLoad } from './http/load-shedding.ts';
import { createServer, readTlsMaterial, type Handler, type TlsMaterial } from './http/server.ts';
import { ensureDevTls } from './keys/dev-tls.ts';
import { keyEncryption } from './keys/key-encryption.ts';
import { readKeyFiles } from './keys/key-files.ts';
import { reloadKeys } from './keys/key-reloader.ts';
import { addKey, generateSigningKey, importLegacyKeys, loadKeys, requireDecryptable, sealOlderRows, type KeySet } from './keys/signing-keys.ts';
import { createLogger, onDroppedLine, type Logger } from './log.ts';
import { clusterMetricsSource, createMetrics } from './metrics.ts';
import { createBruteForce } from './oauth/brute-force.ts';
import { certificateHooks, parseCertificateBundle } from './oauth/client-certificates.ts';
import { CurrentKeys } from './oauth/current-keys.ts';
import { IssuerKeys } from './oauth/issuer-keys.ts';
import { loadSettings, SettingError, type Settings } from './settings.ts';
import { openDatabase, type OpenDatabase } from './storage/database.ts';
import { databaseAnswered } from './storage/errors.ts';
import { CLIENT_CHANNEL, KEYS_CHANNEL, listen, REVOCATION_CHANNEL, type Listener } from './storage/notifications.ts';
import { ReplayStore } from './storage/replay.ts';
import { sharedSecret } from './storage/shared-secrets.ts';
import { RevocationStore } from './storage/revocations.ts';

const DEMO = { clientId: 'demo', audience: 'https://api.example.com', scopes: ['read', 'write'] };

function scheduleTimes(settings: Settings) {
  return { jwksMaxAge: settings.jwksMaxAge, reloadSeconds: settings.keysReloadSeconds, maxTokenTtl: settings.maxAccessTokenTtl };
}

/**
 * Once, before serving: key files an earlier version left in KEYS_DIR go into the database,
 * and an empty database gets its first key. Every key must decrypt: a wrong or missing
 * KEYS_ENCRYPTION_KEY stops the start here.
 */
async function prepareKeys(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
  const encryption = keyEncryption(settings);
  const times = scheduleTimes(settings);
  let files: Awaited<ReturnType<typeof readKeyFiles>>;
  try {
    files = await readKeyFiles(settings.keysDir, times);
  } catch (err) {
    throw new SettingError(`setting KEYS_DIR=${JSON.stringify(settings.keysDir)} is invalid: ${(err as Error).message}`);
  }
  if (files) {
    const imported = await importLegacyKeys(database.db, encryption, times, files);
    if (imported.length) {
      logger.info({ kids: imported, files: files.files }, 'imported the signing-key files of an earlier version: the database holds them now, encrypted, and the files may be deleted');
    }
  }
  const older = await sealOlderRows(database.db, encryption);
  if (older.sealed.length) logger.info({ kids: older.sealed }, 'sealed the signing keys of an earlier version: their private parts decrypt and match their kids');
  const keys = await loadKeys(database.db, encryption, times);
  requireDecryptable(keys);
  if (!keys.signer) {
    const added = await addKey(database.db, encryption, times, await generateSigningKey(), 'first-start', { onlyIfNone: true });
    if (added) logger.info({ kid: added.kid }, settings.production ? 'generated the first signing key' : 'generated a development signing key');
  }
}

/** The CAs trusted for tls_client_auth: TLS_CLIENT_CA, or outside production the dev CA. */
function clientCaFile(settings: Settings): string | undefined {
  return settings.tlsClientCa ?? (settings.production ? undefined : join(settings.keysDir, 'dev-ca.crt'));
}

/**
 * Without TLS_CLIENT_CA (production), no certificate can pass tls_client_auth: says so at
 * start when such clients are registered, instead of leaving each refusal to explain it.
 */
async function warnUntrustedCertificateClients(registry: ClientRegistry, logger: Logger): Promise<void> {
  const refused = (await registry.list()).filter((client) => client.authMethod === 'tls_client_auth' && client.enabled).map((client) => client.clientId);
  if (refused.length > 0) {
    logger.warn({ clients: refused.slice(0, 20), count: refused.length }, 'TLS_CLIENT_CA is not set: clients registered with tls_client_auth are refused (self_signed_tls_client_auth is not affected)');
  }
}

async function tlsMaterial(settings: Settings): Promise<TlsMaterial | undefined> {
  if (settings.tlsMode === 'proxy') return undefined;
  if (settings.tlsCert && settings.tlsKey) return readTlsMaterial({ cert: settings.tlsCert, key: settings.tlsKey });
  const dev = await ensureDevTls(settings.keysDir);
  return readTlsMaterial({ cert: dev.serverCert, key: dev.serverKey });
}

async function createDemoClient(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
  const { count } = (await database.db('clients').count({ count: '*' }).first()) as { count: string | number };
  if (Number(count) > 0) return;
  const secret = generateSecret();
  await insertClient(database.db, {
    clientId: DEMO.clientId,
    authMethod: 'client_secret_basic',
    audiences: [DEMO.audience],
    scopes: DEMO.scopes,
    introspectAudiences: [DEMO.audience],
  }, digestSecret(secret));
  const cacert = settings.tlsMode === 'direct' && !settings.tlsCert ? `--cacert ${settings.keysDir}/dev-ca.crt ` : '';
  logger.info({ client_id: DEMO.clientId }, 'created the development demo client');
  // Printed once, to the terminal only (never to the JSON log): the secret is not stored in clear.
  process.stderr.write([
    '',
    `Demo client "${DEMO.clientId}" (audience ${DEMO.audience}, scopes "${DEMO.scopes.join(' ')}"). Its secret is shown once:`,
    `  ${secret}`,
    'Get a token:',
    `  curl ${cacert}-u '${DEMO.clientId}:${secret}' -d grant_type=client_credentials ${settings.issuer}/token`,
    '',
  ].join('\n'));
}

/** Migrations and development material: once, in the primary process. */
async function prepare(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
  if (settings.migrateOnStart) {
    const [, applied] = await database.db.migrate.latest();
    if (applied.length) logger.info({ migrations: applied }, 'applied migrations');
  }
  await prepareKeys(settings, database, logger);
  // Outside production the development CA always exists: it serves TLS and client certificates.
  if (!settings.production) {
    await ensureDevTls(settings.keysDir);
    await createDemoClient(settings, database, logger);
  }
}

const TICKET_KEYS_ENV = 'M2M_TLS_TICKET_KEYS';
/** A worker revoked a token: the primary passes it on to the others. */
const REVOKED = 'm2m:revoked';
interface Revoked {
  jti: string;
  exp: number;
}
/** The primary asks every worker whether it is ready. */
const READY = 'm2m:ready';

/** MANAGEMENT_PORT=0: none. Started before the public listener, so it is up once that one is. */
async function startManagement(settings: Settings, logger: Logger, probes: ManagementProbes): Promise<Server | undefined> {
  if (settings.managementPort === 0) return undefined;
  const server = createManagementServer(probes, (err) => logger.warn({ err: (err as Error)?.message }, 'management request failed'));
  await listenManagement(server, settings.managementPort, settings.managementHost);
  logger.info({ port: settings.managementPort, host: settings.managementHost }, 'management listening');
  return server;
}

/** Past this much of the 10 s a stop may take, what has not closed is left to the exit. */
const CLOSING_MS = 8000;
/** The longest one closer may take: one stuck on a hung database must not keep the others from closing. */
const CLOSER_MS = 2000;

/** Runs the closers last-opened first, each for at most CLOSER_MS and none past `until`. */
async function closeAll(closers: (() => Promise<void>)[], until: number): Promise<void> {
  for (const close of closers.reverse()) {
    const left = Math.min(CLOSER_MS, until - Date.now());
    if (left <= 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([close().catch(() => {}), new Promise((done) => { timer = setTimeout(done, left); })]);
    clearTimeout(timer);
  }
}

/** One server process: everything from the client registry to the listener. */
async function serve(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
  const closers: (() => Promise<void>)[] = [() => database.close()];
  try {
    const encryption = keyEncryption(settings);
    const keys = await loadKeys(database.db, encryption, scheduleTimes(settings));
    requireDecryptable(keys);
    if (!keys.signer?.privateKey) throw new Error('no signing key in the database: run `npm run keys -- generate`');
    const tls = await tlsMaterial(settings);
    const metrics = createMetrics();
    const pool = (database.db.client as { pool?: { numUsed(): number; numFree(): number; numPendingAcquires(): number } }).pool;
    onDroppedLine(logger, () => metrics.logLinesDropped.inc());
    const registry = new ClientRegistry(database.db, {
      cacheSeconds: settings.clientCacheSeconds,
      outageGraceSeconds: settings.dbOutageGraceSeconds,
      onLookup: (result) => metrics.clientCache.inc({ result }),
    });
    const issuers = new IssuerRegistry(database.db, {
      cacheSeconds: settings.clientCacheSeconds,
      outageGraceSeconds: settings.dbOutageGraceSeconds,
    });
    const issuerKeys = new IssuerKeys({ caFile: settings.jwksUriCa, logger });
    const replay = new ReplayStore(database.db);
    const revocations = new RevocationStore(database.db, {
      shared: !database.embedded,
      onLearnt: (source) => metrics.revocationsLearnt.inc({ source }),
      // In a cluster, every other worker knows of a revocation before the revoking one answers.
      ...(cluster.isWorker ? { announce: (jti, exp) => request<void>(primary(), REVOKED, { jti, exp }, 1000).catch(() => {}) } : {}),
    });
    if (cluster.isWorker) answerPrimary(REVOKED, (body) => revocations.remember((body as Revoked).jti, (body as Revoked).exp, 'worker'));
    metrics.watchRevocations(() => revocations.state());
    metrics.watchPool(() => ({ used: pool?.numUsed() ?? 0, free: pool?.numFree() ?? 0, pending: pool?.numPendingAcquires() ?? 0 }));
    await revocations.start();
    closers.push(async () => revocations.stop());
    const caFile = clientCaFile(settings);
    const clientCas = caFile ? parseCertificateBundle(readFileSync(caFile, 'utf8')) : [];
    if (!caFile && (!cluster.isWorker || cluster.worker?.id === 1)) await warnUntrustedCertificateClients(registry, logger);
    const certificates = certificateHooks(settings, clientCas, logger);
    const bruteForce = createBruteForce({
      perClient: settings.authFailureLimit,
      perAddress: settings.authFailureAddressLimit,
      windowSeconds: settings.authFailureWindow,
    }, database.embedded ? undefined : database.db);
    closers.push(() => bruteForce.close());
    const lifecycle: Lifecycle = { draining: false, inFlight: 0 };
    // Read once: every process and instance signs and checks DPoP nonces with this one secret.
    const dpopNonceSecret = settings.dpopNonce ? await sharedSecret(database.db, 'dpop_nonce', encryption).catch((err: unknown) => {
      throw (err as Error).message.includes('key-encryption key') ? new SettingError(`setting KEYS_ENCRYPTION_KEY="<redacted>" is invalid: ${(err as Error).message}`) : err;
    }) : undefined;
    const deps = {
      settings, registry, issuers, issuerKeys, replay, revocations, logger, certificates, bruteForce, metrics, lifecycle, dpopNonceSecret,
      pingDatabase: async () => {
        await database.db.raw('select 1').timeout(settings.databaseTimeout * 1000);
        databaseAnswered();
      },
    };

    let current = keys;
    metrics.watchKeys(() => {
      const now = Date.now() / 1000;
      return current.published.map((key) => ({
        kid: key.kid, state: key === current.signer ? 'signing' : key.retiredAt ? 'retired' : 'published', ageSeconds: now - key.publishedAt,
      }));
    });
    const ready = () => readiness(deps.pingDatabase, lifecycle.notSigning ? undefined : current.signer?.kid);
    if (cluster.isWorker) {
      answerPrimary(READY, async () => ({ worker: cluster.worker?.id, ...await ready() }));
    } else {
      const management = await startManagement(settings, logger, { metrics: () => metrics.registry.metrics(), readiness: ready });
      if (management) closers.push(() => closeManagement(management));
    }
    const currentKeys = new CurrentKeys(settings.issuer, current);
    const handler: Handler = buildApp(deps, currentKeys).callback();
    const shedding = shedLoad(settings.maxInFlight, (req, res) => handler(req, res), () => metrics.requestsShed.inc(), logger);
    metrics.watchInFlight(shedding.inFlight);
    const server = createServer(settings, shedding.handler, tls);
    // Workers share TLS ticket keys, so a session resumes whichever worker takes the connection.
    const ticketKeys = process.env[TICKET_KEYS_ENV];
    if (ticketKeys && settings.tlsMode === 'direct') (server as HttpsServer).setTicketKeys(Buffer.from(ticketKeys, 'base64'));

    const keyReloader = reloadKeys({
      db: database.db,
      encryption,
      times: scheduleTimes(settings),
      rotationSeconds: Math.round(settings.keyRotationDays * 86400),
      logger,
      current: keys,
      onChange: (next: KeySet) => {
        currentKeys.use(next);
        current = next;
        lifecycle.notSigning = false;
      },
      onHalt: () => {
        lifecycle.notSigning = true;
      },
      onRotation: (event) => metrics.keyRotations.inc({ event }),
    });
    closers.push(async () => keyReloader.stop());

    const purge = setInterval(() => {
      void Promise.all([replay.purgeExpired(), revocations.purgeExpired()])
        .catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'purging expired rows failed'));
    }, 60_000);
    purge.unref();
    closers.push(async () => clearInterval(purge));

    if (settings.databaseUrl) {
      const listener: Listener = listen(
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
        // Whatever changed while nobody listened is unknown: start from a clean client cache
        // and read the keys again (revocations are caught up by polling).
        () => {
          registry.invalidate(undefined);
          issuers.invalidate();
          void keyReloader.reload('listening');
        },
        (err) => logger.warn({ err: err.message }, 'database notifications interrupted'),
      );
      closers.push(() => listener.close());
    }

    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // `::` is Node's own default, which falls back to 0.0.0.0 where IPv6 is off.
      server.listen(settings.port, settings.host === '::' ? undefined : settings.host, () => resolve());
    });
    const { address: host, port } = server.address() as AddressInfo;
    logger.info({ issuer: settings.issuer, host, port, tls_mode: settings.tlsMode, signer: current.signer?.kid, database: database.embedded ? 'embedded' : 'postgres' }, 'listening');

    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal, in_flight: lifecycle.inFlight }, 'stopping: finishing requests in flight');
      const force = setTimeout(() => {
        logger.error({ in_flight: lifecycle.inFlight }, 'requests still in flight after 10 s; exiting');
        process.exit(1);
      }, 10_000);
      force.unref();
      // Drain first: answers now close their connections, and requests already on the wire
      // are read and finished. Only once nothing has been in flight for a moment does the
      // listener close (which also drops idle keep-alive connections).
      lifecycle.draining = true;
      const started = Date.now();
      let quietSince = Date.now();
      const waitForQuiet = setInterval(() => {
        if (lifecycle.inFlight > 0) quietSince = Date.now();
        if (Date.now() - quietSince < 250 && Date.now() - started < 3000) return;
        clearInterval(waitForQuiet);
        server.close(() => {
          void (async () => {
            await closeAll(closers, started + CLOSING_MS);
            logger.info({}, 'stopped');
            logger.flush(() => process.exit(0));
          })();
        });
      }, 50);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  } catch (err) {
    for (const close of closers.reverse()) await close().catch(() => {});
    throw err;
  }
}

/** The primary's readiness: every worker that answers is ready, and at least one does. */
async function clusterReadiness(): Promise<Readiness> {
  // A worker that is still starting does not answer yet, and gets no connections either.
  const answers = (await askWorkers<Readiness & { worker: number }>(READY, null, 3000))
    .flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const ready = answers.length > 0 && answers.every((answer) => answer.ready);
  return { ready, body: { status: ready ? 'ready' : 'unready', workers: answers.map(({ worker, body }) => ({ worker, ...body })) } };
}

/** WORKERS > 1: fork, replace the dead, stop them all on SIGTERM. */
async function supervise(settings: Settings, logger: Logger): Promise<void> {
  const management = await startManagement(settings, logger, { metrics: clusterMetricsSource(), readiness: clusterReadiness });
  answerWorkers(REVOKED, (body, from) => askOtherWorkers(from, REVOKED, body, 500));
  const env = { [TICKET_KEYS_ENV]: randomBytes(48).toString('base64') };
  let stopping = false;
  for (let i = 0; i < settings.workers; i += 1) cluster.fork(env);
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    logger.error({ worker: worker.id, code, signal }, 'worker died; starting another');
    cluster.fork(env);
  });
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, workers: settings.workers }, 'stopping workers');
    if (management) void closeManagement(management);
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill(signal);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function main(): Promise<void> {
  const settings = loadSettings();
  const logger = createLogger(settings.logLevel, settings.logBufferKb * 1024);
  if (cluster.isWorker) {
    await serve(settings, openDatabase({ ...settings, poolMax: 10, logger }), logger);
    return;
  }
  const database = openDatabase({ ...settings, poolMax: 10, logger });
  try {
    await prepare(settings, database, logger);
  } catch (err) {
    await database.close().catch(() => {});
    throw err;
  }
  if (settings.workers === 1) {
    await serve(settings, database, logger);
    return;
  }
  await database.close();
  await supervise(settings, logger);
}

main().catch((err: unknown) => {
  if (err instanceof SettingError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
