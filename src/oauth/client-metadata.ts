// What the engine knows of a client: its metadata, made from the registry's record by the
// engine's adapter (the engine asks its adapter for clients only; tokens are JWTs and are
// never stored). The common part is here; the client's authentication method and the token
// bindings add theirs (client-auth/, bindings/).
import type Provider from 'oidc-provider';
import type { Adapter, AdapterPayload } from 'oidc-provider';

import type { ClientRecord, ClientRegistry } from '../clients/registry.ts';
import { TOKEN_BINDINGS } from './bindings/index.ts';
import { methodFor } from './client-auth/index.ts';
import { unlessStorageDown } from './errors.ts';

/** What the engine keeps about a client beyond standard metadata. */
interface M2mMetadata {
  m2m_audiences: string[];
  m2m_scopes: string[];
  m2m_ttl: number | null;
  m2m_secrets: { digest: string; expiresAt: number | null }[];
  m2m_introspect: string[];
  /** `federated` clients: who vouches for them (client-auth/federated.ts). */
  m2m_federated?: { issuer: string; subject: string };
}

/** The extra metadata properties the engine must keep (extraClientMetadata). */
export const M2M_PROPERTIES = ['m2m_audiences', 'm2m_scopes', 'm2m_ttl', 'm2m_secrets', 'm2m_introspect', 'm2m_federated'];

export type EngineClient = InstanceType<Provider['Client']> & M2mMetadata;

function engineMetadata(record: ClientRecord): AdapterPayload {
  const metadata: Record<string, unknown> = {
    client_id: record.clientId,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    m2m_audiences: record.audiences,
    m2m_scopes: record.scopes,
    m2m_ttl: record.ttl,
    m2m_secrets: record.secrets,
    m2m_introspect: record.introspectAudiences,
    ...methodFor(record.authMethod).metadata(record),
  };
  for (const binding of TOKEN_BINDINGS) Object.assign(metadata, binding.metadata(record));
  return metadata as AdapterPayload;
}

/** The engine's adapter: enabled clients from the registry, nothing else stored. */
export function adapterFor(registry: ClientRegistry) {
  return class EngineAdapter implements Adapter {
    readonly #name: string;

    constructor(name: string) {
      this.#name = name;
    }

    async find(id: string): Promise<AdapterPayload | undefined> {
      if (this.#name !== 'Client') return undefined;
      const record = await unlessStorageDown(() => registry.find(id));
      return record?.enabled ? engineMetadata(record) : undefined;
    }

    async upsert(): Promise<void> {
      throw new Error(`the engine tried to store a ${this.#name}; nothing is stored but clients`);
    }

    async findByUserCode(): Promise<undefined> { return undefined; }
    async findByUid(): Promise<undefined> { return undefined; }
    async consume(): Promise<void> {}
    async destroy(): Promise<void> {}
    async revokeByGrantId(): Promise<void> {}
  };
}
