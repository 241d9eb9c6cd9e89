// Clients from other ecosystems, as their users write them: Go's golang.org/x/oauth2 over
// crypto/tls, Python's requests-oauthlib and authlib (Debian's packages). Their tokens are
// verified against /jwks with jose's createRemoteJWKSet.
//
// Go's crypto/tls (and Java's default key manager) send a configured client certificate only
// when the server's CertificateRequest names no CA, or names the one that issued it: a self-
// signed certificate reaches the server only if the handshake names no CA.
import { execFile, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { createRemoteJWKSet, customFetch, exportJWK, jwtVerify } from 'jose';
import { fetch as undiciFetch } from 'undici';

import { addClient, createWorkspace, ROOT, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const PYTHON = '/usr/bin/python3';
const GOPATH = '/usr/share/gocode';
// Outside CI a machine without the toolchains skips these tests; CI must have them.
const IN_CI = process.env.CI === 'true';

function missingGo(): string | undefined {
  const go = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (go.status !== 0) return 'the Go toolchain (apt-get install golang-go)';
  if (!existsSync(join(GOPATH, 'src/golang.org/x/oauth2/clientcredentials'))) return 'golang.org/x/oauth2 (apt-get install golang-golang-x-oauth2-dev)';
  return undefined;
}

function missingPython(): string | undefined {
  const python = spawnSync(PYTHON, ['-c', 'import requests_oauthlib, authlib.oauth2.rfc7523'], { encoding: 'utf8' });
  if (python.status !== 0) return `Debian's Python libraries (apt-get install python3-requests-oauthlib python3-authlib): ${python.stderr || python.error?.message}`;
  return undefined;
}

const goMissing = missingGo();
const pythonMissing = missingPython();

/** A test that needs a toolchain: skipped with a message outside CI, failing in CI. */
function testWith(missing: string | undefined): jest.It {
  if (!missing || IN_CI) return test;
  console.warn(`SKIPPED: ${missing} is not installed; CI=true makes these tests fail instead`);
  return test.skip;
}

function toolchain(missing: string | undefined): void {
  if (missing) throw new Error(`${missing} is not installed`);
}

let workspace: Workspace;
let server: RunningServer;
let certsDir: string;
let goClient: string;
let ca: string;
const secrets: Record<string, string> = {};

function run(command: string, args: string[], env?: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(command, args, { cwd: ROOT, env: { ...process.env, ...env }, timeout: 120_000 }, (err, stdout, stderr) => {
      done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function openssl(args: string[]): Promise<void> {
  const result = await run('openssl', args);
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`);
}

/** A self-signed EC P-256 client certificate; returns [certFile, keyFile]. */
async function selfSigned(name: string): Promise<[string, string]> {
  const certFile = join(certsDir, `${name}.crt`);
  const keyFile = join(certsDir, `${name}.key`);
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-keyout', keyFile, '-out', certFile, '-subj', `/CN=${name}`, '-addext', 'extendedKeyUsage=clientAuth']);
  return [certFile, keyFile];
}

/** A client certificate from the development CA (`client cert`): subject CN=<id>. */
async function fromDevCa(id: string): Promise<[string, string]> {
  const result = await workspace.cli('client', ['cert', id, '--out', certsDir, '--json']);
  if (result.code !== 0) throw new Error(`client cert ${id}: ${result.stderr}`);
  return [join(certsDir, `${id}.crt`), join(certsDir, `${id}.key`)];
}

const files = {} as Record<'goSelf' | 'goCa' | 'pyCa' | 'rogueSelf' | 'pyJwt', [string, string]>;

/** Verifies an access token as a resource server would: against /jwks, fetched over HTTPS. */
async function verified(token: string, clientId: string): Promise<void> {
  const dispatcher = server.agent();
  const jwks = createRemoteJWKSet(new URL(`${server.issuer}/jwks`), {
    [customFetch]: (url, options) => undiciFetch(url, { ...(options as object), dispatcher }) as unknown as Promise<Response>,
  });
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer: server.issuer, audience: API, typ: 'at+jwt', algorithms: ['RS256'] });
  expect(protectedHeader.alg).toBe('RS256');
  expect(payload).toMatchObject({ sub: clientId, client_id: clientId, aud: API });
}

beforeAll(async () => {
  workspace = await createWorkspace();
  certsDir = join(workspace.dir, 'client-certs');
  mkdirSync(certsDir, { recursive: true });
  files.goSelf = await selfSigned('go-self');
  files.goCa = await fromDevCa('go-ca');
  files.pyCa = await fromDevCa('py-ca');
  files.rogueSelf = await selfSigned('go-rogue');
  await addClient(workspace, 'go-self', ['--auth', 'self_signed_tls_client_auth', '--cert', files.goSelf[0], '--audience', API]);
  await addClient(workspace, 'go-ca', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=go-ca', '--audience', API]);
  await addClient(workspace, 'py-ca', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=py-ca', '--audience', API]);
  for (const id of ['go-basic', 'py-basic']) {
    secrets[id] = (await addClient(workspace, id, ['--auth', 'client_secret_basic', '--audience', API])).client_secret!;
  }
  // authlib signs with a PEM private key; the server knows its public JWK.
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  files.pyJwt = [join(certsDir, 'py-jwt.jwks.json'), join(certsDir, 'py-jwt.key')];
  writeFileSync(files.pyJwt[1], privateKey.export({ type: 'pkcs8', format: 'pem' }));
  writeFileSync(files.pyJwt[0], JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'py-jwt-1', use: 'sig' }] }));
  await addClient(workspace, 'py-jwt', ['--auth', 'private_key_jwt', '--jwks', files.pyJwt[0], '--audience', API]);
  server = await startServer(workspace);
  ca = join(workspace.keysDir, 'dev-ca.crt');

}, 120_000);

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

function go(clientId: string, options: { secret?: string; cert?: [string, string] }) {
  return run(goClient, [
    '-token-url', `${server.issuer}/token`, '-ca', ca, '-client-id', clientId,
    ...(options.secret ? ['-secret', options.secret] : []),
    ...(options.cert ? ['-cert', options.cert[0], '-key', options.cert[1]] : []),
  ]);
}

function python(mode: 'basic' | 'mtls' | 'pkjwt', clientId: string, options: { secret?: string; cert?: string; key?: string }) {
  return run(PYTHON, [join(ROOT, 'test/clients/python/client.py'), mode, '--token-url', `${server.issuer}/token`, '--ca', ca, '--client-id', clientId,
    ...(options.secret ? ['--secret', options.secret] : []),
    ...(options.cert ? ['--cert', options.cert] : []),
    ...(options.key ? ['--key', options.key] : [])]);
}

async function expectToken(result: { code: number; stdout: string; stderr: string }, clientId: string): Promise<void> {
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  await verified(result.stdout.trim(), clientId);
}

describe('Go: golang.org/x/oauth2/clientcredentials over crypto/tls', () => {
  const goTest = testWith(goMissing);

  beforeAll(async () => {
    if (goMissing) return;
    // Built from source each run: the test exercises what Debian's packages compile today.
    goClient = join(workspace.dir, 'm2m-go-client');
    const build = await run('go', ['build', '-o', goClient, './test/clients/go'], { GO111MODULE: 'off', GOPATH, GOFLAGS: '' });
    if (build.code !== 0) throw new Error(`go build: ${build.stderr}`);
  }, 240_000);

  goTest('self_signed_tls_client_auth with tls.Config.Certificates (a self-signed certificate)', async () => {
    toolchain(goMissing);
    await expectToken(await go('go-self', { cert: files.goSelf }), 'go-self');
  });

  goTest('tls_client_auth with a certificate from TLS_CLIENT_CA', async () => {
    toolchain(goMissing);
    await expectToken(await go('go-ca', { cert: files.goCa }), 'go-ca');
  });

  goTest('client_secret_basic', async () => {
    toolchain(goMissing);
    await expectToken(await go('go-basic', { secret: secrets['go-basic']! }), 'go-basic');
  });

  goTest('refused: another self-signed certificate, or a self-signed one for a tls_client_auth client', async () => {
    toolchain(goMissing);
    for (const [clientId, cert] of [['go-self', files.rogueSelf], ['go-ca', files.goSelf]] as const) {
      const result = await go(clientId, { cert });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/401/);
      expect(result.stderr).toMatch(/invalid_client/);
    }
  });
});

describe('Python: requests-oauthlib and authlib', () => {
  const pyTest = testWith(pythonMissing);

  pyTest('requests-oauthlib BackendApplicationClient with Basic authentication', async () => {
    toolchain(pythonMissing);
    await expectToken(await python('basic', 'py-basic', { secret: secrets['py-basic']! }), 'py-basic');
  });

  pyTest('requests-oauthlib with a client certificate (session.cert) for tls_client_auth', async () => {
    toolchain(pythonMissing);
    await expectToken(await python('mtls', 'py-ca', { cert: files.pyCa[0], key: files.pyCa[1] }), 'py-ca');
  });

  pyTest('authlib private_key_jwt with its default assertion lifetime (3600 s)', async () => {
    toolchain(pythonMissing);
    await expectToken(await python('pkjwt', 'py-jwt', { key: files.pyJwt[1] }), 'py-jwt');
    // Refused with a wrong key, so the 200 above is the assertion's doing.
    const stranger = join(certsDir, 'stranger.key');
    writeFileSync(stranger, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const refused = await python('pkjwt', 'py-jwt', { key: stranger });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/invalid_client/);
  });
});
