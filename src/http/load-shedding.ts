// Overload: past MAX_IN_FLIGHT requests being answered in this process, a new one is refused
// at once with 503 and Retry-After, before any parsing, authentication or signing is spent
// on it. Queueing it instead would only make every answer later: once waits pass the
// callers' own timeouts, the process spends its CPU on requests nobody waits for any more.
// The signal, and why it is this one, is in docs/performance.md. /healthz and /readyz are
// never refused: a load balancer must see a busy instance as alive.
import type { IncomingMessage, ServerResponse } from 'node:http';

import type { Logger } from '../log.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

const PROBES = new Set(['/healthz', '/readyz']);
/** Seconds a refused caller is asked to wait: load passes, and a second spreads the retries. */
const RETRY_AFTER = '1';
const BODY = JSON.stringify({ error: 'temporarily_unavailable', error_description: 'the server is overloaded; retry later' });
const HEADERS = {
  'content-type': 'application/json; charset=utf-8',
  'content-length': String(Buffer.byteLength(BODY)),
  'cache-control': 'no-store',
  'retry-after': RETRY_AFTER,
  'x-content-type-options': 'nosniff',
};
/** One log line at most this often while shedding, with the count: a line per refusal would be load of its own. */
const LOG_EVERY_MS = 10_000;

export interface LoadShedding {
  handler: Handler;
  /** Requests being answered now (refused ones and probes not counted). */
  inFlight(): number;
}

export function shedLoad(maxInFlight: number, next: Handler, onShed: () => void, logger: Logger): LoadShedding {
  let inFlight = 0;
  let shedSinceLog = 0;
  let loggedAt = 0;
  const done = () => {
    inFlight -= 1;
  };
  const handler: Handler = (req, res) => {
    const url = req.url ?? '';
    const query = url.indexOf('?');
    if (PROBES.has(query === -1 ? url : url.slice(0, query))) return next(req, res);
    if (inFlight >= maxInFlight) {
      onShed();
      shedSinceLog += 1;
      const now = Date.now();
      if (now - loggedAt >= LOG_EVERY_MS) {
        logger.warn({ shed: shedSinceLog, max_in_flight: maxInFlight }, 'overloaded: refusing requests (MAX_IN_FLIGHT)');
        shedSinceLog = 0;
        loggedAt = now;
      }
      res.writeHead(503, HEADERS);
      res.end(BODY);
      return;
    }
    inFlight += 1;
    // 'close' comes once per response, whether it was sent or the connection dropped.
    res.once('close', done);
    next(req, res);
  };
  return { handler, inFlight: () => inFlight };
}
