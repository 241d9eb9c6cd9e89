// The client registry: what the database says about each client, cached in-process so
// the token path reads nothing in steady state. An entry lives CLIENT_CACHE_SECONDS at
// most (the bound on a disable taking effect); a PostgreSQL NOTIFY drops it at once.
import type { Database } from '../storage/database.ts';
import { query } from '../storage/errors.ts';
import type { StoredSecret } from './secrets.ts';

export const AUTH_METHODS = [
  'client_secret_basic',
  'private_key_jwt',
  'tls_client_auth',
  'self_signed_tls_client_auth',
  'federated',
] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

export interface ClientRecord {
  clientId: string;
  authMethod: AuthMethod;
  audiences: string[];
  scopes: string[];
  ttl: number | null;
  jwks: { keys: Record<string, unknown>[] } | null;
  jwksUri: string | null;
  tlsSubjectDn: string | null;
  tlsSanDns: string | null;
  tlsSanUri: string | null;
  certificateBound: boolean;
  /** `--dpop`: every token request must carry a DPoP proof (RFC 9449). */
  dpopBound: boolean;
  introspectAudiences: string[];
  /** `federated`: the trusted issuer's name and the subject its tokens name this client by. */
  federatedIssuer: string | null;
  federatedSubject: string | null;
  enabled: boolean;
  secrets: StoredSecret[];
}

interface ClientRow {
  client_id: string;
  auth_method: AuthMethod;
  audiences: string[];
  scopes: string[];
  ttl: number | null;
  jwks: { keys: Record<string, unknown>[] } | string | null;
  jwks_uri: string | null;
  tls_subject_dn: string | null;
  tls_san_dns: string | null;
  tls_san_uri: string | null;
  certificate_bound: boolean;
  dpop_bound: boolean;
  introspect_audiences: string[];
  federated_issuer?: string | null;
  federated_subject?: string | null;
  enabled: boolean;
}

function toRecord(row: ClientRow, secrets: StoredSecret[]): ClientRecord {
  return {
    clientId: row.client_id,
    authMethod: row.auth_method,
    audiences: row.audiences,
    scopes: row.scopes,
    ttl: row.ttl,
    jwks: typeof row.jwks === 'string' ? JSON.parse(row.jwks) : row.jwks,
    jwksUri: row.jwks_uri,
    tlsSubjectDn: row.tls_subject_dn,
    tlsSanDns: row.tls_san_dns,
    tlsSanUri: row.tls_san_uri,
    certificateBound: row.certificate_bound,
    dpopBound: row.dpop_bound === true,
    introspectAudiences: row.introspect_audiences,
    federatedIssuer: row.federated_issuer ?? null,
    federatedSubject: row.federated_subject ?? null,
    enabled: row.enabled,
    secrets,
  };
}

function epochSeconds(value: Date | string | null): number | null {
  return value === null ? null : Math.floor(new Date(value).getTime() / 1000);
}

export type CacheResult = 'hit' | 'miss' | 'stale';

export interface RegistryOptions {
  /** How long an entry is served without asking the database (CLIENT_CACHE_SECONDS). */
  cacheSeconds: number;
  /** While the database is unreachable, entries fetched this recently are still served (DB_OUTAGE_GRACE_SECONDS). */
  outageGraceSeconds?: number;
  onLookup?: (result: CacheResult) => void;
}

export class ClientRegistry {
  readonly #db: Database;
  readonly #ttlMs: number;
  readonly #graceMs: number;
  readonly #onLookup: (result: CacheResult) => void;
  readonly #cache = new Map<string, { record: ClientRecord | undefined; fetchedAt: number }>();
  #generation = 0;

  constructor(db: Database, options: RegistryOptions) {
    this.#db = db;
    this.#ttlMs = options.cacheSeconds * 1000;
    this.#graceMs = (options.outageGraceSeconds ?? 0) * 1000;
    this.#onLookup = options.onLookup ?? (() => {});
  }

  /** The client as the database has it (enabled or not), or undefined when unknown. */
  async find(clientId: string): Promise<ClientRecord | undefined> {
    const now = Date.now();
    const hit = this.#cache.get(clientId);
    if (hit && now - hit.fetchedAt < this.#ttlMs) {
      this.#onLookup('hit');
      return hit.record;
    }
    let record: ClientRecord | undefined;
    const generation = this.#generation;
    try {
      record = await query(() => this.#load(clientId));
    } catch (err) {
      // Tokens are stateless: a client known moments ago keeps working through a failover.
      if (hit && now - hit.fetchedAt < this.#graceMs) {
        this.#onLookup('stale');
        return hit.record;
      }
      throw err;
    }
    this.#onLookup('miss');
    // Unknown ids are cached too, so a flood of made-up ids cannot reach the database.
    // A change announced while this read was under way may not be in it: do not keep it.
    if (this.#ttlMs > 0 && generation === this.#generation) {
      if (this.#cache.size > 10_000) this.#cache.clear();
      this.#cache.set(clientId, { record, fetchedAt: now });
    }
    return record;
  }

  invalidate(clientId?: string): void {
    this.#generation += 1;
    if (clientId === undefined) this.#cache.clear();
    else this.#cache.delete(clientId);
  }

  async list(): Promise<ClientRecord[]> {
    const rows: ClientRow[] = await this.#db('clients').select('*').orderBy('client_id');
    return rows.map((row) => toRecord(row, []));
  }

  async #load(clientId: string): Promise<ClientRecord | undefined> {
    const row: ClientRow | undefined = await this.#db('clients').where({ client_id: clientId }).first();
    if (!row) return undefined;
    const secrets: { digest: string; expires_at: Date | string | null }[] = await this.#db('client_secrets')
      .where({ client_id: clientId })
      .select('digest', 'expires_at');
    return toRecord(row, secrets.map((s) => ({ digest: s.digest, expiresAt: epochSeconds(s.expires_at) })));
  }
}
