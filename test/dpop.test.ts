// DPoP (RFC 9449) end to end, against the real server: openid-client gets a DPoP-bound
// token and calls a resource API that runs the documented check (examples/); every kind of
// bad proof gets 400 invalid_dpop_proof; a proof is single use, also when its copies race
// (across two workers and two instances on PostgreSQL); server nonces; `--dpop` clients;
// a certificate-bound client's proof; metadata, introspection, audit line and metrics.
import { createPrivateKey, generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { createRemoteJWKSet, customFetch, exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import * as oauth from 'openid-client';
import { Agent, fetch as undiciFetch, request } from 'undici';

import { dpopKey, dpopProof, dpopThumbprint, type DpopKey } from '../examples/dpop-client.ts';
import { checkDpopRequest, DpopRefused, type ResourceConfig } from '../examples/dpop-resource.ts';
import {
  addClient, createWorkspace, decodeJwtPart, freePort, ROOT, startServer, type RunningServer, type Workspace,
} from './helpers/server.ts';

const API = 'https://api.example.test';
const NO_LOCKOUT = { AUTH_FAILURE_LIMIT: '100000', AUTH_FAILURE_ADDRESS_LIMIT: '1000000' };
const grant = { grant_type: 'client_credentials' };

let workspace: Workspace;
let server: RunningServer;
let secret: string; // svc: client_secret_basic, may introspect API
let dpopSecret: string; // svc-dpop: --dpop
let boundSecret: string; // svc-bound: --bound
let clientCert: { cert: string; key: string };
let key: DpopKey;
let svcMigration: string;
let dpopMigration: string;

const now = () => Math.floor(Date.now() / 1000);
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A proof for the token endpoint, with any claim or header member changed. */
async function proof(claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}, signer: DpopKey = key, on = server): Promise<string> {
  return new SignJWT({ htm: 'POST', htu: `${on.issuer}/token`, jti: randomUUID(), iat: now(), ...claims })
    .setProtectedHeader({ typ: 'dpop+jwt', alg: signer.alg, jwk: signer.jwk, ...header })
    .sign(signer.privateKey);
}

/** An RS256 proof signed with node:crypto, for what jose will not sign (a short key, crit). */
function rawProof(header: Record<string, unknown>, claims: Record<string, unknown>, privateKeyPem: string): string {
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${sign('sha256', Buffer.from(input), createPrivateKey(privateKeyPem)).toString('base64url')}`;
}

function tokenRequest(dpop: string | undefined, basic: [string, string] = ['svc', secret], on = server) {
  return on.post('/token', grant, { basic, headers: dpop === undefined ? {} : { dpop } });
}

function expectRefused(res: { status: number; headers: Headers; body: any }, error = 'invalid_dpop_proof') {
  expect(res.status).toBe(400);
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.body.error).toBe(error);
  expect(typeof res.body.error_description).toBe('string');
}

beforeAll(async () => {
  workspace = await createWorkspace(NO_LOCKOUT);
  ({ client_secret: secret, migration: svcMigration } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API, '--scope', 'read', '--introspect', API])) as { client_secret: string; migration: string });
  ({ client_secret: dpopSecret, migration: dpopMigration } = (await addClient(workspace, 'svc-dpop', ['--auth', 'client_secret_basic', '--audience', API, '--dpop'])) as { client_secret: string; migration: string });
  ({ client_secret: boundSecret } = (await addClient(workspace, 'svc-bound', ['--auth', 'client_secret_basic', '--audience', API, '--bound'])) as { client_secret: string });
  const issued = await workspace.cli('client', ['cert', 'svc-bound', '--out', join(workspace.dir, 'certs'), '--json']);
  if (issued.code !== 0) throw new Error(issued.stderr);
  clientCert = { cert: readFileSync(join(workspace.dir, 'certs', 'svc-bound.crt'), 'utf8'), key: readFileSync(join(workspace.dir, 'certs', 'svc-bound.key'), 'utf8') };
  key = await dpopKey('ES256');
  server = await startServer(workspace);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

describe('a DPoP-bound token, end to end', () => {
  let resource: Server;
  let resourceUrl: string;

  beforeAll(async () => {
    const config: ResourceConfig = {
      issuer: server.issuer,
      audience: API,
      jwks: createRemoteJWKSet(new URL(`${server.issuer}/jwks`), {
        [customFetch]: (url: string, init: object) => undiciFetch(url, { ...init, dispatcher: server.agent() }),
      } as never),
      seen: new Map(),
    };
    // The resource API: examples/dpop-resource.ts behind a real HTTP listener.
    resource = createHttpServer((req, res) => {
      const { port } = resource.address() as AddressInfo;
      checkDpopRequest(config, { method: req.method!, url: `http://127.0.0.1:${port}${req.url}`, authorization: req.headers.authorization, dpop: req.headers.dpop })
        .then((claims) => {
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ client_id: claims.client_id }));
        })
        .catch((err: unknown) => {
          res.writeHead(401, { 'www-authenticate': 'DPoP error="invalid_token"', 'content-type': 'application/json' })
            .end(JSON.stringify({ refused: err instanceof DpopRefused ? err.message : (err as Error).name }));
        });
    });
    await new Promise<void>((done) => resource.listen(0, '127.0.0.1', done));
    resourceUrl = `http://127.0.0.1:${(resource.address() as AddressInfo).port}/orders?page=1`;
  });

  afterAll(async () => {
    await new Promise((done) => resource.close(done));
  });

  test('openid-client gets a DPoP token (cnf.jkt = its key) and calls the resource API with it', async () => {
    const fetchWithCa: oauth.CustomFetch = (url, options) => undiciFetch(url, { ...(options as object), dispatcher: server.agent() }) as unknown as Promise<Response>;
    const config = await oauth.discovery(new URL(server.issuer), 'svc', undefined, oauth.ClientSecretBasic(secret), { [oauth.customFetch]: fetchWithCa });
    config[oauth.customFetch] = fetchWithCa;
    oauth.allowInsecureRequests(config); // the resource API of this test listens on plain HTTP
    const pair = await oauth.randomDPoPKeyPair('ES256');
    const DPoP = oauth.getDPoPHandle(config, pair);
    const tokens = await oauth.clientCredentialsGrant(config, { scope: 'read' }, { DPoP });
    expect(tokens.token_type).toBe('dpop');
    const claims = decodeJwtPart(tokens.access_token, 1);
    const jkt = await dpopThumbprint({ privateKey: pair.privateKey, jwk: await exportJWK(pair.publicKey), alg: 'ES256' });
    expect(claims.cnf).toEqual({ jkt });

    const res = await oauth.fetchProtectedResource(config, tokens.access_token, new URL(resourceUrl), 'GET', undefined, undefined, { DPoP });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ client_id: 'svc' });
  });

  test('the resource check refuses the token as Bearer, another key\'s proof, a proof without ath, and a replay', async () => {
    const res = await tokenRequest(await dpopProof(key, 'POST', `${server.issuer}/token`));
    expect(res.status).toBe(200);
    expect(res.body.token_type).toBe('DPoP');
    const token = res.body.access_token as string;
    const call = async (authorization: string, dpop: string) => {
      const answer = await undiciFetch(resourceUrl, { headers: { authorization, dpop } });
      return { status: answer.status, body: await answer.json() as { refused?: string } };
    };
    const other = await dpopKey('EdDSA');
    expect(await call(`Bearer ${token}`, await dpopProof(key, 'GET', resourceUrl, { accessToken: token })))
      .toEqual({ status: 401, body: { refused: 'Authorization: DPoP <token> required' } });
    expect(await call(`DPoP ${token}`, await dpopProof(other, 'GET', resourceUrl, { accessToken: token })))
      .toEqual({ status: 401, body: { refused: 'the proof key is not the token\'s key' } });
    expect(await call(`DPoP ${token}`, await dpopProof(key, 'GET', resourceUrl)))
      .toEqual({ status: 401, body: { refused: 'ath does not match the token' } });
    expect(await call(`DPoP ${token}`, await dpopProof(key, 'POST', resourceUrl, { accessToken: token })))
      .toEqual({ status: 401, body: { refused: 'htm does not match the request' } });
    const good = await dpopProof(key, 'GET', resourceUrl, { accessToken: token });
    expect(await call(`DPoP ${token}`, good)).toEqual({ status: 200, body: { client_id: 'svc' } });
    expect(await call(`DPoP ${token}`, good)).toEqual({ status: 401, body: { refused: 'proof replayed' } });
  });

  test('every allowed algorithm makes a proof the server accepts: RS256, PS256, ES256, ES384, EdDSA', async () => {
    for (const alg of ['RS256', 'PS256', 'ES256', 'ES384', 'EdDSA']) {
      const signer = await dpopKey(alg);
      const res = await tokenRequest(await proof({}, {}, signer));
      expect([alg, res.status, res.body.token_type]).toEqual([alg, 200, 'DPoP']);
      expect(decodeJwtPart(res.body.access_token, 1).cnf).toEqual({ jkt: await dpopThumbprint(signer) });
    }
  });

  test('introspection shows token_type DPoP and cnf.jkt', async () => {
    const res = await tokenRequest(await proof());
    const introspected = await server.post('/token/introspection', { token: res.body.access_token }, { basic: ['svc', secret] });
    expect(introspected.body).toMatchObject({ active: true, token_type: 'DPoP', cnf: { jkt: await dpopThumbprint(key) } });
    const bearer = await tokenRequest(undefined);
    const plain = await server.post('/token/introspection', { token: bearer.body.access_token }, { basic: ['svc', secret] });
    expect(plain.body).toMatchObject({ active: true, token_type: 'Bearer' });
    expect(plain.body.cnf).toBeUndefined();
  });

  test('the audit line and the metrics name the binding', async () => {
    const res = await tokenRequest(await proof());
    const { jti } = decodeJwtPart(res.body.access_token, 1);
    const [line] = await server.logLines((l) => l.event === 'token.issued' && l.jti === jti, 1);
    expect(line).toMatchObject({ client_id: 'svc', binding: 'dpop', jkt: await dpopThumbprint(key), bound: false });
    expect(JSON.stringify(line)).not.toContain(res.body.access_token);
    const metrics = await (await server.management('/metrics')).text();
    expect(metrics).toMatch(/^m2m_tokens_issued_total\{[^}]*client_id="svc"[^}]*binding="dpop"[^}]*\} [1-9]/m);
  });
});

test('metadata lists the proof algorithms', async () => {
  const metadata = await (await server.fetch('/.well-known/oauth-authorization-server')).json() as Record<string, unknown>;
  expect(metadata.dpop_signing_alg_values_supported).toEqual(['RS256', 'PS256', 'ES256', 'ES384', 'EdDSA']);
});

describe('every bad proof: 400 invalid_dpop_proof, and no token', () => {
  const cases: [string, () => Promise<string>][] = [
    ['not a JWT', async () => 'eyJhbGciOiJFUzI1NiJ9.e30.x'],
    ['typ JWT', () => proof({}, { typ: 'JWT' })],
    ['no typ', () => proof({}, { typ: undefined })],
    ['alg none', async () => `${b64({ typ: 'dpop+jwt', alg: 'none', jwk: key.jwk })}.${b64({ htm: 'POST', htu: `${server.issuer}/token`, jti: randomUUID(), iat: now() })}.`],
    ['alg HS256 with a symmetric jwk', async () => {
      const k = Buffer.alloc(32, 7);
      return new SignJWT({ htm: 'POST', htu: `${server.issuer}/token`, jti: randomUUID(), iat: now() })
        .setProtectedHeader({ typ: 'dpop+jwt', alg: 'HS256', jwk: { kty: 'oct', k: k.toString('base64url') } as never }).sign(k);
    }],
    ['a private jwk in the header', async () => {
      const { privateKey } = await generateKeyPair('ES256', { extractable: true });
      const jwk: JWK = await exportJWK(privateKey);
      return proof({}, { jwk }, { privateKey, jwk, alg: 'ES256' });
    }],
    ['no jwk', () => proof({}, { jwk: undefined })],
    ['a jwk with a private member other than d', () => proof({}, { jwk: { ...key.jwk, p: 'AQAB' } })],
    ['a jwk for encryption (use enc)', () => proof({}, { jwk: { ...key.jwk, use: 'enc' } })],
    ['a jwk for another alg than the header\'s', () => proof({}, { jwk: { ...key.jwk, alg: 'ES384' } })],
    ['a jwk whose ext is not a boolean', () => proof({}, { jwk: { ...key.jwk, ext: 'yes' } as never })],
    ['a signature by another key than the jwk', async () => {
      const other = await dpopKey('ES256');
      return proof({}, { jwk: other.jwk });
    }],
    ['a tampered payload', async () => {
      const [h, , s] = (await proof()).split('.');
      return `${h}.${b64({ htm: 'POST', htu: `${server.issuer}/token`, jti: randomUUID(), iat: now() })}.${s}`;
    }],
    ['alg ES256 with an RSA jwk', async () => {
      const rsa = await dpopKey('RS256');
      return proof({}, { alg: 'ES256', jwk: rsa.jwk });
    }],
    ['an RSA key of 1024 bits', async () => {
      const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
      return rawProof({ typ: 'dpop+jwt', alg: 'RS256', jwk: publicKey.export({ format: 'jwk' }) },
        { htm: 'POST', htu: `${server.issuer}/token`, jti: randomUUID(), iat: now() }, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    }],
    ['an RSA key with the exponent 3 (the key policy: costly keys are refused before verifying)', async () => {
      const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 3 });
      return rawProof({ typ: 'dpop+jwt', alg: 'RS256', jwk: publicKey.export({ format: 'jwk' }) },
        { htm: 'POST', htu: `${server.issuer}/token`, jti: randomUUID(), iat: now() }, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    }],
    ['a crit header', async () => {
      const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      return rawProof({ typ: 'dpop+jwt', alg: 'RS256', jwk: publicKey.export({ format: 'jwk' }), crit: ['exp'], exp: now() + 60 },
        { htm: 'POST', htu: `${server.issuer}/token`, jti: randomUUID(), iat: now() }, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    }],
    ['a jwk whose key_ops do not include verify', () => proof({}, { jwk: { ...key.jwk, key_ops: ['sign'] } })],
    ['a P-256 signature cut short', async () => (await proof()).slice(0, -8)],
    ['a signature with a character outside base64url', async () => `${(await proof()).slice(0, -2)}+A`],
    ['an exp that has passed', () => proof({ exp: now() - 5 })],
    ['an nbf still to come', () => proof({ nbf: now() + 60 })],
    ['jti a number', () => proof({ jti: 42 })],
    ['htm GET', () => proof({ htm: 'GET' })],
    ['htu of another server', () => proof({ htu: 'https://as.example.org/token' })],
    ['htu of another endpoint', () => proof({ htu: `${server.issuer}/token/introspection` })],
    ['htu over http', () => proof({ htu: `${server.issuer.replace('https:', 'http:')}/token` })],
    ['no htu', () => proof({ htu: undefined })],
    ['iat 2 minutes old', () => proof({ iat: now() - 120 })],
    ['iat 10 minutes old', () => proof({ iat: now() - 600 })],
    ['iat 1 minute ahead', () => proof({ iat: now() + 60 })],
    ['no iat', () => proof({ iat: undefined })],
    ['no jti', () => proof({ jti: undefined })],
    ['a nonce this server never issued', () => proof({ nonce: 'made-up' })],
    ['two proofs in the header', async () => `${await proof()}, ${await proof()}`],
  ];

  test.each(cases)('%s', async (_name, make) => {
    const res = await tokenRequest(await make());
    expectRefused(res);
    expect(res.body.access_token).toBeUndefined();
  });

  test('the edges of the iat window are accepted: 60 s old plus 15 s tolerance, 15 s ahead', async () => {
    // Within the window with a margin for a slow machine, on both sides.
    expect((await tokenRequest(await proof({ iat: now() - 60 - 10 }))).status).toBe(200);
    expect((await tokenRequest(await proof({ iat: now() + 10 }))).status).toBe(200);
  });

  test('the refusal and its reason are in the audit line', async () => {
    const refusal = (l: Record<string, unknown>) => l.event === 'token.refused' && l.error === 'invalid_dpop_proof' && l.reason === 'DPoP proof htm mismatch';
    // Other tests on this server may have been refused for the same reason: this one adds a line.
    const before = (await server.logLines(refusal, 0)).length;
    const res = await tokenRequest(await proof({ htm: 'GET' }));
    expectRefused(res);
    const lines = await server.logLines(refusal, before + 1);
    expect(lines).toHaveLength(before + 1);
  });
});

describe('htu is the token endpoint under ISSUER, whatever the Host header says', () => {
  async function withHost(host: string, dpop: string) {
    // TLS still checks the server's certificate against the dev CA, but not against the
    // name in the Host header, which is the point of the test.
    const ca = readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8');
    const agent = new Agent({ connect: { ca, servername: 'localhost', checkServerIdentity: () => undefined } });
    const res = await request(`${server.issuer}/token`, {
      method: 'POST', dispatcher: agent,
      headers: {
        host, dpop, 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`svc:${secret}`).toString('base64')}`,
      },
      body: new URLSearchParams(grant).toString(),
    });
    const body = await res.body.json() as Record<string, unknown>;
    await agent.close();
    return { status: res.statusCode, body };
  }

  test('a proof for the Host header\'s URL is refused', async () => {
    const res = await withHost('evil.example', await proof({ htu: 'https://evil.example/token' }));
    expect(res).toMatchObject({ status: 400, body: { error: 'invalid_dpop_proof' } });
  });

  test('a proof for ISSUER is accepted on a request with another Host header', async () => {
    const res = await withHost('evil.example', await proof());
    expect(res).toMatchObject({ status: 200, body: { token_type: 'DPoP' } });
  });
});

describe('single use', () => {
  test('a proof used once is refused the second time', async () => {
    const once = await proof();
    expect((await tokenRequest(once)).status).toBe(200);
    expectRefused(await tokenRequest(once));
  });

  test('20 copies of one proof at once: exactly one token, one audit line of a token issued', async () => {
    // The claim runs while the token is made: a lost claim's token is never sent nor logged.
    const own = await dpopKey('ES256');
    const jkt = await dpopThumbprint(own);
    const once = await proof({}, {}, own);
    const answers = await Promise.all(Array.from({ length: 20 }, () => tokenRequest(once)));
    expect(answers.filter((a) => a.status === 200)).toHaveLength(1);
    for (const a of answers.filter((r) => r.status !== 200)) {
      expectRefused(a);
      expect(a.body.error_description).toBe('DPoP proof jti was used before');
    }
    expect(await server.logLines((l) => l.event === 'token.issued' && l.jkt === jkt, 1)).toHaveLength(1);
  });

  test('the same jti from another key is another proof', async () => {
    const jti = randomUUID();
    expect((await tokenRequest(await proof({ jti }))).status).toBe(200);
    expect((await tokenRequest(await proof({ jti }, {}, await dpopKey('ES256')))).status).toBe(200);
  });
});

describe('--dpop clients', () => {
  test('without a proof: 400 invalid_dpop_proof; with one: a DPoP token', async () => {
    const without = await tokenRequest(undefined, ['svc-dpop', dpopSecret]);
    expectRefused(without);
    const withProof = await tokenRequest(await proof(), ['svc-dpop', dpopSecret]);
    expect(withProof.status).toBe(200);
    expect(withProof.body.token_type).toBe('DPoP');
  });

  test('client add --dpop writes dpop_bound into the migration, and only with the flag', async () => {
    expect(readFileSync(join(workspace.dir, dpopMigration), 'utf8')).toMatch(/"dpop_bound": true/);
    expect(readFileSync(join(workspace.dir, svcMigration), 'utf8')).toMatch(/"dpop_bound": false/);
  });
});

test('a certificate-bound client that sends a proof gets a token bound to both', async () => {
  const res = await server.post('/token', grant, { basic: ['svc-bound', boundSecret], cert: clientCert, headers: { dpop: await proof() } });
  expect(res.status).toBe(200);
  expect(res.body.token_type).toBe('DPoP');
  const { cnf } = decodeJwtPart(res.body.access_token, 1) as { cnf: Record<string, string> };
  expect(Object.keys(cnf).sort()).toEqual(['jkt', 'x5t#S256']);
  expect(cnf.jkt).toBe(await dpopThumbprint(key));
  const [line] = await server.logLines((l) => l.event === 'token.issued' && l.client_id === 'svc-bound', 1);
  expect(line).toMatchObject({ binding: 'certificate+dpop', bound: true });
  // Without the certificate the operator's --bound still holds.
  const withoutCert = await server.post('/token', grant, { basic: ['svc-bound', boundSecret], headers: { dpop: await proof() } });
  expect(withoutCert.status).toBe(400);
});

describe('DPOP_NONCE=true', () => {
  let nonceWorkspace: Workspace;
  let nonceServer: RunningServer;
  let nonceSecret: string;

  beforeAll(async () => {
    nonceWorkspace = await createWorkspace({ ...NO_LOCKOUT, DPOP_NONCE: 'true' });
    ({ client_secret: nonceSecret } = (await addClient(nonceWorkspace, 'svc-n', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    nonceServer = await startServer(nonceWorkspace);
  });

  afterAll(async () => {
    await nonceServer?.stop();
    await nonceWorkspace?.remove();
  });

  test('a proof without a nonce gets 400 use_dpop_nonce and a DPoP-Nonce; with it, a token', async () => {
    const first = await tokenRequest(await proof({}, {}, key, nonceServer), ['svc-n', nonceSecret], nonceServer);
    expectRefused(first, 'use_dpop_nonce');
    const nonce = first.headers.get('dpop-nonce');
    expect(nonce).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const second = await tokenRequest(await dpopProof(key, 'POST', `${nonceServer.issuer}/token`, { nonce: nonce! }), ['svc-n', nonceSecret], nonceServer);
    expect(second.status).toBe(200);
    expect(second.body.token_type).toBe('DPoP');
  });

  test('a made-up nonce gets use_dpop_nonce with a good one', async () => {
    const res = await tokenRequest(await proof({ nonce: 'A'.repeat(43) }, {}, key, nonceServer), ['svc-n', nonceSecret], nonceServer);
    expectRefused(res, 'use_dpop_nonce');
    expect(res.headers.get('dpop-nonce')).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  test('a nonce does not stretch the iat window', async () => {
    const first = await tokenRequest(await proof({}, {}, key, nonceServer), ['svc-n', nonceSecret], nonceServer);
    const res = await tokenRequest(await proof({ nonce: first.headers.get('dpop-nonce'), iat: now() - 120 }, {}, key, nonceServer), ['svc-n', nonceSecret], nonceServer);
    expectRefused(res);
  });

  test('openid-client follows the nonce by itself', async () => {
    const fetchWithCa: oauth.CustomFetch = (url, options) => undiciFetch(url, { ...(options as object), dispatcher: nonceServer.agent() }) as unknown as Promise<Response>;
    const config = await oauth.discovery(new URL(nonceServer.issuer), 'svc-n', undefined, oauth.ClientSecretBasic(nonceSecret), { [oauth.customFetch]: fetchWithCa });
    config[oauth.customFetch] = fetchWithCa;
    const DPoP = oauth.getDPoPHandle(config, await oauth.randomDPoPKeyPair('ES256'));
    const tokens = await oauth.clientCredentialsGrant(config, {}, { DPoP });
    expect(tokens.token_type).toBe('dpop');
  });
});

// Several processes: two workers and a second instance on one PostgreSQL database.
const postgres = process.env.TEST_DATABASE_URL ? describe : describe.skip;
postgres('across workers and instances (PostgreSQL)', () => {
  let pgWorkspace: Workspace;
  let workers: RunningServer; // WORKERS=2
  let second: RunningServer; // another instance, same database and ISSUER
  let pgSecret: string;

  beforeAll(async () => {
    pgWorkspace = await createWorkspace({ ...NO_LOCKOUT, DPOP_NONCE: 'true' });
    ({ client_secret: pgSecret } = (await addClient(pgWorkspace, 'svc-pg', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
    workers = await startServer(pgWorkspace, { WORKERS: '2' });
    // The same ISSUER: the proof names the issuer's token endpoint, not this listener's port.
    second = await startServer(pgWorkspace, { PORT: String(await freePort()) });
  });

  afterAll(async () => {
    await second?.stop();
    await workers?.stop();
    await pgWorkspace?.remove();
  });

  /** POSTs on fresh connections, so the primary spreads them over both workers. */
  async function spread(count: number, on: (i: number) => RunningServer, dpop: (i: number) => string) {
    const ca = readFileSync(join(pgWorkspace.keysDir, 'dev-ca.crt'), 'utf8');
    return Promise.all(Array.from({ length: count }, async (_, i) => {
      const agent = new Agent({ connect: { ca }, pipelining: 0 });
      try {
        const target = on(i);
        const base = `https://localhost:${target.port}`;
        const res = await undiciFetch(`${base}/token`, {
          method: 'POST', dispatcher: agent,
          headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`svc-pg:${pgSecret}`).toString('base64')}`, dpop: dpop(i) },
          body: new URLSearchParams(grant).toString(),
        });
        return { status: res.status, body: await res.json() as Record<string, unknown> };
      } finally {
        await agent.close();
      }
    }));
  }

  test('a nonce from one process is good on every worker and instance; one proof raced everywhere: one token', async () => {
    const first = await tokenRequest(await proof({}, {}, key, workers), ['svc-pg', pgSecret], workers);
    expectRefused(first, 'use_dpop_nonce');
    const nonce = first.headers.get('dpop-nonce')!;
    const proofs = await Promise.all(Array.from({ length: 12 }, () => dpopProof(key, 'POST', `${workers.issuer}/token`, { nonce })));
    const fresh = await spread(12, (i) => (i % 3 === 2 ? second : workers), (i) => proofs[i]!);
    expect(fresh.map((r) => r.status)).toEqual(Array(12).fill(200));

    const once = await dpopProof(key, 'POST', `${workers.issuer}/token`, { nonce });
    const raced = await spread(24, (i) => (i % 3 === 2 ? second : workers), () => once);
    expect(raced.filter((r) => r.status === 200)).toHaveLength(1);
    expect(raced.filter((r) => r.status === 400 && r.body.error === 'invalid_dpop_proof')).toHaveLength(23);
    // The copies were refused by more than one process (the race crossed processes).
    const replayed = (l: Record<string, unknown>) => l.event === 'token.refused' && l.reason === 'DPoP proof jti was used before';
    const lines = [...await workers.logLines(replayed, 1), ...await second.logLines(replayed, 1)];
    expect(new Set(lines.map((l) => l.pid)).size).toBeGreaterThanOrEqual(2);
  });
});

test('README and docs/dpop.md show the examples exactly as tested', () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const docs = readFileSync(join(ROOT, 'docs', 'dpop.md'), 'utf8');
  const body = (file: string) => readFileSync(join(ROOT, 'examples', file), 'utf8').split('\n').filter((l) => !l.startsWith('//')).join('\n').trim();
  expect(docs).toContain(body('dpop-client.ts'));
  expect(docs).toContain(body('dpop-resource.ts'));
  const proofFunction = /export async function dpopProof[\s\S]*?\n}\n/.exec(readFileSync(join(ROOT, 'examples', 'dpop-client.ts'), 'utf8'))![0];
  expect(readme).toContain(proofFunction.trim());
});
