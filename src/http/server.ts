// The one listener. TLS_MODE=direct: HTTPS here, client certificates requested but not
// required (so Basic and assertion clients connect without one), session resumption on.
// TLS_MODE=proxy: plain HTTP behind a TLS-terminating proxy.
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Server } from 'node:net';

import type { Settings } from '../settings.ts';

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface TlsMaterial {
  cert: string;
  key: string;
  clientCa?: string;
}

const LIMITS = {
  headersTimeout: 10_000,
  requestTimeout: 15_000,
  keepAliveTimeout: 65_000,
  maxHeaderSize: 16_384,
  maxRequestsPerSocket: 0,
};

export function readTlsMaterial(paths: { cert: string; key: string; clientCa?: string | undefined }): TlsMaterial {
  return {
    cert: readFileSync(paths.cert, 'utf8'),
    key: readFileSync(paths.key, 'utf8'),
    ...(paths.clientCa ? { clientCa: readFileSync(paths.clientCa, 'utf8') } : {}),
  };
}

export function createServer(settings: Settings, handler: Handler, tls: TlsMaterial | undefined): Server {
  let server;
  if (settings.tlsMode === 'proxy') {
    server = createHttpServer({ ...LIMITS }, handler);
  } else {
    if (!tls) throw new Error('TLS material is required in direct mode');
    server = createHttpsServer({
      ...LIMITS,
      cert: tls.cert,
      key: tls.key,
      ...(tls.clientCa ? { ca: tls.clientCa } : {}),
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      sessionTimeout: 300,
    }, handler);
  }
  // A connection's client certificate is read once and kept (client-certificates.ts):
  // renegotiation, which could swap it, is refused.
  if (settings.tlsMode !== 'proxy') {
    server.on('secureConnection', (socket: import('node:tls').TLSSocket) => socket.disableRenegotiation());
  }
  server.headersTimeout = LIMITS.headersTimeout;
  server.requestTimeout = LIMITS.requestTimeout;
  server.keepAliveTimeout = LIMITS.keepAliveTimeout;
  server.maxHeadersCount = 100;
  return server;
}
