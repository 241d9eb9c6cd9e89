// Brute-force limits on client authentication. Failed attempts are counted per client id
// and source address, and per source address; over a limit, that key gets 429 until its
// window ends. A client that authenticates from another address is never locked out by
// an attacker's failures. Counts live in PostgreSQL (shared by workers and instances);
// the embedded database has one process, so memory serves there.
import { hash } from 'node:crypto';

import type { Knex } from 'knex';
import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';

export interface BruteForceLimits {
  perClient: number;
  perAddress: number;
  windowSeconds: number;
}

export interface BruteForce {
  /**
   * Milliseconds until `address` (and `clientId` from it) may try again; 0 when allowed.
   * Answers at once (no promise) when this process knows the key is under its limit.
   */
  blockedFor(address: string, clientId?: string): number | Promise<number>;
  /** Counts one failed authentication. */
  failed(address: string, clientId: string | undefined): Promise<void>;
}

export function createBruteForce(limits: BruteForceLimits, db: Knex | undefined): BruteForce {
  const make = (points: number, keyPrefix: string): RateLimiterAbstract => {
    const options = { points, duration: limits.windowSeconds, keyPrefix };
    if (!db) return new RateLimiterMemory(options);
    return new RateLimiterPostgres({
      ...options,
      storeClient: db,
      storeType: 'knex',
      tableName: 'auth_failures',
      tableCreated: true,
      // If the database is down, keep limiting in this process rather than not at all.
      insuranceLimiter: new RateLimiterMemory(options),
    });
  };
  const perClient = make(limits.perClient, 'client');
  const perAddress = make(limits.perAddress, 'address');
  // A client id as sent can be anything: hashed, it fits the key column and needs no escaping.
  const clientKey = (address: string, clientId: string) => `${address} ${hash('sha256', clientId, 'base64url')}`;

  // A key found under its limit is not asked about again for CLEAN_MS in this process:
  // correct clients then cost no query at all. This process's own failures clear the note
  // at once; other workers' failures are seen within CLEAN_MS.
  const CLEAN_MS = 1000;
  const clean = new Map<string, number>();
  const remaining = async (limiter: RateLimiterAbstract, key: string, max: number, note: string): Promise<number> => {
    const state = await limiter.get(key).catch(() => null);
    if (state && state.consumedPoints >= max) return state.msBeforeNext;
    if (clean.size > 50_000) clean.clear();
    clean.set(note, Date.now() + CLEAN_MS);
    return 0;
  };
  const isClean = (note: string, now: number) => (clean.get(note) ?? 0) > now;

  return {
    blockedFor(address, clientId) {
      const now = Date.now();
      const addressNote = `address:${address}`;
      const clientNote = clientId === undefined ? undefined : `client:${address} ${clientId}`;
      if (isClean(addressNote, now) && (clientNote === undefined || isClean(clientNote, now))) return 0;
      return (async () => {
        const byAddress = isClean(addressNote, now) ? 0 : await remaining(perAddress, address, limits.perAddress, addressNote);
        if (byAddress || clientId === undefined || clientNote === undefined || isClean(clientNote, now)) return byAddress;
        return remaining(perClient, clientKey(address, clientId), limits.perClient, clientNote);
      })();
    },
    async failed(address, clientId) {
      clean.delete(`address:${address}`);
      if (clientId !== undefined) clean.delete(`client:${address} ${clientId}`);
      const consume = (limiter: RateLimiterAbstract, key: string) => limiter.consume(key).catch((res: unknown) => {
        if (!(res instanceof RateLimiterRes)) throw res;
      });
      await Promise.all([
        consume(perAddress, address),
        clientId === undefined ? undefined : consume(perClient, clientKey(address, clientId)),
      ]);
    },
  };
}
