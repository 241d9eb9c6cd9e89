// Each signing_keys row is authentic or ignored: its public JWK and schedule are sealed
// under the key-encryption key by whoever writes it, and its kid is its JWK's thumbprint. A
// database writer without that key (SQL access, a restored backup, a compromised replica)
// can neither publish a verification key nor move a key's schedule. Rows of an earlier
// version are sealed at start when their private part proves them.
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { join } from 'node:path';

import { calculateJwkThumbprint, type JWK } from 'jose';

import { NODE, nodeFlags } from './helpers/node.ts';
import { addClient, createWorkspace, decodeJwtPart, ROOT, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const newKek = () => randomBytes(32).toString('base64url');

/** One SQL statement on the workspace's database, as a database writer would run it. */
async function sql(workspace: Workspace, statement: string, bindings: unknown[] = []): Promise<Record<string, unknown>[]> {
  return new Promise((done, fail) => {
    execFile(NODE, [...nodeFlags(workspace.env), join(ROOT, 'test', 'helpers', 'sql.ts'), statement, JSON.stringify(bindings)], { cwd: workspace.dir, env: workspace.env }, (err, stdout, stderr) => {
      if (err) fail(new Error(stderr));
      else done(JSON.parse(stdout) as Record<string, unknown>[]);
    });
  });
}

async function rsaKey(): Promise<{ kid: string; privateKey: KeyObject; jwk: JWK }> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const exported = publicKey.export({ format: 'jwk' }) as JWK;
  const kid = await calculateJwkThumbprint(exported, 'sha256');
  return { kid, privateKey, jwk: { kty: 'RSA', n: exported.n, e: exported.e, kid, alg: 'RS256', use: 'sig' } };
}

async function publishedKids(server: RunningServer): Promise<string[]> {
  const res = await server.fetch('/jwks');
  expect(res.status).toBe(200);
  return ((await res.json()) as { keys: { kid: string }[] }).keys.map((k) => k.kid);
}

interface Setup {
  workspace: Workspace;
  secrets: Record<string, string>;
}

async function setup(env: Record<string, string> = {}): Promise<Setup> {
  const workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: newKek(), KEY_ROTATION_DAYS: '0', ...env });
  const secrets: Record<string, string> = {};
  secrets.svc = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--scope', 'read'])).client_secret!;
  secrets.rs = (await addClient(workspace, 'rs', ['--auth', 'client_secret_basic', '--introspect', API])).client_secret!;
  return { workspace, secrets };
}

async function tokenKid(server: RunningServer, { secrets }: Setup): Promise<string> {
  const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secrets.svc!] });
  expect(res.status).toBe(200);
  return decodeJwtPart(res.body.access_token as string, 0).kid as string;
}

async function introspect(server: RunningServer, { secrets }: Setup, token: string): Promise<Record<string, unknown>> {
  const res = await server.post('/token/introspection', { token }, { basic: ['rs', secrets.rs!] });
  expect(res.status).toBe(200);
  return res.body as Record<string, unknown>;
}

/** A token as this server would issue it to svc, but signed with `key`. */
function forge(server: RunningServer, key: { kid: string; privateKey: KeyObject }): string {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${b64({ alg: 'RS256', typ: 'at+jwt', kid: key.kid })}.${b64({
    iss: server.issuer, sub: 'svc', client_id: 'svc', aud: API, scope: 'read', jti: randomBytes(8).toString('hex'), iat: now, exp: now + 300,
  })}`;
  return `${input}.${sign('sha256', Buffer.from(input), key.privateKey).toString('base64url')}`;
}

/** Each test starts servers and runs commands, one after another: minutes on a loaded machine. */
const TEST_MS = 400_000;
const NOT_AUTHENTIC = 'a signing_keys row is not authentic: it is neither published nor trusted';

describe('signing_keys rows are authenticated under the key-encryption key', () => {
  let setupDone: Setup | undefined;
  let server: RunningServer | undefined;
  afterEach(async () => {
    await server?.stop();
    await setupDone?.workspace.remove();
    server = undefined;
    setupDone = undefined;
  });

  test('a row a database writer inserts (its own public key, no valid seal) is never in /jwks, and its tokens introspect inactive', async () => {
    const s = setupDone = await setup();
    server = await startServer(s.workspace);
    const ours = (await publishedKids(server))[0]!;
    await server.stop();
    const [signer] = await sql(s.workspace, 'SELECT kid, seal FROM signing_keys');
    expect(signer).toMatchObject({ kid: ours });

    // The attack of issue 21: a retired row (no private part needed) published for ten years.
    const unsealed = await rsaKey();
    // And one carrying our own row's seal, valid for that row only.
    const borrowed = await rsaKey();
    for (const [key, seal] of [[unsealed, null], [borrowed, signer!.seal]] as const) {
      await sql(s.workspace, `INSERT INTO signing_keys (kid, public_jwk, origin, published_at, signs_from, retired_at, unpublish_at, seal)
        VALUES (?, ?::jsonb, 'command', now(), now(), now(), now() + interval '10 years', ?)`, [key.kid, JSON.stringify(key.jwk), seal]);
    }

    server = await startServer(s.workspace);
    expect(await publishedKids(server)).toEqual([ours]);
    expect(await tokenKid(server, s)).toBe(ours);
    // The control: a token of ours is active; the forged ones, alike but for their key, are not.
    const real = (await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', s.secrets.svc!] })).body.access_token as string;
    expect(await introspect(server, s, real)).toMatchObject({ active: true, client_id: 'svc' });
    for (const key of [unsealed, borrowed]) expect(await introspect(server, s, forge(server, key))).toEqual({ active: false });

    // Logged by kid (by each worker, with WORKERS=2), without key material.
    const lines = await server.logLines((l) => l.msg === NOT_AUTHENTIC, 2);
    expect([...new Set(lines.map((l) => l.kid))].sort()).toEqual([unsealed.kid, borrowed.kid].sort());
    for (const key of [unsealed, borrowed]) expect(server.output()).not.toContain(key.jwk.n!);
    await server.stop();
    server = undefined;

    // `keys list` shows them for what they are.
    const listed = await s.workspace.cli('keys', ['list', '--json']);
    expect(listed).toMatchObject({ code: 0, stderr: '' });
    const states = new Map((JSON.parse(listed.stdout) as { kid: string; state: string }[]).map((k) => [k.kid, k.state]));
    expect([states.get(ours), states.get(unsealed.kid), states.get(borrowed.kid)]).toEqual(['signing', 'rejected', 'rejected']);
  }, TEST_MS);

  test('a key whose schedule was changed in the table (to sign at once) is refused and logged; the signer keeps signing', async () => {
    // An hour before a new key may sign: nothing in this test can reach it.
    const s = setupDone = await setup({ JWKS_MAX_AGE: '3600' });
    expect((await s.workspace.cli('migrate', ['latest'])).code).toBe(0);
    const kidOf = async (args: string[]) => (JSON.parse((await s.workspace.cli('keys', [...args, '--json'])).stdout) as { kid: string }).kid;
    const k1 = await kidOf(['generate']);
    const k2 = await kidOf(['generate']);
    // The control: untouched, K2 is published and waits.
    server = await startServer(s.workspace);
    expect(await publishedKids(server)).toEqual([k1, k2]);
    expect(await tokenKid(server, s)).toBe(k1);
    await server.stop();

    await sql(s.workspace, 'UPDATE signing_keys SET signs_from = published_at - interval \'1 hour\' WHERE kid = ?', [k2]);
    server = await startServer(s.workspace);
    expect(await tokenKid(server, s)).toBe(k1);
    expect(await publishedKids(server)).toEqual([k1]);
    const [line] = await server.logLines((l) => l.msg === NOT_AUTHENTIC, 1);
    expect(line).toMatchObject({ kid: k2, reason: expect.stringMatching(/seal does not verify/) });
  }, TEST_MS);

  test('rows of an earlier version (no seal) are sealed at start when their private part proves them; a retired one is not', async () => {
    const s = setupDone = await setup({ JWKS_MAX_AGE: '3600' });
    expect((await s.workspace.cli('migrate', ['latest'])).code).toBe(0);
    const kidOf = async (args: string[]) => (JSON.parse((await s.workspace.cli('keys', [...args, '--json'])).stdout) as { kid: string }).kid;
    const k1 = await kidOf(['generate']);
    const k2 = await kidOf(['generate']);
    const k3 = await kidOf(['generate']);
    expect((await s.workspace.cli('keys', ['retire', k3])).code).toBe(0);
    // As the earlier version left them.
    await sql(s.workspace, 'UPDATE signing_keys SET seal = NULL');

    server = await startServer(s.workspace);
    const [line] = await server.logLines((l) => String(l.msg).startsWith('sealed the signing keys of an earlier version'), 1);
    expect(line?.kids).toEqual([k1, k2]);
    expect(await tokenKid(server, s)).toBe(k1);
    // A retired row has no private part left to prove it: it is not published again.
    expect(await publishedKids(server)).toEqual([k1, k2]);
    await server.stop();
    server = undefined;
    const sealed = await sql(s.workspace, 'SELECT kid FROM signing_keys WHERE seal IS NOT NULL ORDER BY id');
    expect(sealed.map((r) => r.kid)).toEqual([k1, k2]);
  }, TEST_MS);
});
