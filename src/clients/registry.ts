// The client registry: what the database says about each client, cached (cache.ts).
import type { Database } from '../storage/database.ts';
import { DatabaseCache, type CacheOptions } from './cache.ts';
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

export class ClientRegistry {
  readonly #db: Database;
  readonly #cache: DatabaseCache<ClientRecord | undefined>;

  constructor(db: Database, options: CacheOptions) {
    this.#db = db;
    this.#cache = new DatabaseCache(options);
  }

  /** The client as the database has it (enabled or not), or undefined when unknown. */
  find(clientId: string): Promise<ClientRecord | undefined> {
    return this.#cache.get(clientId, () => this.#load(clientId));
  }

  invalidate(clientId?: string): void {
    this.#cache.invalidate(clientId);
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
