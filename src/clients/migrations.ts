// Client changes are migrations: reviewed, versioned, applied once, undone by `down`.
// This renders them. Each rendered file is self-contained (it imports nothing from src/),
// so it keeps meaning what it meant whatever the code becomes.
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { clientRow, type NewClient } from './register.ts';

function timestamp(date: Date): string {
  return date.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/** A new migration file name, later than every existing one, for `<UTC timestamp>_<name>.ts`. */
function nextName(dir: string, name: string): string {
  const existing = readdirSync(dir).filter((f) => /^\d{14}_.*\.ts$/.test(f)).map((f) => f.slice(0, 14)).sort();
  let at = new Date(Math.floor(Date.now() / 1000) * 1000);
  const latest = existing.at(-1);
  if (latest && timestamp(at) <= latest) {
    const parsed = new Date(`${latest.slice(0, 4)}-${latest.slice(4, 6)}-${latest.slice(6, 8)}T${latest.slice(8, 10)}:${latest.slice(10, 12)}:${latest.slice(12, 14)}Z`);
    at = new Date(parsed.getTime() + 1000);
  }
  return `${timestamp(at)}_${name}.ts`;
}

export function migrationExistsFor(dir: string, clientId: string): string | undefined {
  return readdirSync(dir).find((f) => f.endsWith(`_client_${clientId}.ts`));
}

export function issuerMigrationFor(dir: string, name: string): string | undefined {
  return readdirSync(dir).find((f) => /^\d{14}_/.test(f) && f.slice(15) === `issuer_${name}.ts`);
}

function write(dir: string, name: string, body: string): string {
  const file = join(dir, nextName(dir, name));
  writeFileSync(file, body, { flag: 'wx' });
  return file;
}

const literal = (value: unknown) => JSON.stringify(value, null, 2);

const HEADER = (what: string, command = 'client') => `// ${what}
// Written by \`npm run ${command}\`; applied by \`npm run migrate\` (or the next start).
import type { Knex } from 'knex';
`;

export function writeAddClient(dir: string, client: NewClient, secretDigest: string | undefined): string {
  const row = clientRow(client);
  return write(dir, `client_${client.clientId}`, `${HEADER(`Registers client "${client.clientId}" (${client.authMethod}); down removes it.`)}
const client = ${literal(row)};
${secretDigest ? `\n// SHA-256 digest of the client secret, which was shown once and is stored nowhere.\nconst secretDigest = ${JSON.stringify(secretDigest)};\n` : ''}
export async function up(knex: Knex): Promise<void> {
  await knex('clients').insert(client);${secretDigest ? `
  await knex('client_secrets').insert({ client_id: client.client_id, digest: secretDigest });` : ''}
}

export async function down(knex: Knex): Promise<void> {
  await knex('clients').where({ client_id: client.client_id }).delete();
}
`);
}

export function writeRotateSecret(dir: string, clientId: string, secretDigest: string, graceSeconds: number): string {
  return write(dir, `rotate_secret_${clientId}`, `${HEADER(`Adds a new secret for "${clientId}"; its older secrets expire ${graceSeconds} s after this runs.`)}
const clientId = ${JSON.stringify(clientId)};
const graceSeconds = ${graceSeconds};
// SHA-256 digest of the new secret, which was shown once and is stored nowhere.
const secretDigest = ${JSON.stringify(secretDigest)};

export async function up(knex: Knex): Promise<void> {
  const client = await knex('clients').where({ client_id: clientId, auth_method: 'client_secret_basic' }).first('client_id');
  if (!client) throw new Error(\`client \${clientId} does not exist or does not use client_secret_basic\`);
  await knex('client_secrets')
    .where({ client_id: clientId })
    .andWhere((q) => q.whereNull('expires_at').orWhere('expires_at', '>', knex.raw("now() + make_interval(secs => ?)", [graceSeconds])))
    .update({ expires_at: knex.raw("now() + make_interval(secs => ?)", [graceSeconds]) });
  await knex('client_secrets').insert({ client_id: clientId, digest: secretDigest });
}

export async function down(knex: Knex): Promise<void> {
  // The secrets this rotation cut short are those expiring exactly grace after it ran.
  await knex.raw(
    \`UPDATE client_secrets s SET expires_at = NULL FROM client_secrets n
      WHERE n.digest = ? AND s.client_id = n.client_id AND s.id <> n.id
        AND s.expires_at = n.created_at + make_interval(secs => ?)\`,
    [secretDigest, graceSeconds],
  );
  await knex('client_secrets').where({ digest: secretDigest }).delete();
}
`);
}

export function writeSetEnabled(dir: string, clientId: string, enabled: boolean): string {
  const verb = enabled ? 'enable' : 'disable';
  return write(dir, `${verb}_${clientId}`, `${HEADER(`${enabled ? 'Enables' : 'Disables'} client "${clientId}"; down ${enabled ? 'disables' : 'enables'} it again.`)}
const clientId = ${JSON.stringify(clientId)};

async function setEnabled(knex: Knex, enabled: boolean): Promise<void> {
  const changed = await knex('clients').where({ client_id: clientId }).update({ enabled, updated_at: knex.fn.now() });
  if (changed !== 1) throw new Error(\`client \${clientId} does not exist\`);
}

export async function up(knex: Knex): Promise<void> {
  await setEnabled(knex, ${enabled});
}

export async function down(knex: Knex): Promise<void> {
  await setEnabled(knex, ${!enabled});
}
`);
}

/** An issuer row as the `issuers` table has it. */
export interface NewIssuer {
  name: string;
  kind: 'oidc' | 'kubernetes' | 'spiffe';
  issuer: string;
  jwks?: { keys: Record<string, unknown>[] } | undefined;
  jwksUri?: string | undefined;
  audience?: string | undefined;
  maxLifetime: number;
  allowPrivate: boolean;
}

export function writeAddIssuer(dir: string, issuer: NewIssuer): string {
  const row = {
    name: issuer.name,
    kind: issuer.kind,
    issuer: issuer.issuer,
    jwks: issuer.jwks ? JSON.stringify(issuer.jwks) : null,
    jwks_uri: issuer.jwksUri ?? null,
    audience: issuer.audience ?? null,
    max_lifetime: issuer.maxLifetime,
    allow_private: issuer.allowPrivate,
  };
  return write(dir, `issuer_${issuer.name}`, `${HEADER(`Trusts issuer "${issuer.name}" (${issuer.kind}, ${issuer.issuer}) for federated clients; down removes it.`, 'issuer')}
const issuer = ${literal(row)};

export async function up(knex: Knex): Promise<void> {
  await knex('issuers').insert(issuer);
}

export async function down(knex: Knex): Promise<void> {
  await knex('issuers').where({ name: issuer.name }).delete();
}
`);
}

export function writeSetIssuerEnabled(dir: string, name: string, enabled: boolean): string {
  const verb = enabled ? 'enable' : 'disable';
  return write(dir, `${verb}_issuer_${name}`, `${HEADER(`${enabled ? 'Enables' : 'Disables'} issuer "${name}"; down ${enabled ? 'disables' : 'enables'} it again.`, 'issuer')}
const name = ${JSON.stringify(name)};

async function setEnabled(knex: Knex, enabled: boolean): Promise<void> {
  const changed = await knex('issuers').where({ name }).update({ enabled, updated_at: knex.fn.now() });
  if (changed !== 1) throw new Error(\`issuer \${name} does not exist\`);
}

export async function up(knex: Knex): Promise<void> {
  await setEnabled(knex, ${enabled});
}

export async function down(knex: Knex): Promise<void> {
  await setEnabled(knex, ${!enabled});
}
`);
}
