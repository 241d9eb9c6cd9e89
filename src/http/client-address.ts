// The caller's address: the TCP peer, or in proxy mode the address a trusted proxy
// forwarded (X-Forwarded-For, read right to left, trusting only TRUSTED_PROXIES).
import type { IncomingMessage } from 'node:http';

import proxyAddr from 'proxy-addr';

import type { Settings } from '../settings.ts';

export function clientAddress(settings: Settings): (req: IncomingMessage) => string {
  if (settings.tlsMode !== 'proxy' || settings.trustedProxies.length === 0) {
    return (req) => req.socket.remoteAddress ?? 'unknown';
  }
  const trust = proxyAddr.compile(settings.trustedProxies);
  return (req) => proxyAddr(req, trust);
}
