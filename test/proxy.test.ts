// TLS_MODE=proxy: plain HTTP behind a TLS-terminating proxy (nginx). The client certificate
// arrives URL-encoded in CLIENT_CERT_HEADER, as nginx's $ssl_client_escaped_cert, and is
// believed only from TRUSTED_PROXIES; TLS_CLIENT_CA is checked against it here.
import { execFile } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { DEV_KEK_FILE } from '../src/keys/key-encryption.ts';
import { addClient, createWorkspace, decodeJwtPart, freePort, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const CLIENT_AUTH_FAILED = { error: 'invalid_client', error_description: 'client authentication failed' };

let workspace: Workspace;
let server: RunningServer;
let certsDir: string;
const pem: Record<string, string> = {};
const secrets: Record<string, string> = {};

function run(command: string, args: string[]): Promise<void> {
  return new Promise((done, fail) => {
    execFile(command, args, (err, _stdout, stderr) => (err ? fail(new Error(`${command}: ${stderr}`)) : done()));
  });
}

/** What nginx puts in the header: the PEM, URL-encoded. */
function forwarded(certificate: string): Record<string, string> {
  return { 'x-ssl-client-cert': encodeURIComponent(certificate) };
}

function token(clientId: string, headers: Record<string, string> = {}) {
  return server.post('/token', { grant_type: 'client_credentials', client_id: clientId }, { headers });
}

beforeAll(async () => {
  workspace = await createWorkspace();
  certsDir = join(workspace.dir, 'client-certs');
  const issued = await workspace.cli('client', ['cert', 'svc-px', '--out', certsDir, '--json']);
  if (issued.code !== 0) throw new Error(issued.stderr);
  pem.trusted = readFileSync(join(certsDir, 'svc-px.crt'), 'utf8');
  // Same subject, signed by itself instead of TLS_CLIENT_CA (the development CA).
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-keyout', join(certsDir, 'rogue.key'), '-out', join(certsDir, 'rogue.crt'), '-subj', '/CN=svc-px']);
  pem.rogue = readFileSync(join(certsDir, 'rogue.crt'), 'utf8');
  await addClient(workspace, 'svc-px', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=svc-px', '--audience', API, '--bound']);
  // The development server certificate: issued by TLS_CLIENT_CA, but for server auth only.
  pem.serverOnly = readFileSync(join(workspace.keysDir, 'dev-server.crt'), 'utf8');
  await addClient(workspace, 'svc-px-host', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=localhost', '--audience', API]);
  secrets.basic = (await addClient(workspace, 'svc-px-basic', ['--auth', 'client_secret_basic', '--audience', API])).client_secret!;
  await addClient(workspace, 'svc-px-self', ['--auth', 'self_signed_tls_client_auth', '--cert', join(certsDir, 'rogue.crt'), '--audience', API]);
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

describe('behind a trusted proxy', () => {
  beforeAll(async () => {
    server = await startServer(workspace, { TLS_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1' });
  });

  afterAll(async () => {
    await server?.stop();
  });

  test('a Basic client sent through a trusted proxy gets a token; its address is the last X-Forwarded-For hop not trusted', async () => {
    const res = await server.post('/token', { grant_type: 'client_credentials' }, {
      basic: ['svc-px-basic', secrets.basic!], headers: { 'x-forwarded-for': '198.51.100.7, 203.0.113.9' },
    });
    expect(res.status).toBe(200);
    const { jti } = decodeJwtPart(res.body.access_token, 1);
    const [line] = await server.logLines((l) => l.event === 'token.issued' && l.jti === jti, 1);
    expect(line).toMatchObject({ address: '203.0.113.9' });
  });

  test('a certificate forwarded by a trusted proxy authenticates, and the token is bound to it', async () => {
    const res = await token('svc-px', forwarded(pem.trusted!));
    expect(res.status).toBe(200);
    const thumbprint = createHash('sha256').update(new X509Certificate(pem.trusted!).raw).digest('base64url');
    expect(decodeJwtPart(res.body.access_token, 1)).toMatchObject({ iss: server.issuer, client_id: 'svc-px', cnf: { 'x5t#S256': thumbprint } });
  });

  test('a forwarded self-signed certificate authenticates its self_signed_tls_client_auth client', async () => {
    const res = await token('svc-px-self', forwarded(pem.rogue!));
    expect(res.status).toBe(200);
    expect(decodeJwtPart(res.body.access_token, 1)).toMatchObject({ client_id: 'svc-px-self' });
  });

  test('401 invalid_client: a forwarded certificate not issued by TLS_CLIENT_CA, or not for client auth', async () => {
    for (const [clientId, certificate] of [['svc-px', pem.rogue!], ['svc-px-host', pem.serverOnly!]] as const) {
      const res = await token(clientId, forwarded(certificate));
      expect(res.status).toBe(401);
      expect(res.body).toEqual(CLIENT_AUTH_FAILED);
    }
  });

  test('401 invalid_client: no forwarded certificate, an empty header, or one that is not a certificate', async () => {
    const headerSets: Record<string, string>[] = [{}, { 'x-ssl-client-cert': '' }, { 'x-ssl-client-cert': 'not%20a%20certificate' }, { 'x-ssl-client-cert': '%E0%A4%A' }];
    for (const headers of headerSets) {
      const res = await token('svc-px', headers);
      expect(res.status).toBe(401);
      expect(res.body).toEqual(CLIENT_AUTH_FAILED);
    }
  });
});

describe('from an address that is not a trusted proxy', () => {
  beforeAll(async () => {
    // 127.0.0.1 (the test) is not in TRUSTED_PROXIES.
    server = await startServer(workspace, { TLS_MODE: 'proxy', TRUSTED_PROXIES: '10.9.9.9' });
  });

  test('403 invalid_request for a Basic token request: no token travels in clear to a peer outside TRUSTED_PROXIES', async () => {
    const res = await server.post('/token', { grant_type: 'client_credentials' }, {
      basic: ['svc-px-basic', secrets.basic!], headers: { 'x-forwarded-for': '198.51.100.7' },
    });
    expect(res.status).toBe(403);
    expect(res.body).toEqual({ error: 'invalid_request', error_description: 'requests are accepted only through the TLS proxy' });
    expect(res.headers.get('cache-control')).toBe('no-store');
    const [line] = await server.logLines((l) => l.event === 'token.refused' && l.status === 403, 1);
    expect(line).toMatchObject({ reason: 'not sent through a trusted proxy (TRUSTED_PROXIES)', address: '127.0.0.1' });
  });

  test('403 also with a forwarded certificate, and on every other endpoint but the health probes', async () => {
    expect((await token('svc-px', forwarded(pem.trusted!))).status).toBe(403);
    for (const path of ['/jwks', '/.well-known/oauth-authorization-server', '/metrics', '/nowhere']) {
      const res = await server.fetch(path);
      expect([path, res.status]).toEqual([path, 403]);
      expect(await res.json()).toMatchObject({ error: 'invalid_request' });
    }
    for (const path of ['/healthz', '/readyz']) {
      const res = await server.fetch(path);
      expect([path, res.status]).toEqual([path, 200]);
    }
  });
});

// Production needs a PostgreSQL server: it has no embedded database.
const onPostgres = Boolean(process.env.TEST_DATABASE_URL);
(onPostgres ? describe : describe.skip)(`NODE_ENV=production without TLS_CLIENT_CA${onPostgres ? '' : ' (skipped: production needs TEST_DATABASE_URL)'}`, () => {
  let production: RunningServer | undefined;
  beforeAll(async () => {
    await server?.stop();
    production = await startServer(workspace, {
      NODE_ENV: 'production', TLS_MODE: 'proxy', TRUSTED_PROXIES: '127.0.0.1', PORT: String(await freePort()),
      // The key-encryption key the development servers above made and used.
      KEYS_ENCRYPTION_KEY: `file:${join(workspace.keysDir, DEV_KEK_FILE)}`,
    });
  });
  afterAll(async () => {
    await production?.stop();
  });

  test('the start warns that the tls_client_auth clients will be refused, naming them; they are, self-signed ones are not', async () => {
    const [line] = await production!.logLines((l) => typeof l.msg === 'string' && l.msg.startsWith('TLS_CLIENT_CA is not set'), 1);
    expect(line).toMatchObject({ level: 40, count: 2, clients: ['svc-px', 'svc-px-host'] });
    const form = (clientId: string) => ({ grant_type: 'client_credentials', client_id: clientId });
    const refused = await production!.post('/token', form('svc-px'), { headers: forwarded(pem.trusted!) });
    expect([refused.status, refused.body]).toEqual([401, CLIENT_AUTH_FAILED]);
    const selfSigned = await production!.post('/token', form('svc-px-self'), { headers: forwarded(pem.rogue!) });
    expect(selfSigned.status).toBe(200);
  });
});
