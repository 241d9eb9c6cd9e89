// The caller's address: the TCP peer, or in proxy mode the address a trusted proxy
// forwarded (X-Forwarded-For, read right to left, trusting only TRUSTED_PROXIES).
import type { IncomingMessage } from 'node:http';

import ipaddr from 'ipaddr.js';
import proxyAddr from 'proxy-addr';

import type { Settings } from '../settings.ts';
import { trustedProxies } from './trusted-proxies.ts';

/** IPv4 clients of a dual-stack listener appear as ::ffff:a.b.c.d; one address, one form. */
function canonical(address: string | undefined): string {
  if (!address) return 'unknown';
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7);
  if (!ipaddr.isValid(address)) return 'unknown';
  return ipaddr.process(address).toString();
}

export function clientAddress(settings: Settings): (req: IncomingMessage) => string {
  if (settings.tlsMode !== 'proxy' || settings.trustedProxies.length === 0) {
    return (req) => canonical(req.socket.remoteAddress);
  }
  const trust = trustedProxies(settings);
  return (req) => canonical(proxyAddr(req, trust));
}
