// private_key_jwt (RFC 7523 section 2.2) end to end, against the real server: keys from a
// registered JWKS or a jwks_uri, asymmetric algorithms only, `aud`, lifetime and `iat` rules,
// single-use `jti` under concurrency, and the same authentication on introspection.
import { createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server } from 'node:https';
import { join } from 'node:path';

import {
  calculateJwkThumbprint, createRemoteJWKSet, customFetch, exportJWK, generateKeyPair, importPKCS8, jwtVerify, SignJWT,
  type CryptoKey, type JWK,
} from 'jose';
import * as oauth from 'openid-client';
import { fetch as undiciFetch } from 'undici';

import { ensureDevTls } from '../src/keys/dev-tls.ts';
import {
  addClient, createWorkspace, eventually, freePort, sleep, startServer, type RunningServer, type Workspace,
} from './helpers/server.ts';

const API = 'https://api.example.test';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const CLIENT_AUTH_FAILED = { error: 'invalid_client', error_description: 'client authentication failed' };
// Many refusals in a row are the point here; the brute-force limits are another test's.
const NO_LOCKOUT = { AUTH_FAILURE_LIMIT: '100000', AUTH_FAILURE_ADDRESS_LIMIT: '1000000' };
// The server's cooldown between two fetches of one jwks_uri (REFETCH_COOLDOWN_SECONDS).
const REFETCH_COOLDOWN_MS = 5000;

interface Signer {
  clientId: string;
  key: CryptoKey | KeyObject | Uint8Array;
  kid: string;
  alg: string;
}

let workspace: Workspace; // JWKS_URI_ALLOW_PRIVATE unset (false)
let server: RunningServer;
let privateWorkspace: Workspace; // JWKS_URI_ALLOW_PRIVATE=true, JWKS_URI_CA = the dev CA
let privateServer: RunningServer;
let jwksServer: Server;
let jwksPort: number;
/** What the test JWKS server serves, by path, and how often each path was fetched. */
const served = new Map<string, string>();
const hits = new Map<string, number>();

let es: Signer; // svc-es: `--generate-key`, ES256
let esPublicPem: string;
const multi: Record<'RS256' | 'PS256' | 'ES256' | 'EdDSA', Signer> = {} as never; // svc-multi: `--jwks` with RSA, EC, OKP keys
let introspector: Signer; // svc-introspector: `--jwks`, `--introspect API`
let remote: Signer; // svc-uri: `--jwks-uri` on the allow-private server

async function keyPair(alg: string, kid: string): Promise<{ privateKey: CryptoKey; jwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid } };
}

async function assertion(signer: Signer, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}, issuer = server.issuer): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: signer.clientId, sub: signer.clientId, aud: issuer, jti: randomUUID(), iat: now, exp: now + 60, ...claims,
  }).setProtectedHeader({ alg: signer.alg, kid: signer.kid, ...header }).sign(signer.key);
}

function tokenRequest(on: RunningServer, clientAssertion: string) {
  return on.post('/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: clientAssertion });
}

function expectInvalidClient(res: { status: number; headers: Headers; body: unknown }) {
  expect(res.status).toBe(401);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.body).toEqual(CLIENT_AUTH_FAILED);
  expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="[^"]+", error="invalid_client"/);
}

/** Sends an assertion that must be refused; returns the reason the server logged (never sent). */
async function refused(clientAssertion: string, on = server): Promise<string> {
  const before = on.output().length;
  const res = await tokenRequest(on, clientAssertion);
  expectInvalidClient(res);
  let reason = '';
  // Logs are written asynchronously: the line must be this request's, not a late one from
  // an earlier test (the token endpoint's, for the client this assertion names).
  const { sub } = JSON.parse(Buffer.from(clientAssertion.split('.')[1] ?? '', 'base64url').toString() || '{}') as { sub?: string };
  const ours = (l: string) => l.includes('"event":"token.refused"') && (sub === undefined || l.includes(`"client_id":${JSON.stringify(sub)}`));
  await eventually(async () => {
    const line = on.output().slice(before).split('\n').find(ours);
    if (line) reason = String(JSON.parse(line).reason);
    return line !== undefined;
  }, 15_000, 'the refusal is logged');
  return reason;
}

function serveJwks(path: string, keys: JWK[]): void {
  served.set(path, JSON.stringify({ keys }));
}

beforeAll(async () => {
  jwksPort = await freePort();

  workspace = await createWorkspace(NO_LOCKOUT);
  const esKeyFile = join(workspace.dir, 'svc-es.key');
  await addClient(workspace, 'svc-es', ['--auth', 'private_key_jwt', '--generate-key', esKeyFile, '--audience', API, '--scope', 'orders:read orders:write']);
  const esPem = readFileSync(esKeyFile, 'utf8');
  esPublicPem = createPublicKey(esPem).export({ type: 'spki', format: 'pem' }) as string;
  // The CLI registers the generated key under its RFC 7638 thumbprint.
  es = { clientId: 'svc-es', key: await importPKCS8(esPem, 'ES256'), kid: await calculateJwkThumbprint(await exportJWK(createPublicKey(esPem))), alg: 'ES256' };

  // One RSA key, registered without `alg`, for both RS256 and PS256 (a KeyObject serves both).
  const rsa = { privateKey: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, jwk: {} as JWK };
  rsa.jwk = { ...(await exportJWK(createPublicKey(rsa.privateKey))), kid: 'rsa-1' };
  const ec = await keyPair('ES256', 'ec-1');
  const ed = await keyPair('EdDSA', 'ed-1');
  writeFileSync(join(workspace.dir, 'multi.json'), JSON.stringify({ keys: [rsa.jwk, ec.jwk, ed.jwk] }));
  await addClient(workspace, 'svc-multi', ['--auth', 'private_key_jwt', '--jwks', join(workspace.dir, 'multi.json'), '--audience', API]);
  multi.RS256 = { clientId: 'svc-multi', key: rsa.privateKey, kid: 'rsa-1', alg: 'RS256' };
  multi.PS256 = { clientId: 'svc-multi', key: rsa.privateKey, kid: 'rsa-1', alg: 'PS256' };
  multi.ES256 = { clientId: 'svc-multi', key: ec.privateKey, kid: 'ec-1', alg: 'ES256' };
  multi.EdDSA = { clientId: 'svc-multi', key: ed.privateKey, kid: 'ed-1', alg: 'EdDSA' };

  const intro = await keyPair('PS256', 'intro-1');
  writeFileSync(join(workspace.dir, 'introspector.json'), JSON.stringify({ keys: [intro.jwk] }));
  await addClient(workspace, 'svc-introspector', ['--auth', 'private_key_jwt', '--jwks', join(workspace.dir, 'introspector.json'), '--audience', 'https://introspector.example.test', '--introspect', API]);
  introspector = { clientId: 'svc-introspector', key: intro.privateKey, kid: 'intro-1', alg: 'PS256' };

  // The same keys as svc-uri, served correctly: only the address can make these fail.
  const remoteKey = await keyPair('ES256', 'remote-1');
  remote = { clientId: 'svc-uri', key: remoteKey.privateKey, kid: 'remote-1', alg: 'ES256' };
  serveJwks('/loopback.json', [remoteKey.jwk]);
  await addClient(workspace, 'svc-uri-loopback', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${jwksPort}/loopback.json`, '--audience', API]);
  await addClient(workspace, 'svc-uri-localhost', ['--auth', 'private_key_jwt', '--jwks-uri', `https://localhost:${jwksPort}/loopback.json`, '--audience', API]);
  server = await startServer(workspace);

  privateWorkspace = await createWorkspace(NO_LOCKOUT);
  serveJwks('/svc-uri.json', [remoteKey.jwk]);
  await addClient(privateWorkspace, 'svc-uri', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${jwksPort}/svc-uri.json`, '--audience', API]);
  served.set('/big.json', JSON.stringify({ keys: [remoteKey.jwk], padding: 'x'.repeat(100 * 1024) }));
  await addClient(privateWorkspace, 'svc-uri-big', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${jwksPort}/big.json`, '--audience', API]);
  await addClient(privateWorkspace, 'svc-uri-slow', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${jwksPort}/slow.json`, '--audience', API]);
  await addClient(privateWorkspace, 'svc-uri-redirect', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${jwksPort}/redirect.json`, '--audience', API]);
  // JWKS_URI_CA must name an existing file at start: make the development CA first.
  await ensureDevTls(privateWorkspace.keysDir);
  // One process, also when TEST_WORKERS asks for more: the jwks_uri tests count the fetches
  // the client's server sees, and each process keeps its own cache of key sets.
  privateServer = await startServer(privateWorkspace, {
    MAX_ASSERTION_LIFETIME: '120',
    JWKS_URI_ALLOW_PRIVATE: 'true',
    JWKS_URI_CA: join(privateWorkspace.keysDir, 'dev-ca.crt'),
    WORKERS: '1',
  });

  // The client's JWKS server: HTTPS with a certificate from the second server's dev CA.
  jwksServer = createHttpsServer({
    cert: readFileSync(join(privateWorkspace.keysDir, 'dev-server.crt')),
    key: readFileSync(join(privateWorkspace.keysDir, 'dev-server.key')),
  }, (req, res) => {
    const path = req.url ?? '';
    hits.set(path, (hits.get(path) ?? 0) + 1);
    if (path === '/slow.json') return; // never answers
    if (path === '/redirect.json') {
      res.writeHead(302, { location: `https://127.0.0.1:${jwksPort}/svc-uri.json` });
      return res.end();
    }
    const body = served.get(path);
    res.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/json' });
    res.end(body ?? '{}');
  });
  await new Promise<void>((done) => jwksServer.listen(jwksPort, '127.0.0.1', done));
});

afterAll(async () => {
  jwksServer?.closeAllConnections();
  await new Promise((done) => jwksServer ? jwksServer.close(done) : done(undefined));
  await server?.stop();
  await privateServer?.stop();
  await workspace?.remove();
  await privateWorkspace?.remove();
});

test('openid-client (clientCredentialsGrant with PrivateKeyJwt) gets a token that verifies with jose', async () => {
  const fetchWithCa: oauth.CustomFetch = (url, options) => undiciFetch(url, { ...(options as object), dispatcher: server.agent() }) as unknown as Promise<Response>;
  const config = await oauth.discovery(new URL(server.issuer), 'svc-es', undefined, oauth.PrivateKeyJwt({ key: es.key as CryptoKey, kid: es.kid }), {
    [oauth.customFetch]: fetchWithCa,
    algorithm: 'oauth2',
  });
  config[oauth.customFetch] = fetchWithCa;
  const tokens = await oauth.clientCredentialsGrant(config, { scope: 'orders:read' });
  expect(tokens.token_type).toBe('bearer');

  const jwks = createRemoteJWKSet(new URL(`${server.issuer}/jwks`), {
    [customFetch]: (url: string, init: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: server.agent() }) as unknown as Promise<Response>,
  });
  const { payload, protectedHeader } = await jwtVerify(tokens.access_token, jwks, { issuer: server.issuer, audience: API, typ: 'at+jwt', algorithms: ['RS256'] });
  expect(protectedHeader.alg).toBe('RS256');
  expect(payload).toMatchObject({ iss: server.issuer, sub: 'svc-es', client_id: 'svc-es', aud: API, scope: 'orders:read' });
});

test('RS256, PS256, ES256 and EdDSA assertions from a registered JWKS are accepted', async () => {
  for (const signer of Object.values(multi)) {
    const res = await tokenRequest(server, await assertion(signer));
    expect([signer.alg, res.status]).toEqual([signer.alg, 200]);
    expect(res.body.access_token).toEqual(expect.any(String));
  }
});

test('aud may be the token endpoint URL instead of the issuer', async () => {
  const res = await tokenRequest(server, await assertion(es, { aud: `${server.issuer}/token` }));
  expect(res.status).toBe(200);
});

test('a replayed assertion is refused: 401 invalid_client', async () => {
  const once = await assertion(es);
  expect((await tokenRequest(server, once)).status).toBe(200);
  expect(await refused(once)).toMatch(/only be used once/);
});

test('20 concurrent requests carrying one assertion: exactly one 200, nineteen 401', async () => {
  const shared = await assertion(es);
  const before = server.output().length;
  const results = await Promise.all(Array.from({ length: 20 }, () => tokenRequest(server, shared)));
  const statuses = results.map((r) => r.status).sort();
  expect(statuses).toEqual([200, ...Array<number>(19).fill(401)]);
  for (const res of results.filter((r) => r.status === 401)) expectInvalidClient(res);
  // Every refusal was for the replay (and the log lines are all in before the next test reads it).
  await eventually(async () => server.output().slice(before).split('only be used once').length - 1 === 19, 15_000, 'nineteen replay refusals logged');
});

test('alg none is refused', async () => {
  const now = Math.floor(Date.now() / 1000);
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'none', kid: es.kid })}.${part({ iss: 'svc-es', sub: 'svc-es', aud: server.issuer, jti: randomUUID(), iat: now, exp: now + 60 })}.`;
  expect(await refused(unsigned)).toMatch(/alg mismatch/);
});

test('HS256 keyed with the bytes of the client\'s public key is refused', async () => {
  const forged = await assertion({ ...es, alg: 'HS256', key: new TextEncoder().encode(esPublicPem) });
  expect(await refused(forged)).toMatch(/alg mismatch/);
});

test('a wrong aud is refused', async () => {
  expect(await refused(await assertion(es, { aud: 'https://elsewhere.example.test/token' }))).toMatch(/aud/);
  // The introspection endpoint is not an accepted audience for the token endpoint either.
  expect(await refused(await assertion(es, { aud: `${server.issuer}/token/introspection` }))).toMatch(/aud/);
});

test('an expired assertion is refused', async () => {
  const now = Math.floor(Date.now() / 1000);
  expect(await refused(await assertion(es, { iat: now - 120, exp: now - 60 }))).toMatch(/expired/);
});

test('MAX_ASSERTION_LIFETIME (default 3600): an assertion valid for an hour, as authlib and Google sign them, is accepted once', async () => {
  const now = Math.floor(Date.now() / 1000);
  const hour = await assertion(es, { iat: now, exp: now + 3600 });
  expect((await tokenRequest(server, hour)).status).toBe(200);
  // Its jti is kept until its exp: the same assertion is refused for the rest of the hour.
  expect(await refused(hour)).toMatch(/only be used once/);
  // Without iat, exp alone is bounded.
  expect((await tokenRequest(server, await assertion(es, { iat: undefined, exp: now + 3600 }))).status).toBe(200);
});

test('an assertion valid for longer than MAX_ASSERTION_LIFETIME is refused, by exp - now or by exp - iat', async () => {
  const now = Math.floor(Date.now() / 1000);
  // Beyond the hour and the 15 s clock tolerance.
  expect(await refused(await assertion(es, { iat: undefined, exp: now + 3600 + 15 + 5 }))).toMatch(/3600 seconds at most/);
  expect(await refused(await assertion(es, { iat: now, exp: now + 3601 }))).toMatch(/3600 seconds at most \(exp - iat\)/);
  // Issued earlier, so exp is within the hour from now, but the assertion itself lives longer.
  expect(await refused(await assertion(es, { iat: now - 600, exp: now + 3100 }))).toMatch(/exp - iat/);
});

describe('a client assertion that cannot be read, or names another client: 401 invalid_client, not 400', () => {
  const b64 = (value: string) => Buffer.from(value).toString('base64url');
  const unreadable: [string, () => Promise<Record<string, string>>][] = [
    ['not a JWT', async () => ({ client_assertion: 'not-a-jwt' })],
    ['a payload that is not JSON', async () => ({ client_assertion: `${b64('{"alg":"ES256"}')}.${b64('not json')}.${b64('sig')}` })],
    ['a payload that is a JSON array', async () => ({ client_assertion: `${b64('{"alg":"ES256"}')}.${b64('["svc-es"]')}.${b64('sig')}` })],
    ['two parts only', async () => ({ client_assertion: `${b64('{"alg":"ES256"}')}.${b64('{"sub":"svc-es"}')}` })],
    ['sub is not the form\'s client_id', async () => ({ client_assertion: await assertion(es), client_id: 'svc-multi' })],
    ['sub is not the form\'s client_id (an unknown one)', async () => ({ client_assertion: await assertion(es), client_id: 'nobody' })],
  ];
  const endpoints: [string, Record<string, string>][] = [
    ['/token', { grant_type: 'client_credentials' }],
    ['/token/introspection', { token: 'x.y.z' }],
    ['/token/revocation', { token: 'x.y.z' }],
  ];
  test.each(endpoints)('%s', async (path, form) => {
    for (const [what, make] of unreadable) {
      const res = await server.post(path, { ...form, client_assertion_type: ASSERTION_TYPE, ...(await make()) });
      try {
        expectInvalidClient(res);
      } catch (err) {
        throw new Error(`${path}, ${what}: ${(err as Error).message}`, { cause: err });
      }
    }
  });

  test('the request\'s own errors stay 400 invalid_request', async () => {
    const missingGrant = await server.post('/token', { client_assertion_type: ASSERTION_TYPE, client_assertion: await assertion(es) });
    expect(missingGrant.status).toBe(400);
    expect(missingGrant.body).toMatchObject({ error: 'invalid_request' });
    const missingType = await server.post('/token', { grant_type: 'client_credentials', client_assertion: await assertion(es) });
    expect(missingType.status).toBe(400);
    expect(missingType.body).toMatchObject({ error: 'invalid_request' });
    // Two mechanisms at once (Basic and an assertion), even with an unreadable assertion.
    const both = await server.post('/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: 'not-a-jwt' }, { basic: ['svc-es', 'x'] });
    expect(both.status).toBe(400);
    expect(both.body).toMatchObject({ error: 'invalid_request' });
    // An empty parameter is as if omitted (RFC 6749 section 3.1): no credentials at all.
    const empty = await server.post('/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: '' });
    expect(empty.status).toBe(400);
    expect(empty.body).toMatchObject({ error: 'invalid_request' });
  });

  test('the reason is logged for the operator, and the answer says only that authentication failed', async () => {
    const mismatch = await server.post('/token/introspection', { token: 'x.y.z', client_assertion_type: ASSERTION_TYPE, client_assertion: await assertion(es), client_id: 'svc-mismatch' });
    expectInvalidClient(mismatch);
    const lines = await server.logLines((l) => l.event === 'introspection.refused' && l.client_id === 'svc-mismatch', 1);
    expect(lines[0]).toMatchObject({ error: 'invalid_client', reason: 'client_id mismatch', status: 401 });
  });
});

test('an assertion without exp is refused', async () => {
  expect(await refused(await assertion(es, { exp: undefined }))).toMatch(/expiration must be specified/);
});

test('an unknown kid is refused', async () => {
  const stranger = await keyPair('ES256', 'unknown-kid');
  expect(await refused(await assertion({ ...es, key: stranger.privateKey, kid: 'unknown-kid' }))).toMatch(/no applicable key/);
  // A known kid with a signature from another key fails too.
  expect(await refused(await assertion({ ...es, key: stranger.privateKey }))).toMatch(/signature/i);
});

test('an iat in the future is refused', async () => {
  const now = Math.floor(Date.now() / 1000);
  expect(await refused(await assertion(es, { iat: now + 60, exp: now + 120 }))).toMatch(/issued in the future/);
});

test('introspection authenticates its caller with private_key_jwt', async () => {
  const token = (await tokenRequest(server, await assertion(es))).body.access_token as string;
  const introspect = async (clientAssertion: string) => server.post('/token/introspection', {
    token, client_assertion_type: ASSERTION_TYPE, client_assertion: clientAssertion,
  });

  const res = await introspect(await assertion(introspector));
  expect(res.status).toBe(200);
  expect(res.body).toMatchObject({ active: true, client_id: 'svc-es', aud: API, scope: 'orders:read orders:write' });

  // The same rules hold there: a replay, a wrong aud, an HS256 forgery are refused alike.
  const once = await assertion(introspector);
  expect((await introspect(once)).status).toBe(200);
  for (const bad of [once, await assertion(introspector, { aud: 'https://elsewhere.example.test' }), await assertion({ ...introspector, alg: 'HS256', key: new TextEncoder().encode('secret') })]) {
    const refusal = await introspect(bad);
    expectInvalidClient(refusal);
  }
});

test('a jwks_uri on a loopback address or a name resolving to one is refused while JWKS_URI_ALLOW_PRIVATE=false', async () => {
  expect(await refused(await assertion({ ...remote, clientId: 'svc-uri-loopback' }))).toMatch(/not a public address/);
  expect(await refused(await assertion({ ...remote, clientId: 'svc-uri-localhost' }))).toMatch(/not a public address/);
  // Refused before connecting: the client's server never heard of it.
  expect(hits.get('/loopback.json')).toBeUndefined();
  expect(server.output()).toMatch(/"msg":"fetching a client's jwks_uri failed"/);
});

describe('jwks_uri with JWKS_URI_ALLOW_PRIVATE=true and JWKS_URI_CA (and MAX_ASSERTION_LIFETIME=120)', () => {
  test('a jwks_uri client gets a token; the set is fetched once and cached', async () => {
    const res = await tokenRequest(privateServer, await assertion(remote, {}, {}, privateServer.issuer));
    expect(res.status).toBe(200);
    expect(res.body.access_token).toEqual(expect.any(String));
    expect((await tokenRequest(privateServer, await assertion(remote, {}, {}, privateServer.issuer))).status).toBe(200);
    expect(hits.get('/svc-uri.json')).toBe(1);
  });

  test('MAX_ASSERTION_LIFETIME=120: 120 s is accepted, more is refused', async () => {
    const now = Math.floor(Date.now() / 1000);
    expect((await tokenRequest(privateServer, await assertion(remote, { iat: now, exp: now + 120 }, {}, privateServer.issuer))).status).toBe(200);
    expect(await refused(await assertion(remote, { iat: now, exp: now + 121 }, {}, privateServer.issuer), privateServer)).toMatch(/120 seconds at most/);
    expect(await refused(await assertion(remote, { iat: undefined, exp: now + 120 + 15 + 5 }, {}, privateServer.issuer), privateServer)).toMatch(/120 seconds at most/);
    expect(hits.get('/svc-uri.json')).toBe(1);
  });

  test('a new kid at the client is fetched on first use; made-up kids refetch at most once per cooldown', async () => {
    const rotated = await keyPair('ES256', 'remote-2');
    serveJwks('/svc-uri.json', [rotated.jwk]);
    // The last fetch was in an earlier test: after this, an unknown kid may refetch.
    await sleep(REFETCH_COOLDOWN_MS + 500);
    const next: Signer = { ...remote, key: rotated.privateKey, kid: 'remote-2' };
    const withdrawn = await assertion(remote, {}, {}, privateServer.issuer);
    const madeUp = await assertion({ ...next, kid: 'made-up' }, {}, {}, privateServer.issuer);
    const before = privateServer.output().length;
    expect((await tokenRequest(privateServer, await assertion(next, {}, {}, privateServer.issuer))).status).toBe(200);
    expect(hits.get('/svc-uri.json')).toBe(2);
    // The withdrawn key no longer works, and a made-up kid within the cooldown fetches nothing
    // (sent at once, signed beforehand: the cooldown is 5 s from the fetch above).
    expectInvalidClient(await tokenRequest(privateServer, withdrawn));
    expectInvalidClient(await tokenRequest(privateServer, madeUp));
    expect(hits.get('/svc-uri.json')).toBe(2);
    // Refused as keys the set does not hold, not for a failed fetch.
    let refusals: string[] = [];
    await eventually(async () => (refusals = privateServer.output().slice(before).split('\n').filter((l) => l.includes('"event":"token.refused"'))).length >= 2, 15_000, 'both refusals logged');
    expect(refusals.map((l) => String(JSON.parse(l).reason))).toEqual([expect.stringMatching(/no applicable key/), expect.stringMatching(/no applicable key/)]);
  });

  test('a jwks_uri response over the size limit is refused', async () => {
    expect(await refused(await assertion({ ...remote, clientId: 'svc-uri-big' }, {}, {}, privateServer.issuer), privateServer)).toMatch(/exceeds \d+ bytes/);
    expect(privateServer.output()).toMatch(/jwks_uri response exceeds \d+ bytes/);
  });

  test('a jwks_uri that does not answer in time is refused', async () => {
    const started = Date.now();
    // Given up at the fetch's own 3 s limit, as the reason says…
    expect(await refused(await assertion({ ...remote, clientId: 'svc-uri-slow' }, {}, {}, privateServer.issuer), privateServer)).toMatch(/jwks_uri did not answer within 3000 ms/);
    // …and not at some later limit (the bound is loose: a loaded machine adds seconds).
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  test('a jwks_uri that redirects is refused, even to a good set', async () => {
    expect(await refused(await assertion({ ...remote, clientId: 'svc-uri-redirect' }, {}, {}, privateServer.issuer), privateServer)).toMatch(/answered 302/);
    expect(hits.get('/redirect.json')).toBe(1);
  });
});
