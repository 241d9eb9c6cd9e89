// Trusted issuers of workload identities, and which client each (issuer, subject) is. Read
// from the database and cached like clients (CLIENT_CACHE_SECONDS; a NOTIFY drops the cache
// at once; through a database outage, entries fetched within DB_OUTAGE_GRACE_SECONDS).
import type { Database } from '../storage/database.ts';
import { query } from '../storage/errors.ts';
import type { RegistryOptions } from './registry.ts';

export const ISSUER_KINDS = ['oidc', 'kubernetes', 'spiffe'] as const;
export type IssuerKind = (typeof ISSUER_KINDS)[number];
/** Longest `exp - iat` of an external token unless the issuer says otherwise. */
export const DEFAULT_MAX_LIFETIME = 3600;

export interface IssuerRecord {
  name: string;
  kind: IssuerKind;
  /** `iss` of its tokens; for SPIFFE, the trust domain `spiffe://<domain>`. */
  issuer: string;
  jwks: { keys: Record<string, unknown>[] } | null;
  jwksUri: string | null;
  audience: string | null;
  maxLifetime: number;
  allowPrivate: boolean;
  enabled: boolean;
}

interface IssuerRow {
  name: string;
  kind: IssuerKind;
  issuer: string;
  jwks: { keys: Record<string, unknown>[] } | string | null;
  jwks_uri: string | null;
  audience: string | null;
  max_lifetime: number;
  allow_private: boolean;
  enabled: boolean;
}

function toRecord(row: IssuerRow): IssuerRecord {
  return {
    name: row.name,
    kind: row.kind,
    issuer: row.issuer,
    jwks: typeof row.jwks === 'string' ? JSON.parse(row.jwks) : row.jwks,
    jwksUri: row.jwks_uri,
    audience: row.audience,
    maxLifetime: row.max_lifetime,
    allowPrivate: row.allow_private,
    enabled: row.enabled,
  };
}

export class IssuerRegistry {
  readonly #db: Database;
  readonly #ttlMs: number;
  readonly #graceMs: number;
  readonly #cache = new Map<string, { value: unknown; fetchedAt: number }>();
  #generation = 0;

  constructor(db: Database, options: Pick<RegistryOptions, 'cacheSeconds' | 'outageGraceSeconds'>) {
    this.#db = db;
    this.#ttlMs = options.cacheSeconds * 1000;
    this.#graceMs = (options.outageGraceSeconds ?? 0) * 1000;
  }

  /** The issuer whose tokens carry `iss` (or, for SPIFFE, whose trust domain this is), enabled or not. */
  byIssuer(iss: string): Promise<IssuerRecord | undefined> {
    return this.#cached(`i\u0000${iss}`, async () => {
      const row: IssuerRow | undefined = await this.#db('issuers').where({ issuer: iss }).first();
      return row && toRecord(row);
    });
  }

  /** The id of the client an issuer's subject is mapped to. */
  clientFor(issuerName: string, subject: string): Promise<string | undefined> {
    return this.#cached(`s\u0000${issuerName}\u0000${subject}`, async () => {
      const row: { client_id: string } | undefined = await this.#db('clients')
        .where({ federated_issuer: issuerName, federated_subject: subject }).first('client_id');
      return row?.client_id;
    });
  }

  invalidate(): void {
    this.#generation += 1;
    this.#cache.clear();
  }

  async list(): Promise<IssuerRecord[]> {
    const rows: IssuerRow[] = await this.#db('issuers').select('*').orderBy('name');
    return rows.map(toRecord);
  }

  async #cached<T>(key: string, load: () => Promise<T>): Promise<T> {
    const now = Date.now();
    const hit = this.#cache.get(key);
    if (hit && now - hit.fetchedAt < this.#ttlMs) return hit.value as T;
    const generation = this.#generation;
    let value: T;
    try {
      value = await query(load);
    } catch (err) {
      if (hit && now - hit.fetchedAt < this.#graceMs) return hit.value as T;
      throw err;
    }
    // Unknown issuers and subjects are cached too: made-up tokens do not reach the database.
    if (this.#ttlMs > 0 && generation === this.#generation) {
      if (this.#cache.size > 10_000) this.#cache.clear();
      this.#cache.set(key, { value, fetchedAt: now });
    }
    return value;
  }
}
