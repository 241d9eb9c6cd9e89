// Failed client authentications are limited per client id and address and per address:
// past the limit the attacker's address gets 429 with Retry-After, while the same client
// from another address keeps getting tokens.
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';

import { addClient, createWorkspace, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
let workspace: Workspace;
let server: RunningServer;
let secret: string;
let otherSecret: string;
const agents: Agent[] = [];

beforeAll(async () => {
  workspace = await createWorkspace({ AUTH_FAILURE_LIMIT: '3', AUTH_FAILURE_ADDRESS_LIMIT: '8', AUTH_FAILURE_WINDOW: '60' });
  ({ client_secret: secret } = (await addClient(workspace, 'svc', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  ({ client_secret: otherSecret } = (await addClient(workspace, 'svc-other', ['--auth', 'client_secret_basic', '--audience', API])) as { client_secret: string });
  server = await startServer(workspace);
});

afterAll(async () => {
  for (const agent of agents) agent.destroy();
  await server?.stop();
  await workspace?.remove();
});

/** A client on its own loopback address (127.0.0.0/8 all reaches this machine). */
function from(localAddress: string) {
  const agent = new Agent({ keepAlive: true, ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt')), servername: 'localhost' });
  agents.push(agent);
  /** Basic credentials, or (clientId undefined) the form `body` carries them. */
  return (clientId: string | undefined, password: string, body = 'grant_type=client_credentials') => new Promise<{ status: number; retryAfter: string | undefined; body: Record<string, unknown> }>((done, fail) => {
    const req = request({
      host: '127.0.0.1', port: server.port, path: '/token', method: 'POST', agent, localAddress,
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'content-length': Buffer.byteLength(body),
        ...(clientId === undefined ? {} : { authorization: `Basic ${Buffer.from(`${clientId}:${password}`).toString('base64')}` }),
      },
    }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => { text += chunk.toString(); });
      res.on('end', () => done({ status: res.statusCode!, retryAfter: res.headers['retry-after'] as string | undefined, body: JSON.parse(text) }));
    });
    req.on('error', fail);
    req.end(body);
  });
}

test('an attacker guessing one client\'s secret is stopped; the client from elsewhere is not', async () => {
  const attacker = from('127.0.0.2');
  const legit = from('127.0.0.3');
  for (let i = 0; i < 3; i += 1) {
    const res = await attacker('svc', `guess-${i}`);
    expect(res.status).toBe(401);
    expect(res.body).toMatchObject({ error: 'invalid_client' });
  }
  const blocked = await attacker('svc', 'guess-3');
  expect(blocked.status).toBe(429);
  expect(Number(blocked.retryAfter)).toBeGreaterThan(0);
  expect(Number(blocked.retryAfter)).toBeLessThanOrEqual(60);
  expect(blocked.body).toMatchObject({ error: 'temporarily_unavailable' });

  // Even the right secret from the attacker's address waits out the window for that client…
  expect((await attacker('svc', secret)).status).toBe(429);
  // …while the client itself, from its own address, is untouched.
  expect((await legit('svc', secret)).status).toBe(200);
  // And the attacker's address may still use another client it holds the secret of.
  expect((await attacker('svc-other', otherSecret)).status).toBe(200);
});

test('an address spraying many client ids is stopped as a whole', async () => {
  const sprayer = from('127.0.0.4');
  let statuses: number[] = [];
  for (let i = 0; i < 8; i += 1) statuses.push((await sprayer(`made-up-${i}`, 'x')).status);
  expect(statuses).toEqual(Array(8).fill(401));
  statuses = [];
  for (const id of ['made-up-9', 'svc-other']) statuses.push((await sprayer(id, id === 'svc-other' ? otherSecret : 'x')).status);
  expect(statuses).toEqual([429, 429]);
  // Another address is not affected.
  expect((await from('127.0.0.5')('svc-other', otherSecret)).status).toBe(200);
});

test('every refusal and every token has its audit line', async () => {
  const refused = await server.logLines((l) => l.event === 'token.refused', 15);
  const issued = await server.logLines((l) => l.event === 'token.issued', 3);
  // 3 + 2 refusals of the attacker (401s then 429s), 8 + 2 of the sprayer.
  expect(refused).toHaveLength(15);
  expect(issued).toHaveLength(3);
  expect(refused.filter((l) => l.status === 429)).toHaveLength(4);
  expect(refused.find((l) => l.status === 401 && l.client_id === 'svc')).toMatchObject({ address: '127.0.0.2', reason: 'invalid secret provided', method: 'client_secret_basic' });
  // Looked up, not taken by position: with several workers, each writes its own batches, so
  // lines from different workers need not come out in the order of the requests.
  const legit = issued.find((l) => l.client_id === 'svc');
  expect(legit).toMatchObject({ client_id: 'svc', method: 'client_secret_basic', aud: API, address: '127.0.0.3' });
  expect(typeof legit!.jti).toBe('string');
  expect(typeof legit!.kid).toBe('string');
  expect(typeof legit!.latency_ms).toBe('number');
});

test('an external token with a NUL in its iss is a failed authentication, counted like any other', async () => {
  const sender = from('127.0.0.6');
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const assertion = `${part({ alg: 'ES256', kid: 'k' })}.${part({ iss: 'https://issuer.example.test\u0000', sub: 'x', aud: server.issuer, exp: Math.floor(Date.now() / 1000) + 60 })}.c2ln`;
  const body = new URLSearchParams({ grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion }).toString();
  const statuses: number[] = [];
  for (let i = 0; i < 9; i += 1) statuses.push((await sender(undefined, '', body)).status);
  // AUTH_FAILURE_ADDRESS_LIMIT is 8: the ninth attempt from this address is refused outright.
  expect(statuses).toEqual([...Array(8).fill(401), 429]);
});
