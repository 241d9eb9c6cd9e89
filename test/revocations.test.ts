// Revocations across instances (PostgreSQL only): two servers behind one issuer, on one
// database, each with its in-memory list of revoked tokens. A revocation through one is seen
// by the other through a notification, and through polling when the notification is lost.
import pg from 'pg';
import { fetch as undiciFetch } from 'undici';

import { addClient, createWorkspace, decodeJwtPart, eventually, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const suite = process.env.TEST_DATABASE_URL ? describe : describe.skip;

suite('revocations across instances', () => {
  let workspace: Workspace;
  let a: RunningServer;
  let b: RunningServer;
  let bPort: number;
  let secret: string;

  beforeAll(async () => {
    workspace = await createWorkspace();
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--introspect', API])) as { client_secret: string });
    a = await startServer(workspace);
    bPort = await freePort();
    // Same issuer, keys and database; another port, as a second instance behind a balancer.
    b = await startServer(workspace, { PORT: String(bPort) });
  });

  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await workspace?.remove();
  });

  const basic = () => `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}`;

  /** Introspects `token` at instance B (port bPort; `b.fetch` would go to the issuer's port). */
  async function activeAtB(token: string): Promise<boolean> {
    const res = await undiciFetch(`https://localhost:${bPort}/token/introspection`, {
      method: 'POST',
      dispatcher: b.agent(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic() },
      body: new URLSearchParams({ token }).toString(),
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { active: boolean }).active;
  }

  /** Every series of one metric at instance B (one per worker), as numbers. */
  async function seriesAtB(name: string, labels = ''): Promise<number[]> {
    const res = await b.management('/metrics');
    const pattern = new RegExp(`^${name}\\{[^}]*${labels}[^}]*\\} ([\\d.]+)$`, 'gm');
    return [...(await res.text()).matchAll(pattern)].map((m) => Number(m[1]));
  }
  const learntAtB = async (source: string) => (await seriesAtB('m2m_revocations_learnt_total', `source="${source}"`)).reduce((sum, n) => sum + n, 0);
  const behindAtB = async () => {
    const behind = await seriesAtB('m2m_revocations_behind_seconds');
    return behind.length ? Math.max(...behind) : NaN;
  };

  async function newToken(): Promise<string> {
    const res = await a.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });
    expect(res.status).toBe(200);
    return res.body.access_token as string;
  }

  test('the second instance is on its own port and sees tokens of the first as active', async () => {
    expect(b.output()).toContain(`"port":${bPort}`);
    expect(await activeAtB(await newToken())).toBe(true);
  });

  test('a token revoked through one instance is inactive on the other, told by a notification', async () => {
    const heard = await learntAtB('notification');
    // Three, so that a poll landing between a commit and its notification cannot decide it.
    for (let i = 0; i < 3; i += 1) {
      const token = await newToken();
      expect(await activeAtB(token)).toBe(true);
      expect((await a.post('/token/revocation', { token }, { basic: ['svc', secret] })).status).toBe(200);
      // Milliseconds as a rule; the deadline is for a loaded machine. What tells a notification
      // from a poll (every second) is the count below, not the time.
      const elapsed = await eventually(async () => !(await activeAtB(token)), 10_000, 'revocation seen by the other instance');
      process.stdout.write(`revocation seen by the other instance after ${elapsed} ms\n`);
    }
    expect(await learntAtB('notification') - heard).toBeGreaterThanOrEqual(2);
    // The list and its lag are visible to operators.
    const metrics = await (await a.management('/metrics')).text();
    expect(Number(/^m2m_revoked_tokens\{[^}]*\} (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
    expect(Number(/^m2m_revocations_behind_seconds\{[^}]*\} ([\d.]+)/m.exec(metrics)?.[1])).toBeLessThan(3);
  });

  test('a revocation whose notification is lost is found by polling', async () => {
    const token = await newToken();
    expect(await activeAtB(token)).toBe(true);
    const { jti, exp } = decodeJwtPart(token, 1) as { jti: string; exp: number };
    // With triggers off for this session, the row is written and no notification is sent.
    const db = new pg.Client({ connectionString: workspace.databaseUrl });
    await db.connect();
    try {
      await db.query('SET session_replication_role = replica');
      await db.query('INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, to_timestamp($2))', [jti, exp]);
    } finally {
      await db.end();
    }
    const polled = await learntAtB('poll');
    // By a poll, while B's list is current (so not by falling back to the database, which
    // it does once the list is 3 s behind): the counts say which, the deadline is generous.
    await eventually(async () => !(await activeAtB(token)), 10_000, 'revocation found by polling at B');
    expect(await behindAtB()).toBeLessThan(3);
    expect(await learntAtB('poll')).toBeGreaterThan(polled);
    // A polls on its own timer (each of its workers too), and finds it as well.
    await eventually(async () => (await a.post('/token/introspection', { token }, { basic: ['svc', secret] })).body.active === false, 10_000, 'revocation found by polling at A');
  });
});
