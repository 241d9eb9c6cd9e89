// The token endpoint: the engine's own client_credentials grant, registered again with the
// token bindings' helpers in place of the engine's (bindings/), and every URL the engine
// builds made under ISSUER.
import type Provider from 'oidc-provider';
import type { KoaContextWithOIDC } from 'oidc-provider';
import * as clientCredentials from 'oidc-provider/lib/actions/grants/client_credentials.js';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';

import type { Settings } from '../settings.ts';
import type { BindingHooks } from './bindings/binding.ts';

/** The engine would build its URLs (DPoP's htu among them) from the request's Host header; ours are under ISSUER, as the metadata says. */
function urlsUnderIssuer(provider: Provider, settings: Settings): void {
  provider.OIDCContext.prototype.urlFor = function urlFor(name: string, opt?: Record<string, unknown>) {
    return `${settings.issuer}${provider.pathFor(name, { mountPath: '', ...opt })}`;
  };
}

export function useTokenEndpoint(provider: Provider, settings: Settings, bindings: readonly BindingHooks[]): void {
  urlsUnderIssuer(provider, settings);
  // The engine's own client_credentials handler, given the engine's own helpers but those the bindings replace.
  const engine = Object.fromEntries(Object.entries(grantHelpers).map(([name, helper]) => [name, (helper as (...args: unknown[]) => unknown).bind(undefined, provider)]));
  const helpers = Object.assign(engine, ...bindings.map((binding) => binding.grantHelpers?.(provider) ?? {}));
  provider.registerGrantType(
    clientCredentials.grantType,
    async (ctx: KoaContextWithOIDC) => {
      await clientCredentials.handler(provider, helpers, ctx);
      for (const binding of bindings) await binding.settle?.(ctx);
    },
    // As the engine registers it with resource indicators on: `resource` once.
    [...clientCredentials.parameters, 'resource'],
    ['resource'],
  );
}
