// Migrations apply to an empty database and roll back; CLI-written client migrations do
// too; an invalid registration fails at migrate time with the constraint's name and
// leaves nothing behind; a bad CLI flag writes no file.
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { createWorkspace, type Workspace } from './helpers/server.ts';

let workspace: Workspace;

beforeAll(async () => {
  workspace = await createWorkspace({}, { emptyDatabase: true });
});

afterAll(async () => {
  await workspace?.remove();
});

async function listClients(): Promise<{ client_id: string; enabled: boolean }[]> {
  const result = await workspace.cli('client', ['list', '--json']);
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout);
}

test('the schema applies to an empty database and rolls back completely', async () => {
  const up = await workspace.cli('migrate', ['latest']);
  expect(up.code).toBe(0);
  expect(up.stdout).toMatch(/initial_schema/);
  expect(await listClients()).toEqual([]);

  const down = await workspace.cli('migrate', ['rollback']);
  expect(down.code).toBe(0);
  expect(down.stdout).toMatch(/initial_schema/);
  const gone = await workspace.cli('client', ['list', '--json']);
  expect(gone.code).not.toBe(0);
  expect(gone.stderr).toMatch(/relation "clients" does not exist/);

  expect((await workspace.cli('migrate', ['latest'])).code).toBe(0);
});

test('a CLI-written client migration applies and rolls back', async () => {
  const add = await workspace.cli('client', ['add', 'svc-mig', '--auth', 'client_secret_basic', '--audience', 'https://api.example.test', '--json']);
  expect(add.code).toBe(0);
  const { migration } = JSON.parse(add.stdout) as { migration: string };
  expect(migration).toMatch(/^migrations\/\d{14}_client_svc-mig\.ts$/);

  expect((await workspace.cli('migrate', ['latest'])).code).toBe(0);
  expect((await listClients()).map((c) => c.client_id)).toEqual(['svc-mig']);

  const disable = await workspace.cli('client', ['disable', 'svc-mig', '--json']);
  expect(disable.code).toBe(0);
  expect(JSON.parse(disable.stdout)).toMatchObject({ client_id: 'svc-mig' });
  expect((await workspace.cli('migrate', ['latest'])).code).toBe(0);
  expect(await listClients()).toMatchObject([{ client_id: 'svc-mig', enabled: false }]);

  expect((await workspace.cli('migrate', ['rollback'])).code).toBe(0);
  expect(await listClients()).toMatchObject([{ client_id: 'svc-mig', enabled: true }]);
  expect((await workspace.cli('migrate', ['rollback'])).code).toBe(0);
  expect(await listClients()).toEqual([]);
  expect((await workspace.cli('migrate', ['latest'])).code).toBe(0);
});

test('an invalid registration fails at migrate time, naming the rule, and writes nothing', async () => {
  const before = await listClients();
  writeFileSync(join(workspace.migrationsDir, '29990101000000_client_broken.ts'), `
import type { Knex } from 'knex';
export async function up(knex: Knex): Promise<void> {
  await knex('clients').insert({ client_id: 'broken', auth_method: 'private_key_jwt', audiences: ['https://api.example.test'] });
}
export async function down(knex: Knex): Promise<void> {
  await knex('clients').where({ client_id: 'broken' }).delete();
}
`);
  const result = await workspace.cli('migrate', ['latest']);
  expect(result.code).not.toBe(0);
  expect(result.stderr).toMatch(/private_key_jwt_needs_jwks_or_jwks_uri/);
  expect(await listClients()).toEqual(before);
});

describe('a bad flag gets one clear line and writes no file', () => {
  const cases: [string, string[], RegExp][] = [
    ['unknown method', ['add', 'x1', '--auth', 'password', '--audience', 'https://a.test'], /--auth/],
    ['relative audience URI', ['add', 'x1', '--auth', 'client_secret_basic', '--audience', '/api'], /--audience/],
    ['missing audience', ['add', 'x1', '--auth', 'client_secret_basic'], /--audience/],
    ['bad client id', ['add', 'bad id', '--auth', 'client_secret_basic', '--audience', 'https://a.test'], /client_id/],
    ['tls_client_auth without a subject', ['add', 'x1', '--auth', 'tls_client_auth', '--audience', 'https://a.test'], /--subject-dn/],
    ['unparseable DN', ['add', 'x1', '--auth', 'tls_client_auth', '--subject-dn', '=', '--audience', 'https://a.test'], /--subject-dn/],
    ['jwks_uri over http', ['add', 'x1', '--auth', 'private_key_jwt', '--jwks-uri', 'http://keys.test/jwks', '--audience', 'https://a.test'], /https/],
    ['ttl above the cap', ['add', 'x1', '--auth', 'client_secret_basic', '--audience', 'https://a.test', '--ttl', '999999'], /--ttl/],
    ['scope with a forbidden character', ['add', 'x1', '--auth', 'client_secret_basic', '--audience', 'https://a.test', '--scope', 'a"b'], /--scope/],
    ['a flag of another method', ['add', 'x1', '--auth', 'client_secret_basic', '--audience', 'https://a.test', '--subject-dn', 'CN=x'], /--subject-dn/],
    ['unknown flag', ['add', 'x1', '--auth', 'client_secret_basic', '--audience', 'https://a.test', '--frobnicate'], /frobnicate/],
    ['rotate with a bad grace', ['rotate-secret', 'x1', '--grace', '-5'], /--grace/],
  ];
  test.each(cases)('%s', async (_name, args, mentions) => {
    const files = readdirSync(workspace.migrationsDir);
    const result = await workspace.cli('client', args);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(mentions);
    expect(readdirSync(workspace.migrationsDir)).toEqual(files);
  });

  test('a JWKS with a private key is refused', async () => {
    const file = join(workspace.dir, 'private.jwks.json');
    writeFileSync(file, JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', d: 'jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI' }] }));
    const files = readdirSync(workspace.migrationsDir);
    const result = await workspace.cli('client', ['add', 'x2', '--auth', 'private_key_jwt', '--jwks', file, '--audience', 'https://a.test']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/private member "d"/);
    expect(readdirSync(workspace.migrationsDir)).toEqual(files);
  });
});
