// Where a client certificate comes from and what it proves (RFC 8705). Direct mode: the
// TLS handshake. Proxy mode: CLIENT_CERT_HEADER, believed only from TRUSTED_PROXIES. Both
// are verified here against TLS_CLIENT_CA, never by the TLS layer: the handshake names no
// CA (server.ts), so that Go and Java clients send self-signed certificates too, and Node
// then checks a peer's chain against the public roots, which prove nothing here.
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import type { Context } from 'koa';

import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import { certificateSubjectDn, normaliseDn } from '../clients/distinguished-name.ts';
import { isTrustedProxy } from '../http/trusted-proxies.ts';

const CERT = Symbol('client certificate');

interface Presented {
  cert: X509Certificate;
  /** The chain was verified against TLS_CLIENT_CA. */
  trusted: boolean;
  /** Epoch ms: a kept certificate stops counting when it expires, whatever the connection's age. */
  validUntil?: number;
  /** Parsed on first use, then kept with the certificate. */
  subjectDn?: string;
  altNames?: { type: string; value: string }[];
}

// A connection's certificate does not change: it is parsed once per TLS connection, and a
// forwarded one once per distinct header value (for a minute, as validity is time-bound).
const perSocket = new WeakMap<TLSSocket, Presented | null>();
const FORWARDED_TTL_MS = 60_000;
const perHeader = new Map<string, { presented: Presented | null; until: number }>();
const normalisedDns = new Map<string, string>();

function normalisedDn(expected: string): string {
  let value = normalisedDns.get(expected);
  if (value === undefined) {
    value = normaliseDn(expected);
    if (normalisedDns.size > 10_000) normalisedDns.clear();
    normalisedDns.set(expected, value);
  }
  return value;
}

function subjectAltNames(cert: X509Certificate): { type: string; value: string }[] {
  const parsed = new x509.X509Certificate(cert.raw);
  return parsed.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON() ?? [];
}

export function parseCertificateBundle(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((block) => new X509Certificate(block));
}

const CLIENT_AUTH_EKU = '1.3.6.1.5.5.7.3.2';
const ANY_EKU = '2.5.29.37.0';

function validAt(cert: X509Certificate, now: number): boolean {
  return now >= cert.validFromDate.getTime() && now <= cert.validToDate.getTime();
}

const mayIssue = new WeakMap<X509Certificate, boolean>();

/** A TLS_CLIENT_CA certificate may issue: a CA, with keyCertSign when it states key usages. */
function issuing(ca: X509Certificate): boolean {
  let allowed = mayIssue.get(ca);
  if (allowed === undefined) {
    const usage = new x509.X509Certificate(ca.raw).getExtension(x509.KeyUsagesExtension);
    allowed = ca.ca && (!usage || (usage.usages & x509.KeyUsageFlags.keyCertSign) !== 0);
    mayIssue.set(ca, allowed);
  }
  return allowed;
}

/**
 * The client's certificate is valid now, usable for client authentication, and issued and
 * signed by a TLS_CLIENT_CA certificate that is itself valid now. Only the certificate counts,
 * never what the client sends along: TLS_CLIENT_CA lists the issuing CAs, intermediates
 * included, as proxy mode needs anyway (a proxy forwards the client's certificate alone), and
 * a resumed TLS session, which brings back the certificate without its chain, still proves.
 */
function issuedByTrustedCa(cert: X509Certificate, cas: X509Certificate[]): boolean {
  const now = Date.now();
  if (!validAt(cert, now)) return false;
  // Node names the extended key usage OIDs `keyUsage`; when present, it must allow client auth.
  const eku = cert.keyUsage;
  if (eku && !eku.includes(CLIENT_AUTH_EKU) && !eku.includes(ANY_EKU)) return false;
  return cas.some((ca) => issuing(ca) && validAt(ca, now) && cert.checkIssued(ca) && signedWith(cert, ca));
}

/** A signature that cannot be checked at all (an odd key or algorithm) is no signature: this never throws. */
function signedWith(cert: X509Certificate, ca: X509Certificate): boolean {
  try {
    return cert.verify(ca.publicKey);
  } catch {
    return false;
  }
}

export interface CertificateHooks {
  getCertificate(ctx: Context): X509Certificate | undefined;
  certificateAuthorized(ctx: Context): boolean;
  certificateSubjectMatches(ctx: Context, property: string, expected: string): boolean;
}

/** Direct mode: the certificate of the TLS connection, parsed and checked once per connection. */
function fromHandshake(ctx: Context, clientCas: X509Certificate[]): Presented | undefined {
  const socket = ctx.req.socket as TLSSocket;
  const known = perSocket.get(socket);
  if (known !== undefined) return known ?? undefined;
  const cert = socket.getPeerX509Certificate?.();
  // Not socket.authorized: that is Node's verdict against its public roots.
  const found = cert ? { cert, trusted: issuedByTrustedCa(cert, clientCas) } : undefined;
  perSocket.set(socket, found ?? null);
  return found;
}

/** Proxy mode: the certificate in CLIENT_CERT_HEADER, from a trusted proxy only. */
function fromProxy(ctx: Context, settings: Settings, clientCas: X509Certificate[], logger: Logger): Presented | undefined {
  const header = ctx.get(settings.clientCertHeader);
  if (!header) return undefined;
  const address = ctx.req.socket.remoteAddress;
  // The same matcher client-address.ts uses, so both agree on who a proxy is.
  if (!isTrustedProxy(settings, address)) {
    logger.warn({ remote_address: address, header: settings.clientCertHeader }, 'ignored a forwarded client certificate from an untrusted address');
    return undefined;
  }
  const now = Date.now();
  const known = perHeader.get(header);
  if (known && known.until > now) return known.presented ?? undefined;
  let found: Presented | undefined;
  try {
    const cert = new X509Certificate(decodeURIComponent(header));
    found = { cert, trusted: issuedByTrustedCa(cert, clientCas) };
  } catch {
    logger.info({ header: settings.clientCertHeader }, 'forwarded client certificate did not parse');
  }
  if (perHeader.size > 1000) perHeader.clear();
  perHeader.set(header, { presented: found ?? null, until: now + FORWARDED_TTL_MS });
  return found;
}

/** Whether the certificate's subject DN, DNS SAN or URI SAN is `expected`; never throws. */
function subjectMatches(presented: Presented, property: string, expected: string): boolean {
  const altNames = () => (presented.altNames ??= subjectAltNames(presented.cert));
  try {
    switch (property) {
      case 'tls_client_auth_subject_dn':
        presented.subjectDn ??= certificateSubjectDn(presented.cert);
        return presented.subjectDn === normalisedDn(expected);
      case 'tls_client_auth_san_dns':
        return altNames().some((n) => n.type === 'dns' && n.value.toLowerCase() === expected.toLowerCase());
      case 'tls_client_auth_san_uri':
        return altNames().some((n) => n.type === 'url' && n.value === expected);
      default:
        return false;
    }
  } catch {
    return false;
  }
}

export function certificateHooks(settings: Settings, clientCas: X509Certificate[], logger: Logger): CertificateHooks {
  /** The request's certificate, looked for once per request. */
  const present = (ctx: Context): Presented | undefined => {
    const state = ctx.state as { [CERT]?: Presented | null };
    if (state[CERT] !== undefined) return state[CERT] ?? undefined;
    const found = settings.tlsMode === 'direct' ? fromHandshake(ctx, clientCas) : fromProxy(ctx, settings, clientCas, logger);
    state[CERT] = found ?? null;
    return found;
  };

  return {
    getCertificate: (ctx) => present(ctx)?.cert,
    certificateAuthorized(ctx) {
      const presented = present(ctx);
      if (!presented?.trusted) return false;
      presented.validUntil ??= presented.cert.validToDate.getTime();
      return Date.now() <= presented.validUntil;
    },
    certificateSubjectMatches(ctx, property, expected) {
      const presented = present(ctx);
      return presented ? subjectMatches(presented, property, expected) : false;
    },
  };
}
