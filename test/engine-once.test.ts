// The engine is built once per process: a signing-key change swaps the signer and the
// published keys, and keeps what the engine learnt about clients. After a rotation, a
// jwks_uri client's keys are not fetched again and a DPoP client's proof key is not imported
// again; the new key signs (its kid in the token header) and is in /jwks.
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';

import { SignJWT } from 'jose';

import { dpopKey, dpopProof, type DpopKey } from '../examples/dpop-client.ts';
import { ensureDevTls } from '../src/keys/dev-tls.ts';
import { addClient, createWorkspace, decodeJwtPart, eventually, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

let workspace: Workspace;
let server: RunningServer;
let keyServer: Server;
let fetches = 0;
let secret: string;
let proofKey: DpopKey;
let assertionKey: CryptoKey;

beforeAll(async () => {
  // A new signing key every 4.32 s (KEY_ROTATION_DAYS takes fractions), signing 1 s after it is published.
  workspace = await createWorkspace({
    JWKS_MAX_AGE: '0', KEYS_RELOAD_SECONDS: '1', MAX_ACCESS_TOKEN_TTL: '5', ACCESS_TOKEN_TTL: '5', KEY_ROTATION_DAYS: '0.00005',
  });
  await ensureDevTls(workspace.keysDir);
  const { privateKey, publicKey } = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  assertionKey = privateKey;
  const jwk = { ...(await crypto.subtle.exportKey('jwk', publicKey)), kid: 'k1', use: 'sig' };
  delete (jwk as { key_ops?: unknown }).key_ops;
  delete (jwk as { ext?: unknown }).ext;
  keyServer = createServer({
    cert: readFileSync(join(workspace.keysDir, 'dev-server.crt')),
    key: readFileSync(join(workspace.keysDir, 'dev-server.key')),
  }, (_req, res) => {
    fetches += 1;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((done) => keyServer.listen(0, '127.0.0.1', done));
  const { port } = keyServer.address() as { port: number };
  await addClient(workspace, 'svc-uri', ['--auth', 'private_key_jwt', '--jwks-uri', `https://127.0.0.1:${port}/jwks`, '--audience', API]);
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  proofKey = await dpopKey('ES256');
  // One process: each process keeps its own caches.
  server = await startServer(workspace, { JWKS_URI_ALLOW_PRIVATE: 'true', JWKS_URI_CA: join(workspace.keysDir, 'dev-ca.crt'), WORKERS: '1' });
}, 120_000);

afterAll(async () => {
  keyServer?.closeAllConnections();
  await new Promise((done) => keyServer ? keyServer.close(done) : done(undefined));
  await server?.stop();
  await workspace?.remove();
});

async function assertionToken(): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const assertion = await new SignJWT({ iss: 'svc-uri', sub: 'svc-uri', aud: server.issuer, jti: randomUUID(), iat: now, exp: now + 60 })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(assertionKey);
  const res = await server.post('/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: assertion });
  expect(res.status).toBe(200);
  return res.body.access_token as string;
}

async function dpopToken(): Promise<string> {
  const res = await server.post('/token', { grant_type: 'client_credentials' }, {
    basic: ['svc', secret], headers: { dpop: await dpopProof(proofKey, 'POST', `${server.issuer}/token`) },
  });
  expect(res.status).toBe(200);
  expect(res.body.token_type).toBe('DPoP');
  return res.body.access_token as string;
}

const kidOf = (token: string) => decodeJwtPart(token, 0).kid as string;
const imports = () => server.output().split('\n').filter((line) => line.includes('"msg":"imported a DPoP proof key"')).length;

test('after a key rotation, no jwks_uri is fetched again and no DPoP proof key is imported again', async () => {
  const first = kidOf(await assertionToken());
  expect(kidOf(await dpopToken())).toBe(first);
  expect(fetches).toBe(1);
  await eventually(async () => imports() === 1, 15_000, 'the proof key import logged');

  // A rotation: the next key signs, and is published.
  let rotated = '';
  await eventually(async () => (rotated = kidOf(await assertionToken())) !== first, 60_000, 'a new key signing');
  const jwks = (await (await server.fetch('/jwks')).json()) as { keys: { kid: string }[] };
  expect(jwks.keys.map((k) => k.kid)).toContain(rotated);
  const dpopKid = kidOf(await dpopToken());
  expect(dpopKid === rotated || jwks.keys.some((k) => k.kid === dpopKid)).toBe(true);

  expect(fetches).toBe(1);
  expect(imports()).toBe(1);
}, 120_000);
