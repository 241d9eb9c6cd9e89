// How a serving process stops on SIGTERM or SIGINT: drain, close the listener, close what
// was opened (last opened first), exit. The whole stop takes at most 10 s.
import type { Server } from 'node:net';

import type { Lifecycle } from '../http/app.ts';
import type { Logger } from '../log.ts';

/** Past this much of the 10 s a stop may take, what has not closed is left to the exit. */
const CLOSING_MS = 8000;
/** The longest one closer may take: one stuck on a hung database must not keep the others from closing. */
const CLOSER_MS = 2000;
/** A stop never takes longer: requests still in flight then are cut off. */
const STOP_MS = 10_000;

/** What a process opened, closed in reverse order when it stops or fails to start. */
export class Closers {
  readonly #closers: (() => Promise<void>)[] = [];

  add(close: () => Promise<void>): void {
    this.#closers.push(close);
  }

  /** Each closer for at most CLOSER_MS and none past `until`. */
  async closeBy(until: number): Promise<void> {
    for (const close of this.#closers.reverse()) {
      const left = Math.min(CLOSER_MS, until - Date.now());
      if (left <= 0) return;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([close().catch(() => {}), new Promise((done) => { timer = setTimeout(done, left); })]);
      clearTimeout(timer);
    }
  }

  /** A start that failed: everything, without a deadline. */
  async closeAll(): Promise<void> {
    for (const close of this.#closers.reverse()) await close().catch(() => {});
  }
}

/**
 * Drain first: answers now close their connections, and requests already on the wire are
 * read and finished. Only once nothing has been in flight for a moment (or after 3 s) does
 * the listener close, which also drops idle keep-alive connections; then the closers run.
 */
function stop(signal: string, server: Server, lifecycle: Lifecycle, closers: Closers, logger: Logger): void {
  logger.info({ signal, in_flight: lifecycle.inFlight }, 'stopping: finishing requests in flight');
  const force = setTimeout(() => {
    logger.error({ in_flight: lifecycle.inFlight }, 'requests still in flight after 10 s; exiting');
    process.exit(1);
  }, STOP_MS);
  force.unref();
  lifecycle.draining = true;
  const started = Date.now();
  let quietSince = Date.now();
  const waitForQuiet = setInterval(() => {
    if (lifecycle.inFlight > 0) quietSince = Date.now();
    if (Date.now() - quietSince < 250 && Date.now() - started < 3000) return;
    clearInterval(waitForQuiet);
    server.close(() => {
      void (async () => {
        await closers.closeBy(started + CLOSING_MS);
        logger.info({}, 'stopped');
        logger.flush(() => process.exit(0));
      })();
    });
  }, 50);
}

/** The first SIGTERM or SIGINT stops the process; later ones change nothing. */
export function stopOnSignals(server: Server, lifecycle: Lifecycle, closers: Closers, logger: Logger): void {
  let stopping = false;
  const once = (signal: string) => {
    if (stopping) return;
    stopping = true;
    stop(signal, server, lifecycle, closers, logger);
  };
  process.on('SIGTERM', () => once('SIGTERM'));
  process.on('SIGINT', () => once('SIGINT'));
}
