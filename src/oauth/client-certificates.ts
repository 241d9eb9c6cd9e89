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
import proxyAddr from 'proxy-addr';

import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import { certificateSubjectDn, normaliseDn } from './distinguished-name.ts';

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
// A resumed TLS session brings back the client's certificate but not the intermediates it
// sent: a chain verified on a full handshake stays verified for the sessions' lifetime.
const SESSION_TTL_MS = 300_000;
const verifiedChains = new Map<string, number>();

function chainVerifiedRecently(cert: X509Certificate): boolean {
  return (verifiedChains.get(cert.fingerprint256) ?? 0) > Date.now();
}

function rememberVerifiedChain(cert: X509Certificate): void {
  if (verifiedChains.size > 10_000) verifiedChains.clear();
  verifiedChains.set(cert.fingerprint256, Date.now() + SESSION_TTL_MS);
}
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
/** Intermediates a client may send between its certificate and a TLS_CLIENT_CA certificate. */
const MAX_INTERMEDIATES = 4;

function validAt(cert: X509Certificate, now: number): boolean {
  return now >= cert.validFromDate.getTime() && now <= cert.validToDate.getTime();
}

interface Constraints { keyCertSign: boolean; pathLength: number | undefined }
const constraintsOf = new WeakMap<X509Certificate, Constraints>();

/** `issuer` may sign `cert`, with `casBelow` CA certificates between it and the client's. */
function signedBy(cert: X509Certificate, issuer: X509Certificate, casBelow: number, now: number): boolean {
  if (!issuer.ca || !validAt(issuer, now) || !cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)) return false;
  let constraints = constraintsOf.get(issuer);
  if (!constraints) {
    const parsed = new x509.X509Certificate(issuer.raw);
    const usage = parsed.getExtension(x509.KeyUsagesExtension);
    constraints = {
      keyCertSign: !usage || (usage.usages & x509.KeyUsageFlags.keyCertSign) !== 0,
      pathLength: parsed.getExtension(x509.BasicConstraintsExtension)?.pathLength,
    };
    constraintsOf.set(issuer, constraints);
  }
  return constraints.keyCertSign && (constraints.pathLength === undefined || casBelow <= constraints.pathLength);
}

function usableForClientAuth(cert: X509Certificate, now: number): boolean {
  // Node names the extended key usage OIDs `keyUsage`; when present, it must allow client auth.
  const eku = cert.keyUsage;
  return validAt(cert, now) && (!eku || eku.includes(CLIENT_AUTH_EKU) || eku.includes(ANY_EKU));
}

/**
 * The checks OpenSSL made when the handshake verified chains: the client's certificate is
 * valid now and usable for client authentication, and it chains, through CA certificates
 * the client sent (signature, validity, basic constraints, key usage, path length), to a
 * TLS_CLIENT_CA certificate.
 */
export function chainsToTrustedCa(cert: X509Certificate, intermediates: X509Certificate[], cas: X509Certificate[]): boolean {
  const now = Date.now();
  if (!usableForClientAuth(cert, now)) return false;
  let current = cert;
  for (let casBelow = 0; casBelow <= MAX_INTERMEDIATES; casBelow += 1) {
    if (cas.some((ca) => signedBy(current, ca, casBelow, now))) return true;
    const next = intermediates.find((candidate) => candidate !== current && signedBy(current, candidate, casBelow, now));
    if (!next) return false;
    current = next;
  }
  return false;
}

/**
 * The client's certificate and the certificates it sent along (Node may add ones it found
 * in its own store: they are only candidates, trust comes from TLS_CLIENT_CA alone). Read
 * with one getPeerCertificate(true): after getPeerX509Certificate(), Node's detailed view
 * lacks the chain.
 */
function peerChain(socket: TLSSocket): { cert: X509Certificate; intermediates: X509Certificate[] } | undefined {
  const peer = socket.getPeerCertificate(true);
  if (!peer?.raw) return undefined;
  const intermediates: X509Certificate[] = [];
  let link = peer;
  while (link.issuerCertificate?.raw && link.issuerCertificate !== link && intermediates.length < MAX_INTERMEDIATES * 2) {
    link = link.issuerCertificate;
    intermediates.push(new X509Certificate(link.raw));
  }
  return { cert: new X509Certificate(peer.raw), intermediates };
}

export interface CertificateHooks {
  getCertificate(ctx: Context): X509Certificate | undefined;
  certificateAuthorized(ctx: Context): boolean;
  certificateSubjectMatches(ctx: Context, property: string, expected: string): boolean;
}

export function certificateHooks(settings: Settings, clientCas: X509Certificate[], logger: Logger): CertificateHooks {
  // The same matcher client-address.ts uses (proxy-addr), so both agree on who a proxy is.
  const trust = proxyAddr.compile(settings.trustedProxies);
  const fromTrustedProxy = (address: string | undefined): boolean => address !== undefined && trust(address, 0);

  const present = (ctx: Context): Presented | undefined => {
    const state = ctx.state as { [CERT]?: Presented | null };
    if (state[CERT] !== undefined) return state[CERT] ?? undefined;
    let found: Presented | undefined;
    if (settings.tlsMode === 'direct') {
      const socket = ctx.req.socket as TLSSocket;
      const known = perSocket.get(socket);
      if (known !== undefined) {
        found = known ?? undefined;
      } else {
        // Not socket.authorized: that is Node's verdict against its public roots.
        const peer = peerChain(socket);
        if (peer) {
          let trusted = chainsToTrustedCa(peer.cert, peer.intermediates, clientCas);
          if (trusted && peer.intermediates.length) rememberVerifiedChain(peer.cert);
          else if (!trusted && socket.isSessionReused()) trusted = usableForClientAuth(peer.cert, Date.now()) && chainVerifiedRecently(peer.cert);
          found = { cert: peer.cert, trusted };
        }
        perSocket.set(socket, found ?? null);
      }
    } else {
      const header = ctx.get(settings.clientCertHeader);
      if (header) {
        const address = ctx.req.socket.remoteAddress;
        if (!fromTrustedProxy(address)) {
          logger.warn({ remote_address: address, header: settings.clientCertHeader }, 'ignored a forwarded client certificate from an untrusted address');
        } else {
          const now = Date.now();
          const known = perHeader.get(header);
          if (known && known.until > now) {
            found = known.presented ?? undefined;
          } else {
            try {
              const cert = new X509Certificate(decodeURIComponent(header));
              found = { cert, trusted: chainsToTrustedCa(cert, [], clientCas) };
            } catch {
              logger.info({ header: settings.clientCertHeader }, 'forwarded client certificate did not parse');
            }
            if (perHeader.size > 1000) perHeader.clear();
            perHeader.set(header, { presented: found ?? null, until: now + FORWARDED_TTL_MS });
          }
        }
      }
    }
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
      if (!presented) return false;
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
    },
  };
}
