// Property-based: arbitrary methods, paths, headers, bodies, Basic credentials and
// JWT-shaped assertions thrown at every endpoint never get a 5xx, always get JSON on
// errors, and never take the server down.
import fc from 'fast-check';

import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const RUNS = Number(process.env.FUZZ_RUNS ?? 150);
let workspace: Workspace;
let server: RunningServer;
let secret: string;

beforeAll(async () => {
  // Generous brute-force limits: this test fails authentication on purpose, thousands of times.
  workspace = await createWorkspace({ AUTH_FAILURE_LIMIT: '100000', AUTH_FAILURE_ADDRESS_LIMIT: '1000000' });
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--scope', 'a b', '--introspect', API])) as { client_secret: string });
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

const ENDPOINTS = ['/token', '/token/introspection', '/token/revocation', '/jwks', '/.well-known/oauth-authorization-server',
  '/.well-known/openid-configuration', '/healthz', '/readyz', '/metrics', '/auth', '/session/end', '/reg', '/'];

const b64url = (value: string) => Buffer.from(value).toString('base64url');
const text = fc.string({ maxLength: 60 });
const jsonish = fc.oneof(fc.json({ maxDepth: 2 }), text, fc.constant('{"alg":"none"}'), fc.constant('{"alg":"HS256","kid":"x"}'));
const jwtShaped = fc.tuple(jsonish, jsonish, fc.string({ maxLength: 40 })).map(([h, p, s]) => `${b64url(h)}.${b64url(p)}.${b64url(s)}`);
// Any code point, control characters and NUL included (PostgreSQL refuses NUL in text).
const anyChars = fc.string({ unit: 'binary', maxLength: 40 });
const param = fc.oneof(text, anyChars, jwtShaped, fc.constantFrom('client_credentials', 'svc', API, 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'));
const PARAMS = ['grant_type', 'client_id', 'client_secret', 'client_assertion', 'client_assertion_type', 'scope', 'resource', 'token', 'token_type_hint', 'x'];
// A list of pairs, not a dictionary: a parameter may come more than once (token=a&token=b).
const form = fc.array(fc.tuple(fc.constantFrom(...PARAMS), param), { maxLength: 8 });
const authorization = fc.oneof(
  fc.constant(undefined),
  text.map((t) => `Basic ${t}`),
  fc.tuple(text, text).map(([id, pw]) => `Basic ${Buffer.from(`${id}:${pw}`).toString('base64')}`),
  fc.constant(`Basic ${Buffer.from(`svc:${'x'.repeat(48)}`).toString('base64')}`),
  jwtShaped.map((t) => `Bearer ${t}`),
  text,
);
const contentType = fc.constantFrom('application/x-www-form-urlencoded', 'application/json', 'text/plain', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded; charset=latin1', '');

async function send(method: string, path: string, headers: Record<string, string>, body: string | undefined) {
  const res = await server.fetch(path, { method, headers, ...(body === undefined ? {} : { body }) });
  const raw = await res.text();
  return { status: res.status, type: res.headers.get('content-type') ?? '', raw };
}

function expectSane(result: { status: number; type: string; raw: string }) {
  expect(result.status).toBeLessThan(500);
  if (result.status >= 400) {
    expect(result.type).toMatch(/^application\/json/);
    expect(JSON.parse(result.raw)).toHaveProperty('error');
  }
}

test('arbitrary form posts to every endpoint', async () => {
  await fc.assert(fc.asyncProperty(fc.constantFrom(...ENDPOINTS), form, authorization, contentType, async (path, fields, auth, type) => {
    const headers: Record<string, string> = {};
    if (type) headers['content-type'] = type;
    if (auth !== undefined) headers.authorization = auth;
    const body = type.startsWith('application/json') ? JSON.stringify(Object.fromEntries(fields)) : new URLSearchParams(fields).toString();
    expectSane(await send('POST', path, headers, body));
  }), { numRuns: RUNS });
});

test('a repeated parameter in an otherwise good request', async () => {
  const good: Record<string, [string, string][]> = {
    '/token': [['grant_type', 'client_credentials'], ['scope', 'a'], ['resource', API]],
    '/token/introspection': [['token', 'x.y.z'], ['token_type_hint', 'access_token']],
    '/token/revocation': [['token', 'x.y.z'], ['token_type_hint', 'access_token']],
  };
  const repeated = fc.constantFrom(...Object.keys(good)).chain((path) => fc.tuple(
    fc.constant(path),
    fc.constantFrom(...good[path]!.map(([name]) => name), 'client_id', 'client_secret'),
    param,
    fc.boolean(),
  ));
  await fc.assert(fc.asyncProperty(repeated, async ([path, name, value, post]) => {
    const fields = [...good[path]!];
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    // Basic, or the same credentials in the form (client_secret_post).
    if (post) fields.push(['client_id', 'svc'], ['client_secret', secret]);
    else headers.authorization = `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}`;
    fields.push([name, value]);
    const result = await send('POST', path, headers, new URLSearchParams(fields).toString());
    expectSane(result);
    // RFC 8707 lets resource come more than once; anything else repeated is ambiguous.
    if (fields.filter(([n]) => n === name).length > 1 && name !== 'resource') {
      expect(result.status).toBe(400);
      expect(JSON.parse(result.raw)).toMatchObject({ error: 'invalid_request' });
    }
  }), { numRuns: RUNS });
});

test('arbitrary methods, paths and headers', async () => {
  const method = fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD');
  const path = fc.oneof(fc.constantFrom(...ENDPOINTS), fc.webPath(), fc.webPath().map((p) => `/token${p}`));
  const headerName = fc.constantFrom('accept', 'accept-encoding', 'origin', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-ssl-client-cert', 'dpop', 'oauth-client-attestation', 'content-language');
  const headerValue = fc.string({ maxLength: 80 }).filter((v) => /^[\x20-\x7e]*$/.test(v));
  await fc.assert(fc.asyncProperty(method, path, fc.dictionary(headerName, headerValue, { maxKeys: 4 }), async (m, p, headers) => {
    const body = m === 'POST' || m === 'PUT' || m === 'PATCH' ? 'grant_type=client_credentials' : undefined;
    const result = await send(m, p, { ...headers, ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) }, body);
    expect(result.status).toBeLessThan(500);
  }), { numRuns: RUNS });
});

test('JWT-shaped client assertions and tokens', async () => {
  await fc.assert(fc.asyncProperty(jwtShaped, fc.constantFrom('/token', '/token/introspection', '/token/revocation'), async (jwt, path) => {
    const fields: Record<string, string> = path === '/token'
      ? { grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: jwt }
      : { token: jwt };
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    if (path !== '/token') headers.authorization = `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}`;
    const result = await send('POST', path, headers, new URLSearchParams(fields).toString());
    expectSane(result);
    if (path === '/token/introspection') expect(JSON.parse(result.raw)).toEqual({ active: false });
  }), { numRuns: RUNS });
});

test('the server is still up and serving tokens, and logged no unhandled error', async () => {
  const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', secret] });
  expect(res.status).toBe(200);
  expect(server.process.exitCode).toBeNull();
  expect(server.output()).not.toMatch(/"level":50/);
  // Random paths do not become metric labels: the label set stays bounded.
  const metrics = await (await server.management('/metrics')).text();
  const labels = new Set([...metrics.matchAll(/m2m_request_duration_seconds_count\{[^}]*endpoint="([^"]*)"/g)].map((m) => m[1]));
  expect(labels.size).toBeGreaterThan(3);
  for (const label of labels) expect([...ENDPOINTS, 'other']).toContain(label);
});
