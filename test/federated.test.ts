// Federated clients end to end: a real HTTPS issuer started here (loopback, a certificate
// from the workspace's development CA, trusted through JWKS_URI_CA), real tokens signed with
// its keys, and the real server. A Kubernetes service-account token (keys found by OIDC
// discovery), a SPIFFE JWT-SVID (a trust bundle whose keys have no alg), a CI system's OIDC
// token (discovery, its own audience) and a cluster with a static JWKS each get an access
// token for the client their subject is mapped to; every bad token is 401 invalid_client
// with the reason in the log only.
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server } from 'node:https';
import { join } from 'node:path';

import fc from 'fast-check';
import { createRemoteJWKSet, customFetch, exportJWK, generateKeyPair, jwtVerify, SignJWT, type CryptoKey, type JWK } from 'jose';
import { fetch as undiciFetch } from 'undici';

import { dpopKey, dpopProof, dpopThumbprint } from '../examples/dpop-client.ts';
import { ensureDevTls } from '../src/keys/dev-tls.ts';
import {
  addClient, applyPending, createWorkspace, eventually, freePort, sleep, startServer, type RunningServer, type Workspace,
} from './helpers/server.ts';

const API = 'https://api.example.test';
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const JWT_SPIFFE = 'urn:ietf:params:oauth:client-assertion-type:jwt-spiffe';
const CLIENT_AUTH_FAILED = { error: 'invalid_client', error_description: 'client authentication failed' };
const NO_LOCKOUT = { AUTH_FAILURE_LIMIT: '100000', AUTH_FAILURE_ADDRESS_LIMIT: '1000000' };
// The server's cooldown between two fetches of one issuer's keys (REFETCH_COOLDOWN_SECONDS).
const REFETCH_COOLDOWN_MS = 5000;
const K8S_SUBJECT = 'system:serviceaccount:payments:api';
const SPIFFE_ID = 'spiffe://example.org/ns/payments/sa/api';
const STATIC_SPIFFE_ID = 'spiffe://static.example.org/ns/payments/sa/api';
const GHA_SUBJECT = 'repo:acme/app:ref:refs/heads/main';
const GHA_AUDIENCE = 'https://m2m.example.test';
/** The password in a URL an operator registered with user:password@. */
const URL_SECRET = 'pw-in-url-7f3a';

interface Key {
  key: CryptoKey | KeyObject;
  kid: string;
  alg: string;
  jwk: JWK;
}

let workspace: Workspace;
let server: RunningServer;
let issuerServer: Server;
let issuerPort: number;
let base: string; // https://127.0.0.1:<issuerPort>
/** What the issuer serves, by path; how often each path was fetched; paths that answer 503. */
const served = new Map<string, string>();
const hits = new Map<string, number>();
const down = new Set<string>();

let k8s: Key; // RS256, found through discovery
let k8sNext: Key; // the key the cluster rotates to
let spire: Key; // ES256, in a SPIFFE bundle without alg
let gha: Key; // ES256, discovery
let staticKey: Key; // EdDSA, registered as a static JWKS
let stranger: Key; // nobody's key
let boundCert: { cert: string; key: string }; // svc-k8s-bound's TLS client certificate

async function makeKey(alg: string, kid: string): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { key: privateKey, kid, alg, jwk: { ...(await exportJWK(publicKey)), kid } };
}

function serveJson(path: string, body: unknown): void {
  served.set(path, JSON.stringify(body));
}

async function externalToken(key: Key, claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ aud: server.issuer, iat: now, exp: now + 600, ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, ...header }).sign(key.key);
}

/** A projected service-account token as the kubelet writes it (its claims, shape and lifetime). */
function kubernetesToken(claims: Record<string, unknown> = {}, key = k8s): Promise<string> {
  return externalToken(key, {
    iss: `${base}/k8s`,
    sub: K8S_SUBJECT,
    'kubernetes.io': {
      namespace: 'payments',
      pod: { name: 'api-7d9f8-x2x4q', uid: randomUUID() },
      serviceaccount: { name: 'api', uid: randomUUID() },
    },
    nbf: Math.floor(Date.now() / 1000),
    ...claims,
  });
}

/** A JWT-SVID: sub is the SPIFFE ID, no iss, typ JWT. */
function jwtSvid(claims: Record<string, unknown> = {}, key = spire): Promise<string> {
  return externalToken(key, { sub: SPIFFE_ID, ...claims }, { typ: 'JWT' });
}

function tokenRequest(assertion: string, type = JWT_BEARER, extra: Record<string, string> = {}) {
  return server.post('/token', { grant_type: 'client_credentials', client_assertion_type: type, client_assertion: assertion, ...extra });
}

function expectInvalidClient(res: { status: number; headers: Headers; body: unknown }) {
  expect(res.status).toBe(401);
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.body).toEqual(CLIENT_AUTH_FAILED);
  expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="[^"]+", error="invalid_client"/);
}

/** Sends a token that must be refused; returns the refusal's audit line (the reason is never sent). */
async function refused(assertion: string, type = JWT_BEARER, extra: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const before = server.output().length;
  const res = await tokenRequest(assertion, type, extra);
  expectInvalidClient(res);
  let line: Record<string, unknown> = {};
  await eventually(async () => {
    // Log lines are written asynchronously: an earlier test's late 400 must not be taken for this 401.
    const found = server.output().slice(before).split('\n').find((l) => l.includes('"event":"token.refused"') && l.includes('"status":401'));
    if (found) line = JSON.parse(found) as Record<string, unknown>;
    return found !== undefined;
  }, 15_000, 'the refusal is logged');
  // The external token is never in the log, whole or in part.
  const signature = assertion.split('.')[2];
  if (signature) expect(server.output()).not.toContain(signature);
  return line;
}

async function verifiedAccessToken(accessToken: string) {
  const jwks = createRemoteJWKSet(new URL(`${server.issuer}/jwks`), {
    [customFetch]: (url: string, init: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: server.agent() }) as unknown as Promise<Response>,
  });
  return (await jwtVerify(accessToken, jwks, { issuer: server.issuer, audience: API, typ: 'at+jwt', algorithms: ['RS256'] })).payload;
}

beforeAll(async () => {
  issuerPort = await freePort();
  base = `https://127.0.0.1:${issuerPort}`;
  k8s = await makeKey('RS256', 'k8s-1');
  k8sNext = await makeKey('RS256', 'k8s-2');
  spire = await makeKey('ES256', 'spire-1');
  gha = await makeKey('ES256', 'gha-1');
  staticKey = await makeKey('EdDSA', 'static-1');
  stranger = await makeKey('RS256', 'k8s-1'); // the cluster's kid, another key

  // A Kubernetes API server's issuer discovery (kube-apiserver --service-account-issuer).
  serveJson('/k8s/.well-known/openid-configuration', { issuer: `${base}/k8s`, jwks_uri: `${base}/k8s/openid/v1/jwks` });
  serveJson('/k8s/openid/v1/jwks', { keys: [{ ...k8s.jwk, alg: 'RS256', use: 'sig' }] });
  // A SPIFFE bundle endpoint: JWT-SVID keys without alg, an X.509-SVID key to skip.
  const x509Svid = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
  const spireJwk: JWK = { ...spire.jwk };
  delete spireJwk.alg;
  const bundle = { keys: [{ ...x509Svid, use: 'x509-svid', x5c: ['MIIB'] }, { ...spireJwk, use: 'jwt-svid' }], spiffe_refresh_hint: 1, spiffe_sequence: 1 };
  serveJson('/spiffe/bundle', bundle);
  serveJson('/gha/.well-known/openid-configuration', { issuer: `${base}/gha`, jwks_uri: `${base}/gha/jwks` });
  serveJson('/gha/jwks', { keys: [gha.jwk] });

  workspace = await createWorkspace(NO_LOCKOUT);
  await ensureDevTls(workspace.keysDir);
  const issuer = async (args: string[]) => {
    const res = await workspace.cli('issuer', [...args, '--json']);
    if (res.code !== 0) throw new Error(`issuer ${args.join(' ')}: ${res.stderr}`);
    return JSON.parse(res.stdout) as Record<string, string>;
  };
  await issuer(['add', 'cluster', '--kind', 'kubernetes', '--issuer', `${base}/k8s`, '--allow-private']);
  await issuer(['add', 'spire', '--kind', 'spiffe', '--issuer', 'spiffe://example.org', '--jwks-uri', `${base}/spiffe/bundle`, '--allow-private']);
  // The same bundle as a file, for another trust domain (one issuer per trust domain).
  writeFileSync(join(workspace.dir, 'bundle.json'), JSON.stringify(bundle));
  await issuer(['add', 'spire-static', '--kind', 'spiffe', '--issuer', 'spiffe://static.example.org', '--jwks', join(workspace.dir, 'bundle.json')]);
  await issuer(['add', 'gha', '--issuer', `${base}/gha`, '--audience', GHA_AUDIENCE, '--allow-private', '--max-lifetime', '600']);
  writeFileSync(join(workspace.dir, 'static.json'), JSON.stringify({ keys: [staticKey.jwk] }));
  await issuer(['add', 'edge', '--kind', 'kubernetes', '--issuer', 'https://kubernetes.default.svc.cluster.local', '--jwks', join(workspace.dir, 'static.json')]);
  // The same cluster's keys, through a name that resolves to loopback, without --allow-private.
  await issuer(['add', 'public-only', '--issuer', `https://localhost:${issuerPort}/np`, '--jwks-uri', `https://localhost:${issuerPort}/np/jwks`]);
  serveJson('/np/jwks', { keys: [k8s.jwk] });
  await issuer(['add', 'retired', '--issuer', `${base}/retired`, '--jwks', join(workspace.dir, 'static.json')]);
  await issuer(['disable', 'retired']);
  // Registered before URLs with credentials were refused (the CLI refuses it now): written by hand.
  writeFileSync(join(workspace.migrationsDir, '29990101000000_issuer_legacy.ts'), `
export async function up(knex) {
  await knex('issuers').insert({ name: 'legacy', kind: 'oidc', issuer: '${base}/legacy', jwks_uri: 'https://user:${URL_SECRET}@127.0.0.1:${issuerPort}/legacy/jwks', max_lifetime: 3600, allow_private: true });
}
export async function down() {}
`);

  const federated = (id: string, name: string, subject: string, extra: string[] = []) =>
    addClient(workspace, id, ['--auth', 'federated', '--issuer', name, '--subject', subject, '--audience', API, '--scope', 'orders:read', ...extra]);
  await federated('svc-k8s', 'cluster', K8S_SUBJECT, ['--introspect', API]);
  await federated('svc-spiffe', 'spire', SPIFFE_ID);
  await federated('svc-spiffe-static', 'spire-static', STATIC_SPIFFE_ID);
  await federated('svc-gha', 'gha', GHA_SUBJECT);
  await federated('svc-edge', 'edge', 'system:serviceaccount:edge:worker');
  await federated('svc-np', 'public-only', 'system:serviceaccount:np:np');
  await federated('svc-retired', 'retired', 'system:serviceaccount:old:old');
  await federated('svc-legacy', 'legacy', 'legacy-workload');
  await addClient(workspace, 'svc-basic', ['--auth', 'client_secret_basic', '--audience', API]);
  await federated('svc-k8s-bound', 'cluster', 'system:serviceaccount:payments:bound', ['--bound']);
  await federated('svc-k8s-dpop', 'cluster', 'system:serviceaccount:payments:dpop', ['--dpop']);
  const issued = await workspace.cli('client', ['cert', 'svc-k8s-bound', '--json']);
  if (issued.code !== 0) throw new Error(issued.stderr);
  const { certificate, key } = JSON.parse(issued.stdout) as { certificate: string; key: string };
  boundCert = { cert: readFileSync(certificate, 'utf8'), key: readFileSync(key, 'utf8') };

  // One process, also when TEST_WORKERS asks for more: these tests count the fetches the
  // issuer sees, and each process keeps its own cache of issuer keys.
  server = await startServer(workspace, { JWKS_URI_CA: join(workspace.keysDir, 'dev-ca.crt'), WORKERS: '1' });

  issuerServer = createHttpsServer({
    cert: readFileSync(join(workspace.keysDir, 'dev-server.crt')),
    key: readFileSync(join(workspace.keysDir, 'dev-server.key')),
  }, (req, res) => {
    const path = req.url ?? '';
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const body = served.get(path);
    if (down.has(path) || body === undefined) {
      res.writeHead(down.has(path) ? 503 : 404);
      return res.end();
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body);
  });
  await new Promise<void>((done) => issuerServer.listen(issuerPort, '127.0.0.1', done));
  // About twenty operator commands, each a Node process: minutes on a loaded machine.
}, 300_000);

afterAll(async () => {
  issuerServer?.closeAllConnections();
  await new Promise((done) => issuerServer ? issuerServer.close(done) : done(undefined));
  await server?.stop();
  await workspace?.remove();
});

describe('each kind of issuer gets a token for the mapped client', () => {
  test('a Kubernetes service-account token (keys by discovery), sent by curl as the README shows, verifies against /jwks; the same token works again', async () => {
    const token = await kubernetesToken();
    // The README's line: the kubelet's token file, sent as the client assertion.
    const tokenFile = join(workspace.dir, 'm2m-token');
    writeFileSync(tokenFile, token);
    const curl = await new Promise<string>((done, fail) => execFile('curl', [
      '-sS', '--cacert', join(workspace.keysDir, 'dev-ca.crt'),
      '-d', 'grant_type=client_credentials',
      '-d', `client_assertion_type=${JWT_BEARER}`,
      '--data-urlencode', `client_assertion@${tokenFile}`,
      `${server.issuer}/token`,
    ], (err, stdout) => (err ? fail(err) : done(stdout))));
    const first = JSON.parse(curl) as { access_token: string; token_type: string };
    expect(first.token_type).toMatch(/^bearer$/i);
    expect(await verifiedAccessToken(first.access_token)).toMatchObject({ sub: 'svc-k8s', client_id: 'svc-k8s', aud: API, scope: 'orders:read' });
    expect(hits.get('/k8s/.well-known/openid-configuration')).toBe(1);

    // Platforms cache their tokens: the same one is accepted until it expires.
    const again = await tokenRequest(token);
    expect(again.status).toBe(200);
    expect((await verifiedAccessToken(again.body.access_token)).client_id).toBe('svc-k8s');
    expect(hits.get('/k8s/openid/v1/jwks')).toBe(1);

    const [issued] = await server.logLines((l) => l.event === 'token.issued' && l.client_id === 'svc-k8s', 2);
    expect(issued).toMatchObject({ method: 'federated', issuer: 'cluster', kubernetes: { namespace: 'payments', serviceaccount: 'api', pod: 'api-7d9f8-x2x4q' } });
    expect(server.output()).not.toContain(token.split('.')[2]);
  });

  test('a SPIFFE JWT-SVID (jwt-spiffe, no iss, bundle keys without alg) gets a token', async () => {
    const res = await tokenRequest(await jwtSvid(), JWT_SPIFFE);
    expect(res.status).toBe(200);
    expect(await verifiedAccessToken(res.body.access_token)).toMatchObject({ sub: 'svc-spiffe', client_id: 'svc-spiffe' });
  });

  test('the same JWT-SVIDs with the bundle registered as a file (issuer add --kind spiffe --jwks)', async () => {
    const res = await tokenRequest(await jwtSvid({ sub: STATIC_SPIFFE_ID }), JWT_SPIFFE);
    expect(res.status).toBe(200);
    expect(await verifiedAccessToken(res.body.access_token)).toMatchObject({ sub: 'svc-spiffe-static', client_id: 'svc-spiffe-static' });
    // A key the bundle does not hold is still refused.
    expect((await refused(await jwtSvid({ sub: STATIC_SPIFFE_ID }, stranger), JWT_SPIFFE)).reason).toMatch(/no key of issuer spire-static matches/);
  });

  test('an OIDC-discovered issuer with its own audience (a CI system) gets a token; the form client_id may name the client', async () => {
    const token = await externalToken(gha, { iss: `${base}/gha`, sub: GHA_SUBJECT, aud: GHA_AUDIENCE });
    const res = await tokenRequest(token, JWT_BEARER, { client_id: 'svc-gha' });
    expect(res.status).toBe(200);
    expect(await verifiedAccessToken(res.body.access_token)).toMatchObject({ client_id: 'svc-gha' });
  });

  test('a cluster registered with a static JWKS (EdDSA) gets a token without any fetch', async () => {
    const token = await externalToken(staticKey, { iss: 'https://kubernetes.default.svc.cluster.local', sub: 'system:serviceaccount:edge:worker' });
    const res = await tokenRequest(token);
    expect(res.status).toBe(200);
    expect(res.body.access_token).toEqual(expect.any(String));
  });

  test('--bound applies as for any client: a certificate-bound token with a certificate, an error without', async () => {
    const form = { grant_type: 'client_credentials', client_assertion_type: JWT_BEARER, client_assertion: await kubernetesToken({ sub: 'system:serviceaccount:payments:bound' }) };
    const without = await server.post('/token', form);
    expect([without.status, without.body.error, without.body.access_token]).toEqual([400, 'invalid_grant', undefined]);
    expect(await server.logLines((l) => l.event === 'token.refused' && l.client_id === 'svc-k8s-bound' && l.status === 400, 1)).toHaveLength(1);
    const withCert = await server.post('/token', form, { cert: boundCert });
    expect(withCert.status).toBe(200);
    const claims = await verifiedAccessToken(withCert.body.access_token);
    expect(claims).toMatchObject({ client_id: 'svc-k8s-bound', cnf: { 'x5t#S256': expect.any(String) } });
  });

  test('--dpop applies as for any client: a DPoP-bound token with a proof, 400 invalid_dpop_proof without or with a replayed one', async () => {
    // The platform's token may be sent again; the proof may not.
    const token = await kubernetesToken({ sub: 'system:serviceaccount:payments:dpop' });
    const without = await tokenRequest(token);
    expect([without.status, without.body.error, without.body.access_token]).toEqual([400, 'invalid_dpop_proof', undefined]);
    const key = await dpopKey('ES256');
    const proof = await dpopProof(key, 'POST', `${server.issuer}/token`);
    const post = (dpop: string) => server.post('/token', { grant_type: 'client_credentials', client_assertion_type: JWT_BEARER, client_assertion: token }, { headers: { dpop } });
    const bound = await post(proof);
    expect([bound.status, bound.body.token_type]).toEqual([200, 'DPoP']);
    const claims = await verifiedAccessToken(bound.body.access_token);
    expect(claims).toMatchObject({ client_id: 'svc-k8s-dpop', cnf: { jkt: await dpopThumbprint(key) } });
    const replayed = await post(proof);
    expect([replayed.status, replayed.body.error, replayed.body.access_token]).toEqual([400, 'invalid_dpop_proof', undefined]);
  });

  test('introspection and revocation authenticate a federated caller', async () => {
    const accessToken = (await tokenRequest(await kubernetesToken())).body.access_token as string;
    const auth = { client_assertion_type: JWT_BEARER, client_assertion: await kubernetesToken() };
    const introspected = await server.post('/token/introspection', { token: accessToken, ...auth });
    expect(introspected.status).toBe(200);
    expect(introspected.body).toMatchObject({ active: true, client_id: 'svc-k8s' });
    const revoked = await server.post('/token/revocation', { token: accessToken, ...auth });
    expect(revoked.status).toBe(200);
    expect((await server.post('/token/introspection', { token: accessToken, ...auth })).body).toEqual({ active: false });
    const bad = await server.post('/token/introspection', { token: accessToken, ...auth, client_assertion: await kubernetesToken({ aud: 'https://elsewhere.example.test' }) });
    expectInvalidClient(bad);
  });
});

describe('every bad external token is 401 invalid_client, the reason in the log only', () => {
  test('wrong audience', async () => {
    expect((await refused(await kubernetesToken({ aud: 'https://elsewhere.example.test' }))).reason).toMatch(/unexpected "aud" claim value/);
    // An issuer with its own audience does not accept ours.
    const ours = await externalToken(gha, { iss: `${base}/gha`, sub: GHA_SUBJECT });
    expect((await refused(ours)).reason).toMatch(/unexpected "aud" claim value/);
  });

  test('expired', async () => {
    const now = Math.floor(Date.now() / 1000);
    const line = await refused(await kubernetesToken({ iat: now - 3600, nbf: now - 3600, exp: now - 60 }));
    expect(line).toMatchObject({ client_id: 'svc-k8s', method: 'federated', issuer: 'cluster' });
    expect(line.reason).toMatch(/"exp" claim timestamp check failed/);
  });

  test('valid for longer than the issuer allows (default 3600 s; 600 s for gha)', async () => {
    const now = Math.floor(Date.now() / 1000);
    expect((await tokenRequest(await kubernetesToken({ iat: now, exp: now + 3600 }))).status).toBe(200);
    expect((await refused(await kubernetesToken({ iat: now, exp: now + 7200 }))).reason).toMatch(/valid for longer than issuer cluster allows \(3600 s\)/);
    const long = await externalToken(gha, { iss: `${base}/gha`, sub: GHA_SUBJECT, aud: GHA_AUDIENCE, iat: now, exp: now + 900 });
    expect((await refused(long)).reason).toMatch(/allows \(600 s\)/);
    // Without iat, what is left of it counts.
    expect((await refused(await jwtSvid({ iat: undefined, exp: now + 7200 }), JWT_SPIFFE)).reason).toMatch(/allows \(3600 s\)/);
  });

  test('iat or nbf in the future', async () => {
    const now = Math.floor(Date.now() / 1000);
    expect((await refused(await kubernetesToken({ iat: now + 120, exp: now + 600 }))).reason).toMatch(/issued in the future/);
    expect((await refused(await kubernetesToken({ nbf: now + 120 }))).reason).toMatch(/"nbf" claim timestamp check failed/);
  });

  test('an unmapped subject, an unknown issuer, a malformed Kubernetes subject', async () => {
    expect(await refused(await kubernetesToken({ sub: 'system:serviceaccount:payments:other' }))).toMatchObject({
      reason: 'no client is mapped to this subject of issuer cluster', issuer: 'cluster', subject: 'system:serviceaccount:payments:other',
    });
    expect((await refused(await kubernetesToken({ iss: 'https://untrusted.example.test' }))).reason).toMatch(/not a trusted issuer/);
    expect((await refused(await kubernetesToken({ sub: 'payments:api' }))).reason).toMatch(/system:serviceaccount/);
    expect(await refused(await jwtSvid({ sub: 'spiffe://other.example/ns/payments/sa/api' }), JWT_SPIFFE)).toMatchObject({
      reason: 'no trusted issuer for the SPIFFE ID\'s trust domain', subject: 'spiffe://other.example/ns/payments/sa/api',
    });
  });

  test('NUL or a lone surrogate in iss or sub: refused before any query, as a failed authentication', async () => {
    const before = server.output().length;
    for (const claims of [{ iss: `${base}/gha`, sub: 'repo:acme/app\u0000' }, { iss: `${base}/gha\u0000`, sub: GHA_SUBJECT }, { iss: `${base}/gha`, sub: 'repo:\ud800' }]) {
      const token = await externalToken(gha, { ...claims, aud: GHA_AUDIENCE });
      expect((await refused(token)).reason).toBe('the external token\'s iss or sub holds characters no issuer or subject can have');
    }
    expect(server.output().slice(before)).not.toMatch(/"level":50/);
  });

  test('fuzz: arbitrary iss and sub never get a 5xx', async () => {
    const before = server.output().length;
    const anything = fc.string({ unit: 'binary', maxLength: 40 });
    const iss = fc.oneof(anything, fc.constantFrom(`${base}/gha`, `${base}/k8s`, 'spiffe://example.org'), anything.map((a) => `${base}/gha${a}`));
    const sub = fc.oneof(anything, anything.map((a) => `${GHA_SUBJECT}${a}`), anything.map((a) => `${SPIFFE_ID}${a}`), anything.map((a) => `${K8S_SUBJECT}${a}`));
    const answered = new Map<number, number>();
    await fc.assert(fc.asyncProperty(iss, sub, fc.constantFrom(JWT_BEARER, JWT_SPIFFE), async (i, s, type) => {
      const res = await tokenRequest(await externalToken(gha, { iss: i, sub: s, aud: GHA_AUDIENCE }), type);
      answered.set(res.status, (answered.get(res.status) ?? 0) + 1);
      expect(res.status).toBeLessThan(500);
      if (res.status !== 200) expect(res.body).toHaveProperty('error');
    }), { numRuns: Number(process.env.FUZZ_RUNS ?? 150) });
    // Every refusal's audit line has arrived, so none is taken for a later test's.
    const refusals = [...answered].filter(([status]) => status >= 400).reduce((sum, [, n]) => sum + n, 0);
    await eventually(async () => server.output().slice(before).split('"event":"token.refused"').length - 1 >= refusals, 30_000, 'the refusals are logged');
    expect(server.output().slice(before)).not.toMatch(/"level":50/);
  });

  test('signed by the wrong key (the issuer\'s kid, another key)', async () => {
    expect((await refused(await kubernetesToken({}, stranger))).reason).toMatch(/signature verification failed/);
  });

  test('alg none and HS256 keyed with the issuer\'s public key', async () => {
    const now = Math.floor(Date.now() / 1000);
    const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const unsigned = `${part({ alg: 'none', kid: 'k8s-1' })}.${part({ iss: `${base}/k8s`, sub: K8S_SUBJECT, aud: server.issuer, iat: now, exp: now + 600 })}.`;
    expect((await refused(unsigned)).reason).toMatch(/external token is invalid/);
    const hs = { key: new TextEncoder().encode(JSON.stringify(k8s.jwk)), kid: 'k8s-1', alg: 'HS256', jwk: {} } as unknown as Key;
    expect((await refused(await kubernetesToken({}, hs))).reason).toMatch(/"alg" \(Algorithm\) Header Parameter value not allowed/);
  });

  test('a form client_id naming another client', async () => {
    const line = await refused(await kubernetesToken(), JWT_BEARER, { client_id: 'svc-basic' });
    expect(line).toMatchObject({ reason: 'the form\'s client_id is not the client mapped to this subject', client_id: 'svc-k8s', subject: K8S_SUBJECT });
  });

  test('a disabled issuer', async () => {
    const token = await externalToken(staticKey, { iss: `${base}/retired`, sub: 'system:serviceaccount:old:old' });
    expect((await refused(token)).reason).toMatch(/issuer retired is disabled/);
  });

  test('a federated client named without an external token, or with a secret', async () => {
    const res = await server.post('/token', { grant_type: 'client_credentials', client_id: 'svc-k8s' });
    expectInvalidClient(res);
    expectInvalidClient(await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc-k8s', 'anything'] }));
    const lines = await server.logLines((l) => l.event === 'token.refused' && l.client_id === 'svc-k8s' && /external token only/.test(String(l.reason)), 2);
    expect(lines).toHaveLength(2);
  });

  test('a jwt-spiffe assertion that is not a JWT', async () => {
    expect(await refused('not-a-jwt', JWT_SPIFFE)).toMatchObject({ reason: 'the external token is not a JWT', method: 'federated' });
  });

  test('a JWT-SVID sent as jwt-bearer, and a Kubernetes token sent as jwt-spiffe', async () => {
    expect((await refused(await jwtSvid({ iss: 'spiffe://example.org' }))).reason).toMatch(/not a trusted issuer|use client_assertion_type/);
    expect((await refused(await kubernetesToken(), JWT_SPIFFE)).reason).toMatch(/not a SPIFFE ID/);
  });
});

describe('issuer keys', () => {
  test('a jwks_uri with user:password@ (registered before they were refused) is never fetched, and its password never logged', async () => {
    serveJson('/legacy/jwks', { keys: [k8s.jwk] });
    const token = await externalToken(k8s, { iss: `${base}/legacy`, sub: 'legacy-workload' });
    expect((await refused(token)).reason).toMatch(/carries user:password@, which is never sent/);
    await server.logLines((l) => l.msg === 'fetching an issuer\'s keys failed' && l.issuer === 'legacy', 1);
    expect(hits.get('/legacy/jwks')).toBeUndefined();
    expect(server.output()).not.toContain(URL_SECRET);
  });

  test('an issuer whose keys are on a private address is refused without --allow-private, before connecting', async () => {
    const token = await externalToken(k8s, { iss: `https://localhost:${issuerPort}/np`, sub: 'system:serviceaccount:np:np' });
    expect((await refused(token)).reason).toMatch(/not a public address \(the issuer was added without --allow-private\)/);
    expect(hits.get('/np/jwks')).toBeUndefined();
  });

  test('a rotation at the issuer is followed: an unknown kid refetches (at most once per cooldown)', async () => {
    serveJson('/k8s/openid/v1/jwks', { keys: [k8s.jwk, k8sNext.jwk] });
    await sleep(REFETCH_COOLDOWN_MS + 500);
    const madeUp = [await kubernetesToken({}, { ...stranger, kid: 'made-up' }), await kubernetesToken({}, { ...stranger, kid: 'made-up-2' })];
    const before = hits.get('/k8s/openid/v1/jwks') ?? 0;
    const logged = server.output().length;
    expect((await tokenRequest(await kubernetesToken({}, k8sNext))).status).toBe(200);
    expect(hits.get('/k8s/openid/v1/jwks')).toBe(before + 1);
    // Made-up kids within the cooldown fetch nothing (sent at once, signed beforehand: the
    // cooldown is 5 s from the fetch above).
    for (const token of madeUp) expectInvalidClient(await tokenRequest(token));
    expect(hits.get('/k8s/openid/v1/jwks')).toBe(before + 1);
    // Refused for want of their key, and the tokens are not in the log.
    let refusals: string[] = [];
    await eventually(async () => (refusals = server.output().slice(logged).split('\n').filter((l) => l.includes('"event":"token.refused"'))).length >= 2, 15_000, 'both refusals logged');
    expect(refusals.map((l) => String(JSON.parse(l).reason))).toEqual([expect.stringMatching(/no key of issuer cluster/), expect.stringMatching(/no key of issuer cluster/)]);
    for (const token of madeUp) expect(server.output()).not.toContain(token.split('.')[2]);
  });

  test('while the issuer is unreachable, cached keys keep its clients working', async () => {
    down.add('/k8s/.well-known/openid-configuration');
    down.add('/k8s/openid/v1/jwks');
    await sleep(REFETCH_COOLDOWN_MS + 500);
    // A refetch is attempted (an unknown kid) and fails…
    const before = hits.get('/k8s/.well-known/openid-configuration') ?? 0;
    expect((await refused(await kubernetesToken({}, { ...stranger, kid: 'k8s-3' }))).reason).toMatch(/no key of issuer cluster/);
    expect(hits.get('/k8s/.well-known/openid-configuration')).toBe(before + 1);
    expect(server.output()).toMatch(/"msg":"fetching an issuer's keys failed"/);
    // …and the keys fetched before still serve.
    expect((await tokenRequest(await kubernetesToken())).status).toBe(200);
    expect((await tokenRequest(await kubernetesToken({}, k8sNext))).status).toBe(200);
    down.clear();
  });

  test('a SPIFFE bundle is refetched after its refresh hint (30 s at least); while the endpoint is down, its cached keys keep serving', async () => {
    expect((await tokenRequest(await jwtSvid(), JWT_SPIFFE)).status).toBe(200);
    const before = hits.get('/spiffe/bundle') ?? 0;
    down.add('/spiffe/bundle');
    const statuses = new Set<number>();
    // The bundle says spiffe_refresh_hint 1; the server refreshes after MIN_CACHE_SECONDS (30).
    await eventually(async () => {
      statuses.add((await tokenRequest(await jwtSvid(), JWT_SPIFFE)).status);
      return (hits.get('/spiffe/bundle') ?? 0) > before;
    }, 45_000, 'the bundle is refetched once its cache lifetime is over');
    // The refetch failed; every request before and after it got its token from the cached keys.
    statuses.add((await tokenRequest(await jwtSvid(), JWT_SPIFFE)).status);
    expect([...statuses]).toEqual([200]);
    const failures = await server.logLines((l) => l.msg === 'fetching an issuer\'s keys failed' && l.issuer === 'spire', 1);
    expect(failures[0]).toMatchObject({ err: 'issuer endpoint answered 503' });
    down.clear();
  }, 60_000);
});

test('issuer disable and enable reach the running server (NOTIFY on PostgreSQL; a restart on the embedded database)', async () => {
  const edgeToken = () => externalToken(staticKey, { iss: 'https://kubernetes.default.svc.cluster.local', sub: 'system:serviceaccount:edge:worker' });
  expect((await tokenRequest(await edgeToken())).status).toBe(200);
  expect((await workspace.cli('issuer', ['disable', 'edge'])).code).toBe(0);
  server = await applyPending(server, { JWKS_URI_CA: join(workspace.keysDir, 'dev-ca.crt') });
  await eventually(async () => (await tokenRequest(await edgeToken())).status === 401, 15_000, 'the disabled issuer is refused');
  expect((await refused(await edgeToken())).reason).toBe('issuer edge is disabled');
  expect((await workspace.cli('issuer', ['enable', 'edge'])).code).toBe(0);
  server = await applyPending(server, { JWKS_URI_CA: join(workspace.keysDir, 'dev-ca.crt') });
  await eventually(async () => (await tokenRequest(await edgeToken())).status === 200, 15_000, 'the enabled issuer is accepted again');
});

test('metadata keeps the standard method names: the engine\'s stand-in method is not advertised', async () => {
  const res = await server.fetch('/.well-known/oauth-authorization-server');
  const metadata = await res.json() as Record<string, string[]>;
  for (const field of ['token_endpoint_auth_methods_supported', 'introspection_endpoint_auth_methods_supported', 'revocation_endpoint_auth_methods_supported']) {
    expect(metadata[field]).toContain('private_key_jwt');
    expect(metadata[field]).not.toContain('none');
    expect(metadata[field]).not.toContain('federated');
  }
});

describe('operator commands', () => {
  test('issuer list shows every issuer; issuer and client add refuse bad input with one line', async () => {
    // The embedded database belongs to the running server: read it through a second workspace.
    const other = await createWorkspace();
    try {
      const bad = async (script: 'issuer' | 'client', args: string[], message: RegExp) => {
        const res = await other.cli(script, args);
        expect([res.code, res.stderr]).toEqual([2, expect.stringMatching(message)]);
      };
      await bad('issuer', ['add', 'x', '--issuer', 'http://plain.example.test'], /must be an https:\/\/ URL/);
      await bad('issuer', ['add', 'x', '--kind', 'spiffe', '--issuer', 'spiffe://example.org'], /needs the trust bundle/);
      await bad('issuer', ['add', 'x', '--kind', 'spiffe', '--issuer', 'spiffe://example.org/path', '--jwks-uri', 'https://b.example.test'], /SPIFFE trust domain/);
      await bad('issuer', ['add', 'x', '--issuer', 'https://a.example.test', '--max-lifetime', '10'], /--max-lifetime/);
      await bad('client', ['add', 'c', '--auth', 'federated', '--audience', API, '--issuer', 'nope', '--subject', 's'], /no issuer "nope"/);
      await bad('client', ['add', 'c', '--auth', 'federated', '--audience', API], /needs --issuer <name> and --subject <sub>/);
      await bad('client', ['add', 'c', '--auth', 'private_key_jwt', '--generate-key', 'k.pem', '--audience', API, '--issuer', 'x'], /--issuer does not apply/);

      expect((await other.cli('issuer', ['add', 'ci', '--issuer', 'https://token.actions.githubusercontent.com', '--audience', GHA_AUDIENCE, '--json'])).code).toBe(0);
      expect((await other.cli('issuer', ['enable', 'ci', '--json'])).code).toBe(0);
      expect((await other.cli('client', ['add', 'one', '--auth', 'federated', '--issuer', 'ci', '--subject', GHA_SUBJECT, '--audience', API])).code).toBe(0);
      expect((await other.cli('migrate', ['latest'])).code).toBe(0);
      // One external identity is one client: the database refuses the second mapping.
      const two = await other.cli('client', ['add', 'two', '--auth', 'federated', '--issuer', 'ci', '--subject', GHA_SUBJECT, '--audience', API, '--json']);
      expect(two.code).toBe(0);
      const migrate = await other.cli('migrate', ['latest']);
      expect(migrate.code).not.toBe(0);
      expect(migrate.stderr).toMatch(/clients_federated_identity_unique/);
      rmSync(join(other.dir, (JSON.parse(two.stdout) as { migration: string }).migration));
      // A federated client without its identity is refused by the database too.
      writeFileSync(join(other.migrationsDir, '29990101000000_client_hand_written.ts'), `
export async function up(knex) {
  await knex('clients').insert({ client_id: 'hand', auth_method: 'federated', audiences: ['${API}'] });
}
export async function down() {}
`);
      const handWritten = await other.cli('migrate', ['latest']);
      expect([handWritten.code, handWritten.stderr]).toEqual([1, expect.stringMatching(/federated_needs_identity_only/)]);
      const list = await other.cli('issuer', ['list', '--json']);
      expect(list.code).toBe(0);
      expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ name: 'ci', kind: 'oidc', keys: 'discovery', audience: GHA_AUDIENCE, enabled: true })]);
    } finally {
      await other.remove();
    }
    // A dozen operator commands, each a Node process: over two minutes on a loaded machine.
  }, 300_000);

  test('no URL an operator gives may carry user:password@; rows written before are listed without it', async () => {
    const other = await createWorkspace();
    try {
      const bad = async (script: 'issuer' | 'client', args: string[], message: RegExp) => {
        const res = await other.cli(script, args);
        expect([res.code, res.stderr]).toEqual([2, expect.stringMatching(message)]);
      };
      // Refused without being echoed.
      const withPassword = `https://user:${URL_SECRET}@keys.example.test/jwks`;
      const noCredentials = /^error: --[a-z-]+ "https:\/\/keys.example.test\/jwks" must not carry user:password@/;
      await bad('issuer', ['add', 'x', '--issuer', withPassword], noCredentials);
      await bad('issuer', ['add', 'x', '--issuer', 'https://a.example.test', '--jwks-uri', withPassword], noCredentials);
      await bad('issuer', ['add', 'x', '--issuer', 'https://a.example.test', '--audience', withPassword], noCredentials);
      await bad('client', ['add', 'c', '--auth', 'private_key_jwt', '--jwks-uri', withPassword, '--audience', API], noCredentials);
      await bad('client', ['add', 'c', '--auth', 'client_secret_basic', '--audience', `${API},${withPassword}`], noCredentials);
      await bad('client', ['add', 'c', '--auth', 'client_secret_basic', '--introspect', withPassword], noCredentials);
      await bad('client', ['add', 'c', '--auth', 'tls_client_auth', '--san-uri', withPassword, '--audience', API], noCredentials);
      expect(readdirSync(other.migrationsDir).filter((f) => /_(issuer_x|client_c)\.ts$/.test(f))).toEqual([]);
      // A row registered before credentials in URLs were refused is listed without them.
      writeFileSync(join(other.migrationsDir, '29990101000000_issuer_legacy.ts'), `
export async function up(knex) {
  await knex('issuers').insert({ name: 'legacy', kind: 'oidc', issuer: 'https://user:${URL_SECRET}@legacy.example.test', jwks_uri: 'https://user:${URL_SECRET}@legacy.example.test/jwks', max_lifetime: 3600 });
}
export async function down() {}
`);
      expect((await other.cli('migrate', ['latest'])).code).toBe(0);
      const list = await other.cli('issuer', ['list', '--json']);
      expect(list.code).toBe(0);
      expect(JSON.parse(list.stdout)).toEqual([
        expect.objectContaining({ name: 'legacy', issuer: 'https://legacy.example.test', keys: 'https://legacy.example.test/jwks' }),
      ]);
      const text = await other.cli('issuer', ['list']);
      expect(`${list.stdout}${text.stdout}`).not.toContain(URL_SECRET);
      expect(text.stdout).toMatch(/^legacy {2}oidc {2}enabled {2}https:\/\/legacy.example.test {2}keys=https:\/\/legacy.example.test\/jwks/m);
    } finally {
      await other.remove();
    }
  }, 300_000);
});
