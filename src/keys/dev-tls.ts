// Development TLS material, generated into KEYS_DIR when absent (never in production): a
// CA, a server certificate for localhost signed by it, and client certificates on request.
// ECDSA P-256 throughout, so handshakes are cheap.
import { webcrypto, X509Certificate as NodeX509 } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

// @peculiar/x509 needs the Reflect metadata API loaded before it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;

export interface TlsFiles {
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
}

function devTlsFiles(dir: string): TlsFiles {
  return {
    caCert: join(dir, 'dev-ca.crt'),
    caKey: join(dir, 'dev-ca.key'),
    serverCert: join(dir, 'dev-server.crt'),
    serverKey: join(dir, 'dev-server.key'),
  };
}

async function pkcs8Pem(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key as webcrypto.CryptoKey), 'PRIVATE KEY');
}

async function loadCa(files: TlsFiles): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  const cert = new x509.X509Certificate(readFileSync(files.caCert, 'utf8'));
  const der = x509.PemConverter.decodeFirst(readFileSync(files.caKey, 'utf8'));
  const key = await webcrypto.subtle.importKey('pkcs8', der, ALG, false, ['sign']);
  return { cert, key: key as unknown as CryptoKey };
}

export interface IssueOptions {
  subject: string;
  dnsNames?: string[];
  ips?: string[];
  uris?: string[];
  usage: 'server' | 'client';
  days: number;
}

/** Issues a certificate from the development CA; returns PEM certificate and key. */
export async function issueCertificate(dir: string, options: IssueOptions): Promise<{ cert: string; key: string }> {
  const files = devTlsFiles(dir);
  const ca = await loadCa(files);
  const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']) as unknown as CryptoKeyPair;
  const names: x509.JsonGeneralNames = [
    ...(options.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(options.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(options.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ];
  const cert = await x509.X509CertificateGenerator.create({
    subject: options.subject,
    issuer: ca.cert.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + options.days * DAY),
    signingAlgorithm: ALG,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([options.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      ...(names.length ? [new x509.SubjectAlternativeNameExtension(names)] : []),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  });
  return { cert: cert.toString('pem'), key: await pkcs8Pem(keys.privateKey) };
}

/** Creates the development CA and server certificate when missing; returns their paths. */
export async function ensureDevTls(dir: string): Promise<TlsFiles> {
  const files = devTlsFiles(dir);
  mkdirSync(dir, { recursive: true });
  if (!existsSync(files.caCert) || !existsSync(files.caKey)) {
    const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']) as unknown as CryptoKeyPair;
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=m2m-oauth-server development CA',
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 3650 * DAY),
      signingAlgorithm: ALG,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    writeFileSync(files.caKey, await pkcs8Pem(keys.privateKey), { mode: 0o600 });
    writeFileSync(files.caCert, ca.toString('pem'));
    writeFileSync(files.serverCert, '');
  }
  const serverCert = existsSync(files.serverCert) ? readFileSync(files.serverCert, 'utf8') : '';
  if (!serverCert || !existsSync(files.serverKey) || new NodeX509(serverCert).validToDate.getTime() < Date.now() + DAY) {
    const issued = await issueCertificate(dir, {
      subject: 'CN=localhost',
      dnsNames: ['localhost'],
      ips: ['127.0.0.1', '::1'],
      usage: 'server',
      days: 397,
    });
    writeFileSync(files.serverKey, issued.key, { mode: 0o600 });
    writeFileSync(files.serverCert, issued.cert);
  }
  return files;
}
