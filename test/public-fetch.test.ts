// The fetcher of clients' jwks_uri and issuers' keys, against a real HTTPS server. Keys are
// refetched at most once per cooldown, so a failed fetch refuses the client until the
// cooldown ends: a connection the server closes just as a fetch is sent on it must not fail
// that fetch (it made test/private-key-jwt.test.ts flaky: the test's key server closes idle
// connections after 6 s, the test refetched about 6 s after the last fetch, and the fetch
// died with "socket hang up"), and a fetch that times out says so.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ensureDevTls } from '../src/keys/dev-tls.ts';
import { publicJsonFetch } from '../src/net/public-fetch.ts';

let dir: string;
let server: Server;
let base: string;
let caFile: string;
const requestsOn = new Map<Socket, number>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'm2m-public-fetch-'));
  const tls = await ensureDevTls(dir);
  caFile = tls.caCert;
  server = createServer({ cert: readFileSync(tls.serverCert), key: readFileSync(tls.serverKey) }, (req, res) => {
    if (req.url === '/silent.json') return; // never answers
    const count = (requestsOn.get(req.socket) ?? 0) + 1;
    requestsOn.set(req.socket, count);
    // The race, made certain: a kept-alive connection is closed as a request arrives on it.
    if (count > 1) return req.socket.destroy();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [] }));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  base = `https://127.0.0.1:${address.port}`;
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((done) => server ? server.close(done) : done(undefined));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('a fetch after the server closed the previous fetch\'s connection gets the body', async () => {
  const fetch = publicJsonFetch({ allowPrivate: true, caFile, what: 'jwks_uri' });
  for (let i = 0; i < 3; i++) expect(await fetch(`${base}/jwks.json`)).toEqual({ keys: [] });
  // Every fetch reached the server and was answered there.
  expect([...requestsOn.values()].reduce((a, b) => a + b, 0)).toBe(3);
});

test('a server that does not answer in time: the failure names the time limit', async () => {
  const fetch = publicJsonFetch({ allowPrivate: true, caFile, what: 'jwks_uri', timeoutMs: 200 });
  await expect(fetch(`${base}/silent.json`)).rejects.toThrow('jwks_uri did not answer within 200 ms');
});
