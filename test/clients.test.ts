// Clients from other ecosystems, as their users write them: Go's golang.org/x/oauth2 over
// crypto/tls, Python's requests-oauthlib and authlib (Debian's packages). Their tokens are
// verified against /jwks with jose's createRemoteJWKSet.
//
// Go's crypto/tls (and Java's default key manager) send a configured client certificate only
// when the server's CertificateRequest names no CA, or names the one that issued it: a self-
// signed certificate reaches the server only if the handshake names no CA.
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { exportJWK } from 'jose';

import { buildGoClient, expectVerified, goToken, missingGo, run, selfSigned, testWith, toolchain, type RunResult } from './helpers/clients.ts';
import { addClient, createWorkspace, ROOT, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const PYTHON = '/usr/bin/python3';

function missingPython(): string | undefined {
  const python = spawnSync(PYTHON, ['-c', 'import requests_oauthlib, authlib.oauth2.rfc7523'], { encoding: 'utf8' });
  if (python.status !== 0) return `Debian's Python libraries (apt-get install python3-requests-oauthlib python3-authlib): ${python.stderr || python.error?.message}`;
  return undefined;
}

const goMissing = missingGo();
const pythonMissing = missingPython();

let workspace: Workspace;
let server: RunningServer;
let certsDir: string;
let goClient: string;
let ca: string;
const secrets: Record<string, string> = {};

/** A client certificate from the development CA (`client cert`): subject CN=<id>. */
async function fromDevCa(id: string): Promise<[string, string]> {
  const result = await workspace.cli('client', ['cert', id, '--out', certsDir, '--json']);
  if (result.code !== 0) throw new Error(`client cert ${id}: ${result.stderr}`);
  return [join(certsDir, `${id}.crt`), join(certsDir, `${id}.key`)];
}

const files = {} as Record<'goSelf' | 'goCa' | 'pyCa' | 'rogueSelf' | 'pyJwt', [string, string]>;

beforeAll(async () => {
  workspace = await createWorkspace();
  certsDir = join(workspace.dir, 'client-certs');
  mkdirSync(certsDir, { recursive: true });
  files.goSelf = await selfSigned(certsDir, 'go-self');
  files.goCa = await fromDevCa('go-ca');
  files.pyCa = await fromDevCa('py-ca');
  files.rogueSelf = await selfSigned(certsDir, 'go-rogue');
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
  return goToken(goClient, { tokenUrl: `${server.issuer}/token`, ca, clientId, ...options });
}

function python(mode: 'basic' | 'mtls' | 'pkjwt', clientId: string, options: { secret?: string; cert?: string; key?: string }) {
  return run(PYTHON, [join(ROOT, 'test/clients/python/client.py'), mode, '--token-url', `${server.issuer}/token`, '--ca', ca, '--client-id', clientId,
    ...(options.secret ? ['--secret', options.secret] : []),
    ...(options.cert ? ['--cert', options.cert] : []),
    ...(options.key ? ['--key', options.key] : [])]);
}

async function expectToken(result: RunResult, clientId: string): Promise<void> {
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  await expectVerified(result.stdout.trim(), { issuer: server.issuer, audience: API, clientId, dispatcher: server.agent() });
}

describe('Go: golang.org/x/oauth2/clientcredentials over crypto/tls', () => {
  const goTest = testWith(goMissing);

  beforeAll(async () => {
    if (!goMissing) goClient = await buildGoClient(workspace.dir);
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
