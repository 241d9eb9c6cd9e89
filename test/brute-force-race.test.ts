// Brute-force limits hold under concurrency: an attempt is taken from the limit before its
// credential is evaluated, atomically, in memory (embedded database) and in PostgreSQL
// (shared by instances). Counting after the 401 let every concurrent guess through.
import { readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';

import { exportJWK, generateKeyPair, SignJWT } from 'jose';

import { countStatuses } from './helpers/statuses.ts';
import { addClient, createWorkspace, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const GUESSES = 300;
const agents: Agent[] = [];
const cleanup: (() => Promise<unknown>)[] = [];

afterAll(async () => {
  for (const agent of agents) agent.destroy();
  for (const step of cleanup.reverse()) await step();
});

/**
 * Token requests from one loopback address, spread over the given servers, all in flight at
 * once: [client_id, secret] as Basic, or [client_id, assertion, 'jwt'] as private_key_jwt.
 */
async function burst(workspace: Workspace, servers: RunningServer[], localAddress: string, attempts: ([string, string] | [string, string, 'jwt'])[]): Promise<number[]> {
  const ca = readFileSync(join(workspace.keysDir, 'dev-ca.crt'));
  const agent = new Agent({ keepAlive: true, maxSockets: 64, ca, servername: 'localhost' });
  agents.push(agent);
  return Promise.all(attempts.map(([clientId, credential, kind], i) => new Promise<number>((done, fail) => {
    const body = kind === 'jwt'
      ? new URLSearchParams({ grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: credential }).toString()
      : 'grant_type=client_credentials';
    const req = request({
      host: '127.0.0.1', port: servers[i % servers.length]!.port, path: '/token', method: 'POST', agent, localAddress,
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'content-length': Buffer.byteLength(body),
        ...(kind === 'jwt' ? {} : { authorization: `Basic ${Buffer.from(`${clientId}:${credential}`).toString('base64')}` }),
      },
    }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode!));
    });
    req.on('error', fail);
    req.end(body);
  })));
}

async function setUp(): Promise<{ workspace: Workspace; secret: string }> {
  const workspace = await createWorkspace({ AUTH_FAILURE_LIMIT: '10', AUTH_FAILURE_ADDRESS_LIMIT: '25', AUTH_FAILURE_WINDOW: '300' });
  cleanup.push(() => workspace.remove());
  const { client_secret: secret } = await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API]);
  return { workspace, secret: secret! };
}

async function start(workspace: Workspace, extraEnv: Record<string, string> = {}): Promise<RunningServer> {
  const server = await startServer(workspace, extraEnv);
  cleanup.push(() => server.stop());
  return server;
}

describe('one instance', () => {
  let workspace: Workspace;
  let server: RunningServer;
  let secret: string;

  beforeAll(async () => {
    ({ workspace, secret } = await setUp());
    const registered = await generateKeyPair('ES256');
    const jwks = join(workspace.dir, 'svc-jwt.jwks.json');
    writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(registered.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    await addClient(workspace, 'svc-jwt', ['--auth', 'private_key_jwt', '--jwks', jwks, '--audience', API]);
    server = await start(workspace);
  });

  test(`${GUESSES} concurrent wrong secrets for one client from one address: at most the limit (10) are evaluated`, async () => {
    const statuses = await burst(workspace, [server], '127.0.0.2', Array.from({ length: GUESSES }, (_, i) => ['svc', `guess-${i}`]));
    const seen = countStatuses(statuses);
    expect(Object.keys(seen).sort()).toEqual(['401', '429']);
    expect(seen[401]).toBeLessThanOrEqual(10);
    expect(seen[401]! + seen[429]!).toBe(GUESSES);
    // The client itself, from elsewhere, is untouched.
    expect((await burst(workspace, [server], '127.0.0.3', [['svc', secret]]))[0]).toBe(200);
  });

  test(`${GUESSES} concurrent forged assertions for one client from one address: at most the limit (10) are evaluated`, async () => {
    // Verifying a signature awaits, so concurrent attempts interleave even in one process.
    const forger = await generateKeyPair('ES256');
    const assertions = await Promise.all(Array.from({ length: GUESSES }, (_, i) => new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('svc-jwt').setSubject('svc-jwt').setAudience(server.issuer)
      .setIssuedAt().setExpirationTime('60s').setJti(`forged-${i}`).sign(forger.privateKey)));
    const statuses = await burst(workspace, [server], '127.0.0.7', assertions.map((a) => ['svc-jwt', a, 'jwt']));
    const seen = countStatuses(statuses);
    expect(seen[401]).toBeLessThanOrEqual(10);
    expect(seen[401]! + seen[429]!).toBe(GUESSES);
  });

  test(`${GUESSES} concurrent guesses at made-up clients from one address: at most the address limit (25) are evaluated`, async () => {
    const statuses = await burst(workspace, [server], '127.0.0.4', Array.from({ length: GUESSES }, (_, i) => [`made-up-${i}`, 'x']));
    const seen = countStatuses(statuses);
    expect(seen[401]).toBeLessThanOrEqual(25);
    expect(seen[401]! + seen[429]!).toBe(GUESSES);
  });

  test('a correct client sending more requests at once than the limits gets every one answered', async () => {
    // 40 in flight for one client id from one address: the attempts over the limit wait for
    // the outcome of those being checked, whose points come back.
    const statuses = await burst(workspace, [server], '127.0.0.5', Array.from({ length: 40 }, () => ['svc', secret]));
    expect(countStatuses(statuses)).toEqual({ 200: 40 });
  });

  test('the log says which limit refused: per client and address, or per address', async () => {
    const refused = await server.logLines((l) => l.event === 'token.refused' && l.status === 429, 2 * GUESSES - 35);
    const reasons = new Set(refused.map((l) => `${l.address} ${l.reason}`));
    expect(reasons).toContain('127.0.0.2 limit per client and address');
    expect(reasons).toContain('127.0.0.4 limit per address');
    // Never in the response.
    const res = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc', 'wrong'] });
    expect(JSON.stringify(res.body)).not.toMatch(/limit per/);
  });
});

(process.env.TEST_DATABASE_URL ? describe : describe.skip)('two instances on one PostgreSQL database', () => {
  let workspace: Workspace;
  let servers: RunningServer[];

  beforeAll(async () => {
    ({ workspace } = await setUp());
    const first = await start(workspace);
    const port = await freePort();
    const second = await start(workspace, { PORT: String(port), ISSUER: `https://localhost:${port}` });
    servers = [first, second];
  });

  test(`${GUESSES} concurrent wrong secrets spread over both: the combined limit holds`, async () => {
    const statuses = await burst(workspace, servers, '127.0.0.6', Array.from({ length: GUESSES }, (_, i) => ['svc', `guess-${i}`]));
    const seen = countStatuses(statuses);
    expect(seen[401]).toBeLessThanOrEqual(10);
    expect(seen[401]! + seen[429]!).toBe(GUESSES);
  });
});

describe('IPv6 clients', () => {
  let server: RunningServer;

  beforeAll(async () => {
    const { workspace } = await setUp();
    // Behind a trusted proxy, the forwarded address is the client's: any IPv6 address can be tried.
    server = await start(workspace, { TLS_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1' });
  });

  test('are counted per /64: other addresses of the same /64 share the limit, another /64 does not', async () => {
    const from = (address: string, clientId: string) => server.post('/token', { grant_type: 'client_credentials' },
      { basic: [clientId, 'wrong'], headers: { 'x-forwarded-for': address } });
    for (let i = 0; i < 25; i += 1) expect((await from(`2001:db8:1:2::${(i + 1).toString(16)}`, `sprayed-${i}`)).status).toBe(401);
    expect((await from('2001:db8:1:2:ffff:ffff:ffff:ffff', 'sprayed-x')).status).toBe(429);
    expect((await from('2001:db8:1:3::1', 'sprayed-y')).status).toBe(401);
    // The log keeps the full address.
    const lines = await server.logLines((l) => l.event === 'token.refused' && l.status === 429, 1);
    expect(lines[0]).toMatchObject({ address: '2001:db8:1:2:ffff:ffff:ffff:ffff', reason: 'limit per address' });
  });
});
