// Brute-force limits on client authentication: failed authentications per client id and
// source address, and per source address, over a fixed window (storage/failure-counts.ts:
// PostgreSQL, shared by every worker and instance, or memory for the embedded database).
//
// Only failures are counted, and no attempt is evaluated that could take a count past its
// limit. Per key, each process keeps a window of attempts it may evaluate at once:
// - A key no client has authenticated on here since its last failure has a window of one,
//   and its attempt first reserves a failure in the store, atomically and only while the
//   limit is not reached; an authenticated attempt gives it back. So across every process,
//   guesses that never succeed are evaluated at most up to the limit.
// - Each authenticated attempt widens the window by one (up to the failures the key has
//   left); attempts within it are evaluated without any write, and a failure among them is
//   counted after it and shuts the window to one again.
// Attempts beyond the window wait their turn instead of being refused, so a correct
// client's burst is served in full, and its steady traffic writes nothing. Nothing is held
// in the store for an attempt in flight but one reserved failure per untrusted key, so a
// process that dies leaves at most that behind. IPv6 addresses are counted per /64: one
// host usually holds a whole /64, and could otherwise take a fresh address per guess.
// docs/brute-force-limits.md has the bounds and why.
import { hash } from 'node:crypto';

import type { Knex } from 'knex';

import { addressKey } from '../net/address-key.ts';
import { databaseFailureCounts, memoryFailureCounts, type FailureCount, type FailureCounts } from '../storage/failure-counts.ts';

interface BruteForceLimits {
  perClient: number;
  perAddress: number;
  windowSeconds: number;
}

/** Which limit refused an attempt; the audit line names it, the response never does. */
type LimitReason = 'limit per address' | 'limit per client and address';

/**
 * How an attempt ended: `failed`, its credential was refused (401); `authenticated`, the
 * client proved who it is (a 2xx answer); `other`, neither (the request was refused before
 * or regardless of its credential).
 */
type Outcome = 'failed' | 'authenticated' | 'other';

/** One admitted attempt: settle it when its outcome is known. */
export interface Attempt {
  settle(outcome: Outcome): void;
}

/** `busy`: the attempt waited its turn for longer than MAX_WAIT_MS (answered 503, not 429). */
type Admission = { attempt: Attempt } | { refused: LimitReason; waitMs: number } | { busy: true };

export interface BruteForce {
  /** Admits one attempt under `address`'s limit. Answers at once (no promise) when it can. */
  admitAddress(address: string): Admission | Promise<Admission>;
  /** Admits one attempt under the limit of `clientId` at `address`. */
  admitClient(address: string, clientId: string): Admission | Promise<Admission>;
  /** Stops the clean-up timer. */
  close(): Promise<void>;
}

const ATTEMPTS = Symbol('attempts');
const CLIENTS = Symbol('clients');

/**
 * Keeps an admitted attempt with the request (its `ctx.state`) until the outcome is known;
 * `clientId` when it was admitted for that client id.
 */
export function holdAttempt(state: object, attempt: Attempt, clientId?: string): void {
  const held = state as { [ATTEMPTS]?: Attempt[]; [CLIENTS]?: Set<string> };
  (held[ATTEMPTS] ??= []).push(attempt);
  if (clientId !== undefined) (held[CLIENTS] ??= new Set()).add(clientId);
}

/**
 * Whether the request holds an attempt for this client id already: the engine may look one
 * client up twice in a request (a caller introspecting its own token), and a second
 * attempt would wait for the first, which the request itself holds.
 */
export function holdsClient(state: object, clientId: string): boolean {
  return (state as { [CLIENTS]?: Set<string> })[CLIENTS]?.has(clientId) ?? false;
}

/** Settles every attempt the request holds, from the answer's status. */
export function settleAttempts(state: object, status: number): void {
  const outcome: Outcome = status === 401 ? 'failed' : status >= 200 && status < 300 ? 'authenticated' : 'other';
  const held = state as { [ATTEMPTS]?: Attempt[] };
  for (const attempt of held[ATTEMPTS] ?? []) attempt.settle(outcome);
  held[ATTEMPTS] = [];
}

/** The longest an attempt waits for its turn before it is answered 503. */
const MAX_WAIT_MS = 5000;
/** How long a key's state is kept once nothing uses it (its window then starts at one again). */
const IDLE_MS = 300_000;
const MAX_KEYS = 100_000;
const SWEEP_MS = 10_000;

interface Waiter {
  admit: (admission: Admission) => void;
  timer: NodeJS.Timeout;
}

/** A failure counted before an attempt was evaluated: in the store's window, or in this process alone. */
interface Reservation {
  windowEndsAt: number;
  stored: boolean;
}

/** What this process knows of one key. */
interface KeyState {
  key: string;
  /** The key's failures in its window, as last learnt from the store (or counted here alone). */
  failures: number;
  windowEndsAt: number;
  /** Attempts that may be evaluated at once; 1: untrusted, each attempt reserves a failure first. */
  window: number;
  inFlight: number;
  waiters: Waiter[];
  usedAt: number;
}

class LimitedKeys {
  readonly #keys = new Map<string, KeyState>();
  readonly #store: FailureCounts;
  readonly #limit: number;
  readonly #reason: LimitReason;
  readonly #windowMs: number;

  constructor(store: FailureCounts, limit: number, reason: LimitReason, windowMs: number) {
    this.#store = store;
    this.#limit = limit;
    this.#reason = reason;
    this.#windowMs = windowMs;
  }

  admit(key: string): Admission | Promise<Admission> {
    let state = this.#keys.get(key);
    if (!state) {
      state = { key, failures: 0, windowEndsAt: 0, window: 1, inFlight: 0, waiters: [], usedAt: 0 };
      this.#keys.set(key, state);
    }
    state.usedAt = Date.now();
    if (this.#failuresNow(state) >= this.#limit) return this.#refusal(state);
    if (state.waiters.length === 0 && this.#room(state) > 0) return this.#start(state);
    return new Promise<Admission>((admit) => {
      const waiter: Waiter = {
        admit,
        timer: setTimeout(() => {
          state.waiters.splice(state.waiters.indexOf(waiter), 1);
          admit({ busy: true });
        }, MAX_WAIT_MS),
      };
      state.waiters.push(waiter);
    });
  }

  #failuresNow(state: KeyState): number {
    if (state.windowEndsAt <= Date.now()) {
      state.failures = 0;
      state.windowEndsAt = 0;
    }
    return state.failures;
  }

  #learn(state: KeyState, count: FailureCount): void {
    if (count.windowEndsAt !== state.windowEndsAt) {
      state.windowEndsAt = count.windowEndsAt;
      state.failures = count.failures;
    } else {
      state.failures = Math.max(state.failures, count.failures);
    }
  }

  /** Attempts that may start now: the window, never past the failures left. */
  #room(state: KeyState): number {
    return Math.min(state.window, this.#limit - this.#failuresNow(state)) - state.inFlight;
  }

  #refusal(state: KeyState): Admission {
    return { refused: this.#reason, waitMs: Math.max(0, state.windowEndsAt - Date.now()) };
  }

  #start(state: KeyState): Admission | Promise<Admission> {
    state.inFlight += 1;
    if (state.window > 1) return { attempt: this.#attempt(state, undefined) };
    return this.#store.reserve(state.key, this.#limit).then(
      (count) => {
        this.#learn(state, count);
        if (count.taken) return { attempt: this.#attempt(state, { windowEndsAt: count.windowEndsAt, stored: true }) };
        this.#release(state);
        return this.#refusal(state);
      },
      () => {
        // The store did not answer: this process counts alone, in a window of its own.
        if (state.windowEndsAt <= Date.now()) state.windowEndsAt = Date.now() + this.#windowMs;
        state.failures += 1;
        return { attempt: this.#attempt(state, { windowEndsAt: state.windowEndsAt, stored: false }) };
      },
    );
  }

  /** `reserved`: the failure reserved for the attempt, in the store or here alone; undefined: none. */
  #attempt(state: KeyState, reserved: Reservation | undefined): Attempt {
    let settled = false;
    return {
      settle: (outcome) => {
        if (settled) return;
        settled = true;
        if (outcome === 'failed') {
          state.window = 1;
          if (reserved !== undefined) return this.#release(state);
          // Evaluated without a reservation: the failure is counted now, and the attempt
          // keeps its place until it is, so that this process does not start one too many.
          this.#store.add(state.key).then(
            (count) => this.#learn(state, count),
            () => {
              if (state.windowEndsAt <= Date.now()) state.windowEndsAt = Date.now() + this.#windowMs;
              state.failures += 1;
            },
          ).finally(() => this.#release(state));
          return;
        }
        if (reserved !== undefined) this.#giveBack(state, reserved);
        if (outcome === 'authenticated') state.window = Math.min(state.window + 1, this.#limit);
        this.#release(state);
      },
    };
  }

  #giveBack(state: KeyState, { windowEndsAt, stored }: Reservation): void {
    if (state.windowEndsAt === windowEndsAt && state.failures > 0) state.failures -= 1;
    if (stored) this.#store.giveBack(state.key, windowEndsAt).catch(() => {});
  }

  #release(state: KeyState): void {
    state.inFlight -= 1;
    state.usedAt = Date.now();
    if (this.#failuresNow(state) >= this.#limit) {
      for (const waiter of state.waiters.splice(0)) {
        clearTimeout(waiter.timer);
        waiter.admit(this.#refusal(state));
      }
      return;
    }
    while (state.waiters.length > 0 && this.#room(state) > 0) {
      const waiter = state.waiters.shift()!;
      clearTimeout(waiter.timer);
      const started = this.#start(state);
      if ('then' in started) void started.then(waiter.admit);
      else waiter.admit(started);
    }
  }

  /** Forgets keys nothing uses: idle ones, and the oldest past MAX_KEYS. */
  sweep(): void {
    const now = Date.now();
    let excess = this.#keys.size - MAX_KEYS;
    for (const [key, state] of this.#keys) {
      const idle = state.inFlight === 0 && state.waiters.length === 0;
      if (idle && (excess > 0 || now - state.usedAt > IDLE_MS)) {
        this.#keys.delete(key);
        excess -= 1;
      }
    }
  }
}

export function createBruteForce(limits: BruteForceLimits, db: Knex | undefined): BruteForce {
  const windowMs = limits.windowSeconds * 1000;
  const counts = (prefix: string) => (db ? databaseFailureCounts(db, windowMs, prefix) : memoryFailureCounts(windowMs));
  const addressCounts = counts('address');
  const clientCounts = counts('client');
  const perAddress = new LimitedKeys(addressCounts, limits.perAddress, 'limit per address', windowMs);
  const perClient = new LimitedKeys(clientCounts, limits.perClient, 'limit per client and address', windowMs);
  let sweeps = 0;
  const sweeper = setInterval(() => {
    perAddress.sweep();
    perClient.sweep();
    // The stored counts are swept less often: once a minute, whichever process does it.
    if ((sweeps += 1) % 6 === 0) for (const store of [addressCounts, clientCounts]) store.sweep().catch(() => {});
  }, SWEEP_MS);
  sweeper.unref();

  return {
    admitAddress: (address) => perAddress.admit(addressKey(address)),
    // A client id as sent can be anything: hashed, it fits the key column and needs no escaping.
    admitClient: (address, clientId) => perClient.admit(`${addressKey(address)} ${hash('sha256', clientId, 'base64url')}`),
    async close() {
      clearInterval(sweeper);
    },
  };
}
