// The one listener. TLS_MODE=direct: HTTPS here, client certificates requested but not
// required (so Basic and assertion clients connect without one), session resumption on.
// TLS_MODE=proxy: plain HTTP behind a TLS-terminating proxy.
// Idle connections cost a file descriptor each: one that has not finished its handshake, or
// then sent its first request, within TLS_HANDSHAKE_TIMEOUT each (proxy mode: not sent its
// first request within it) is closed, and one address holds at most MAX_CONNECTIONS_PER_ADDRESS.
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Server, Socket } from 'node:net';

import { addressKey } from '../net/address-key.ts';
import type { Settings } from '../settings.ts';
import { isTrustedProxy } from './trusted-proxies.ts';

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface TlsMaterial {
  cert: string;
  key: string;
}

const LIMITS = {
  headersTimeout: 10_000,
  requestTimeout: 15_000,
  keepAliveTimeout: 65_000,
  maxHeaderSize: 16_384,
  maxRequestsPerSocket: 0,
  // Node checks headersTimeout and requestTimeout only this often (30 s by default).
  connectionsCheckingInterval: 1000,
};

export function readTlsMaterial(paths: { cert: string; key: string }): TlsMaterial {
  return { cert: readFileSync(paths.cert, 'utf8'), key: readFileSync(paths.key, 'utf8') };
}


/** Closes a new connection at once when its address already holds `max`; proxies are exempt. */
function limitConnectionsPerAddress(server: Server, max: number, exempt: (address: string) => boolean): void {
  const open = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress;
    if (address === undefined) return;
    if (exempt(address)) return;
    const key = addressKey(address);
    const count = open.get(key) ?? 0;
    if (count >= max) {
      socket.destroy();
      return;
    }
    open.set(key, count + 1);
    socket.once('close', () => {
      const left = (open.get(key) ?? 1) - 1;
      if (left > 0) open.set(key, left);
      else open.delete(key);
    });
  });
}

const FIRST_REQUEST = Symbol('first request deadline');
type Waiting = Socket & { [FIRST_REQUEST]?: NodeJS.Timeout };

/**
 * Closes a connection that has not sent a complete request within `ms` of `event`. Node's
 * headersTimeout starts only with a request's first byte: a silent connection is kept forever.
 */
function closeIfNoRequest(server: Server, event: 'connection' | 'secureConnection', ms: number): void {
  server.on(event, (socket: Waiting) => {
    const timer = setTimeout(() => socket.destroy(), ms);
    timer.unref();
    socket[FIRST_REQUEST] = timer;
    socket.once('close', () => clearTimeout(timer));
  });
  server.on('request', (req: IncomingMessage) => {
    const socket = req.socket as Waiting;
    const timer = socket[FIRST_REQUEST];
    if (timer === undefined) return;
    clearTimeout(timer);
    socket[FIRST_REQUEST] = undefined;
  });
}

export function createServer(settings: Settings, handler: Handler, tls: TlsMaterial | undefined): Server {
  let server;
  const handshakeMs = settings.tlsHandshakeTimeout * 1000;
  if (settings.tlsMode === 'proxy') {
    server = createHttpServer({ ...LIMITS }, handler);
    // No handshake here: the first request must arrive within the same time.
    closeIfNoRequest(server, 'connection', handshakeMs);
  } else {
    if (!tls) throw new Error('TLS material is required in direct mode');
    server = createHttpsServer({
      ...LIMITS,
      cert: tls.cert,
      key: tls.key,
      // No `ca`: the CertificateRequest then names no CA, and Go's crypto/tls and Java send
      // any certificate they hold, self-signed ones included. Its issuer is checked against
      // TLS_CLIENT_CA in client-certificates.ts.
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      sessionTimeout: 300,
      handshakeTimeout: handshakeMs,
    }, handler);
    // A finished handshake is no licence to idle: the first request follows within the same time.
    closeIfNoRequest(server, 'secureConnection', handshakeMs);
  }
  limitConnectionsPerAddress(server, settings.maxConnectionsPerAddress, (address) => settings.tlsMode === 'proxy' && isTrustedProxy(settings, address));
  // A connection's client certificate is read once and kept (client-certificates.ts):
  // renegotiation, which could swap it, is refused.
  if (settings.tlsMode !== 'proxy') {
    server.on('secureConnection', (socket: import('node:tls').TLSSocket) => socket.disableRenegotiation());
  }
  server.keepAliveTimeout = LIMITS.keepAliveTimeout;
  server.maxHeadersCount = 100;
  return server;
}
