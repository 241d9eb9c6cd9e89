// Brute-force limits on client authentication: per client id and source address, and per
// source address. An attempt is taken from its limits BEFORE its credential is evaluated,
// by one atomic consume (an upsert in PostgreSQL, shared by workers and instances; memory
// for the embedded database, which has one process), so concurrent guesses can never
// together exceed a limit. A failed attempt keeps its point until the window ends; a
// successful one gives it back. A client that authenticates from another address is never
// locked out by an attacker's failures. IPv6 addresses are counted per /64: one host
// usually holds a whole /64, and could otherwise take a fresh address per guess.
//
// Giving a point back to the database after every success would cost a correct client two
// writes per token. Instead the point stays in this process as a lease: the next attempt
// on the same key takes it without a query, and leases unused for IDLE_MS (or held for
// LEASE_MAX_MS) go back to the database in one write. Leases are points consumed in the
// database, so every attempt evaluated anywhere holds a point of the shared count: the
// limit holds across processes. An attempt over the limit while attempts on its key are
// being checked in this process waits for their outcome instead of failing at once: a
// correct client sending more requests at once than the limit gets them all answered.
import { hash } from 'node:crypto';

import type { Knex } from 'knex';
import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';

import { addressKey } from '../net/address-key.ts';

export interface BruteForceLimits {
  perClient: number;
  perAddress: number;
  windowSeconds: number;
}

/** Which limit refused an attempt; the audit line names it, the response never does. */
export type LimitReason = 'limit per address' | 'limit per client and address';

/** One admitted attempt: settle it when its outcome is known. */
export interface Attempt {
  /** `failed`: the credential was refused (401); otherwise the point is given back. */
  settle(failed: boolean): void;
}

export type Admission = { attempt: Attempt } | { refused: LimitReason; waitMs: number };

export interface BruteForce {
  /** Takes one attempt from `address`'s limit. Answers at once (no promise) when a lease is at hand. */
  admitAddress(address: string): Admission | Promise<Admission>;
  /** Takes one attempt from the limit of `clientId` at `address`. */
  admitClient(address: string, clientId: string): Admission | Promise<Admission>;
  /** Gives every lease back (shutdown). */
  close(): Promise<void>;
}

const ATTEMPTS = Symbol('attempts');

/** Keeps an admitted attempt with the request (its `ctx.state`) until the outcome is known. */
export function holdAttempt(state: object, attempt: Attempt): void {
  const held = state as { [ATTEMPTS]?: Attempt[] };
  (held[ATTEMPTS] ??= []).push(attempt);
}

/** Settles every attempt the request holds: a 401 spends them, any other answer gives them back. */
export function settleAttempts(state: object, failed: boolean): void {
  const held = state as { [ATTEMPTS]?: Attempt[] };
  for (const attempt of held[ATTEMPTS] ?? []) attempt.settle(failed);
  held[ATTEMPTS] = [];
}


/** Where the counts live: an atomic consume, and a give-back that cannot reach another window. */
interface CountStore {
  /** Resolves with ms until the key's window ends, or rejects with RateLimiterRes over the limit. */
  consume(key: string): Promise<number>;
  giveBack(key: string, points: number, windowEndsAt: number): Promise<void>;
}

function memoryStore(points: number, duration: number, keyPrefix: string): CountStore {
  const limiter = new RateLimiterMemory({ points, duration, keyPrefix });
  return {
    consume: async (key) => (await limiter.consume(key)).msBeforeNext,
    async giveBack(key, n, windowEndsAt) {
      // One process: nothing runs between the check and the reward.
      const state = await limiter.get(key);
      if (state && Math.abs(Date.now() + state.msBeforeNext - windowEndsAt) < duration * 500) await limiter.reward(key, n);
    },
  };
}

function postgresStore(db: Knex, points: number, duration: number, keyPrefix: string): CountStore {
  const options = { points, duration, keyPrefix };
  const limiter: RateLimiterAbstract = new RateLimiterPostgres({
    ...options,
    storeClient: db,
    storeType: 'knex',
    tableName: 'auth_failures',
    tableCreated: true,
    // If the database is down, keep limiting in this process rather than not at all.
    insuranceLimiter: new RateLimiterMemory(options),
  });
  return {
    consume: async (key) => (await limiter.consume(key)).msBeforeNext,
    async giveBack(key, n, windowEndsAt) {
      // Only into the window the lease came from (windows of one key are at least `duration`
      // apart), and never below zero: a late give-back must not credit a new window.
      await db('auth_failures')
        .where('key', limiter.getKey(key))
        .whereBetween('expire', [windowEndsAt - duration * 500, windowEndsAt + duration * 500])
        .andWhere('expire', '>', Date.now())
        .update({ points: db.raw('GREATEST(points - ?, 0)', [n]) });
    },
  };
}

/** Leases unused this long go back to the store; any lease after LEASE_MAX_MS, so processes share. */
const IDLE_MS = 1000;
const LEASE_MAX_MS = 5000;
/** The longest an attempt waits for a point held by an attempt in flight here. */
const MAX_WAIT_MS = 5000;
const MAX_LEASED_KEYS = 50_000;

interface Waiter {
  resolve: (admission: Admission | Promise<Admission>) => void;
  timer: NodeJS.Timeout;
}

/** What this process knows of one key: leased points at hand, attempts being checked, attempts waiting. */
interface KeyState {
  free: number;
  windowEndsAt: number;
  usedAt: number;
  leasedAt: number;
  inFlight: number;
  waiters: Waiter[];
}

class LimitedKeys {
  readonly #keys = new Map<string, KeyState>();
  readonly #store: CountStore;
  readonly #reason: LimitReason;
  // Leases are not used this close to their window's end (clocks of instances differ a little).
  readonly #margin: number;

  constructor(store: CountStore, reason: LimitReason, windowMs: number) {
    this.#store = store;
    this.#reason = reason;
    this.#margin = Math.min(1000, windowMs / 4);
  }

  #usable(windowEndsAt: number, now: number): boolean {
    return windowEndsAt - now > this.#margin;
  }

  #state(key: string): KeyState {
    let state = this.#keys.get(key);
    if (!state) {
      state = { free: 0, windowEndsAt: 0, usedAt: 0, leasedAt: 0, inFlight: 0, waiters: [] };
      this.#keys.set(key, state);
    }
    return state;
  }

  #forget(key: string, state: KeyState): void {
    if (state.free === 0 && state.inFlight === 0 && state.waiters.length === 0) this.#keys.delete(key);
  }

  #leased(key: string): Attempt | undefined {
    const state = this.#keys.get(key);
    const now = Date.now();
    if (!state || state.free === 0 || !this.#usable(state.windowEndsAt, now)) return undefined;
    state.free -= 1;
    state.usedAt = now;
    return this.#attempt(key, state.windowEndsAt);
  }

  admit(key: string): Admission | Promise<Admission> {
    const leased = this.#leased(key);
    if (leased) return { attempt: leased };
    return this.#store.consume(key).then(
      (msLeft) => ({ attempt: this.#attempt(key, Date.now() + msLeft) }),
      (res: unknown) => {
        if (!(res instanceof RateLimiterRes)) throw res;
        const refused: Admission = { refused: this.#reason, waitMs: res.msBeforeNext };
        const again = this.#leased(key);
        if (again) return { attempt: again };
        // Over the limit while this process is checking attempts on the key: their points
        // may come back (a correct client sending many requests at once), so wait for one.
        const state = this.#keys.get(key);
        if (!state || state.inFlight === 0) return refused;
        return new Promise<Admission>((resolve) => {
          const waiter: Waiter = {
            resolve,
            timer: setTimeout(() => {
              state.waiters.splice(state.waiters.indexOf(waiter), 1);
              this.#forget(key, state);
              resolve(refused);
            }, MAX_WAIT_MS),
          };
          state.waiters.push(waiter);
        });
      },
    );
  }

  #attempt(key: string, windowEndsAt: number): Attempt {
    const state = this.#state(key);
    state.inFlight += 1;
    let settled = false;
    return {
      settle: (failed) => {
        if (settled) return;
        settled = true;
        state.inFlight -= 1;
        const now = Date.now();
        const kept = !failed && this.#usable(windowEndsAt, now);
        const waiter = state.waiters.shift();
        if (waiter) {
          clearTimeout(waiter.timer);
          // A point given back goes to the next waiter; a spent one sends it to ask again.
          waiter.resolve(kept ? { attempt: this.#attempt(key, windowEndsAt) } : this.admit(key));
        } else if (kept && (state.free > 0 || this.#keys.size < MAX_LEASED_KEYS)) {
          if (!this.#usable(state.windowEndsAt, now)) {
            state.free = 0;
            state.windowEndsAt = windowEndsAt;
            state.leasedAt = now;
          }
          state.free += 1;
          state.usedAt = now;
        }
        // Nothing left in flight here: whoever still waits asks the store again.
        if (state.inFlight === 0) {
          for (const rest of state.waiters.splice(0)) {
            clearTimeout(rest.timer);
            rest.resolve(this.admit(key));
          }
        }
        this.#forget(key, state);
      },
    };
  }

  /** Gives idle or old leases back (all of them with `all`); drops those of ended windows. */
  async sweep(all = false): Promise<void> {
    const now = Date.now();
    const returns: Promise<void>[] = [];
    for (const [key, state] of this.#keys) {
      if (state.free > 0 && !this.#usable(state.windowEndsAt, now)) {
        state.free = 0;
      } else if (state.free > 0 && (all || now - state.usedAt >= IDLE_MS || now - state.leasedAt >= LEASE_MAX_MS)) {
        returns.push(this.#store.giveBack(key, state.free, state.windowEndsAt).catch(() => {}));
        state.free = 0;
      }
      this.#forget(key, state);
    }
    await Promise.all(returns);
  }
}

export function createBruteForce(limits: BruteForceLimits, db: Knex | undefined): BruteForce {
  const store = (points: number, prefix: string) => (db
    ? postgresStore(db, points, limits.windowSeconds, prefix)
    : memoryStore(points, limits.windowSeconds, prefix));
  const windowMs = limits.windowSeconds * 1000;
  const perAddress = new LimitedKeys(store(limits.perAddress, 'address'), 'limit per address', windowMs);
  const perClient = new LimitedKeys(store(limits.perClient, 'client'), 'limit per client and address', windowMs);
  const sweeper = setInterval(() => {
    void perAddress.sweep();
    void perClient.sweep();
  }, IDLE_MS);
  sweeper.unref();

  return {
    admitAddress: (address) => perAddress.admit(addressKey(address)),
    // A client id as sent can be anything: hashed, it fits the key column and needs no escaping.
    admitClient: (address, clientId) => perClient.admit(`${addressKey(address)} ${hash('sha256', clientId, 'base64url')}`),
    async close() {
      clearInterval(sweeper);
      await Promise.all([perAddress.sweep(true), perClient.sweep(true)]);
    },
  };
}
