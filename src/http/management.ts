// The management listener (MANAGEMENT_PORT, plain HTTP): /metrics, /healthz and /readyz for
// operators and their monitoring, never the OAuth endpoints. The metrics name every client
// that got a token and the internal refusal reasons, so they are kept off the public listener.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';

export interface Readiness {
  ready: boolean;
  body: Record<string, unknown>;
}

export interface ManagementProbes {
  /** Prometheus text exposition. */
  metrics(): Promise<string>;
  readiness(): Promise<Readiness>;
}

/** Ready when the database answers and a signing key is loaded. */
export async function readiness(pingDatabase: () => Promise<void>, signingKid: string | undefined): Promise<Readiness> {
  try {
    await pingDatabase();
    return { ready: signingKid !== undefined, body: { status: signingKid ? 'ready' : 'unready', database: 'ok', signing_key: signingKid } };
  } catch {
    return { ready: false, body: { status: 'unready', database: 'unreachable', signing_key: signingKid } };
  }
}

const PATHS = new Set(['/metrics', '/healthz', '/readyz']);

function answer(req: IncomingMessage, res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'content-length': Buffer.byteLength(body) });
  res.end(req.method === 'HEAD' ? undefined : body);
}

const json = (req: IncomingMessage, res: ServerResponse, status: number, body: unknown) => answer(req, res, status, 'application/json; charset=utf-8', JSON.stringify(body));

function createManagementServer(probes: ManagementProbes, onError: (err: unknown) => void): Server {
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 15_000, maxHeaderSize: 16_384 }, (req, res) => {
    const path = (req.url ?? '').split('?')[0]!;
    if (!PATHS.has(path)) return json(req, res, 404, { error: 'invalid_request', error_description: 'no such endpoint' });
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return json(req, res, 405, { error: 'invalid_request', error_description: `use GET or HEAD on ${path}` });
    }
    if (path === '/healthz') return json(req, res, 200, { status: 'ok' });
    const work = path === '/metrics'
      ? probes.metrics().then((text) => answer(req, res, 200, 'text/plain; version=0.0.4; charset=utf-8', text))
      : probes.readiness().then(({ ready, body }) => json(req, res, ready ? 200 : 503, body));
    work.catch((err: unknown) => {
      onError(err);
      if (!res.headersSent) json(req, res, 503, { error: 'temporarily_unavailable', error_description: 'not available right now' });
    });
  });
  server.keepAliveTimeout = 65_000;
  return server;
}

/** Listens, or rejects (a port in use stops the start). */
async function listenManagement(server: Server, port: number, host: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Closes the listener and its keep-alive connections (a scraper's would hold it open). */
export async function closeManagement(server: Server): Promise<void> {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** MANAGEMENT_PORT=0: none. Started before the public listener, so it is up once that one is. */
export async function startManagement(settings: Settings, logger: Logger, probes: ManagementProbes): Promise<Server | undefined> {
  if (settings.managementPort === 0) return undefined;
  const server = createManagementServer(probes, (err) => logger.warn({ err: (err as Error)?.message }, 'management request failed'));
  await listenManagement(server, settings.managementPort, settings.managementHost);
  logger.info({ port: settings.managementPort, host: settings.managementHost }, 'management listening');
  return server;
}
