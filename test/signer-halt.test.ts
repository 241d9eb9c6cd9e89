// An instance never signs with a key the database has retired. During a key-encryption-key
// rollout, an instance that still has only the old KEK cannot decrypt a key made under the
// new one; once its own signer is retired, it stops issuing (503, not ready) and says why,
// instead of signing tokens that fail wherever /jwks no longer has its key.
import { randomBytes } from 'node:crypto';

import { addClient, createWorkspace, decodeJwtPart, eventually, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const newKek = () => randomBytes(32).toString('base64url');
/** Two server processes on one database need PostgreSQL: only one process may open the embedded one. */
const onPostgres = process.env.TEST_DATABASE_URL ? describe : describe.skip;
/** Generous: a loaded machine may take seconds for what takes milliseconds. */
const DEADLINE_MS = 60_000;

onPostgres('a KEK rollout under way when the signer is retired (PostgreSQL only)', () => {
  const [oldKek, newKek2] = [newKek(), newKek()];
  const both = { KEYS_ENCRYPTION_KEY: `${newKek2},${oldKek}` };
  let workspace: Workspace;
  const servers: RunningServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.stop();
    await workspace?.remove();
  });

  test('the instance with the old KEK alone stops issuing and says which key and KEK; the other goes on', async () => {
    workspace = await createWorkspace({ KEYS_ENCRYPTION_KEY: oldKek, JWKS_MAX_AGE: '0', KEYS_RELOAD_SECONDS: '1', KEY_ROTATION_DAYS: '0' });
    const { client_secret: secret } = await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API]);
    const kidOf = (res: { body: { access_token?: string } }) => decodeJwtPart(res.body.access_token!, 0).kid as string;
    const token = (server: RunningServer) => server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret!] });
    const oldOnly = await startServer(workspace);
    servers.push(oldOnly);
    const port = await freePort();
    const updated = await startServer(workspace, { ...both, PORT: String(port), ISSUER: `https://localhost:${port}` });
    servers.push(updated);
    const k1 = kidOf(await token(oldOnly));

    // A key made under the new KEK: the old-KEK instance cannot decrypt it.
    const generated = await workspace.cli('keys', ['generate', '--json'], both);
    expect(generated).toMatchObject({ code: 0, stderr: '' });
    const k2 = (JSON.parse(generated.stdout) as { kid: string }).kid;
    const listed = JSON.parse((await workspace.cli('keys', ['list', '--json'], both)).stdout) as { kid: string; kek_id: string }[];
    const newKekId = listed.find((k) => k.kid === k2)!.kek_id;
    await eventually(async () => kidOf(await token(updated)) === k2, DEADLINE_MS, `${k2} signing on the updated instance`);
    // K1 is not retired yet: the old-KEK instance keeps signing with it, and it is still published everywhere.
    const before = await token(oldOnly);
    expect([before.status, kidOf(before)]).toEqual([200, k1]);
    expect((await oldOnly.fetch('/readyz')).status).toBe(200);

    expect((await workspace.cli('keys', ['retire', k1, '--json'], both)).code).toBe(0);
    await eventually(async () => (await token(oldOnly)).status === 503, DEADLINE_MS, 'the old-KEK instance refusing /token');
    const refused = await token(oldOnly);
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: 'temporarily_unavailable' });
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    expect((await oldOnly.fetch('/readyz')).status).toBe(503);
    expect((await oldOnly.management('/readyz')).status).toBe(503);
    const [line] = await oldOnly.logLines((l) => l.level === 50 && String(l.msg).includes('not issuing tokens'), 1);
    expect(line).toMatchObject({ kid: k2, kek_id: newKekId, retired: k1 });
    // Never again a token signed with the retired key; the updated instance goes on.
    for (let i = 0; i < 5; i += 1) expect((await token(oldOnly)).status).toBe(503);
    const after = await token(updated);
    expect([after.status, kidOf(after)]).toEqual([200, k2]);

    // Given the new KEK, it signs again.
    await oldOnly.stop();
    servers.shift();
    const restarted = await startServer(workspace, both);
    servers.push(restarted);
    const again = await token(restarted);
    expect([again.status, kidOf(again)]).toEqual([200, k2]);
    expect((await restarted.fetch('/readyz')).status).toBe(200);
  }, 240_000);
});
