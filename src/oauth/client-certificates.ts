// Where a client certificate comes from and what it proves (RFC 8705). Direct mode: the
// TLS handshake, verified by Node against TLS_CLIENT_CA. Proxy mode: CLIENT_CERT_HEADER,
// believed only from TRUSTED_PROXIES and verified here against TLS_CLIENT_CA.
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

function issuedByTrustedCa(cert: X509Certificate, cas: X509Certificate[]): boolean {
  const now = Date.now();
  if (now < cert.validFromDate.getTime() || now > cert.validToDate.getTime()) return false;
  // As OpenSSL checks in direct mode: an extended key usage, when present, must allow client auth.
  // (Node names the extended key usage OIDs `keyUsage`.)
  const eku = cert.keyUsage;
  if (eku && !eku.includes('1.3.6.1.5.5.7.3.2') && !eku.includes('2.5.29.37.0')) return false;
  return cas.some((ca) => ca.ca && cert.checkIssued(ca) && cert.verify(ca.publicKey)
    && now >= ca.validFromDate.getTime() && now <= ca.validToDate.getTime());
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
        const cert = socket.getPeerX509Certificate?.();
        // Without a configured CA, Node would verify against the public roots: trust nothing then.
        if (cert) found = { cert, trusted: socket.authorized && clientCas.length > 0 };
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
              found = { cert, trusted: issuedByTrustedCa(cert, clientCas) };
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
