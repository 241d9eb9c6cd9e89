// The shape of a token binding: what a token can be bound to besides being a bearer token.
// A binding adds to a client's engine metadata (whether its tokens must be bound), sets the
// engine's configuration, and may take part in the token endpoint's grant
// (../token-endpoint.ts): helpers of the engine's client_credentials handler it replaces,
// and a check awaited once the token is made. index.ts lists the bindings.
import type Provider from 'oidc-provider';
import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';

import type { ClientRecord } from '../../clients/registry.ts';
import type { EngineDeps } from '../engine.ts';

/** Helpers of the engine's client_credentials handler (oidc-provider/lib/helpers/grants.js), by name. */
type GrantHelpers = Record<string, (...args: never[]) => unknown>;

export interface BindingHooks {
  /** Sets what it needs in the engine's configuration, before the engine is made. */
  configure?(configuration: Configuration): void;
  /** The grant helpers it replaces, for this engine. */
  grantHelpers?(provider: Provider): GrantHelpers;
  /** Awaited once the grant has made the token: a refusal here is the answer instead. */
  settle?(ctx: KoaContextWithOIDC): Promise<void> | undefined;
}

export interface TokenBinding {
  /** What the audit line and the metrics call it (http/audit.ts bindingOf). */
  readonly name: string;
  /** What it adds to a client's engine metadata. */
  metadata(record: ClientRecord): Record<string, unknown>;
  /** Its hooks into the engine, made once per engine. */
  hooks(deps: EngineDeps): BindingHooks;
}
