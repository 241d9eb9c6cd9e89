// A bad setting stops the start with one line naming it, and nothing is left behind;
// production refuses every development default.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { NODE, nodeFlags } from './helpers/node.ts';
import { createWorkspace, ROOT, type Workspace } from './helpers/server.ts';

let workspace: Workspace;

beforeAll(async () => {
  workspace = await createWorkspace({}, { emptyDatabase: true });
});

afterAll(async () => {
  await workspace?.remove();
});

function start(env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  const serverEnv = { ...workspace.env, DATABASE_URL: '', ...env };
  return new Promise((done) => {
    execFile(NODE, [...nodeFlags(serverEnv), join(ROOT, 'src', 'main.ts')], { cwd: workspace.dir, env: serverEnv, timeout: 30_000 },
      (err, stdout, stderr) => done({ code: err ? Number((err as { code?: number }).code) : 0, stdout, stderr }));
  });
}

test.each([
  ['PORT', { PORT: 'eighty' }],
  ['PORT', { PORT: '70000' }],
  ['ISSUER', { ISSUER: 'http://auth.example.com' }],
  ['ISSUER', { ISSUER: 'https://auth.example.com/' }],
  ['TLS_MODE', { TLS_MODE: 'tcp' }],
  ['TLS_CERT', { TLS_CERT: '/no/such/file.pem' }],
  ['TRUSTED_PROXIES', { TRUSTED_PROXIES: '10.0.0.0/33' }],
  ['TRUSTED_PROXIES', { TLS_MODE: 'proxy', TRUSTED_PROXIES: '' }],
  ['HOST', { HOST: 'localhost' }],
  ['HOST', { HOST: '10.0.0.300' }],
  ['HOST', { HOST: '10' }],
  ['TLS_HANDSHAKE_TIMEOUT', { TLS_HANDSHAKE_TIMEOUT: '0' }],
  ['TLS_HANDSHAKE_TIMEOUT', { TLS_HANDSHAKE_TIMEOUT: '1.5' }],
  ['MAX_CONNECTIONS_PER_ADDRESS', { MAX_CONNECTIONS_PER_ADDRESS: '0' }],
  ['ACCESS_TOKEN_TTL', { ACCESS_TOKEN_TTL: '7200' }],
  ['WORKERS', { WORKERS: '2' }],
  ['DATABASE_URL', { DATABASE_URL: 'mysql://db/x' }],
  ['MIGRATE_ON_START', { MIGRATE_ON_START: 'maybe' }],
  ['LOG_LEVEL', { LOG_LEVEL: 'loud' }],
  ['LOG_BUFFER_KB', { LOG_BUFFER_KB: '8' }],
  ['HOST', { HOST: 'not an address' }],
  ['MANAGEMENT_PORT', { MANAGEMENT_PORT: '-1' }],
  ['MANAGEMENT_PORT', { PORT: '9100', MANAGEMENT_PORT: '9100' }],
  ['MANAGEMENT_HOST', { MANAGEMENT_HOST: '10.0.0.1/8' }],
  ['MAX_ASSERTION_LIFETIME', { MAX_ASSERTION_LIFETIME: '3601' }],
  ['MAX_ASSERTION_LIFETIME', { MAX_ASSERTION_LIFETIME: '59' }],
  ['KEYS_ENCRYPTION_KEY', { KEYS_ENCRYPTION_KEY: 'c2hvcnQ' }],
  ['KEYS_ENCRYPTION_KEY', { KEYS_ENCRYPTION_KEY: 'file:/no/such/kek' }],
  ['KEY_ROTATION_DAYS', { KEY_ROTATION_DAYS: '-1' }],
])('bad %s: one line naming it, exit 2, nothing created', async (name, env) => {
  const result = await start(env);
  expect(result.code).toBe(2);
  expect(result.stdout).toBe('');
  expect(result.stderr.trim().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(new RegExp(`^setting ${name}=`));
  expect(existsSync(workspace.dataDir)).toBe(false);
  expect(readdirSync(workspace.keysDir)).toEqual([]);
});

test('NODE_ENV=production refuses the development defaults, one at a time', async () => {
  const refusals = [
    [{ ISSUER: '' }, /DATABASE_URL/],
    [{ DATABASE_URL: 'postgres://127.0.0.1:1/x', ISSUER: '' }, /ISSUER/],
    [{ DATABASE_URL: 'postgres://127.0.0.1:1/x', ISSUER: 'https://auth.example.com' }, /TLS_CERT/],
    [{ DATABASE_URL: 'postgres://127.0.0.1:1/x', ISSUER: 'https://auth.example.com', TLS_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1' }, /^setting KEYS_ENCRYPTION_KEY="" is invalid/],
  ] as const;
  for (const [env, mentions] of refusals) {
    const result = await start({ NODE_ENV: 'production', ...env });
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(mentions);
  }
  expect(readdirSync(workspace.keysDir)).toEqual([]);
});
