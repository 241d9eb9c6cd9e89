// `npm run issuer -- add|list|disable|enable`: trusted issuers of workload identities for
// federated clients. Every change is a migration file, like `npm run client`.
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

import { Command, Option } from 'commander';

import { DEFAULT_MAX_LIFETIME, ISSUER_KINDS, IssuerRegistry, type IssuerKind } from '../clients/issuers.ts';
import { MAX_ISSUER_KEYS } from '../clients/key-policy.ts';
import { issuerMigrationFor, writeAddIssuer, writeSetIssuerEnabled, type NewIssuer } from '../clients/migrations.ts';
import * as check from '../clients/validate.ts';
import { issuerSigningKeys } from '../oauth/issuer-keys.ts';
import { openDatabase } from '../storage/database.ts';
import { withoutUserinfo } from '../url-userinfo.ts';
import { commandSettings, run, say } from './output.ts';

const settings = commandSettings('issuer');
const program = new Command('issuer').description('trust external issuers of workload identities for federated clients (each change is a migration)');
program.exitOverride();

interface AddOptions {
  issuer: string;
  kind: IssuerKind;
  jwks?: string;
  jwksUri?: string;
  audience?: string;
  maxLifetime?: string;
  allowPrivate?: boolean;
  json?: boolean;
}

function issuerName(value: string): string {
  if (!check.CLIENT_ID_PATTERN.test(value)) throw new check.InputError(`issuer name ${JSON.stringify(value)} is invalid: use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit`);
  return value;
}

async function addIssuer(name: string, options: AddOptions): Promise<void> {
  const issuer: NewIssuer = {
    name: issuerName(name),
    kind: options.kind,
    issuer: options.issuer,
    maxLifetime: options.maxLifetime === undefined ? DEFAULT_MAX_LIFETIME : check.seconds('--max-lifetime', options.maxLifetime, 60, 86400),
    allowPrivate: options.allowPrivate === true,
  };
  const existing = issuerMigrationFor(settings.migrationsDir, issuer.name);
  if (existing) throw new check.InputError(`issuer ${issuer.name} is already added by migrations/${existing}`);
  if (options.kind === 'spiffe') {
    if (!/^spiffe:\/\/[a-z0-9._-]{1,255}$/.test(options.issuer)) throw new check.InputError(`--issuer ${JSON.stringify(options.issuer)} must be a SPIFFE trust domain, spiffe://<domain> (lower case, no path), for --kind spiffe`);
    if (!options.jwks && !options.jwksUri) throw new check.InputError('--kind spiffe needs the trust bundle: --jwks <file> or --jwks-uri <https url>');
  } else {
    check.absoluteUri('--issuer', options.issuer, true);
    if (options.issuer.endsWith('/') && new URL(options.issuer).pathname !== '/') throw new check.InputError('--issuer must be written exactly as the iss of its tokens; a trailing slash is almost certainly a mistake');
  }
  if (options.jwks && options.jwksUri) throw new check.InputError('give --jwks or --jwks-uri, not both');
  if (options.jwks) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(options.jwks, 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code) throw err;
      throw new check.InputError(`${options.jwks} is not JSON`);
    }
    const keys = issuerSigningKeys(parsed, options.kind);
    issuer.jwks = await check.publicJwks(JSON.stringify({ keys }), options.jwks, MAX_ISSUER_KEYS) as NewIssuer['jwks'];
  }
  if (options.jwksUri) issuer.jwksUri = check.absoluteUri('--jwks-uri', options.jwksUri, true);
  if (options.audience) issuer.audience = check.absoluteUri('--audience', options.audience);
  const migration = relative(process.cwd(), writeAddIssuer(settings.migrationsDir, issuer));
  const keys = issuer.jwks ? 'static JWKS' : issuer.jwksUri ? issuer.jwksUri : `${issuer.issuer}/.well-known/openid-configuration`;
  say(options.json, { name: issuer.name, kind: issuer.kind, issuer: issuer.issuer, migration }, [
    `Wrote ${migration}: trusts ${issuer.name} (${issuer.kind}, ${issuer.issuer}; keys: ${keys}).`,
    `Map a client to one of its subjects with: npm run client -- add <client_id> --auth federated --issuer ${issuer.name} --subject <sub> --audience <uri>`,
    'Apply it with: npm run migrate   (or restart the server)',
  ]);
}

program.command('add <name>')
  .description('write a migration that trusts an issuer')
  .requiredOption('--issuer <url>', 'the iss of its tokens (https URL); for --kind spiffe the trust domain spiffe://<domain>')
  .addOption(new Option('--kind <kind>', 'what issues the tokens').choices(ISSUER_KINDS).default('oidc'))
  .option('--jwks <file>', 'its public keys (a JWK Set, or a SPIFFE trust bundle)')
  .option('--jwks-uri <url>', 'https URL of its keys (or SPIFFE bundle endpoint); default: from OIDC discovery')
  .option('--audience <uri>', 'the aud its tokens must carry (default: ISSUER or the token endpoint URL)')
  .option('--max-lifetime <seconds>', `longest exp - iat accepted (default ${DEFAULT_MAX_LIFETIME})`)
  .option('--allow-private', 'its keys may be fetched from a private address (a cluster\'s API server)')
  .option('--json', 'print one JSON object')
  .action((name: string, options: AddOptions) => run(() => addIssuer(name, options)));

for (const [verb, enabled] of [['disable', false], ['enable', true]] as const) {
  program.command(`${verb} <name>`)
    .description(`write a migration that ${verb}s an issuer (${enabled ? 'its' : 'none of its'} tokens authenticate clients)`)
    .option('--json', 'print one JSON object')
    .action((name: string, options: { json?: boolean }) => run(async () => {
      const migration = relative(process.cwd(), writeSetIssuerEnabled(settings.migrationsDir, issuerName(name), enabled));
      say(options.json, { name, migration }, [
        `Wrote ${migration}: ${verb}s issuer ${name}.`,
        'Apply it with: npm run migrate   (or restart the server)',
      ]);
    }));
}

program.command('list')
  .description('print every trusted issuer from the database')
  .option('--json', 'print one JSON array')
  .action((options: { json?: boolean }) => run(async () => {
    const database = openDatabase(settings);
    try {
      const issuers = await new IssuerRegistry(database.db, { cacheSeconds: 0 }).list();
      const rows = issuers.map((i) => ({
        name: i.name,
        kind: i.kind,
        // Rows written before such URLs were refused may still carry credentials.
        issuer: withoutUserinfo(i.issuer),
        keys: i.jwks ? 'jwks' : i.jwksUri ? withoutUserinfo(i.jwksUri) : 'discovery',
        audience: i.audience,
        max_lifetime: i.maxLifetime,
        allow_private: i.allowPrivate,
        enabled: i.enabled,
      }));
      if (options.json) {
        process.stdout.write(`${JSON.stringify(rows)}\n`);
        return;
      }
      if (!rows.length) process.stdout.write('no issuers\n');
      for (const r of rows) {
        process.stdout.write(`${r.name}  ${r.kind}  ${r.enabled ? 'enabled' : 'DISABLED'}  ${r.issuer}  keys=${r.keys}${r.audience ? `  aud=${r.audience}` : ''}  max-lifetime=${r.max_lifetime}${r.allow_private ? '  allow-private' : ''}\n`);
      }
    } finally {
      await database.close();
    }
  }));

await run(async () => {
  await program.parseAsync(process.argv);
});
