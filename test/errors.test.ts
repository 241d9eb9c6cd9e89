// Every kind of bad input gets a clear RFC 6749 error as JSON, never HTML and never a 500;
// every failed client authentication looks the same to the caller.
import { connect } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const OTHER = 'https://other.example.test';
let workspace: Workspace;
let server: RunningServer;
let secret: string;
let rotatedSecret: string;
let expiredSecret: string;
let disabledSecret: string;
let multiSecret: string;

const CLIENT_AUTH_FAILED = { error: 'invalid_client', error_description: 'client authentication failed' };

beforeAll(async () => {
  workspace = await createWorkspace({ MAX_BODY_BYTES: '4096' });
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--scope', 'read write'])) as { client_secret: string });
  ({ client_secret: expiredSecret } = (await addClient(workspace, 'svc-rotated', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  const rotated = await workspace.cli('client', ['rotate-secret', 'svc-rotated', '--grace', '0', '--json']);
  expect(rotated.code).toBe(0);
  rotatedSecret = JSON.parse(rotated.stdout).client_secret;
  ({ client_secret: disabledSecret } = (await addClient(workspace, 'svc-disabled', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  expect((await workspace.cli('client', ['disable', 'svc-disabled'])).code).toBe(0);
  ({ client_secret: multiSecret } = (await addClient(workspace, 'svc-multi', ['--auth', 'client_secret_basic', '--audience', `${API},${OTHER}`])) as { client_secret: string });
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

const grant = { grant_type: 'client_credentials' };

function expectRfcError(res: { status: number; headers: Headers; body: unknown }, status: number, error: string) {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.body).toMatchObject({ error });
  expect(typeof (res.body as { error_description?: unknown }).error_description).toBe('string');
}

describe('failed client authentication: 401 invalid_client, all alike', () => {
  const cases: [string, () => [string, string]][] = [
    ['wrong secret', () => ['svc', `${secret}x`]],
    ['unknown client', () => ['nobody', secret]],
    ['expired secret (rotated with no grace)', () => ['svc-rotated', expiredSecret]],
    ['disabled client', () => ['svc-disabled', disabledSecret]],
    ['empty-looking secret of the right length', () => ['svc', 'm2ms_'.padEnd(secret.length, 'A')]],
  ];
  test.each(cases)('%s', async (_name, credentials) => {
    const res = await server.post('/token', grant, { basic: credentials() });
    expectRfcError(res, 401, 'invalid_client');
    expect(res.body).toEqual(CLIENT_AUTH_FAILED);
    expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="/);
  });

  test('the log tells a disabled client from an unknown one (the response does not)', async () => {
    const lines = await server.logLines((l) => l.event === 'token.refused' && (l.client_id === 'svc-disabled' || l.client_id === 'nobody'), 2);
    expect(lines.find((l) => l.client_id === 'svc-disabled')).toMatchObject({ status: 401, reason: 'client is disabled' });
    expect(lines.find((l) => l.client_id === 'nobody')).toMatchObject({ status: 401, reason: 'client not found' });
  });

  test('the rotated client works with its new secret', async () => {
    const res = await server.post('/token', grant, { basic: ['svc-rotated', rotatedSecret] });
    expect(res.status).toBe(200);
  });

  test('client_secret_post with a wrong secret', async () => {
    const res = await server.post('/token', { ...grant, client_id: 'svc', client_secret: 'nope' });
    expect(res.status).toBe(401);
    expect(res.body).toEqual(CLIENT_AUTH_FAILED);
    // Alike to the caller: the same challenge as a failed Basic attempt.
    expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="[^"]+", error="invalid_client"/);
  });

  test('client_secret_post with the right secret works', async () => {
    const res = await server.post('/token', { ...grant, client_id: 'svc', client_secret: secret });
    expect(res.status).toBe(200);
  });

  test('a client id no client can have (a NUL byte): 401, and the database path is not tripped', async () => {
    const res = await server.post('/token', { ...grant, client_id: '\u0000x', client_secret: 'y' });
    expect(res.status).toBe(401);
    expect(res.body).toEqual(CLIENT_AUTH_FAILED);
    // An uncached lookup right after still reaches the database and answers normally.
    const next = await server.post('/token', grant, { basic: [`never-seen-${Date.now()}`, 'x'] });
    expect(next.status).toBe(401);
  });

  test('a malformed DPoP proof is refused, not ignored (a bearer token where a bound one was asked for)', async () => {
    const res = await server.post('/token', grant, { basic: ['svc', secret], headers: { dpop: 'eyJhbGciOiJFUzI1NiJ9.e30.x' } });
    expectRfcError(res, 400, 'invalid_dpop_proof');
    expect(res.body.access_token).toBeUndefined();
  });

  test('no credentials at all', async () => {
    const res = await server.post('/token', grant);
    expectRfcError(res, 400, 'invalid_request');
  });
});

describe('malformed requests: 400', () => {
  test.each([
    ['not base64', 'Basic !!!notbase64'],
    ['no colon inside', `Basic ${Buffer.from('svc').toString('base64')}`],
    ['another scheme', 'Bearer abc'],
    ['empty secret', `Basic ${Buffer.from('svc:').toString('base64')}`],
  ])('malformed Authorization: %s', async (_name, authorization) => {
    const res = await server.post('/token', grant, { headers: { authorization } });
    expectRfcError(res, 400, 'invalid_request');
  });

  test('two authentication mechanisms at once', async () => {
    const res = await server.post('/token', { ...grant, client_secret: secret, client_id: 'svc' }, { basic: ['svc', secret] });
    expectRfcError(res, 400, 'invalid_request');
  });

  test('missing grant_type', async () => {
    const res = await server.post('/token', {}, { basic: ['svc', secret] });
    expectRfcError(res, 400, 'invalid_request');
  });

  test.each(['authorization_code', 'password', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code', 'made_up'])(
    'unsupported grant_type %s',
    async (grantType) => {
      const res = await server.post('/token', { grant_type: grantType }, { basic: ['svc', secret] });
      expectRfcError(res, 400, 'unsupported_grant_type');
    },
  );

  test('grant_type given twice', async () => {
    const res = await server.fetch('/token', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}` },
      body: 'grant_type=client_credentials&grant_type=client_credentials',
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: 'invalid_request' });
  });

  test('a JSON body instead of a form', async () => {
    const res = await server.fetch('/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}` },
      body: JSON.stringify(grant),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: 'invalid_request' });
  });
});

describe('scope and audience', () => {
  test('a scope the client does not have: invalid_scope', async () => {
    const res = await server.post('/token', { ...grant, scope: 'read admin' }, { basic: ['svc', secret] });
    expectRfcError(res, 400, 'invalid_scope');
  });

  test('a subset of the client\'s scopes is granted as asked', async () => {
    const res = await server.post('/token', { ...grant, scope: 'write' }, { basic: ['svc', secret] });
    expect(res.status).toBe(200);
    expect(res.body.scope).toBe('write');
  });

  test('a resource the client may not get: invalid_target', async () => {
    const res = await server.post('/token', { ...grant, resource: OTHER }, { basic: ['svc', secret] });
    expectRfcError(res, 400, 'invalid_target');
  });

  test('a resource that is not an absolute URI: invalid_target', async () => {
    const res = await server.post('/token', { ...grant, resource: 'api' }, { basic: ['svc', secret] });
    expectRfcError(res, 400, 'invalid_target');
  });

  test('no resource for a client with several audiences: invalid_target', async () => {
    const res = await server.post('/token', grant, { basic: ['svc-multi', multiSecret] });
    expectRfcError(res, 400, 'invalid_target');
  });

  test('a client with several audiences gets the one it names', async () => {
    const res = await server.post('/token', { ...grant, resource: OTHER }, { basic: ['svc-multi', multiSecret] });
    expect(res.status).toBe(200);
    const payload = JSON.parse(Buffer.from(res.body.access_token.split('.')[1], 'base64url').toString());
    expect(payload.aud).toBe(OTHER);
  });
});

describe('the front door', () => {
  test('an oversized body: 413, before anything is parsed', async () => {
    const res = await server.post('/token', { ...grant, scope: 'x'.repeat(5000) }, { basic: ['svc', secret] });
    expectRfcError(res, 413, 'invalid_request');
  });

  test('an oversized body announced but not sent: 413 at once', async () => {
    const ca = readFileSync(join(workspace.keysDir, 'dev-ca.crt'));
    const answer = await new Promise<string>((done, fail) => {
      const socket = connect({ host: 'localhost', port: server.port, ca, servername: 'localhost' }, () => {
        socket.write(`POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000000\r\n\r\n`);
      });
      let data = '';
      socket.on('data', (chunk) => {
        data += chunk.toString();
        if (data.includes('\r\n\r\n')) {
          socket.destroy();
          done(data);
        }
      });
      socket.on('error', fail);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
  });

  test('Accept: text/html still gets JSON errors', async () => {
    const res = await server.post('/token', grant, { basic: ['svc', 'wrong'], headers: { accept: 'text/html' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.body).toEqual(CLIENT_AUTH_FAILED);
  });

  test.each(['/auth', '/session/end', '/me', '/reg', '/token/', '/device'])('unknown endpoint %s: 404 JSON', async (path) => {
    const res = await server.fetch(path, { headers: { accept: 'text/html' } });
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toMatchObject({ error: 'invalid_request' });
  });

  test('wrong method: 405 with Allow', async () => {
    const res = await server.fetch('/token');
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('POST');
    expect(await res.json()).toMatchObject({ error: 'invalid_request' });
  });

  test('POST without Content-Length: 411', async () => {
    const res = await server.fetch('/token', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('grant_type=client_credentials')); c.close(); } }) as never,
      duplex: 'half',
    });
    expect(res.status).toBe(411);
    expect(await res.json()).toMatchObject({ error: 'invalid_request' });
  });

  test('security headers on every answer', async () => {
    for (const res of [await server.fetch('/jwks'), await server.fetch('/nope')]) {
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('strict-transport-security')).toMatch(/max-age=\d+/);
      expect(res.headers.get('access-control-allow-origin')).toBeNull();
    }
  });

  test('the server never answered 5xx and never logged an unhandled error', () => {
    expect(server.output()).not.toMatch(/"level":50/);
  });
});
