// `npm start`: settings -> storage -> keys -> engine -> HTTP, in that order.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

import { insertClient } from './clients/register.ts';
import { ClientRegistry } from './clients/registry.ts';
import { digestSecret, generateSecret } from './clients/secrets.ts';
import { buildApp } from './http/app.ts';
import { createServer, readTlsMaterial, type Handler, type TlsMaterial } from './http/server.ts';
import { ensureDevTls } from './keys/dev-tls.ts';
import { certificateHooks, parseCertificateBundle } from './oauth/client-certificates.ts';
import { forgetExpired, generateKey, readKeys, type KeySet } from './keys/signing-keys.ts';
import { createLogger, type Logger } from './log.ts';
import { loadSettings, SettingError, type Settings } from './settings.ts';
import { openDatabase, type OpenDatabase } from './storage/database.ts';
import { listenForClientChanges, type Listener } from './storage/notifications.ts';
import { ReplayStore } from './storage/replay.ts';
import { RevocationStore } from './storage/revocations.ts';

const DEMO = { clientId: 'demo', audience: 'https://api.example.com', scopes: ['read', 'write'] };

function scheduleTimes(settings: Settings) {
  return { jwksMaxAge: settings.jwksMaxAge, reloadSeconds: settings.keysReloadSeconds, maxTokenTtl: settings.maxAccessTokenTtl };
}

async function signingKeys(settings: Settings, logger: Logger): Promise<KeySet> {
  let keys = await readKeys(settings.keysDir, scheduleTimes(settings));
  if (!keys.signer) {
    if (settings.production) throw new SettingError(`setting KEYS_DIR=${JSON.stringify(settings.keysDir)} is invalid: expected a signing key (npm run keys -- generate) when NODE_ENV=production`);
    mkdirSync(settings.keysDir, { recursive: true });
    const kid = await generateKey(settings.keysDir);
    logger.info({ kid }, 'generated a development signing key');
    keys = await readKeys(settings.keysDir, scheduleTimes(settings));
  }
  return keys;
}

async function tlsMaterial(settings: Settings): Promise<TlsMaterial | undefined> {
  if (settings.tlsMode === 'proxy') return undefined;
  if (settings.tlsCert && settings.tlsKey) {
    return readTlsMaterial({ cert: settings.tlsCert, key: settings.tlsKey, clientCa: settings.tlsClientCa });
  }
  const dev = await ensureDevTls(settings.keysDir);
  return readTlsMaterial({ cert: dev.serverCert, key: dev.serverKey, clientCa: settings.tlsClientCa ?? dev.caCert });
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

async function main(): Promise<void> {
  const settings = loadSettings();
  const logger = createLogger(settings.logLevel);

  const database = openDatabase({ ...settings, poolMax: 10 });
  const closers: (() => Promise<void>)[] = [() => database.close()];
  try {
    if (settings.migrateOnStart) {
      const [, applied] = await database.db.migrate.latest();
      if (applied.length) logger.info({ migrations: applied }, 'applied migrations');
    }
    const keys = await signingKeys(settings, logger);
    // Outside production the development CA always exists: it serves TLS and client certificates.
    if (!settings.production) await ensureDevTls(settings.keysDir);
    const tls = await tlsMaterial(settings);
    if (!settings.production) await createDemoClient(settings, database, logger);

    const registry = new ClientRegistry(database.db, settings.clientCacheSeconds);
    const replay = new ReplayStore(database.db);
    const revocations = new RevocationStore(database.db);
    const clientCaFile = settings.tlsClientCa ?? (settings.production ? undefined : join(settings.keysDir, 'dev-ca.crt'));
    const clientCas = clientCaFile ? parseCertificateBundle(readFileSync(clientCaFile, 'utf8')) : [];
    const certificates = certificateHooks(settings, clientCas, logger);
    const deps = {
      settings, registry, replay, revocations, logger, certificates,
      pingDatabase: async () => { await database.db.raw('select 1').timeout(2000); },
    };

    let current = keys;
    let handler: Handler = buildApp(deps, current).callback();
    const server = createServer(settings, (req, res) => handler(req, res), tls);

    const reloadKeys = setInterval(() => {
      void (async () => {
        const next = await readKeys(settings.keysDir, scheduleTimes(settings));
        for (const kid of forgetExpired(settings.keysDir, next)) logger.info({ kid }, 'retired key no longer published');
        if (next.fingerprint === current.fingerprint) return;
        if (!next.signer) throw new Error('no signing key left in KEYS_DIR');
        handler = buildApp(deps, next).callback();
        logger.info({ signer: next.signer.kid, published: next.published.map((k) => k.kid) }, 'signing keys changed');
        current = next;
      })().catch((err: unknown) => logger.error({ err }, 'reading signing keys failed; keeping the current ones'));
    }, settings.keysReloadSeconds * 1000);
    reloadKeys.unref();
    closers.push(async () => clearInterval(reloadKeys));

    const purge = setInterval(() => {
      void Promise.all([replay.purgeExpired(), revocations.purgeExpired()])
        .catch((err: unknown) => logger.warn({ err }, 'purging expired rows failed'));
    }, 60_000);
    purge.unref();
    closers.push(async () => clearInterval(purge));

    if (settings.databaseUrl) {
      const listener: Listener = listenForClientChanges(
        settings.databaseUrl,
        (clientId) => registry.invalidate(clientId),
        (err) => logger.warn({ err: err.message }, 'client change notifications interrupted'),
      );
      closers.push(() => listener.close());
    }

    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(settings.port, () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    logger.info({ issuer: settings.issuer, port, tls_mode: settings.tlsMode, signer: current.signer?.kid, database: database.embedded ? 'embedded' : 'postgres' }, 'listening');

    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'stopping: finishing requests in flight');
      const force = setTimeout(() => process.exit(1), 10_000);
      force.unref();
      server.close(() => {
        void (async () => {
          for (const close of closers.reverse()) await close().catch(() => {});
          process.exit(0);
        })();
      });
      (server as import('node:http').Server).closeIdleConnections?.();
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  } catch (err) {
    for (const close of closers.reverse()) await close().catch(() => {});
    throw err;
  }
}

main().catch((err: unknown) => {
  if (err instanceof SettingError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
