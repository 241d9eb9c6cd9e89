/** The database did not answer (down, unreachable, timed out); callers answer 503. */
export class StorageUnavailable extends Error {
  constructor(cause: unknown) {
    super('the database is unavailable', { cause });
    this.name = 'StorageUnavailable';
  }
}

// After a failure, queries fail at once for a moment instead of each waiting out the
// timeout: during an outage no request hangs. Then one query at a time probes the database
// (the others still fail at once): were every query let through, every request arriving
// while a hung database holds the probe would wait out the timeout as well.
const FAIL_FAST_MS = 1000;
let failedAt = 0;
let probingSince = 0;
/** A probe that never reported (its caller lost it) stops blocking the next one after this. */
let probeLimitMs = 10_000;
/** The longest a query() waits for its answer. */
let deadlineMs = 0;

/** DATABASE_TIMEOUT, plus the time to let a probe answer before another may go. */
export function setDatabaseDeadline(ms: number): void {
  deadlineMs = ms;
  probeLimitMs = 2 * ms + FAIL_FAST_MS;
}

/**
 * Before a query takes a connection: throws StorageUnavailable while failing fast; returns
 * true when this query is the probe, whose outcome decides whether failing fast ends.
 */
export function admitQuery(): boolean {
  if (failedAt === 0) return false;
  const now = Date.now();
  if (now - failedAt < FAIL_FAST_MS || now - probingSince < probeLimitMs) {
    throw new StorageUnavailable(new Error('the database failed moments ago'));
  }
  probingSince = now;
  return true;
}

/** The database did not answer (in time): fail fast from now on. */
export function databaseFailed(): void {
  failedAt = Date.now();
  probingSince = 0;
}

/** The database answered a probe or a direct check (readiness): stop failing fast. */
export function databaseAnswered(): void {
  failedAt = 0;
  probingSince = 0;
}

const timedOut = () => Object.assign(new Error('no answer within DATABASE_TIMEOUT'), { name: 'KnexTimeoutError' });

/**
 * Runs a query; any failure of the database itself becomes StorageUnavailable, and so does
 * no answer within DATABASE_TIMEOUT of `since` (default: now; a caller that queued the work
 * first counts from when it was asked for). A statement given up is left to the pool,
 * which drops its connection.
 */
export async function query<T>(run: () => Promise<T>, since?: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const left = since === undefined ? deadlineMs : deadlineMs - (Date.now() - since);
    if (deadlineMs > 0 && left <= 0) throw timedOut();
    // Once: a knex builder is a thenable that runs its statement again on every then().
    const work = Promise.resolve(run());
    if (deadlineMs === 0) return await work;
    work.catch(() => {});
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(timedOut()), left);
    });
    return await Promise.race([work, late]);
  } catch (err) {
    if (err instanceof StorageUnavailable) throw err;
    if (!isOutage(err)) throw err;
    databaseFailed();
    throw new StorageUnavailable(err);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A failure of the database to answer (connection, timeout, shutdown), as opposed to an
 * answer that refuses the statement: only the first is an outage. SQLSTATE classes 08
 * (connection), 53 (resources), 57 (operator intervention, statement_timeout) and 58
 * (system) count.
 */
export function isOutage(err: unknown): boolean {
  const { code, name } = (err ?? {}) as { code?: unknown; name?: unknown };
  if (name === 'KnexTimeoutError') return true;
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return /^(08|53|57|58)/.test(code);
  return true;
}
