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

/** A migration's file-name suffix and its source. */
export interface RenderedMigration {
  name: string;
  source: string;
}

function write(dir: string, { name, source }: RenderedMigration): string {
  const file = join(dir, nextName(dir, name));
  writeFileSync(file, source, { flag: 'wx' });
  return file;
}

/**
 * The only way a value enters a rendered migration, in code and in comments alike: a JSON
 * literal, in which no character of the value can end the literal or the line. JSON leaves
 * U+2028 and U+2029 raw, and those end a `//` comment (ECMAScript line terminators), so they
 * are escaped too. Validation refuses most such input earlier; this holds whatever gets past.
 */
export function code(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(/[\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`);
}

const HEADER = (what: string, command = 'client') => `// ${what}
// Written by \`npm run ${command}\`; applied by \`npm run migrate\` (or the next start).
import type { Knex } from 'knex';
`;

export function renderAddClient(client: NewClient, secretDigest: string | undefined): RenderedMigration {
  return { name: `client_${client.clientId}`, source: `${HEADER(`Registers client ${code(client.clientId)} (${code(client.authMethod)}); down removes it.`)}
const client = ${code(clientRow(client))};
${secretDigest !== undefined ? `\n// SHA-256 digest of the client secret, which was shown once and is stored nowhere.\nconst secretDigest = ${code(secretDigest)};\n` : ''}
export async function up(knex: Knex): Promise<void> {
  await knex('clients').insert(client);${secretDigest !== undefined ? `
  await knex('client_secrets').insert({ client_id: client.client_id, digest: secretDigest });` : ''}
}

export async function down(knex: Knex): Promise<void> {
  await knex('clients').where({ client_id: client.client_id }).delete();
}
` };
}

export function renderRotateSecret(clientId: string, secretDigest: string, graceSeconds: number): RenderedMigration {
  return { name: `rotate_secret_${clientId}`, source: `${HEADER(`Adds a new secret for ${code(clientId)}; its older secrets expire ${code(graceSeconds)} s after this runs.`)}
const clientId = ${code(clientId)};
const graceSeconds = ${code(graceSeconds)};
// SHA-256 digest of the new secret, which was shown once and is stored nowhere.
const secretDigest = ${code(secretDigest)};

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
` };
}

/** Disables or enables one row of `table` by its key; down does the opposite. */
function renderSetRowEnabled(what: 'client' | 'issuer', table: string, key: string, id: string, enabled: boolean): RenderedMigration {
  const verb = enabled ? 'enable' : 'disable';
  return { name: what === 'client' ? `${verb}_${id}` : `${verb}_${what}_${id}`, source: `${HEADER(`${enabled ? 'Enables' : 'Disables'} ${what} ${code(id)}; down ${enabled ? 'disables' : 'enables'} it again.`, what)}
const id = ${code(id)};

async function setEnabled(knex: Knex, enabled: boolean): Promise<void> {
  const changed = await knex(${code(table)}).where(${code(key)}, id).update({ enabled, updated_at: knex.fn.now() });
  if (changed !== 1) throw new Error(\`${what} \${id} does not exist\`);
}

export async function up(knex: Knex): Promise<void> {
  await setEnabled(knex, ${code(enabled)});
}

export async function down(knex: Knex): Promise<void> {
  await setEnabled(knex, ${code(!enabled)});
}
` };
}

export const renderSetEnabled = (clientId: string, enabled: boolean) => renderSetRowEnabled('client', 'clients', 'client_id', clientId, enabled);

export const writeAddClient = (dir: string, client: NewClient, secretDigest: string | undefined) => write(dir, renderAddClient(client, secretDigest));
export const writeRotateSecret = (dir: string, clientId: string, secretDigest: string, graceSeconds: number) => write(dir, renderRotateSecret(clientId, secretDigest, graceSeconds));
export const writeSetEnabled = (dir: string, clientId: string, enabled: boolean) => write(dir, renderSetEnabled(clientId, enabled));

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

export function renderAddIssuer(issuer: NewIssuer): RenderedMigration {
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
  return { name: `issuer_${issuer.name}`, source: `${HEADER(`Trusts issuer ${code(issuer.name)} (${code(issuer.kind)}, ${code(issuer.issuer)}) for federated clients; down removes it.`, 'issuer')}
const issuer = ${code(row)};

export async function up(knex: Knex): Promise<void> {
  await knex('issuers').insert(issuer);
}

export async function down(knex: Knex): Promise<void> {
  await knex('issuers').where({ name: issuer.name }).delete();
}
` };
}

export const renderSetIssuerEnabled = (name: string, enabled: boolean) => renderSetRowEnabled('issuer', 'issuers', 'name', name, enabled);

export const writeAddIssuer = (dir: string, issuer: NewIssuer) => write(dir, renderAddIssuer(issuer));
export const writeSetIssuerEnabled = (dir: string, name: string, enabled: boolean) => write(dir, renderSetIssuerEnabled(name, enabled));
