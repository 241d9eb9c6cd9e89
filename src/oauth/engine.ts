// oidc-provider, configured for the client-credentials grant and nothing else, and built
// once per process. It is assembled from lists: the client-authentication methods
// (client-auth/), the token bindings (bindings/), the token's contents (token-contents.ts),
// the one client lookup (client-lookup.ts) and the token endpoint (token-endpoint.ts). Its
// signing key is a TokenSigner whose key is swapped when the signing keys change
// (current-keys.ts): the engine and what it caches about clients stay.
import Provider, { type Configuration } from 'oidc-provider';

import type { IssuerRegistry } from '../clients/issuers.ts';
import type { ClientRegistry } from '../clients/registry.ts';
import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import type { ReplayStore } from '../storage/replay.ts';
import { CLOCK_TOLERANCE } from './algorithms.ts';
import { boundToBoth, TOKEN_BINDINGS } from './bindings/index.ts';
import type { BindingHooks } from './bindings/binding.ts';
import type { BruteForce } from './brute-force.ts';
import type { CertificateHooks } from './client-certificates.ts';
import { CLIENT_AUTH_METHODS, ENGINE_AUTH_METHODS } from './client-auth/index.ts';
import type { ClientAuthMethod, MethodHooks } from './client-auth/method.ts';
import { useClientLookup } from './client-lookup.ts';
import { adapterFor, M2M_PROPERTIES } from './client-metadata.ts';
import { unlessStorageDown } from './errors.ts';
import type { IssuerKeys } from './issuer-keys.ts';
import { tokenContents } from './token-contents.ts';
import { useTokenEndpoint } from './token-endpoint.ts';
import type { TokenSigner } from './token-signer.ts';

export interface EngineDeps {
  settings: Settings;
  registry: ClientRegistry;
  replay: ReplayStore;
  /** The engine's one signing key, whose key behind it is swapped on a key change. */
  signer: TokenSigner;
  certificates: CertificateHooks;
  /** Trusted issuers of federated clients, and their keys. */
  issuers: IssuerRegistry;
  issuerKeys: IssuerKeys;
  /** Where a failed jwks_uri fetch is reported. */
  logger?: Logger;
  /** Brute-force limits, checked when the engine looks a client up. */
  bruteForce?: BruteForce;
  /** DPoP nonces' secret, the same in every process (needed with DPOP_NONCE=true). */
  dpopNonceSecret?: Buffer | undefined;
}

/** What every engine has, whatever the methods and bindings add. */
function baseConfiguration(deps: EngineDeps): Configuration {
  const { resourceIndicators, ttl } = tokenContents(deps.settings);
  return {
    adapter: adapterFor(deps.registry),
    clients: [],
    jwks: { keys: [deps.signer as never] },
    clientAuthMethods: [...ENGINE_AUTH_METHODS] as Configuration['clientAuthMethods'],
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
    clockTolerance: CLOCK_TOLERANCE,
    scopes: ['openid'],
    claims: { openid: ['sub'] },
    responseTypes: ['none'],
    pkce: { required: () => false },
    extraClientMetadata: { properties: M2M_PROPERTIES },
    features: {
      devInteractions: { enabled: false },
      externalSigningSupport: { enabled: true, ack: 'experimental-01' },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      resourceIndicators,
    },
    ttl,
    async renderError(ctx, out) {
      // Machine clients only: errors are JSON whatever Accept says.
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

export function createEngine(deps: EngineDeps): Provider {
  const methods = new Map<ClientAuthMethod, MethodHooks>(CLIENT_AUTH_METHODS.map((method) => [method, method.hooks(deps)]));
  const bindings: BindingHooks[] = TOKEN_BINDINGS.map((binding) => binding.hooks(deps));

  const configuration = baseConfiguration(deps);
  for (const hooks of [...methods.values(), ...bindings]) hooks.configure?.(configuration);
  const provider = new Provider(deps.settings.issuer, configuration);
  // Forwarded headers are never believed wholesale: ISSUER comes from the settings, and the
  // client certificate from a trusted proxy only (client-certificates.ts).
  provider.proxy = false;
  for (const hooks of methods.values()) hooks.install?.(provider);

  // One atomic INSERT decides first use of an assertion's jti (and of a DPoP proof's:
  // bindings/dpop.ts); the engine's default (find, then insert) would let concurrent
  // replays through.
  provider.ReplayDetection.unique = (iss: string, jti: string, exp: number) => unlessStorageDown(() => deps.replay.claim(`${iss}\u0000${jti}`, exp));

  useClientLookup(provider, { registry: deps.registry, bruteForce: deps.bruteForce, hooks: methods });
  useTokenEndpoint(provider, deps.settings, bindings);
  boundToBoth(provider);
  return provider;
}
