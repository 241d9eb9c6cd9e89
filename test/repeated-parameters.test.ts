// A parameter sent twice is ambiguous: every endpoint answers 400 invalid_request (RFC 6749
// section 3.1, RFC 7662, RFC 7009), never 500. RFC 8707 alone allows `resource` more than
// once; a client-credentials token has one audience, so several get invalid_target.
import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
let workspace: Workspace;
let server: RunningServer;
let secret: string;

beforeAll(async () => {
  workspace = await createWorkspace();
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', `${API},${API}/2`, '--scope', 'a b', '--introspect', API])) as { client_secret: string });
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

async function send(path: string, pairs: [string, string][], basic = true) {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (basic) headers.authorization = `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}`;
  const res = await server.fetch(path, { method: 'POST', headers, body: new URLSearchParams(pairs).toString() });
  return { status: res.status, body: await res.json() as Record<string, unknown> };
}

const grant: [string, string] = ['grant_type', 'client_credentials'];
const resource: [string, string] = ['resource', API];

describe('/token', () => {
  test.each<[string, () => [string, string][], boolean]>([
    ['grant_type twice', () => [grant, grant, resource], true],
    ['scope twice', () => [grant, resource, ['scope', 'a'], ['scope', 'b']], true],
    ['client_id twice (client_secret_post)', () => [grant, resource, ['client_id', 'svc'], ['client_id', 'svc'], ['client_secret', secret]], false],
    ['client_secret twice', () => [grant, resource, ['client_id', 'svc'], ['client_secret', secret], ['client_secret', secret]], false],
    ['client_assertion twice', () => [grant, ['client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'], ['client_assertion', 'a.b.c'], ['client_assertion', 'a.b.c']], false],
  ])('%s: 400 invalid_request', async (_name, pairs, basic) => {
    const res = await send('/token', pairs(), basic);
    expect(res).toMatchObject({ status: 400, body: { error: 'invalid_request' } });
  });

  test('resource twice is allowed by RFC 8707: two resources are invalid_target (one token, one audience), one resource twice is fine', async () => {
    const res = await send('/token', [grant, resource, ['resource', `${API}/2`]]);
    expect(res).toMatchObject({ status: 400, body: { error: 'invalid_target' } });
    // The same value twice names one resource.
    expect(await send('/token', [grant, resource, resource])).toMatchObject({ status: 200, body: { token_type: 'Bearer' } });
  });
});

describe.each(['/token/introspection', '/token/revocation'])('%s', (path) => {
  test.each<[string, [string, string][], boolean]>([
    ['token twice', [['token', 'a'], ['token', 'b']], true],
    ['token_type_hint twice', [['token', 'a'], ['token_type_hint', 'access_token'], ['token_type_hint', 'access_token']], true],
    ['client_id twice', [['token', 'a'], ['client_id', 'svc'], ['client_id', 'svc']], false],
  ])('%s: 400 invalid_request', async (_name, pairs, basic) => {
    const res = await send(path, basic ? pairs : [...pairs, ['client_secret', secret]], basic);
    expect(res).toMatchObject({ status: 400, body: { error: 'invalid_request' } });
  });
});

test('no repeated parameter was a server error', () => {
  expect(server.output()).not.toMatch(/"level":50/);
});
