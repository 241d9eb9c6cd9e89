// Failed client authentications, counted per key over a fixed window: in the unlogged
// `auth_failures` table on PostgreSQL (shared by every worker and instance), in memory for
// the embedded database (one process). `reserve` takes a failure before a credential is
// evaluated, and only while the limit is not reached, in one atomic statement: an attempt
// refused over the limit never raises the count.
import type { Database } from './database.ts';
import { query } from './errors.ts';

/** A key's failures in its window, and when that window ends (epoch ms). */
export interface FailureCount {
  failures: number;
  windowEndsAt: number;
}

export interface FailureCounts {
  /** Counts one failure unless the key has `limit` already: the count after it, or the count that refused it. */
  reserve(key: string, limit: number): Promise<FailureCount & { taken: boolean }>;
  /** Counts one failure, whatever the count. */
  add(key: string): Promise<FailureCount>;
  /** Takes back a failure counted by `reserve`, in the window it was counted in only. */
  giveBack(key: string, windowEndsAt: number): Promise<void>;
  /** Drops what no window needs any more. */
  sweep(): Promise<void>;
}

// One upsert for both: a row whose window has ended starts a new one.
const UPSERT = `
  INSERT INTO auth_failures AS f (key, points, expire) VALUES (?, 1, ?)
  ON CONFLICT (key) DO UPDATE SET
    points = CASE WHEN f.expire <= ? THEN 1 ELSE f.points + 1 END,
    expire = CASE WHEN f.expire <= ? THEN excluded.expire ELSE f.expire END`;

interface Row {
  points: number;
  expire: string | number;
}

const counted = (row: Row): FailureCount => ({ failures: Number(row.points), windowEndsAt: Number(row.expire) });

export function databaseFailureCounts(db: Database, windowMs: number, prefix: string): FailureCounts {
  const upsert = async (key: string, limit: number | undefined) => {
    const now = Date.now();
    const bindings = [`${prefix}:${key}`, now + windowMs, now, now];
    const condition = limit === undefined ? '' : ' WHERE f.expire <= ? OR f.points < ?';
    const result = await query(() => db.raw<{ rows: Row[] }>(`${UPSERT}${condition} RETURNING points, expire`,
      limit === undefined ? bindings : [...bindings, now, limit]));
    return result.rows[0];
  };
  return {
    async reserve(key, limit) {
      const row = await upsert(key, limit);
      if (row) return { ...counted(row), taken: true };
      const { rows } = await query(() => db.raw<{ rows: Row[] }>('SELECT points, expire FROM auth_failures WHERE key = ?', [`${prefix}:${key}`]));
      return { ...(rows[0] ? counted(rows[0]) : { failures: limit, windowEndsAt: Date.now() + windowMs }), taken: false };
    },
    add: async (key) => counted((await upsert(key, undefined))!),
    async giveBack(key, windowEndsAt) {
      await query(() => db.raw('UPDATE auth_failures SET points = points - 1 WHERE key = ? AND expire = ? AND points > 0', [`${prefix}:${key}`, windowEndsAt]));
    },
    async sweep() {
      await query(() => db.raw('DELETE FROM auth_failures WHERE key LIKE ? AND (expire <= ? OR points = 0)', [`${prefix}:%`, Date.now()]));
    },
  };
}

export function memoryFailureCounts(windowMs: number): FailureCounts {
  const counts = new Map<string, FailureCount>();
  const current = (key: string, now: number) => {
    const found = counts.get(key);
    return found && found.windowEndsAt > now ? found : undefined;
  };
  const increment = (key: string, limit: number) => {
    const now = Date.now();
    const count = current(key, now) ?? { failures: 0, windowEndsAt: now + windowMs };
    if (count.failures >= limit) return { ...count, taken: false };
    count.failures += 1;
    counts.set(key, count);
    return { ...count, taken: true };
  };
  return {
    reserve: async (key, limit) => increment(key, limit),
    add: async (key) => increment(key, Infinity),
    async giveBack(key, windowEndsAt) {
      const count = counts.get(key);
      if (count && count.windowEndsAt === windowEndsAt && count.failures > 0) count.failures -= 1;
    },
    async sweep() {
      const now = Date.now();
      for (const [key, count] of counts) if (count.windowEndsAt <= now || count.failures === 0) counts.delete(key);
    },
  };
}
