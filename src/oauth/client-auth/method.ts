// The shape every client-authentication method has. A method is what an operator
// registers (`client add --auth`), the names the engine and the metadata know it by, what it
// adds to a client's engine metadata, and its hooks into the one engine: configuration
// before it is made, what it installs once it is made, and its steps in the client lookup
// (../client-lookup.ts). index.ts lists the methods; engine.ts is built from that list.
import type { KoaContextWithOIDC } from 'oidc-provider';
import type Provider from 'oidc-provider';
import type { Configuration } from 'oidc-provider';

import type { AuthMethod, ClientRecord } from '../../clients/registry.ts';
import type { EngineClient } from '../client-metadata.ts';
import type { EngineDeps } from '../engine.ts';

export interface MethodHooks {
  /** Sets what it needs in the engine's configuration, before the engine is made. */
  configure?(configuration: Configuration): void;
  /** Installs what it needs on the engine once made. */
  install?(provider: Provider): void;
  /**
   * Lookup, first step: the client a credential other than client_id names (a federated
   * client's external token), not verified yet; undefined when the request carries none.
   */
  identify?(ctx: KoaContextWithOIDC | undefined): Promise<string | undefined>;
  /** Lookup, once per record: what the built client keeps (its key store's rules). */
  built?(client: EngineClient): void;
  /** Lookup, last step, every time: what the method checks or fills in before the engine authenticates. */
  found?(client: EngineClient, ctx: KoaContextWithOIDC | undefined): Promise<void> | void;
}

export interface ClientAuthMethod {
  /** The registry's methods (`client add --auth`) it authenticates. */
  readonly registered: readonly AuthMethod[];
  /** Its names in the engine's client authentication, in the order discovery lists them. */
  readonly engineMethods: readonly string[];
  /** Whether discovery advertises engineMethods (false: the engine knows it under a stand-in name). */
  readonly advertised: boolean;
  /** What it adds to the engine metadata of a client registered with it. */
  metadata(record: ClientRecord): Record<string, unknown>;
  /** Its hooks into the engine, made once per engine. */
  hooks(deps: EngineDeps): MethodHooks;
}
