// Trusted issuers of workload identities, and which client each (issuer, subject) is. Read
// from the database and cached like clients (cache.ts).
import type { Database } from '../storage/database.ts';
import { DatabaseCache, type CacheOptions } from './cache.ts';

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
  /** Issuers by `i\0<iss>`, client ids by `s\0<issuer name>\0<subject>`. */
  readonly #cache: DatabaseCache<IssuerRecord | string | undefined>;

  constructor(db: Database, options: Pick<CacheOptions, 'cacheSeconds' | 'outageGraceSeconds'>) {
    this.#db = db;
    this.#cache = new DatabaseCache(options);
  }

  /** The issuer whose tokens carry `iss` (or, for SPIFFE, whose trust domain this is), enabled or not. */
  byIssuer(iss: string): Promise<IssuerRecord | undefined> {
    return this.#cache.get(`i\u0000${iss}`, async () => {
      const row: IssuerRow | undefined = await this.#db('issuers').where({ issuer: iss }).first();
      return row && toRecord(row);
    }) as Promise<IssuerRecord | undefined>;
  }

  /** The id of the client an issuer's subject is mapped to. */
  clientFor(issuerName: string, subject: string): Promise<string | undefined> {
    return this.#cache.get(`s\u0000${issuerName}\u0000${subject}`, async () => {
      const row: { client_id: string } | undefined = await this.#db('clients')
        .where({ federated_issuer: issuerName, federated_subject: subject }).first('client_id');
      return row?.client_id;
    }) as Promise<string | undefined>;
  }

  invalidate(): void {
    this.#cache.invalidate();
  }

  async list(): Promise<IssuerRecord[]> {
    const rows: IssuerRow[] = await this.#db('issuers').select('*').orderBy('name');
    return rows.map(toRecord);
  }
}
