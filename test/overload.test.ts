// Load beyond what the server may answer at once (MAX_IN_FLIGHT=2, many connections): the
// excess is refused at once with 503, Retry-After and an RFC 6749 body, counted in
// m2m_requests_shed_total; the health probes and the management listener keep answering;
// after the load a request gets its token straight away. How much the server still serves
// under overload is measured by `npm run bench`, not asserted here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Agent, fetch } from 'undici';

import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const CONNECTIONS = 32;
const REQUESTS = 400;

let workspace: Workspace;
let server: RunningServer;
let secret: string;
let agent: Agent;

beforeAll(async () => {
  workspace = await createWorkspace();
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  server = await startServer(workspace, { MAX_IN_FLIGHT: '2' });
  agent = new Agent({ connections: CONNECTIONS, connect: { ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8') } });
});

afterAll(async () => {
  await agent?.close();
  await server?.stop();
  await workspace?.remove();
});

const authorization = () => `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}`;

async function token(): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
  const res = await fetch(`${server.issuer}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: authorization() },
    body: 'grant_type=client_credentials',
    dispatcher: agent,
  });
  return { status: res.status, headers: res.headers as unknown as Headers, body: await res.json() as Record<string, unknown> };
}

async function shedTotal(): Promise<number> {
  const text = await (await server.management('/metrics')).text();
  return [...text.matchAll(/^m2m_requests_shed_total(?:\{[^}]*\})? (\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
}

test('beyond MAX_IN_FLIGHT: the excess gets 503 with Retry-After at once, counted; probes answer; then 200 again', async () => {
  expect((await token()).status).toBe(200);
  const burst = Promise.all(Array.from({ length: REQUESTS }, () => token()));
  // During the burst: the probes on both listeners.
  const [healthz, readyz, managementHealth, managementReady] = await Promise.all([
    fetch(`${server.issuer}/healthz`, { dispatcher: agent }),
    fetch(`${server.issuer}/readyz`, { dispatcher: agent }),
    server.management('/healthz'),
    server.management('/readyz'),
  ]);
  const results = await burst;
  expect([healthz.status, readyz.status, managementHealth.status, managementReady.status]).toEqual([200, 200, 200, 200]);

  const shed = results.filter((r) => r.status === 503);
  expect(shed.length).toBeGreaterThan(0);
  for (const res of shed) {
    expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.body).toEqual({ error: 'temporarily_unavailable', error_description: expect.any(String) });
  }
  // Nothing else went wrong: every other request got its token.
  expect(results.filter((r) => r.status !== 503).map((r) => r.status)).toEqual(Array(REQUESTS - shed.length).fill(200));
  expect(await shedTotal()).toBe(shed.length);

  // The load is over: the next request is served, first time.
  const after = await token();
  expect(after.status).toBe(200);
  expect(typeof after.body.access_token).toBe('string');
});
