// Once, in the primary process, before any process serves: migrations, the signing keys
// (files of an earlier version imported, older rows sealed, a first key in an empty
// database), and outside production the development CA and demo client.
import { insertClient } from '../clients/register.ts';
import { digestSecret, generateSecret } from '../clients/secrets.ts';
import { endpointUrls } from '../http/endpoints.ts';
import { ensureDevTls } from '../keys/dev-tls.ts';
import { keyEncryption } from '../keys/key-encryption.ts';
import { readKeyFiles } from '../keys/key-files.ts';
import { addKey, generateSigningKey, importLegacyKeys, loadKeys, requireDecryptable, sealOlderRows } from '../keys/signing-keys.ts';
import type { Logger } from '../log.ts';
import { invalidSetting, type Settings } from '../settings.ts';
import type { OpenDatabase } from '../storage/database.ts';

const DEMO = { clientId: 'demo', audience: 'https://api.example.com', scopes: ['read', 'write'] };

/**
 * Key files an earlier version left in KEYS_DIR go into the database, and an empty database
 * gets its first key. Every key must decrypt: a wrong or missing KEYS_ENCRYPTION_KEY stops
 * the start here.
 */
async function prepareKeys(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
  const encryption = keyEncryption(settings);
  let files: Awaited<ReturnType<typeof readKeyFiles>>;
  try {
    files = await readKeyFiles(settings.keysDir, settings.schedule);
  } catch (err) {
    throw invalidSetting('KEYS_DIR', settings.keysDir, (err as Error).message);
  }
  if (files) {
    const imported = await importLegacyKeys(database.db, encryption, settings.schedule, files);
    if (imported.length) {
      logger.info({ kids: imported, files: files.files }, 'imported the signing-key files of an earlier version: the database holds them now, encrypted, and the files may be deleted');
    }
  }
  const older = await sealOlderRows(database.db, encryption);
  if (older.sealed.length) logger.info({ kids: older.sealed }, 'sealed the signing keys of an earlier version: their private parts decrypt and match their kids');
  const keys = await loadKeys(database.db, encryption, settings.schedule);
  requireDecryptable(keys);
  if (!keys.signer) {
    const added = await addKey(database.db, encryption, settings.schedule, await generateSigningKey(), 'first-start', { onlyIfNone: true });
    if (added) logger.info({ kid: added.kid }, settings.production ? 'generated the first signing key' : 'generated a development signing key');
  }
}

/** An empty development database gets a demo client, whose secret is shown once on the terminal. */
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
    `  curl ${cacert}-u '${DEMO.clientId}:${secret}' -d grant_type=client_credentials ${endpointUrls(settings.issuer).token}`,
    '',
  ].join('\n'));
}

export async function prepare(settings: Settings, database: OpenDatabase, logger: Logger): Promise<void> {
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
