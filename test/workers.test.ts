// WORKERS=2 on PostgreSQL: replay detection, revocation and brute-force limits hold across
// workers, the management listener's /metrics shows both workers' counts (and /readyz asks
// both), and a worker that dies is replaced.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { importPKCS8, SignJWT } from 'jose';
import { Agent } from 'undici';

import { addClient, createWorkspace, eventually, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const suite = process.env.TEST_DATABASE_URL ? describe : describe.skip;

suite('two workers', () => {
  let workspace: Workspace;
  let server: RunningServer;
  let secret: string;
  let keyPem: string;

  beforeAll(async () => {
    workspace = await createWorkspace({ WORKERS: '2', AUTH_FAILURE_LIMIT: '25', AUTH_FAILURE_WINDOW: '60' });
    ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--introspect', API])) as { client_secret: string });
    const keyFile = join(workspace.dir, 'svc-jwt.key');
    await addClient(workspace, 'svc-jwt', ['--auth', 'private_key_jwt', '--generate-key', keyFile, '--audience', API]);
    keyPem = readFileSync(keyFile, 'utf8');
    server = await startServer(workspace);
  });

  afterAll(async () => {
    await server?.stop();
    await workspace?.remove();
  });

  /** Requests on fresh connections, so the primary spreads them over both workers. */
  async function spread<T>(count: number, run: (agent: Agent) => Promise<T>): Promise<T[]> {
    const ca = readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8');
    return Promise.all(Array.from({ length: count }, async () => {
      const agent = new Agent({ connect: { ca }, pipelining: 0 });
      try {
        return await run(agent);
      } finally {
        await agent.close();
      }
    }));
  }

  const post = (agent: Agent, path: string, form: Record<string, string>, basic?: [string, string]) => server.fetch(path, {
    method: 'POST',
    dispatcher: agent,
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      ...(basic ? { authorization: `Basic ${Buffer.from(basic.join(':')).toString('base64')}` } : {}),
    },
    body: new URLSearchParams(form).toString(),
  } as never);

  test('both workers serve', async () => {
    const results = await spread(24, async (agent) => (await post(agent, '/token', { grant_type: 'client_credentials' }, ['svc', secret])).status);
    expect(results).toEqual(Array(24).fill(200));
    const issued = (await server.logLines((l) => l.event === 'token.issued', 24)).map((l) => l.pid);
    expect(new Set(issued).size).toBe(2);
  });

  test('one assertion sent 20 times at once to both workers: exactly one token', async () => {
    const key = await importPKCS8(keyPem, 'ES256');
    const assertion = await new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).setIssuer('svc-jwt').setSubject('svc-jwt')
      .setAudience(server.issuer).setJti(randomUUID()).setIssuedAt().setExpirationTime('60s').sign(key);
    const statuses = await spread(20, async (agent) => (await post(agent, '/token', {
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    })).status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 401)).toHaveLength(19);
  });

  test('a token revoked through one worker is inactive on every worker', async () => {
    const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });
    const token = res.body.access_token as string;
    expect((await server.post('/token/revocation', { token }, { basic: ['svc', secret] })).status).toBe(200);
    const answers = await spread(12, async (agent) => (await post(agent, '/token/introspection', { token }, ['svc', secret])).json());
    expect(answers).toEqual(Array(12).fill({ active: false }));
  });

  test('brute-force limits count failures from every worker', async () => {
    const target = `ghost-${randomUUID()}`;
    const statuses = await spread(25, async (agent) => (await post(agent, '/token', { grant_type: 'client_credentials' }, [target, 'guess'])).status);
    expect(statuses).toEqual(Array(25).fill(401));
    const after = await spread(4, async (agent) => (await post(agent, '/token', { grant_type: 'client_credentials' }, [target, 'guess'])).status);
    expect(after).toEqual(Array(4).fill(429));
  });

  test('the management listener\'s /metrics shows both workers\' counts; the public one has none', async () => {
    expect((await server.fetch('/metrics')).status).toBe(404);
    const text = await (await server.management('/metrics')).text();
    const issued = [...text.matchAll(/^m2m_tokens_issued_total\{([^}]*)\} (\d+)/gm)];
    const workers = new Set(issued.map(([, labels]) => /worker="(\d+)"/.exec(labels!)![1]));
    expect(workers.size).toBe(2);
    const total = issued.reduce((sum, [, , value]) => sum + Number(value), 0);
    const logged = (await server.logLines((l) => l.event === 'token.issued', total)).length;
    expect(total).toBe(logged);
    expect(text).toMatch(/^m2m_refusals_total\{.*reason="client assertion tokens must only be used once".*\} \d+/m);
    expect(text).toMatch(/^m2m_signing_key_age_seconds\{/m);
    // Gathered at collection in every worker, not only in the one a request happened to reach.
    const pools = new Set([...text.matchAll(/^m2m_db_pool_connections\{[^}]*worker="(\d+)"[^}]*\} \d+$/gm)].map((m) => m[1]));
    expect(pools.size).toBe(2);
  });

  test('the management listener\'s /readyz asks every worker', async () => {
    const res = await server.management('/readyz');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { status: string; workers: { worker: number; status: string; database: string }[] };
    expect(body.status).toBe('ready');
    expect(body.workers.map((w) => [w.status, w.database])).toEqual([['ready', 'ok'], ['ready', 'ok']]);
    expect((await server.management('/healthz')).status).toBe(200);
  });

  test('a worker that dies is replaced', async () => {
    const pids = () => new Set(server.output().split('\n').filter((l) => l.includes('"msg":"listening"')).map((l) => JSON.parse(l).pid as number));
    const before = pids();
    expect(before.size).toBe(2);
    process.kill([...before][0]!, 'SIGKILL');
    await eventually(async () => pids().size === 3, 30_000, 'a replacement worker');
    const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });
    expect(res.status).toBe(200);
  });
});
