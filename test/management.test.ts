// /metrics names every client that got a token and the internal refusal reasons: it is
// served on the management listener only (MANAGEMENT_PORT, plain HTTP, with /healthz and
// /readyz), and the public listener answers 404 there.
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:net';

import { addClient, createWorkspace, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const CLIENT = `svc-visible-${randomUUID().slice(0, 8)}`;
const GHOST = `ghost-${randomUUID().slice(0, 8)}`;

let workspace: Workspace;
let server: RunningServer;
let secret: string;

beforeAll(async () => {
  workspace = await createWorkspace();
  ({ client_secret: secret } = (await addClient(workspace, CLIENT, ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  server = await startServer(workspace);
  // Something for the metrics to tell: a token, a wrong secret, an unknown client.
  expect((await server.post('/token', { grant_type: 'client_credentials' }, { basic: [CLIENT, secret] })).status).toBe(200);
  expect((await server.post('/token', { grant_type: 'client_credentials' }, { basic: [CLIENT, 'wrong'] })).status).toBe(401);
  expect((await server.post('/token', { grant_type: 'client_credentials' }, { basic: [GHOST, 'guess'] })).status).toBe(401);
}, 120_000);

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

test('the public listener answers 404 on /metrics, and no client id or refusal reason leaks there', async () => {
  for (const [path, method] of [['/metrics', 'GET'], ['/metrics', 'HEAD'], ['/metrics/', 'GET'], ['/metrics?format=text', 'GET']] as const) {
    const res = await server.fetch(path, { method });
    const text = await res.text();
    expect([path, method, res.status]).toEqual([path, method, 404]);
    expect(text).not.toMatch(/m2m_|svc-visible|ghost-|invalid secret|not found/);
    if (method === 'GET') expect(JSON.parse(text)).toEqual({ error: 'invalid_request', error_description: expect.any(String) });
  }
});

test('the management listener serves /metrics, /healthz and /readyz over plain HTTP', async () => {
  const metrics = await server.management('/metrics');
  expect(metrics.status).toBe(200);
  expect(metrics.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await metrics.text();
  expect(text).toMatch(new RegExp(`^m2m_tokens_issued_total\\{[^}]*client_id="${CLIENT}"[^}]*\\} 1$`, 'm'));
  expect(text).toMatch(/^m2m_refusals_total\{[^}]*reason="invalid secret provided"[^}]*\} 1$/m);
  expect(text).toMatch(/^m2m_signing_key_age_seconds\{[^}]*state="signing"[^}]*\} [\d.]+$/m);
  expect(text).toMatch(/^m2m_db_pool_connections\{[^}]*state="used"[^}]*\} \d+$/m);
  expect(text).toMatch(/^m2m_process_process_cpu_seconds_total\{/m);

  const health = await server.management('/healthz');
  expect([health.status, await health.json()]).toEqual([200, { status: 'ok' }]);
  const ready = await server.management('/readyz');
  const readiness = (await ready.json()) as { status: string; workers?: Record<string, unknown>[] };
  // With WORKERS > 1 (TEST_WORKERS) the primary answers, with every worker's readiness.
  for (const part of readiness.workers ?? [readiness]) expect(part).toMatchObject({ status: 'ready', database: 'ok', signing_key: expect.any(String) });
  expect([ready.status, readiness.status]).toEqual([200, 'ready']);
  // Public health checks stay where load balancers look for them.
  expect((await server.fetch('/healthz')).status).toBe(200);
  expect((await server.fetch('/readyz')).status).toBe(200);
});

test('the management listener serves nothing else', async () => {
  for (const path of ['/token', '/jwks', '/.well-known/openid-configuration', '/', '/metricsx']) {
    const res = await server.management(path);
    expect([path, res.status]).toEqual([path, 404]);
    expect(await res.json()).toEqual({ error: 'invalid_request', error_description: expect.any(String) });
  }
  const post = await server.management('/token', { method: 'POST', headers: { authorization: `Basic ${Buffer.from(`${CLIENT}:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials' });
  expect(post.status).toBe(404);
  expect(await post.text()).not.toMatch(/access_token/);
  const postMetrics = await server.management('/metrics', { method: 'POST', body: '' });
  expect([postMetrics.status, postMetrics.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
});

function listeningPorts(pid: number): Promise<number[]> {
  return new Promise((done, fail) => {
    execFile('ss', ['-Hltnp'], (err, stdout) => {
      if (err) return fail(err);
      done(stdout.split('\n').filter((line) => line.includes(`pid=${pid},`)).map((line) => Number(/:(\d+)\s/.exec(line)![1])));
    });
  });
}

test('MANAGEMENT_PORT=0 turns the management listener off', async () => {
  await server.stop();
  server = await startServer(workspace, { MANAGEMENT_PORT: '0' });
  expect(await listeningPorts(server.process.pid!)).toEqual([server.port]);
  expect(server.output()).not.toMatch(/management listening/);
  expect((await server.fetch('/metrics')).status).toBe(404);
}, 120_000);

test('a management port in use stops the start, and says why', async () => {
  await server.stop();
  const port = await freePort();
  const taken: Server = createServer();
  await new Promise<void>((done) => taken.listen(port, '::', done));
  try {
    await expect(startServer(workspace, { MANAGEMENT_PORT: String(port) })).rejects.toThrow(/server exited with 1[\s\S]*EADDRINUSE/);
  } finally {
    await new Promise((done) => taken.close(done));
  }
  server = await startServer(workspace);
  expect((await server.management('/healthz')).status).toBe(200);
}, 120_000);
