// `npm run client -- add|rotate-secret|disable|enable|list|cert`: every change to a client
// is a migration file, written here and applied by `npm run migrate` or the next start.
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

import { Command, Option } from 'commander';
import type { JWK } from 'jose';

import { issuerMigrationFor, migrationExistsFor, writeAddClient, writeRotateSecret, writeSetEnabled } from '../clients/migrations.ts';
import type { NewClient } from '../clients/register.ts';
import { AUTH_METHODS, ClientRegistry, type AuthMethod } from '../clients/registry.ts';
import { digestSecret, generateSecret } from '../clients/secrets.ts';
import * as check from '../clients/validate.ts';
import { endpointUrls } from '../http/endpoints.ts';
import { ensureDevTls, issueCertificate } from '../keys/dev-tls.ts';
import { openDatabase } from '../storage/database.ts';
import { commandSettings, run, say } from './output.ts';

const settings = commandSettings('client');
const program = new Command('client').description('register and manage OAuth clients (each change is a migration)');
program.exitOverride();

interface AddOptions {
  auth: AuthMethod;
  audience?: string;
  scope?: string;
  ttl?: string;
  jwks?: string;
  jwksUri?: string;
  generateKey?: string;
  subjectDn?: string;
  sanDns?: string;
  sanUri?: string;
  cert?: string;
  bound?: boolean;
  dpop?: boolean;
  introspect?: string;
  issuer?: string;
  subject?: string;
  json?: boolean;
}

function exactlyOne(options: Record<string, unknown>, flags: string[], method: string): void {
  const given = flags.filter((f) => options[f] !== undefined);
  const names = flags.map((f) => `--${f.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  if (given.length !== 1) throw new check.InputError(`--auth ${method} needs exactly one of ${names.join(', ')}`);
}

/** `context`: "--auth <method>", or what else makes the flags meaningless. */
function refuse(options: Record<string, unknown>, flags: string[], method: string): void {
  const given = flags.find((f) => options[f] !== undefined);
  const context = method.startsWith('without') ? method : `--auth ${method}`;
  if (given) throw new check.InputError(`--${given.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} does not apply to ${context}`);
}

/**
 * The credential `--auth` names, checked and set on `client`; the flags of other methods are
 * refused. Returns the private key `--generate-key` made, to be written before the migration.
 */
async function credentialsOf(options: AddOptions, client: NewClient): Promise<{ file: string; pem: string } | undefined> {
  const opts = options as unknown as Record<string, unknown>;
  if (options.auth !== 'federated') refuse(opts, ['issuer', 'subject'], options.auth);
  let generated: { file: string; pem: string } | undefined;
  switch (options.auth) {
    case 'client_secret_basic':
      refuse(opts, ['jwks', 'jwksUri', 'generateKey', 'subjectDn', 'sanDns', 'sanUri', 'cert'], options.auth);
      break;
    case 'federated':
      refuse(opts, ['jwks', 'jwksUri', 'generateKey', 'subjectDn', 'sanDns', 'sanUri', 'cert'], options.auth);
      if (!options.issuer || !options.subject) throw new check.InputError('--auth federated needs --issuer <name> and --subject <sub>');
      if (!issuerMigrationFor(settings.migrationsDir, options.issuer)) throw new check.InputError(`no issuer ${JSON.stringify(options.issuer)}: add it first with npm run issuer -- add ${options.issuer} --issuer <url>`);
      if (!/^[^\s\p{Cc}]{1,512}$/u.test(options.subject)) throw new check.InputError('--subject must be 1-512 characters without spaces or control characters, exactly as the sub of the external tokens');
      client.federatedIssuer = options.issuer;
      client.federatedSubject = options.subject;
      break;
    case 'private_key_jwt':
      refuse(opts, ['subjectDn', 'sanDns', 'sanUri', 'cert'], options.auth);
      exactlyOne(opts, ['jwks', 'jwksUri', 'generateKey'], options.auth);
      if (options.jwks) client.jwks = await check.publicJwks(readFileSync(options.jwks, 'utf8'), options.jwks) as NewClient['jwks'];
      if (options.jwksUri) client.jwksUri = check.absoluteUri('--jwks-uri', options.jwksUri, true);
      if (options.generateKey) {
        const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
        generated = { file: options.generateKey, pem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
        const jwk = { ...(publicKey.export({ format: 'jwk' }) as JWK), alg: 'ES256', use: 'sig' };
        client.jwks = await check.publicJwks(JSON.stringify({ keys: [jwk] }), 'generated key') as NewClient['jwks'];
      }
      break;
    case 'tls_client_auth':
      refuse(opts, ['jwks', 'jwksUri', 'generateKey', 'cert'], options.auth);
      exactlyOne(opts, ['subjectDn', 'sanDns', 'sanUri'], options.auth);
      if (options.subjectDn) client.tlsSubjectDn = check.subjectDn(options.subjectDn);
      if (options.sanDns) client.tlsSanDns = check.dnsName(options.sanDns);
      if (options.sanUri) client.tlsSanUri = check.absoluteUri('--san-uri', options.sanUri);
      break;
    case 'self_signed_tls_client_auth':
      refuse(opts, ['jwks', 'jwksUri', 'generateKey', 'subjectDn', 'sanDns', 'sanUri'], options.auth);
      if (!options.cert) throw new check.InputError('--auth self_signed_tls_client_auth needs --cert <pem file>');
      client.jwks = check.certificateJwks(readFileSync(options.cert, 'utf8'), options.cert) as NewClient['jwks'];
      break;
  }
  return generated;
}

async function addClient(id: string, options: AddOptions): Promise<void> {
  const clientId = check.clientId(id);
  const existing = migrationExistsFor(settings.migrationsDir, clientId);
  if (existing) throw new check.InputError(`client ${clientId} is already registered by migrations/${existing}`);
  if (!options.audience && !options.introspect) {
    throw new check.InputError('--audience is required (the URI(s) of the API(s) this client calls), or --introspect alone for a resource server that only introspects and revokes');
  }
  // A resource server without audiences gets no tokens: token settings would do nothing.
  if (!options.audience) refuse(options as unknown as Record<string, unknown>, ['scope', 'ttl', 'bound'], 'without --audience');
  const client: NewClient = {
    clientId,
    authMethod: options.auth,
    audiences: options.audience ? check.uriList('--audience', options.audience) : [],
    scopes: check.scopes(options.scope),
    ttl: options.ttl === undefined ? undefined : check.seconds('--ttl', options.ttl, 1, settings.maxAccessTokenTtl),
    certificateBound: options.bound === true,
    dpopBound: options.dpop === true,
    introspectAudiences: options.introspect ? check.uriList('--introspect', options.introspect) : [],
  };
  const generated = await credentialsOf(options, client);
  const secret = options.auth === 'client_secret_basic' ? generateSecret() : undefined;
  // The private key is written before the migration, so a failure leaves no client without its key.
  if (generated) writeFileSync(generated.file, generated.pem, { mode: 0o600, flag: 'wx' });
  const migration = relative(process.cwd(), writeAddClient(settings.migrationsDir, client, secret && digestSecret(secret)));
  say(options.json, { client_id: clientId, client_secret: secret ?? null, migration }, [
    `Wrote ${migration}: registers ${clientId} (${options.auth}).`,
    ...(secret ? [`Client secret (shown once, stored only as a hash):\n  ${secret}`] : []),
    ...(generated ? [`Private key written to ${generated.file} (keep it with the client; it is in no migration).`] : []),
    'Apply it with: npm run migrate   (or restart the server)',
  ]);
}

program.command('add <client_id>')
  .description('write a migration that registers a client')
  .addOption(new Option('--auth <method>', 'client authentication method').choices(AUTH_METHODS).makeOptionMandatory())
  .option('--audience <uris>', 'comma-separated resource URIs the client may get tokens for (without it, a resource server: --introspect only, no tokens)')
  .option('--scope <scopes>', 'space-separated scopes the client may request')
  .option('--ttl <seconds>', 'access-token lifetime for this client')
  .option('--jwks <file>', 'private_key_jwt: JWK Set file with the client\'s public keys')
  .option('--jwks-uri <url>', 'private_key_jwt: https URL of the client\'s JWK Set')
  .option('--generate-key <file>', 'private_key_jwt: generate an ES256 key pair; private key to <file>, public key registered')
  .option('--subject-dn <dn>', 'tls_client_auth: certificate subject, RFC 4514 (CN=svc-a,O=Acme)')
  .option('--san-dns <name>', 'tls_client_auth: certificate DNS subjectAltName')
  .option('--san-uri <uri>', 'tls_client_auth: certificate URI subjectAltName')
  .option('--cert <pem file>', 'self_signed_tls_client_auth: the client\'s certificate')
  .option('--bound', 'certificate-bound tokens (RFC 8705 cnf.x5t#S256)')
  .option('--dpop', 'DPoP-bound tokens only: a token request without a DPoP proof is refused (RFC 9449 cnf.jkt)')
  .option('--introspect <uris>', 'this client may introspect tokens for these audiences')
  .option('--issuer <name>', 'federated: the trusted issuer (npm run issuer -- add) whose tokens authenticate this client')
  .option('--subject <sub>', 'federated: the sub of those tokens (Kubernetes: system:serviceaccount:<ns>:<name>; SPIFFE: the SPIFFE ID)')
  .option('--json', 'print one JSON object')
  .action((id: string, options: AddOptions) => run(() => addClient(id, options)));

program.command('rotate-secret <client_id>')
  .description('write a migration that adds a new secret and expires the old ones after a grace period')
  .option('--grace <seconds>', 'how long the old secrets keep working', '86400')
  .option('--json', 'print one JSON object')
  .action((id: string, options: { grace: string; json?: boolean }) => run(async () => {
    const clientId = check.clientId(id);
    const grace = check.seconds('--grace', options.grace, 0, 30 * 86400);
    const secret = generateSecret();
    const migration = relative(process.cwd(), writeRotateSecret(settings.migrationsDir, clientId, digestSecret(secret), grace));
    say(options.json, { client_id: clientId, client_secret: secret, migration }, [
      `Wrote ${migration}: a new secret for ${clientId}; the old ones expire ${grace} s after it is applied.`,
      `New client secret (shown once, stored only as a hash):\n  ${secret}`,
      'Apply it with: npm run migrate   (or restart the server)',
    ]);
  }));

for (const [verb, enabled] of [['disable', false], ['enable', true]] as const) {
  program.command(`${verb} <client_id>`)
    .description(`write a migration that ${verb}s a client`)
    .option('--json', 'print one JSON object')
    .action((id: string, options: { json?: boolean }) => run(async () => {
      const clientId = check.clientId(id);
      const migration = relative(process.cwd(), writeSetEnabled(settings.migrationsDir, clientId, enabled));
      say(options.json, { client_id: clientId, migration }, [
        `Wrote ${migration}: ${verb}s ${clientId}.`,
        'Apply it with: npm run migrate   (or restart the server)',
      ]);
    }));
}

program.command('list')
  .description('print every client from the database (never a secret)')
  .option('--json', 'print one JSON array')
  .action((options: { json?: boolean }) => run(async () => {
    const database = openDatabase(settings);
    try {
      const clients = await new ClientRegistry(database.db, { cacheSeconds: 0 }).list();
      const rows = clients.map((c) => ({
        client_id: c.clientId,
        auth: c.authMethod,
        audiences: c.audiences,
        scopes: c.scopes,
        ttl: c.ttl,
        enabled: c.enabled,
        bound: c.certificateBound,
        dpop: c.dpopBound,
        introspect: c.introspectAudiences,
        ...(c.federatedIssuer ? { issuer: c.federatedIssuer, subject: c.federatedSubject } : {}),
      }));
      if (options.json) {
        process.stdout.write(`${JSON.stringify(rows)}\n`);
        return;
      }
      if (!rows.length) process.stdout.write('no clients\n');
      for (const r of rows) {
        process.stdout.write(`${r.client_id}  ${r.auth}  ${r.enabled ? 'enabled' : 'DISABLED'}  aud=${r.audiences.join(',')}  scope="${r.scopes.join(' ')}"${r.ttl ? `  ttl=${r.ttl}` : ''}${r.bound ? '  bound' : ''}${r.dpop ? '  dpop' : ''}${r.introspect.length ? `  introspect=${r.introspect.join(',')}` : ''}${r.issuer ? `  issuer=${r.issuer} subject=${r.subject}` : ''}\n`);
      }
    } finally {
      await database.close();
    }
  }));

program.command('cert <client_id>')
  .description('development only: issue a client certificate from the development CA')
  .option('--out <dir>', 'where to write <client_id>.crt and <client_id>.key', join(settings.keysDir, 'clients'))
  .option('--json', 'print one JSON object')
  .action((id: string, options: { out: string; json?: boolean }) => run(async () => {
    if (settings.production) throw new check.InputError('client cert issues development certificates and is refused when NODE_ENV=production');
    const clientId = check.clientId(id);
    const files = await ensureDevTls(settings.keysDir);
    const issued = await issueCertificate(settings.keysDir, {
      subject: `CN=${clientId}`,
      uris: [`urn:m2m-client:${clientId}`],
      usage: 'client',
      days: 90,
    });
    mkdirSync(options.out, { recursive: true });
    const cert = join(options.out, `${clientId}.crt`);
    const key = join(options.out, `${clientId}.key`);
    writeFileSync(cert, issued.cert);
    writeFileSync(key, issued.key, { mode: 0o600 });
    const curl = `curl --cacert ${relative(process.cwd(), files.caCert)} --cert ${relative(process.cwd(), cert)} --key ${relative(process.cwd(), key)} -d grant_type=client_credentials -d client_id=${clientId} ${endpointUrls(settings.issuer).token}`;
    say(options.json, { client_id: clientId, certificate: cert, key, subject_dn: `CN=${clientId}`, curl }, [
      `Certificate ${cert} and key ${key} (subject CN=${clientId}, SAN urn:m2m-client:${clientId}).`,
      `Register it with: npm run client -- add ${clientId} --auth tls_client_auth --subject-dn "CN=${clientId}" --audience <uri>`,
      `Then: ${curl}`,
    ]);
  }));

await run(async () => {
  await program.parseAsync(process.argv);
});
