// Operator commands need only the settings they use: a deploy job that migrates and registers
// a client carries DATABASE_URL and MIGRATIONS_DIR, no ISSUER and no TLS files, also with
// NODE_ENV=production (which needs a PostgreSQL server: TEST_DATABASE_URL). On the embedded
// database the same commands run outside production, with the server's settings broken.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

import { NODE, nodeFlags } from './helpers/node.ts';
import { createWorkspace, ROOT, type CommandResult, type Workspace } from './helpers/server.ts';
import { nodeEnv } from './helpers/template.ts';

const production = Boolean(process.env.TEST_DATABASE_URL);

let workspace: Workspace;
let env: Record<string, string>;

beforeAll(async () => {
  workspace = await createWorkspace({}, { emptyDatabase: true });
  env = {
    ...nodeEnv(),
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? workspace.dir,
    MIGRATIONS_DIR: workspace.migrationsDir,
    ...(workspace.databaseUrl ? { DATABASE_URL: workspace.databaseUrl, NODE_ENV: 'production' } : { DATA_DIR: workspace.dataDir }),
  };
});

afterAll(async () => {
  await workspace?.remove();
});

/** The command as a deploy job runs it: only `env` (plus `extra`), nothing of the server's. */
function command(script: 'migrate' | 'client' | 'keys' | 'issuer', args: string[], extra: Record<string, string> = {}): Promise<CommandResult> {
  const commandEnv = { ...env, ...extra };
  return new Promise((done) => {
    execFile(NODE, [...nodeFlags(commandEnv), join(ROOT, 'src', 'cli', `${script}.ts`), ...args], { cwd: workspace.dir, env: commandEnv, timeout: 60_000 }, (err, stdout, stderr) => {
      done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** Settings only the server reads, set as a shared deploy environment might: files not mounted here. */
const SERVER_ONLY = {
  TLS_CERT: '/run/secrets/not-mounted/tls.crt',
  TLS_KEY: '/run/secrets/not-mounted/tls.key',
  TLS_CLIENT_CA: '/run/secrets/not-mounted/client-ca.pem',
  JWKS_URI_CA: '/run/secrets/not-mounted/internal-ca.pem',
  TRUSTED_PROXIES: 'not-an-address',
  WORKERS: '4',
};

test(`migrate, client add, migrate, client list and rollback with only the database settings${production ? ' (NODE_ENV=production)' : ''}`, async () => {
  const ok = (result: CommandResult) => {
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
    return result;
  };
  ok(await command('migrate', ['latest']));
  const added = JSON.parse(ok(await command('client', ['add', 'svc-deployed', '--auth', 'client_secret_basic', '--audience', 'https://api.example.test', '--json'])).stdout) as { client_secret: string };
  expect(added.client_secret).toEqual(expect.any(String));
  expect(ok(await command('migrate', ['latest'])).stdout).toMatch(/client_svc-deployed/);
  const listed = JSON.parse(ok(await command('client', ['list', '--json'])).stdout) as { client_id: string }[];
  expect(listed.map((c) => c.client_id)).toContain('svc-deployed');
  expect(ok(await command('migrate', ['rollback'])).stdout).toMatch(/client_svc-deployed/);
  // The same job in an environment that also carries the server's settings, unusable here.
  ok(await command('migrate', ['latest'], SERVER_ONLY));
  ok(await command('client', ['list', '--json'], SERVER_ONLY));
}, 180_000);

test('issuer add and list, and a federated client, with only the database settings', async () => {
  const ok = (result: CommandResult) => {
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
    return result;
  };
  ok(await command('issuer', ['add', 'ci', '--issuer', 'https://token.actions.githubusercontent.com', '--json'], SERVER_ONLY));
  ok(await command('client', ['add', 'svc-ci', '--auth', 'federated', '--issuer', 'ci', '--subject', 'repo:acme/app:ref:refs/heads/main', '--audience', 'https://api.example.test'], SERVER_ONLY));
  ok(await command('migrate', ['latest']));
  expect(JSON.parse(ok(await command('issuer', ['list', '--json'], SERVER_ONLY)).stdout)).toEqual([expect.objectContaining({ name: 'ci', enabled: true })]);
  expect(JSON.parse(ok(await command('client', ['list', '--json'], SERVER_ONLY)).stdout)).toEqual(expect.arrayContaining([
    expect.objectContaining({ client_id: 'svc-ci', auth: 'federated', issuer: 'ci', subject: 'repo:acme/app:ref:refs/heads/main' }),
  ]));
}, 180_000);

test('keys needs no ISSUER or TLS files: the database and the key-encryption key', async () => {
  const keys = { ...SERVER_ONLY, KEYS_DIR: workspace.keysDir, KEYS_ENCRYPTION_KEY: randomBytes(32).toString('base64url') };
  expect((await command('migrate', ['latest'])).code).toBe(0);
  const generated = await command('keys', ['generate', '--json'], keys);
  expect({ code: generated.code, stderr: generated.stderr }).toEqual({ code: 0, stderr: '' });
  const result = await command('keys', ['list', '--json'], keys);
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  expect((JSON.parse(result.stdout) as { kid: string }[]).map((k) => k.kid)).toEqual([(JSON.parse(generated.stdout) as { kid: string }).kid]);
});

test('a setting a command uses is still checked: one line naming it, exit 2', async () => {
  const result = await command('migrate', ['latest'], { DATABASE_URL: 'mysql://db/x' });
  expect(result.code).toBe(2);
  expect(result.stderr.trim().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(/DATABASE_URL/);
  const client = await command('client', ['add', 'svc-x', '--auth', 'client_secret_basic', '--audience', 'https://api.example.test', '--ttl', '60'], { ACCESS_TOKEN_TTL: '600', MAX_ACCESS_TOKEN_TTL: '300' });
  expect(client.code).toBe(2);
  expect(client.stderr).toMatch(/ACCESS_TOKEN_TTL/);
});

(production ? test : test.skip)(`NODE_ENV=production: a command that opens the database still refuses the embedded one${production ? '' : ' (skipped: needs TEST_DATABASE_URL, production has no embedded database)'}`, async () => {
  const result = await command('migrate', ['latest'], { DATABASE_URL: '' });
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/DATABASE_URL/);
});

test('the server itself still refuses to start without its settings', async () => {
  const serverEnv = { ...env, NODE_ENV: 'production', ...SERVER_ONLY, WORKERS: '1', TRUSTED_PROXIES: '' };
  const result = await new Promise<CommandResult>((done) => {
    execFile(NODE, [...nodeFlags(serverEnv), join(ROOT, 'src', 'main.ts')], { cwd: workspace.dir, env: serverEnv, timeout: 60_000 },
      (err, stdout, stderr) => done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/^setting (DATABASE_URL|ISSUER|TLS_CERT)=/);
});
