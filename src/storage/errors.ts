/** The database did not answer (down, unreachable, timed out); callers answer 503. */
export class StorageUnavailable extends Error {
  constructor(cause: unknown) {
    super('the database is unavailable', { cause });
    this.name = 'StorageUnavailable';
  }
}

// After a failure, queries fail at once for a moment instead of each waiting out the
// connection timeout: during an outage no request hangs, and the database is probed again
// every FAIL_FAST_MS.
const FAIL_FAST_MS = 1000;
let failedAt = 0;

/** A direct check (readiness) reached the database: stop failing fast at once. */
export function databaseAnswered(): void {
  failedAt = 0;
}

/** Runs a query; any failure of the database itself becomes StorageUnavailable. */
export async function query<T>(run: () => Promise<T>): Promise<T> {
  if (Date.now() - failedAt < FAIL_FAST_MS) throw new StorageUnavailable(new Error('the database failed moments ago'));
  try {
    return await run();
  } catch (err) {
    if (!isOutage(err)) throw err;
    failedAt = Date.now();
    throw new StorageUnavailable(err);
  }
}

/**
 * A failure of the database to answer (connection, timeout, shutdown), as opposed to an
 * answer that refuses the statement: only the first is an outage. SQLSTATE classes 08
 * (connection), 53 (resources), 57 (operator intervention) and 58 (system) count.
 */
function isOutage(err: unknown): boolean {
  const { code, name } = (err ?? {}) as { code?: unknown; name?: unknown };
  if (name === 'KnexTimeoutError') return true;
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return /^(08|53|57|58)/.test(code);
  return true;
}
