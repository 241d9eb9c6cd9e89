// A client's life after registration, as an operator drives it: rotate its secret with a
// grace period, disable it, enable it again. Each change is a migration the CLI writes and
// `applyPending` applies (live on PostgreSQL, by a restart on the embedded database).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { addClient, applyPending, createWorkspace, eventually, sleep, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const GATEWAY_API = 'https://gateway.example.test';
/** CLIENT_CACHE_SECONDS' default: the stated bound on a disable taking effect. */
const CLIENT_CHANGE_BOUND_MS = 10_500;
const GRACE = 5;

let workspace: Workspace;
let server: RunningServer;
const secrets: Record<string, string> = {};

beforeAll(async () => {
  workspace = await createWorkspace();
  for (const [id, args] of [
    ['svc-rotate', ['--audience', API]],
    ['svc-toggle', ['--audience', API, '--scope', 'orders:read']],
    // A resource API's gateway: may introspect tokens for API.
    ['gateway', ['--audience', GATEWAY_API, '--introspect', API]],
  ] as const) {
    secrets[id] = (await addClient(workspace, id, ['--auth', 'client_secret_basic', ...args])).client_secret!;
  }
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

async function tokenFor(clientId: string, secret: string) {
  return server.post('/token', { grant_type: 'client_credentials' }, { basic: [clientId, secret] });
}

async function introspect(token: string) {
  const res = await server.post('/token/introspection', { token }, { basic: ['gateway', secrets.gateway!] });
  expect(res.status).toBe(200);
  return res.body as Record<string, unknown>;
}

/** What a failed client authentication looks like to the caller, without the per-request parts. */
function refusal(res: { status: number; headers: Headers; body: unknown }) {
  return {
    status: res.status,
    body: res.body,
    'www-authenticate': res.headers.get('www-authenticate'),
    'cache-control': res.headers.get('cache-control'),
  };
}

test('rotate-secret: both secrets work during the grace, then only the new one; the old one fails like a wrong secret', async () => {
  const oldSecret = secrets['svc-rotate']!;
  expect((await tokenFor('svc-rotate', oldSecret)).status).toBe(200);

  const rotated = await workspace.cli('client', ['rotate-secret', 'svc-rotate', '--grace', String(GRACE), '--json']);
  expect(rotated).toMatchObject({ code: 0, stderr: '' });
  const out = JSON.parse(rotated.stdout) as { client_id: string; client_secret: string; migration: string };
  expect(Object.keys(out).sort()).toEqual(['client_id', 'client_secret', 'migration']);
  expect(out.client_id).toBe('svc-rotate');
  const newSecret = out.client_secret;
  expect(newSecret).not.toBe(oldSecret);
  expect(readFileSync(join(workspace.dir, out.migration), 'utf8')).not.toContain(newSecret);

  // Written, not applied: the running server knows nothing of the new secret yet.
  const notYet = await tokenFor('svc-rotate', newSecret);
  expect(notYet.status).toBe(401);

  server = await applyPending(server);
  const appliedBy = Date.now();
  await eventually(async () => (await tokenFor('svc-rotate', newSecret)).status === 200, CLIENT_CHANGE_BOUND_MS, 'the new secret working');
  const during = await tokenFor('svc-rotate', oldSecret);
  expect(during.status).toBe(200);
  expect(Date.now() - appliedBy).toBeLessThan(GRACE * 1000);

  await sleep(appliedBy + (GRACE + 1) * 1000 - Date.now());
  const expired = await tokenFor('svc-rotate', oldSecret);
  const wrong = await tokenFor('svc-rotate', `${newSecret.slice(0, -2)}xx`);
  expect(expired.status).toBe(401);
  expect(expired.body).toMatchObject({ error: 'invalid_client' });
  expect(refusal(expired)).toEqual(refusal(wrong));
  expect(expired.headers.get('www-authenticate')).toBeTruthy();
  expect((await tokenFor('svc-rotate', newSecret)).status).toBe(200);
  secrets['svc-rotate'] = newSecret;
});

test('disable: invalid_client within CLIENT_CACHE_SECONDS and earlier tokens introspect inactive; enable: tokens again', async () => {
  const secret = secrets['svc-toggle']!;
  const issued = await tokenFor('svc-toggle', secret);
  expect(issued.status).toBe(200);
  const earlier = issued.body.access_token as string;
  expect(await introspect(earlier)).toMatchObject({ active: true, client_id: 'svc-toggle', aud: API, scope: 'orders:read' });

  const disabled = await workspace.cli('client', ['disable', 'svc-toggle', '--json']);
  expect(disabled).toMatchObject({ code: 0, stderr: '' });
  const out = JSON.parse(disabled.stdout) as Record<string, unknown>;
  expect(Object.keys(out).sort()).toEqual(['client_id', 'migration']);
  expect(out.client_id).toBe('svc-toggle');
  // Until the migration is applied nothing changes (and the client's record is now cached).
  expect((await tokenFor('svc-toggle', secret)).status).toBe(200);

  // Latency counts from when the change can have been applied: on PostgreSQL somewhere inside
  // `migrate` (so from before it runs); on the embedded database while the restarted server
  // starts (so from when it listens: the restart itself is not the server being slow to notice).
  const before = Date.now();
  server = await applyPending(server);
  const started = workspace.databaseUrl ? before : Date.now();
  let refused!: Awaited<ReturnType<typeof tokenFor>>;
  await eventually(async () => {
    refused = await tokenFor('svc-toggle', secret);
    return refused.status !== 200;
  }, CLIENT_CHANGE_BOUND_MS, 'the disabled client refused');
  expect(Date.now() - started).toBeLessThan(CLIENT_CHANGE_BOUND_MS);
  const wrong = await tokenFor('svc-toggle', `${secret.slice(0, -2)}xx`);
  expect(refusal(refused)).toEqual(refusal(wrong));
  expect(refused.body).toMatchObject({ error: 'invalid_client' });
  expect((await tokenFor('svc-toggle', secret)).status).toBe(401);

  // A token it got before the disable is no longer active, for an authorised caller.
  expect(await introspect(earlier)).toEqual({ active: false });
  // Other clients are untouched.
  expect((await tokenFor('svc-rotate', secrets['svc-rotate']!)).status).toBe(200);
  expect((await tokenFor('gateway', secrets.gateway!)).status).toBe(200);

  const enabled = await workspace.cli('client', ['enable', 'svc-toggle', '--json']);
  expect(enabled).toMatchObject({ code: 0, stderr: '' });
  server = await applyPending(server);
  let again!: Awaited<ReturnType<typeof tokenFor>>;
  await eventually(async () => {
    again = await tokenFor('svc-toggle', secret);
    return again.status === 200;
  }, CLIENT_CHANGE_BOUND_MS, 'the enabled client getting tokens');
  expect(await introspect(again.body.access_token as string)).toMatchObject({ active: true, client_id: 'svc-toggle' });
});
