// The happy path, as a platform team would use it: curl and openid-client get tokens;
// a resource API verifies them with jose against /jwks.
import { execFile, spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { createRemoteJWKSet, customFetch, jwtVerify } from 'jose';
import * as oauth from 'openid-client';
import { fetch as undiciFetch } from 'undici';

import { run, testWith } from './helpers/clients.ts';
import { addClient, createWorkspace, decodeJwtPart, ROOT, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
let workspace: Workspace;
let server: RunningServer;
let secret: string;

beforeAll(async () => {
  workspace = await createWorkspace();
  ({ client_secret: secret } = (await addClient(workspace, 'svc-orders', ['--auth', 'client_secret_basic', '--audience', API, '--scope', 'orders:read orders:write', '--ttl', '120'])) as { client_secret: string });
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

function resourceApiVerify(token: string) {
  const fetchWithCa = (url: string, init: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: server.agent() }) as unknown as Promise<Response>;
  const jwks = createRemoteJWKSet(new URL(`${server.issuer}/jwks`), { [customFetch]: fetchWithCa });
  return jwtVerify(token, jwks, { issuer: server.issuer, audience: API, typ: 'at+jwt', algorithms: ['RS256'] });
}

function curl(args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((done) => {
    execFile('curl', ['-sS', '--cacert', join(workspace.keysDir, 'dev-ca.crt'), ...args], (err, stdout) => {
      done({ code: err ? 1 : 0, stdout });
    });
  });
}

test('curl -u gets a token that a resource API verifies with the JWKS, carrying every claim', async () => {
  const result = await curl(['-u', `svc-orders:${secret}`, '-d', 'grant_type=client_credentials', `${server.issuer}/token`]);
  expect(result.code).toBe(0);
  const response = JSON.parse(result.stdout);
  expect(response).toMatchObject({ token_type: 'Bearer', expires_in: 120, scope: 'orders:read orders:write' });

  const { payload, protectedHeader } = await resourceApiVerify(response.access_token);
  expect(protectedHeader).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
  expect(typeof protectedHeader.kid).toBe('string');
  expect(payload).toMatchObject({
    iss: server.issuer, sub: 'svc-orders', client_id: 'svc-orders', aud: API, scope: 'orders:read orders:write',
  });
  expect(typeof payload.jti).toBe('string');
  expect(payload.exp! - payload.iat!).toBe(120);
  expect(payload.cnf).toBeUndefined();

  const jwks = await (await server.fetch('/jwks')).json() as { keys: { kid: string; d?: string }[] };
  expect(jwks.keys.map((k) => k.kid)).toContain(protectedHeader.kid);
  expect(jwks.keys.every((k) => k.d === undefined)).toBe(true);
});

test('openid-client (discovery + clientCredentialsGrant with ClientSecretBasic) gets a verifiable token', async () => {
  const fetchWithCa: oauth.CustomFetch = (url, options) => undiciFetch(url, { ...(options as object), dispatcher: server.agent() }) as unknown as Promise<Response>;
  const config = await oauth.discovery(new URL(server.issuer), 'svc-orders', undefined, oauth.ClientSecretBasic(secret), {
    [oauth.customFetch]: fetchWithCa,
    algorithm: 'oauth2',
  });
  config[oauth.customFetch] = fetchWithCa;
  const tokens = await oauth.clientCredentialsGrant(config, { scope: 'orders:read', resource: API });
  expect(tokens.token_type).toBe('bearer');
  expect(tokens.scope).toBe('orders:read');
  const { payload } = await resourceApiVerify(tokens.access_token);
  expect(payload).toMatchObject({ client_id: 'svc-orders', scope: 'orders:read', aud: API });
});

test('discovery advertises exactly the client-credentials server', async () => {
  for (const path of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
    const res = await server.fetch(path);
    expect(res.status).toBe(200);
    const doc = await res.json() as Record<string, unknown>;
    expect(doc).toMatchObject({
      issuer: server.issuer,
      token_endpoint: `${server.issuer}/token`,
      jwks_uri: `${server.issuer}/jwks`,
      introspection_endpoint: `${server.issuer}/token/introspection`,
      revocation_endpoint: `${server.issuer}/token/revocation`,
      grant_types_supported: ['client_credentials'],
      tls_client_certificate_bound_access_tokens: true,
    });
    expect(doc.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(['client_secret_basic', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth']));
    expect(doc.token_endpoint_auth_signing_alg_values_supported).toEqual(['RS256', 'PS256', 'ES256', 'ES384', 'EdDSA']);
    expect(doc.authorization_endpoint).toBeUndefined();
    expect(doc.userinfo_endpoint).toBeUndefined();
  }
});

const PYTHON = '/usr/bin/python3';
const authlibMissing = spawnSync(PYTHON, ['-c', 'import authlib.oidc.discovery'], { encoding: 'utf8' }).status === 0
  ? undefined : 'Debian\'s python3-authlib (apt-get install python3-authlib)';

// go-oidc, get-jwks and Spring Security read only the OpenID document: it must be complete.
testWith(authlibMissing)('authlib\'s strict OpenID Connect Discovery validator accepts /.well-known/openid-configuration', async () => {
  const result = await run(PYTHON, [join(ROOT, 'test', 'clients', 'python', 'discovery.py'), server.issuer, join(workspace.keysDir, 'dev-ca.crt')]);
  expect({ code: result.code, stderr: result.stderr, stdout: result.stdout.trim() }).toEqual({ code: 0, stderr: '', stdout: 'valid' });
});

test('/jwks is cacheable and /healthz and /readyz answer', async () => {
  const jwks = await server.fetch('/jwks');
  expect(jwks.headers.get('cache-control')).toMatch(/^public, max-age=\d+$/);
  expect((await server.fetch('/healthz')).status).toBe(200);
  const ready = await server.fetch('/readyz');
  expect(ready.status).toBe(200);
  expect(await ready.json()).toMatchObject({ status: 'ready', database: 'ok' });
});

test('the token header kid is published and the token is signed RS256', async () => {
  const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc-orders', secret] });
  expect(res.status).toBe(200);
  const header = decodeJwtPart(res.body.access_token, 0);
  expect(header).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
});

test('tokens asked for at the same moment are signed together, each with its own signature', async () => {
  // Warm connections first, so that the requests below reach the server close together and
  // are signed in batches (signing-key.test.ts checks the batches themselves); distinct
  // scopes make every token's bytes differ.
  const scopes = ['orders:read', 'orders:write', 'orders:read orders:write'];
  const ask = (i: number) => server.post('/token', { grant_type: 'client_credentials', scope: scopes[i % scopes.length]! }, { basic: ['svc-orders', secret] });
  await Promise.all(Array.from({ length: 24 }, (_, i) => ask(i)));
  const answers = await Promise.all(Array.from({ length: 24 }, (_, i) => ask(i)));
  const jtis = new Set<unknown>();
  for (const [i, answer] of answers.entries()) {
    expect(answer.status).toBe(200);
    const { payload } = await resourceApiVerify(answer.body.access_token);
    expect(payload.scope).toBe(scopes[i % scopes.length]);
    jtis.add(payload.jti);
  }
  expect(jtis.size).toBe(24);
});
