// RFC 7662 introspection and RFC 7009 revocation of our JWT access tokens.
import { createHmac, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { calculateJwkThumbprint, generateKeyPair, SignJWT, type JWK } from 'jose';

import { addClient, applyPending, createWorkspace, decodeJwtPart, eventually, sleep, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://orders.example.test';
const OTHER = 'https://billing.example.test';
let workspace: Workspace;
let server: RunningServer;
const secrets: Record<string, string> = {};
/** Our signing key: a key file left in KEYS_DIR, which the first start imports as the signer. */
let signingKey: KeyObject;

beforeAll(async () => {
  workspace = await createWorkspace();
  const pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
  signingKey = pair.privateKey;
  const kid = await calculateJwkThumbprint(pair.publicKey.export({ format: 'jwk' }) as JWK, 'sha256');
  writeFileSync(join(workspace.keysDir, `sig-${kid}.pem`), signingKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const register = async (id: string, args: string[]) => {
    secrets[id] = (await addClient(workspace, id, ['--auth', 'client_secret_basic', ...args])).client_secret!;
  };
  await register('svc', ['--audience', API, '--scope', 'orders:read']);
  await register('svc-short', ['--audience', API, '--ttl', '3']);
  await register('svc-billing', ['--audience', OTHER]);
  await register('svc-doomed', ['--audience', API]);
  await register('rs-orders', ['--audience', 'https://unused.example.test', '--introspect', API]);
  await register('no-introspect', ['--audience', API]);
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

async function token(clientId: string, form: Record<string, string> = {}): Promise<string> {
  const res = await server.post('/token', { grant_type: 'client_credentials', ...form }, { basic: [clientId, secrets[clientId]!] });
  expect(res.status).toBe(200);
  return res.body.access_token as string;
}

async function introspect(value: string, caller = 'rs-orders') {
  return server.post('/token/introspection', { token: value }, { basic: [caller, secrets[caller]!] });
}

test('an allowed caller sees an active token with every field', async () => {
  const value = await token('svc');
  const claims = decodeJwtPart(value, 1);
  const res = await introspect(value);
  expect(res.status).toBe(200);
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.body).toEqual({
    active: true,
    client_id: 'svc',
    sub: 'svc',
    aud: API,
    scope: 'orders:read',
    iss: server.issuer,
    exp: claims.exp,
    iat: claims.iat,
    jti: claims.jti,
    token_type: 'Bearer',
  });
});

test('a token for another audience is inactive for this caller', async () => {
  const res = await introspect(await token('svc-billing'));
  expect(res.status).toBe(200);
  expect(res.body).toEqual({ active: false });
});

test('a tampered token is inactive', async () => {
  const value = await token('svc');
  const [header, payload, signature] = value.split('.');
  const claims = JSON.parse(Buffer.from(payload!, 'base64url').toString());
  claims.scope = 'orders:read orders:write';
  const forged = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${signature}`;
  expect((await introspect(forged)).body).toEqual({ active: false });
});

test('a token signed by a key that is not ours is inactive, even with our kid', async () => {
  const ours = decodeJwtPart(await token('svc'), 0);
  const { privateKey } = await generateKeyPair('RS256');
  const forged = await new SignJWT({ client_id: 'svc', scope: 'orders:read', jti: 'forged' })
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: ours.kid as string })
    .setIssuer(server.issuer).setSubject('svc').setAudience(API).setIssuedAt().setExpirationTime('5m')
    .sign(privateKey);
  expect((await introspect(forged)).body).toEqual({ active: false });
});

// Signed with our own signing key, so only the rule under test differs from a token we
// issue. The first case is the control: the forging itself is sound.
test('a token signed with our key is inactive when any rule is broken', async () => {
  const key = signingKey;
  const real = await token('svc');
  const header = decodeJwtPart(real, 0);
  const claims = decodeJwtPart(real, 1);
  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const forge = async (h: Record<string, unknown>, c: Record<string, unknown>) => {
    const signed = `${b64(h)}.${b64(c)}`;
    return `${signed}.${sign('sha256', Buffer.from(signed), key).toString('base64url')}`;
  };
  const now = Math.floor(Date.now() / 1000);

  expect((await introspect(await forge(header, { ...claims, jti: 'control' }))).body).toMatchObject({ active: true, jti: 'control' });
  const broken: [string, Record<string, unknown>, Record<string, unknown>][] = [
    ['another issuer', header, { ...claims, iss: 'https://evil.example.test' }],
    ['typ JWT', { ...header, typ: 'JWT' }, claims],
    ['no typ', { alg: 'RS256', kid: header.kid }, claims],
    ['an unknown kid', { ...header, kid: 'not-ours' }, claims],
    ['a crit header', { ...header, crit: ['exp'], exp: 1 }, claims],
    ['an expired exp', header, { ...claims, exp: now - 1 }],
    ['exp as a string', header, { ...claims, exp: String(now + 300) }],
    ['no exp', header, { ...claims, exp: undefined }],
    ['no jti', header, { ...claims, jti: undefined }],
    ['no client_id', header, { ...claims, client_id: undefined }],
    ['no sub', header, { ...claims, sub: undefined }],
    // Our audience plus a number: only the verifier's type check can refuse this one.
    ['a non-string in aud', header, { ...claims, aud: [claims.aud, 42] }],
    ['nbf in the future', header, { ...claims, nbf: now + 60 }],
    // Tokens this server would never issue: a signature is not enough (a key slipped into /jwks could make them).
    ['a lifetime past MAX_ACCESS_TOKEN_TTL', header, { ...claims, iat: now - 60, exp: now + 3600 }],
    ['a scope the client does not have', header, { ...claims, scope: 'orders:read orders:write' }],
  ];
  for (const [what, h, c] of broken) {
    expect([what, (await introspect(await forge(h, c))).body]).toEqual([what, { active: false }]);
  }
  // alg none, and HS256 keyed with our public key (the algorithm-confusion attack).
  const input = (alg: string) => `${b64({ ...header, alg })}.${b64(claims)}`;
  const publicPem = createPublicKey(key).export({ type: 'spki', format: 'pem' });
  const confused = `${input('HS256')}.${createHmac('sha256', publicPem).update(input('HS256')).digest('base64url')}`;
  for (const forged of [`${input('none')}.`, confused, `${input('RS256')}.${real.split('.')[2]}x`]) {
    expect((await introspect(forged)).body).toEqual({ active: false });
  }
});

test('garbage and empty-looking tokens are inactive, a missing token is invalid_request', async () => {
  expect((await introspect('not-a-jwt')).body).toEqual({ active: false });
  expect((await introspect('e30.e30.')).body).toEqual({ active: false });
  const missing = await server.post('/token/introspection', {}, { basic: ['rs-orders', secrets['rs-orders']!] });
  expect(missing.status).toBe(400);
  expect(missing.body).toMatchObject({ error: 'invalid_request' });
});

test('an expired token is inactive from its exp on (no clock tolerance)', async () => {
  const value = await token('svc-short');
  const { exp } = decodeJwtPart(value, 1) as { exp: number };
  expect((await introspect(value)).body).toMatchObject({ active: true });
  await sleep(Math.max(0, exp * 1000 - Date.now()) + 50);
  expect((await introspect(value)).body).toEqual({ active: false });
});

test('a caller registered without --introspect is refused', async () => {
  const res = await introspect(await token('svc'), 'no-introspect');
  expect(res.status).toBe(403);
  expect(res.body).toMatchObject({ error: 'unauthorized_client' });
});

test('an unauthenticated or wrongly authenticated caller gets 401 invalid_client', async () => {
  const value = await token('svc');
  const wrong = await server.post('/token/introspection', { token: value }, { basic: ['rs-orders', 'wrong'] });
  expect(wrong.status).toBe(401);
  expect(wrong.body).toEqual({ error: 'invalid_client', error_description: 'client authentication failed' });
  const none = await server.post('/token/introspection', { token: value });
  expect(none.status).toBe(400);
  expect(none.body).toMatchObject({ error: 'invalid_request' });
});

describe('revocation', () => {
  test('the owner revokes its token; it then introspects inactive', async () => {
    const value = await token('svc');
    const res = await server.post('/token/revocation', { token: value, token_type_hint: 'access_token' }, { basic: ['svc', secrets.svc!] });
    expect(res.status).toBe(200);
    expect((await introspect(value)).body).toEqual({ active: false });
    // Revoking again, or revoking garbage, is still 200 (RFC 7009 section 2.2).
    const again = await server.post('/token/revocation', { token: value }, { basic: ['svc', secrets.svc!] });
    expect(again.status).toBe(200);
    const garbage = await server.post('/token/revocation', { token: 'garbage' }, { basic: ['svc', secrets.svc!] });
    expect(garbage.status).toBe(200);
  });

  test('a resource API that may introspect the token may revoke it', async () => {
    const value = await token('svc');
    const res = await server.post('/token/revocation', { token: value }, { basic: ['rs-orders', secrets['rs-orders']!] });
    expect(res.status).toBe(200);
    expect((await introspect(value)).body).toEqual({ active: false });
  });

  test('another client may not revoke it', async () => {
    const value = await token('svc');
    const res = await server.post('/token/revocation', { token: value }, { basic: ['svc-billing', secrets['svc-billing']!] });
    expect(res.status).toBe(403);
    expect(res.body).toMatchObject({ error: 'unauthorized_client' });
    expect((await introspect(value)).body).toMatchObject({ active: true });
  });

  test('revocation needs client authentication', async () => {
    const value = await token('svc');
    const res = await server.post('/token/revocation', { token: value }, { basic: ['svc', 'wrong'] });
    expect(res.status).toBe(401);
    expect(res.body).toEqual({ error: 'invalid_client', error_description: 'client authentication failed' });
    expect((await introspect(value)).body).toMatchObject({ active: true });
  });
});

test('a disabled client\'s tokens introspect inactive', async () => {
  const value = await token('svc-doomed');
  expect((await introspect(value)).body).toMatchObject({ active: true });
  expect((await workspace.cli('client', ['disable', 'svc-doomed'])).code).toBe(0);
  server = await applyPending(server);
  const deadline = Date.now() + 11_000;
  let body: unknown;
  do {
    body = (await introspect(value)).body;
    if ((body as { active: boolean }).active === false) break;
    await sleep(200);
  } while (Date.now() < deadline);
  expect(body).toEqual({ active: false });

  // Revoked while its client is disabled, the token stays revoked when the client returns.
  const revoked = await server.post('/token/revocation', { token: value }, { basic: ['rs-orders', secrets['rs-orders']!] });
  expect(revoked.status).toBe(200);
  expect((await workspace.cli('client', ['enable', 'svc-doomed'])).code).toBe(0);
  server = await applyPending(server);
  await eventually(async () => {
    const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc-doomed', secrets['svc-doomed']!] });
    return res.status === 200 && (await introspect(res.body.access_token)).body.active === true;
  }, 11_000, 'svc-doomed enabled again');
  expect((await introspect(value)).body).toEqual({ active: false });
});
