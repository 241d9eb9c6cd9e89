// Mutual-TLS client authentication (RFC 8705) on the one HTTPS listener: tls_client_auth
// (chain to TLS_CLIENT_CA, then subject DN or SAN), self_signed_tls_client_auth (the
// registered certificate), certificate-bound tokens, and TLS session resumption. The
// handshake names no CA; the server's code checks that a TLS_CLIENT_CA certificate issued
// the client's (TLS_CLIENT_CA lists the issuing CAs, intermediates included).
import { execFile } from 'node:child_process';
import { createHash, webcrypto, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:tls';

import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import * as oauth from 'openid-client';
import { fetch as undiciFetch } from 'undici';

import { addClient, createWorkspace, decodeJwtPart, startServer, type RunningServer, type Workspace } from './helpers/server.ts';

const API = 'https://api.example.test';
const CLIENT_AUTH_FAILED = { error: 'invalid_client', error_description: 'client authentication failed' };

interface Pair { cert: string; key: string; certFile: string; keyFile: string }

let workspace: Workspace;
let server: RunningServer;
let certsDir: string;
const certs = {} as Record<'svcCli' | 'svcUri' | 'svcBound' | 'introspector' | 'acme' | 'rogue' | 'self' | 'otherSelf'
  | 'impostor' | 'impostorWithCa' | 'expired' | 'notYetValid' | 'timely' | 'underLeaf' | 'underDevIntermediate' | 'corp' | 'corpLeafOnly' | 'underRootOnly', Pair>;
let basicBoundSecret: string;

function run(command: string, args: string[]): Promise<string> {
  return new Promise((done, fail) => {
    execFile(command, args, (err, stdout, stderr) => (err ? fail(new Error(`${command} ${args.join(' ')}: ${stderr}`)) : done(stdout)));
  });
}

function pair(name: string): Pair {
  const certFile = join(certsDir, `${name}.crt`);
  const keyFile = join(certsDir, `${name}.key`);
  return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8'), certFile, keyFile };
}

/** A development client certificate from the CLI: subject CN=<id>, SAN URI urn:m2m-client:<id>. */
async function cliCert(id: string): Promise<Pair> {
  const result = await workspace.cli('client', ['cert', id, '--out', certsDir, '--json']);
  if (result.code !== 0) throw new Error(`client cert ${id}: ${result.stderr}`);
  return pair(id);
}

/** An EC P-256 client certificate signed by `ca` (or self-signed), made with openssl. */
async function opensslCert(name: string, subject: string, ca?: { cert: string; key: string }, san?: string): Promise<Pair> {
  const keyFile = join(certsDir, `${name}.key`);
  const certFile = join(certsDir, `${name}.crt`);
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-subj', subject];
  if (ca) {
    const ext = join(certsDir, `${name}.ext`);
    writeFileSync(ext, [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=clientAuth',
      ...(san ? [`subjectAltName=${san}`] : []),
    ].join('\n'));
    const csr = join(certsDir, `${name}.csr`);
    await run('openssl', ['req', '-new', ...newKey, '-out', csr]);
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-days', '2', '-extfile', ext, '-out', certFile]);
  } else {
    await run('openssl', ['req', '-x509', ...newKey, '-days', '2', '-addext', 'extendedKeyUsage=clientAuth', '-out', certFile]);
  }
  return pair(name);
}

/** A CA certificate (openssl), optionally under `issuer`, with an optional path length. */
async function opensslCa(name: string, subject: string, issuer?: { cert: string; key: string }, pathlen?: number): Promise<{ cert: string; key: string }> {
  const keyFile = join(certsDir, `${name}.key`);
  const certFile = join(certsDir, `${name}.crt`);
  const constraints = `basicConstraints=critical,CA:TRUE${pathlen === undefined ? '' : `,pathlen:${pathlen}`}`;
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-subj', subject];
  if (issuer) {
    const ext = join(certsDir, `${name}.ext`);
    writeFileSync(ext, `${constraints}\nkeyUsage=critical,keyCertSign\n`);
    const csr = join(certsDir, `${name}.csr`);
    await run('openssl', ['req', '-new', ...newKey, '-out', csr]);
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', issuer.cert, '-CAkey', issuer.key, '-days', '2', '-extfile', ext, '-out', certFile]);
  } else {
    await run('openssl', ['req', '-x509', ...newKey, '-days', '2', '-addext', constraints, '-addext', 'keyUsage=critical,keyCertSign', '-out', certFile]);
  }
  return { cert: certFile, key: keyFile };
}

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/**
 * A client certificate in the dev CA's name, valid only between two instants (openssl cannot
 * date one in the past), signed with the dev CA's key or with `signingKey` (an impostor's).
 * No authority key identifier: the issuer is found by name, and only the signature can tell.
 */
async function inDevCaName(name: string, notBefore: Date, notAfter: Date, signingKey?: CryptoKey): Promise<Pair> {
  const caCert = new x509.X509Certificate(readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8'));
  const caKey = signingKey ?? await webcrypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(readFileSync(join(workspace.keysDir, 'dev-ca.key'), 'utf8')), EC, false, ['sign']) as unknown as CryptoKey;
  const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']) as unknown as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${name}`, issuer: caCert.subject, notBefore, notAfter, signingAlgorithm: EC, publicKey: keys.publicKey, signingKey: caKey,
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
  });
  const certFile = join(certsDir, `${name}.crt`);
  const keyFile = join(certsDir, `${name}.key`);
  writeFileSync(certFile, cert.toString('pem'));
  writeFileSync(keyFile, x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as unknown as webcrypto.CryptoKey), 'PRIVATE KEY'));
  return pair(name);
}

/** A self-signed CA certificate bearing the dev CA's name, with a key of its own. */
async function impostorCa(): Promise<{ certFile: string; key: CryptoKey }> {
  const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']) as unknown as CryptoKeyPair;
  const day = 86_400_000;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: new x509.X509Certificate(readFileSync(join(workspace.keysDir, 'dev-ca.crt'), 'utf8')).subject,
    notBefore: new Date(Date.now() - day), notAfter: new Date(Date.now() + day), signingAlgorithm: EC, keys,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const certFile = join(certsDir, 'impostor-ca.crt');
  writeFileSync(certFile, cert.toString('pem'));
  return { certFile, key: keys.privateKey };
}

/** The client's certificate followed by the CA certificates it sends along. */
function withChain(leaf: Pair, ...chain: string[]): Pair {
  return { ...leaf, cert: [leaf.cert, ...chain.map((file) => readFileSync(file, 'utf8'))].map((pem) => `${pem.trim()}\n`).join('') };
}

function thumbprint(pem: string): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
}

function token(clientId: string, cert?: Pair) {
  return server.post('/token', { grant_type: 'client_credentials', client_id: clientId }, cert ? { cert } : {});
}

function curl(args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((done) => {
    execFile('curl', ['-sS', '--cacert', join(workspace.keysDir, 'dev-ca.crt'), ...args], (err, stdout) => done({ code: err ? 1 : 0, stdout }));
  });
}

beforeAll(async () => {
  workspace = await createWorkspace();
  certsDir = join(workspace.dir, 'client-certs');
  // The CLI creates the development CA in the workspace on first use; the server reuses it.
  certs.svcCli = await cliCert('svc-cli');
  [certs.svcUri, certs.svcBound, certs.introspector] = await Promise.all([cliCert('svc-uri'), cliCert('svc-bound'), cliCert('rs-introspector')]);
  const devCa = { cert: join(workspace.keysDir, 'dev-ca.crt'), key: join(workspace.keysDir, 'dev-ca.key') };
  certs.acme = await opensslCert('acme', '/O=Acme/CN=svc-a', devCa, 'DNS:svc-a.acme.test');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-keyout', join(certsDir, 'rogue-ca.key'), '-out', join(certsDir, 'rogue-ca.crt'), '-subj', '/CN=rogue CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  certs.rogue = await opensslCert('rogue', '/CN=svc-cli', { cert: join(certsDir, 'rogue-ca.crt'), key: join(certsDir, 'rogue-ca.key') }, 'URI:urn:m2m-client:svc-uri');
  certs.self = await opensslCert('self', '/CN=svc-self');
  certs.otherSelf = await opensslCert('other-self', '/CN=svc-self');

  // Validity, by the server's code now that the handshake checks nothing.
  const day = 86_400_000;
  certs.expired = await inDevCaName('svc-dated', new Date(Date.now() - 2 * day), new Date(Date.now() - day));
  certs.notYetValid = await inDevCaName('svc-dated-later', new Date(Date.now() + day), new Date(Date.now() + 2 * day));
  certs.timely = await inDevCaName('svc-dated-now', new Date(Date.now() - day), new Date(Date.now() + day));
  // A CA of its own with the dev CA's very name, sent along or not: names prove nothing.
  const impostor = await impostorCa();
  certs.impostor = await inDevCaName('svc-impostor', new Date(Date.now() - day), new Date(Date.now() + day), impostor.key);
  certs.impostorWithCa = withChain(certs.impostor, impostor.certFile);
  // Issuers: an end-entity certificate cannot issue (svc-cli's key signs svc-chain), and a CA
  // the client sends along is not one of TLS_CLIENT_CA's, even under one of them.
  certs.underLeaf = withChain(await opensslCert('under-leaf', '/CN=svc-chain', { cert: certs.svcCli.certFile, key: certs.svcCli.keyFile }), certs.svcCli.certFile);
  const devIntermediate = await opensslCa('dev-intermediate', '/CN=dev intermediate', devCa);
  certs.underDevIntermediate = withChain(await opensslCert('under-dev-intermediate', '/CN=svc-chain', devIntermediate), devIntermediate.cert);
  // A corporate PKI: TLS_CLIENT_CA lists its issuing intermediate (and root).
  const corpRoot = await opensslCa('corp-root', '/CN=corp root');
  const corpIntermediate = await opensslCa('corp-intermediate', '/CN=corp intermediate', corpRoot, 0);
  certs.corpLeafOnly = await opensslCert('corp', '/CN=svc-corp', corpIntermediate);
  certs.corp = withChain(certs.corpLeafOnly, corpIntermediate.cert);
  // Another: only its root in TLS_CLIENT_CA.
  const otherRoot = await opensslCa('other-root', '/CN=other root');
  const otherIntermediate = await opensslCa('other-intermediate', '/CN=other intermediate', otherRoot, 0);
  certs.underRootOnly = withChain(await opensslCert('under-root-only', '/CN=svc-chain', otherIntermediate), otherIntermediate.cert);
  const clientCaBundle = join(certsDir, 'client-ca-bundle.pem');
  writeFileSync(clientCaBundle, [devCa.cert, corpIntermediate.cert, corpRoot.cert, otherRoot.cert].map((file) => readFileSync(file, 'utf8').trim()).join('\n'));

  await addClient(workspace, 'svc-cli', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=svc-cli', '--audience', API, '--scope', 'orders:read']);
  await addClient(workspace, 'svc-uri', ['--auth', 'tls_client_auth', '--san-uri', 'urn:m2m-client:svc-uri', '--audience', API]);
  await addClient(workspace, 'svc-a', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=svc-a,O=Acme', '--audience', API]);
  // Attribute-name case and spacing around separators do not matter.
  await addClient(workspace, 'svc-a-loose', ['--auth', 'tls_client_auth', '--subject-dn', 'cn=svc-a, o=Acme', '--audience', API]);
  await addClient(workspace, 'svc-a-dns', ['--auth', 'tls_client_auth', '--san-dns', 'svc-a.acme.test', '--audience', API]);
  await addClient(workspace, 'svc-self', ['--auth', 'self_signed_tls_client_auth', '--cert', certs.self.certFile, '--audience', API]);
  await addClient(workspace, 'svc-bound', ['--auth', 'tls_client_auth', '--subject-dn', 'CN=svc-bound', '--audience', API, '--bound']);
  await addClient(workspace, 'rs-introspector', ['--auth', 'tls_client_auth', '--san-uri', 'urn:m2m-client:rs-introspector', '--audience', 'https://unused.example.test', '--introspect', API]);
  ({ client_secret: basicBoundSecret } = (await addClient(workspace, 'svc-basic-bound', ['--auth', 'client_secret_basic', '--audience', API, '--bound'])) as { client_secret: string });
  for (const id of ['svc-dated', 'svc-dated-later', 'svc-dated-now', 'svc-chain', 'svc-corp', 'svc-impostor']) {
    await addClient(workspace, id, ['--auth', 'tls_client_auth', '--subject-dn', `CN=${id}`, '--audience', API]);
  }
  server = await startServer(workspace, { TLS_CLIENT_CA: clientCaBundle });
});

afterAll(async () => {
  await server?.stop();
  await workspace?.remove();
});

function expectClientAuthFailed(res: { status: number; headers: Headers; body: unknown }): void {
  expect(res.status).toBe(401);
  expect(res.body).toEqual(CLIENT_AUTH_FAILED);
  expect(res.headers.get('cache-control')).toBe('no-store');
  expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="[^"]+", error="invalid_client"/);
}

test('openid-client (TlsClientAuth, client certificate on an undici Agent) gets a token', async () => {
  const dispatcher = server.agent(certs.svcUri);
  const mtlsFetch: oauth.CustomFetch = (url, options) => undiciFetch(url, { ...(options as object), dispatcher }) as unknown as Promise<Response>;
  const config = await oauth.discovery(new URL(server.issuer), 'svc-uri', undefined, oauth.TlsClientAuth(), {
    [oauth.customFetch]: mtlsFetch,
    algorithm: 'oauth2',
  });
  config[oauth.customFetch] = mtlsFetch;
  const tokens = await oauth.clientCredentialsGrant(config);
  expect(tokens.token_type).toBe('bearer');
  expect(decodeJwtPart(tokens.access_token, 1)).toMatchObject({ iss: server.issuer, client_id: 'svc-uri', aud: API });
});

test('curl --cert gets a token with tls_client_auth', async () => {
  const result = await curl(['--cert', certs.svcCli.certFile, '--key', certs.svcCli.keyFile, '-d', 'grant_type=client_credentials', '-d', 'client_id=svc-cli', `${server.issuer}/token`]);
  expect(result.code).toBe(0);
  const body = JSON.parse(result.stdout);
  expect(body).toMatchObject({ token_type: 'Bearer', scope: 'orders:read' });
  const claims = decodeJwtPart(body.access_token, 1);
  expect(claims).toMatchObject({ sub: 'svc-cli', client_id: 'svc-cli', aud: API });
  expect(claims.cnf).toBeUndefined();
});

test('curl --cert gets a token with self_signed_tls_client_auth', async () => {
  const result = await curl(['--cert', certs.self.certFile, '--key', certs.self.keyFile, '-d', 'grant_type=client_credentials', '-d', 'client_id=svc-self', `${server.issuer}/token`]);
  expect(result.code).toBe(0);
  expect(decodeJwtPart(JSON.parse(result.stdout).access_token, 1)).toMatchObject({ client_id: 'svc-self', aud: API });
});

test('--subject-dn matches the subject as openssl prints it (RFC 2253), normalised; SAN DNS matches', async () => {
  const printed = await run('openssl', ['x509', '-in', certs.acme.certFile, '-noout', '-subject', '-nameopt', 'RFC2253']);
  expect(printed.trim()).toBe('subject=CN=svc-a,O=Acme');
  const byDn = await token('svc-a', certs.acme);
  expect(byDn.status).toBe(200);
  expect(decodeJwtPart(byDn.body.access_token, 1)).toMatchObject({ client_id: 'svc-a' });
  const loose = await token('svc-a-loose', certs.acme);
  expect(loose.status).toBe(200);
  const bySan = await token('svc-a-dns', certs.acme);
  expect(bySan.status).toBe(200);
  expect(decodeJwtPart(bySan.body.access_token, 1)).toMatchObject({ client_id: 'svc-a-dns' });
});

test('a bound token carries cnf.x5t#S256 = base64url(SHA-256(certificate DER)), also in introspection', async () => {
  const res = await token('svc-bound', certs.svcBound);
  expect(res.status).toBe(200);
  const expected = thumbprint(certs.svcBound.cert);
  expect(decodeJwtPart(res.body.access_token, 1).cnf).toEqual({ 'x5t#S256': expected });
  const introspected = await server.post('/token/introspection', { token: res.body.access_token, client_id: 'rs-introspector' }, { cert: certs.introspector });
  expect(introspected.status).toBe(200);
  expect(introspected.body).toMatchObject({ active: true, client_id: 'svc-bound', cnf: { 'x5t#S256': expected } });
});

test('introspection and revocation callers authenticate with tls_client_auth', async () => {
  const issued = await token('svc-cli', certs.svcCli);
  expect(issued.status).toBe(200);
  const form = { token: issued.body.access_token, client_id: 'rs-introspector' };
  const active = await server.post('/token/introspection', form, { cert: certs.introspector });
  expect(active.status).toBe(200);
  expect(active.body).toMatchObject({ active: true, client_id: 'svc-cli', aud: API });
  expect(active.body.cnf).toBeUndefined();

  expectClientAuthFailed(await server.post('/token/introspection', form));
  expectClientAuthFailed(await server.post('/token/introspection', form, { cert: certs.svcCli }));

  const revoked = await server.post('/token/revocation', form, { cert: certs.introspector });
  expect(revoked.status).toBe(200);
  expect((await server.post('/token/introspection', form, { cert: certs.introspector })).body).toEqual({ active: false });
});

test('401 invalid_client: a certificate from an untrusted CA', async () => {
  // Subject and SAN match the registrations; only the issuer is wrong.
  expectClientAuthFailed(await token('svc-cli', certs.rogue));
  expectClientAuthFailed(await token('svc-uri', certs.rogue));
  // Named as issued by the dev CA, signed by another key: never a token. The client's TLS
  // stack sends the dev CA along (found by name in its own trust store). Node's handshake
  // checks that chain even with rejectUnauthorized off; the failed signature check leaves an
  // OpenSSL error queued, and the socket's next read reports it
  // (ERR_SSL_PROVIDER_SIGNATURE_FAILURE) and drops the connection, unless the 401 went out
  // first. Node gives a server no way to skip that check; see the next test for its reach.
  for (const cert of [certs.impostor, certs.impostorWithCa]) {
    const res = await impostorToken(cert);
    if (res.status === 0) expect(res.body).toBe('other side closed');
    else expectClientAuthFailed(res as Awaited<ReturnType<typeof token>>);
  }
});

function impostorToken(cert: Pair) {
  return token('svc-impostor', cert).catch((err: Error) => ({ status: 0, headers: new Headers(), body: String((err.cause as Error)?.message ?? err) }));
}

test("an impostor's dropped connection is its own: other clients' requests meanwhile all succeed", async () => {
  // The queued OpenSSL error must never reach another connection's read.
  const honest = async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 25; i += 1) statuses.push((await token('svc-cli', certs.svcCli)).status);
    return statuses;
  };
  const attacks = Promise.all(Array.from({ length: 12 }, (_, i) => impostorToken(i % 2 ? certs.impostorWithCa : certs.impostor)));
  const [a, b, refused] = await Promise.all([honest(), honest(), attacks]);
  expect([...a, ...b]).toEqual(Array.from({ length: 50 }, () => 200));
  for (const res of refused) {
    // 429 once the impostor's failures reach AUTH_FAILURE_LIMIT.
    if (res.status === 0) expect(res.body).toBe('other side closed');
    else expect([401, 429]).toContain(res.status);
  }
});

test('the handshake asks for a certificate without naming a CA (so Go and Java clients send self-signed ones)', async () => {
  const session = await new Promise<string>((done) => {
    const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${server.port}`, '-servername', 'localhost', '-CAfile', join(workspace.keysDir, 'dev-ca.crt')], (_err, stdout) => done(stdout));
    child.stdin!.end();
  });
  expect(session).toMatch(/Verification: OK|Verify return code: 0/);
  expect(session).toContain('No client certificate CA names sent');
  expect(session).not.toContain('Acceptable client certificate CA names');
});

test('401 invalid_client: an expired or not yet valid certificate from TLS_CLIENT_CA', async () => {
  expectClientAuthFailed(await token('svc-dated', certs.expired));
  expectClientAuthFailed(await token('svc-dated-later', certs.notYetValid));
  // The same making, dated now, passes: the dates are what failed.
  expect((await token('svc-dated-now', certs.timely)).status).toBe(200);
});

test('401 invalid_client: issued by a certificate that is not in TLS_CLIENT_CA, whatever the client sends along', async () => {
  // By svc-cli's certificate (CA:FALSE), sent along.
  expectClientAuthFailed(await token('svc-chain', certs.underLeaf));
  // By a CA under the dev CA, sent along.
  expectClientAuthFailed(await token('svc-chain', certs.underDevIntermediate));
  // By a CA under a TLS_CLIENT_CA root, sent along.
  expectClientAuthFailed(await token('svc-chain', certs.underRootOnly));
});

test('issued by an intermediate listed in TLS_CLIENT_CA: a token, whether or not the client sends the intermediate', async () => {
  const res = await token('svc-corp', certs.corp);
  expect(res.status).toBe(200);
  expect(decodeJwtPart(res.body.access_token, 1)).toMatchObject({ client_id: 'svc-corp' });
  expect((await token('svc-corp', certs.corpLeafOnly)).status).toBe(200);
});

test('401 invalid_client: no certificate', async () => {
  expectClientAuthFailed(await token('svc-cli'));
  expectClientAuthFailed(await token('svc-self'));
});

test('401 invalid_client: a trusted certificate whose DN or SAN does not match', async () => {
  expectClientAuthFailed(await token('svc-a', certs.svcCli));
  expectClientAuthFailed(await token('svc-cli', certs.acme));
  expectClientAuthFailed(await token('svc-a-dns', certs.svcCli));
  expectClientAuthFailed(await token('svc-uri', certs.svcCli));
});

test('401 invalid_client: another self-signed certificate (or a CA-issued one) for a self-signed client', async () => {
  expectClientAuthFailed(await token('svc-self', certs.otherSelf));
  expectClientAuthFailed(await token('svc-self', certs.svcCli));
});

test('a bound client without a certificate gets an error, not an unbound token; with one, a bound token', async () => {
  // A Basic client connects to the same listener without a certificate.
  const without = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc-basic-bound', basicBoundSecret] });
  expect(without.status).toBe(400);
  expect(without.body).toMatchObject({ error: 'invalid_grant' });
  expect(without.body.access_token).toBeUndefined();
  expect(without.headers.get('cache-control')).toBe('no-store');

  const withCert = await server.post('/token', { grant_type: 'client_credentials' }, { basic: ['svc-basic-bound', basicBoundSecret], cert: certs.self });
  expect(withCert.status).toBe(200);
  expect(decodeJwtPart(withCert.body.access_token, 1).cnf).toEqual({ 'x5t#S256': thumbprint(certs.self.cert) });
});

/** One token request on a fresh TLS connection, optionally resuming `session`. */
function tlsTokenRequest(clientId: string, cert: Pair, session?: Buffer): Promise<{ reused: boolean; status: number; body: Record<string, unknown>; session: Buffer | undefined }> {
  const form = `grant_type=client_credentials&client_id=${clientId}`;
  return new Promise((done, fail) => {
    let next: Buffer | undefined;
    let reused = false;
    let response = '';
    const socket = connect({
      host: 'localhost', port: server.port, ca: readFileSync(join(workspace.keysDir, 'dev-ca.crt')),
      cert: cert.cert, key: cert.key, ...(session ? { session } : {}),
    }, () => {
      reused = socket.isSessionReused();
      socket.write(`POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\nConnection: close\r\n\r\n${form}`);
    });
    socket.on('session', (s: Buffer) => { next = s; });
    socket.on('data', (chunk: Buffer) => { response += chunk.toString(); });
    socket.on('error', fail);
    socket.on('close', () => {
      const [head = '', body = ''] = response.split('\r\n\r\n');
      done({ reused, status: Number(head.split(' ')[1]), body: JSON.parse(body) as Record<string, unknown>, session: next });
    });
  });
}

test('TLS sessions resume (TLS 1.3 tickets), and a resumed session still authenticates and binds by certificate', async () => {
  const first = await tlsTokenRequest('svc-bound', certs.svcBound);
  expect(first.reused).toBe(false);
  expect(first.status).toBe(200);
  expect(first.session).toBeDefined();
  const second = await tlsTokenRequest('svc-bound', certs.svcBound, first.session);
  expect(second.reused).toBe(true);
  expect(second.status).toBe(200);
  expect(decodeJwtPart(second.body.access_token as string, 1).cnf).toEqual({ 'x5t#S256': thumbprint(certs.svcBound.cert) });
});

test('a resumed session (the certificate comes back without what was sent along) still authenticates', async () => {
  const first = await tlsTokenRequest('svc-corp', certs.corp);
  expect(first.status).toBe(200);
  const second = await tlsTokenRequest('svc-corp', certs.corp, first.session);
  expect(second.reused).toBe(true);
  expect(second.status).toBe(200);
});
