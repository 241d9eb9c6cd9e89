// A resource server that only introspects and revokes (`client add --introspect` without
// `--audience`) has no audience of its own: it authenticates at introspection and
// revocation, and gets no token (400 unauthorized_client).
import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
let workspace: Workspace;
let server: RunningServer;
let svcSecret: string;
let rsSecret: string;
let listed: { client_id: string; audiences: string[] }[];

beforeAll(async () => {
  workspace = await createWorkspace();
  ({ client_secret: svcSecret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  ({ client_secret: rsSecret } = (await addClient(workspace, 'rs', ['--auth', 'client_secret_basic', '--introspect', API])) as { client_secret: string });
  // Read before the server starts: the embedded database belongs to one process at a time.
  expect((await workspace.cli('migrate', ['latest'])).code).toBe(0);
  listed = JSON.parse((await workspace.cli('client', ['list', '--json'])).stdout);
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

test('client add takes --introspect without --audience, and refuses a client with neither', async () => {
  expect(listed.find((c) => c.client_id === 'rs')).toMatchObject({ audiences: [] });
  const neither = await workspace.cli('client', ['add', 'nothing', '--auth', 'client_secret_basic']);
  expect(neither.code).not.toBe(0);
  expect(neither.stderr).toMatch(/--audience/);
  expect(neither.stderr).toMatch(/--introspect/);
});

test('the resource server introspects and revokes a token for its audience', async () => {
  const token = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', svcSecret] });
  expect(token.status).toBe(200);
  const accessToken = token.body.access_token as string;
  const active = await server.post('/token/introspection', { token: accessToken }, { basic: ['rs', rsSecret] });
  expect(active).toMatchObject({ status: 200, body: { active: true, client_id: 'svc', aud: API } });
  expect((await server.post('/token/revocation', { token: accessToken }, { basic: ['rs', rsSecret] })).status).toBe(200);
  const revoked = await server.post('/token/introspection', { token: accessToken }, { basic: ['rs', rsSecret] });
  expect(revoked).toMatchObject({ status: 200, body: { active: false } });
});

test('the resource server authenticates at /token but gets no token: 400 unauthorized_client', async () => {
  for (const form of [{ grant_type: 'client_credentials' }, { grant_type: 'client_credentials', resource: API }] as Record<string, string>[]) {
    const res = await server.post('/token', form, { basic: ['rs', rsSecret] });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: 'unauthorized_client' });
  }
  // A wrong secret is still a failed authentication, not a hint that the client exists.
  const wrong = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['rs', 'wrong'] });
  expect(wrong).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
});
