// Which client keys are accepted: RSA 2048-4096 bits with exponent 65537, P-256/P-384, or
// Ed25519. Anything else is refused by `client add --jwks` (a clear CLI error) and ignored
// (and logged) when served at a jwks_uri; and a jwks_uri whose address is not public, in any
// of the IPv6 forms that carry an IPv4 address, is refused before any connection.
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server } from 'node:https';
import { join } from 'node:path';

import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK, type KeyObject } from 'jose';

import { ensureDevTls } from '../src/keys/dev-tls.ts';
import { addClient, createWorkspace, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

let workspace: Workspace;
let server: RunningServer;
let jwksServer: Server;
let jwksPort: number;
let connections = 0;
const served = new Map<string, string>();

/** A public RSA JWK with a made-up modulus of `bits` bits: enough for any check that reads n and e. */
function rsaShaped(bits: number, e = 'AQAB', kid = `rsa-${bits}`): JWK {
  const n = randomBytes(bits / 8);
  n[0]! |= 0x80;
  n[n.length - 1]! |= 1;
  return { kty: 'RSA', n: n.toString('base64url'), e, kid };
}

function rsaJwk(modulusLength: number, publicExponent = 65537, kid = `rsa-${modulusLength}-${publicExponent}`): { jwk: JWK; key: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength, publicExponent });
  return { jwk: { ...(publicKey.export({ format: 'jwk' }) as JWK), kid }, key: privateKey };
}

async function generated(alg: string, kid: string): Promise<{ jwk: JWK; key: CryptoKey }> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  return { jwk: { ...(await exportJWK(publicKey)), kid }, key: privateKey };
}

function register(clientId: string, keys: JWK[]) {
  const file = join(workspace.dir, `${clientId}.json`);
  writeFileSync(file, JSON.stringify({ keys }));
  return workspace.cli('client', ['add', clientId, '--auth', 'private_key_jwt', '--jwks', file, '--audience', API]);
}

async function assertion(clientId: string, key: CryptoKey | KeyObject, kid: string, alg: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: clientId, sub: clientId, aud: server.issuer, jti: randomUUID(), iat: now, exp: now + 60 })
    .setProtectedHeader({ alg, kid }).sign(key);
}

function tokenRequest(on: RunningServer, clientAssertion: string) {
  return on.post('/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: clientAssertion });
}

beforeAll(async () => {
  workspace = await createWorkspace({ AUTH_FAILURE_LIMIT: '100000', AUTH_FAILURE_ADDRESS_LIMIT: '1000000' });
  await ensureDevTls(workspace.keysDir);
  jwksPort = await freePort();
  jwksServer = createHttpsServer({
    cert: readFileSync(join(workspace.keysDir, 'dev-server.crt')),
    key: readFileSync(join(workspace.keysDir, 'dev-server.key')),
  }, (req, res) => {
    const body = served.get(req.url ?? '');
    res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' });
    res.end(body ?? '{}');
  });
  jwksServer.on('connection', () => { connections += 1; });
  await new Promise<void>((done) => jwksServer.listen(jwksPort, '::', done));
});

afterAll(async () => {
  await server?.stop();
  await new Promise((done) => jwksServer?.close(done));
  await workspace?.remove();
});

describe('client add --jwks', () => {
  test.each<[string, () => Promise<JWK> | JWK, RegExp]>([
    ['RSA-1024', () => rsaJwk(1024).jwk, /RSA keys must be 2048-4096 bits, not 1024/],
    ['RSA-2048 with exponent 3', () => rsaJwk(2048, 3).jwk, /exponent 65537/],
    ['RSA-2048 with a 3040-bit exponent', () => ({ ...rsaShaped(2048), e: rsaShaped(3040).n }), /exponent 65537/],
    ['RSA-16384', () => rsaShaped(16384), /RSA keys must be 2048-4096 bits, not 16384/],
    ['RSA-4104', () => rsaShaped(4104), /not 4104/],
    ['EC P-521', async () => (await generated('ES512', 'p521')).jwk, /P-256 or P-384, not "P-521"/],
    ['EC secp256k1', () => ({ kty: 'EC', crv: 'secp256k1', x: randomBytes(32).toString('base64url'), y: randomBytes(32).toString('base64url') }), /not "secp256k1"/],
    ['Ed448', () => ({ ...(generateKeyPairSync('ed448').publicKey.export({ format: 'jwk' }) as JWK), kid: 'ed448' }), /Ed25519, not "Ed448"/],
  ])('%s is refused with a clear error, and nothing is written', async (name, make, message) => {
    const id = `svc-${name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
    const good = await generated('ES256', 'good');
    const result = await register(id, [good.jwk, await make()]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/key 1 is refused/);
    expect(result.stderr).toMatch(message);
    expect((await workspace.cli('client', ['list', '--json'])).stdout).not.toContain(id);
  });

  test.each<[string, () => Promise<JWK> | JWK]>([
    ['RSA-2048', () => rsaJwk(2048).jwk],
    ['RSA-4096', () => rsaShaped(4096)],
    ['EC P-256', async () => (await generated('ES256', 'p256')).jwk],
    ['EC P-384', async () => (await generated('ES384', 'p384')).jwk],
    ['Ed25519', async () => (await generated('EdDSA', 'ed25519')).jwk],
  ])('%s is accepted', async (name, make) => {
    const result = await register(`svc-ok-${name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`, [await make()]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  });
});

test('a client with any accepted kind of key gets a token, its assertion signed with the alg for that key', async () => {
  const kinds: [string, string, { jwk: JWK; key: CryptoKey | KeyObject }][] = [
    ['rsa-2048', 'RS256', rsaJwk(2048)],
    ['rsa-2048-pss', 'PS256', rsaJwk(2048, 65537, 'rsa-pss')],
    ['ec-p256', 'ES256', await generated('ES256', 'p256')],
    // Accepted at registration, so usable: a P-384 key signs ES384.
    ['ec-p384', 'ES384', await generated('ES384', 'p384')],
    ['ed25519', 'EdDSA', await generated('EdDSA', 'ed25519')],
  ];
  for (const [name, , { jwk }] of kinds) {
    const result = await register(`svc-use-${name}`, [jwk]);
    expect(result.stderr).toBe('');
  }
  const port = await freePort();
  const own = await startServer(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` });
  try {
    const metadata = await (await own.fetch('/.well-known/oauth-authorization-server')).json() as Record<string, string[]>;
    for (const [name, alg, { jwk, key }] of kinds) {
      expect(metadata.token_endpoint_auth_signing_alg_values_supported).toContain(alg);
      const clientId = `svc-use-${name}`;
      const now = Math.floor(Date.now() / 1000);
      const signed = await new SignJWT({ iss: clientId, sub: clientId, aud: own.issuer, jti: randomUUID(), iat: now, exp: now + 60 })
        .setProtectedHeader({ alg, kid: jwk.kid! }).sign(key);
      const res = await tokenRequest(own, signed);
      expect({ clientId, status: res.status, body: res.status === 200 ? 'token' : res.body }).toEqual({ clientId, status: 200, body: 'token' });
    }
  } finally {
    await own.stop();
  }
});

describe('jwks_uri', () => {
  let weak: { jwk: JWK; key: KeyObject };
  let good: { jwk: JWK; key: CryptoKey };
  let privateServer: RunningServer;

  beforeAll(async () => {
    // Exponent 3: the engine's own checks let it through; the key policy does not.
    weak = rsaJwk(2048, 3, 'weak');
    good = await generated('ES256', 'good');
    served.set('/mixed.json', JSON.stringify({ keys: [weak.jwk, rsaShaped(16384, 'AQAB', 'huge'), good.jwk] }));
    served.set('/plain.json', JSON.stringify({ keys: [good.jwk] }));
    await addClient(workspace, 'svc-mixed', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${jwksPort}/mixed.json`, '--audience', API]);
    // IPv6 forms that carry a loopback or link-local IPv4 address.
    for (const [name, host] of [['compat', '::7f00:1'], ['compat-private', '::a00:1'], ['compat-metadata', '::a9fe:a9fe'],
      ['siit', '::ffff:0:7f00:1'], ['nat64', '64:ff9b::7f00:1'], ['sixtofour', '2002:7f00:1::1'], ['mapped', '::ffff:127.0.0.1']]) {
      await addClient(workspace, `svc-v6-${name}`, ['--auth', 'private_key_jwt', '--jwks-uri', `https://[${host}]:${jwksPort}/plain.json`, '--audience', API]);
    }
  });

  afterAll(async () => {
    await privateServer?.stop();
  });

  test('an embedded-IPv4 address of loopback, private or link-local is refused before connecting', async () => {
    server = await startServer(workspace, { JWKS_URI_CA: join(workspace.keysDir, 'dev-ca.crt') });
    for (const name of ['compat', 'compat-private', 'compat-metadata', 'siit', 'nat64', 'sixtofour', 'mapped']) {
      const clientId = `svc-v6-${name}`;
      const res = await tokenRequest(server, await assertion(clientId, good.key, 'good', 'ES256'));
      expect(res.status).toBe(401);
      const [line] = await server.logLines((l) => l.msg === 'fetching a client\'s jwks_uri failed' && l.client_id === clientId, 1);
      expect(line?.err).toMatch(/is not a public address/);
    }
    expect(connections).toBe(0);
  });

  test('served keys of a refused kind are ignored and logged; the good key in the same set works', async () => {
    // The embedded database belongs to one process at a time.
    await server?.stop();
    privateServer = await startServer(workspace, {
      JWKS_URI_ALLOW_PRIVATE: 'true', JWKS_URI_CA: join(workspace.keysDir, 'dev-ca.crt'),
    });
    const withWeak = await tokenRequest(privateServer, await assertion('svc-mixed', weak.key, 'weak', 'RS256'));
    expect(withWeak.status).toBe(401);
    const ignored = await privateServer.logLines((l) => l.msg === 'ignored a key served at a client\'s jwks_uri', 2);
    expect(ignored.map((l) => [l.client_id, l.kid, l.reason])).toEqual(expect.arrayContaining([
      ['svc-mixed', 'weak', 'RSA keys must have the public exponent 65537'],
      ['svc-mixed', 'huge', 'RSA keys must be 2048-4096 bits, not 16384'],
    ]));
    const withGood = await tokenRequest(privateServer, await assertion('svc-mixed', good.key, 'good', 'ES256'));
    expect(withGood.status).toBe(200);
  });
});
