// Where a client certificate comes from and what it proves (RFC 8705). Direct mode: the
// TLS handshake, verified by Node against TLS_CLIENT_CA. Proxy mode: CLIENT_CERT_HEADER,
// believed only from TRUSTED_PROXIES and verified here against TLS_CLIENT_CA.
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import ipaddr from 'ipaddr.js';
import type { Context } from 'koa';

import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import { certificateSubjectDn, normaliseDn } from './distinguished-name.ts';

const CERT = Symbol('client certificate');

interface Presented {
  cert: X509Certificate;
  /** The chain was verified against TLS_CLIENT_CA. */
  trusted: boolean;
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
  const trusted = settings.trustedProxies.map((entry) => (entry.includes('/')
    ? ipaddr.parseCIDR(entry)
    : (() => { const a = ipaddr.parse(entry); return [a, a.kind() === 'ipv4' ? 32 : 128] as [ipaddr.IPv4 | ipaddr.IPv6, number]; })()));

  const fromTrustedProxy = (address: string | undefined): boolean => {
    if (!address || !ipaddr.isValid(address)) return false;
    const parsed = ipaddr.process(address);
    return trusted.some(([range, bits]) => parsed.kind() === range.kind() && parsed.match(range, bits));
  };

  const present = (ctx: Context): Presented | undefined => {
    const state = ctx.state as { [CERT]?: Presented | null };
    if (state[CERT] !== undefined) return state[CERT] ?? undefined;
    let found: Presented | undefined;
    if (settings.tlsMode === 'direct') {
      const socket = ctx.req.socket as TLSSocket;
      const cert = socket.getPeerX509Certificate?.();
      // Without a configured CA, Node would verify against the public roots: trust nothing then.
      if (cert) found = { cert, trusted: socket.authorized && clientCas.length > 0 };
    } else {
      const header = ctx.get(settings.clientCertHeader);
      if (header) {
        const address = ctx.req.socket.remoteAddress;
        if (!fromTrustedProxy(address)) {
          logger.warn({ remote_address: address, header: settings.clientCertHeader }, 'ignored a forwarded client certificate from an untrusted address');
        } else {
          try {
            const cert = new X509Certificate(decodeURIComponent(header));
            found = { cert, trusted: issuedByTrustedCa(cert, clientCas) };
          } catch {
            logger.info({ header: settings.clientCertHeader }, 'forwarded client certificate did not parse');
          }
        }
      }
    }
    state[CERT] = found ?? null;
    return found;
  };

  return {
    getCertificate: (ctx) => present(ctx)?.cert,
    certificateAuthorized: (ctx) => present(ctx)?.trusted === true,
    certificateSubjectMatches(ctx, property, expected) {
      const cert = present(ctx)?.cert;
      if (!cert) return false;
      try {
        switch (property) {
          case 'tls_client_auth_subject_dn':
            return certificateSubjectDn(cert) === normaliseDn(expected);
          case 'tls_client_auth_san_dns':
            return subjectAltNames(cert).some((n) => n.type === 'dns' && n.value.toLowerCase() === expected.toLowerCase());
          case 'tls_client_auth_san_uri':
            return subjectAltNames(cert).some((n) => n.type === 'url' && n.value === expected);
          default:
            return false;
        }
      } catch {
        return false;
      }
    },
  };
}
