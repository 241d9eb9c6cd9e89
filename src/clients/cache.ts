// What the registries (clients, trusted issuers) read from the database, kept in-process
// so the token path reads nothing in steady state. An entry lives CLIENT_CACHE_SECONDS at
// most (the bound on a disable taking effect); a PostgreSQL NOTIFY drops entries at once
// (invalidate). Unknown keys are kept too, so a flood of made-up ids cannot reach the
// database.
import { query } from '../storage/errors.ts';

type CacheResult = 'hit' | 'miss' | 'stale';

export interface CacheOptions {
  /** How long an entry is served without asking the database (CLIENT_CACHE_SECONDS). */
  cacheSeconds: number;
  /** While the database is unreachable, entries fetched this recently are still served (DB_OUTAGE_GRACE_SECONDS). */
  outageGraceSeconds?: number;
  onLookup?: (result: CacheResult) => void;
}

/** At most this many entries; past it the cache starts afresh. */
const MAX_ENTRIES = 10_000;

export class DatabaseCache<T> {
  readonly #ttlMs: number;
  readonly #graceMs: number;
  readonly #onLookup: (result: CacheResult) => void;
  readonly #entries = new Map<string, { value: T; fetchedAt: number }>();
  /** Bumped by every invalidation: a read under way when it happened is not kept. */
  #generation = 0;

  constructor(options: CacheOptions) {
    this.#ttlMs = options.cacheSeconds * 1000;
    this.#graceMs = (options.outageGraceSeconds ?? 0) * 1000;
    this.#onLookup = options.onLookup ?? (() => {});
  }

  /** The value under `key`, from the cache or else from `load` (a database read). */
  async get(key: string, load: () => Promise<T>): Promise<T> {
    const now = Date.now();
    const hit = this.#entries.get(key);
    if (hit && now - hit.fetchedAt < this.#ttlMs) {
      this.#onLookup('hit');
      return hit.value;
    }
    const generation = this.#generation;
    let value: T;
    try {
      value = await query(load);
    } catch (err) {
      // Tokens are stateless: a client known moments ago keeps working through a failover.
      if (hit && now - hit.fetchedAt < this.#graceMs) {
        this.#onLookup('stale');
        return hit.value;
      }
      throw err;
    }
    this.#onLookup('miss');
    // A change announced while this read was under way may not be in it: do not keep it.
    if (this.#ttlMs > 0 && generation === this.#generation) {
      if (this.#entries.size > MAX_ENTRIES) this.#entries.clear();
      this.#entries.set(key, { value, fetchedAt: now });
    }
    return value;
  }

  /** Drops `key`, or every entry. */
  invalidate(key?: string): void {
    this.#generation += 1;
    if (key === undefined) this.#entries.clear();
    else this.#entries.delete(key);
  }
}
