// oidc-provider's own client-authentication middleware, reused so that our endpoints
// authenticate callers exactly as the token endpoint does.
declare module 'oidc-provider/lib/shared/client_auth.js' {
  import type { Middleware } from 'koa';

  const clientAuth: Middleware[];
  export default clientAuth;
  export function getClientAuthParams(ctx: unknown): Set<string>;
}
declare module 'oidc-provider/lib/shared/selective_body.js' {
  import type { Middleware } from 'koa';

  export const urlencoded: Middleware;
}
declare module 'oidc-provider/lib/shared/assemble_params.js' {
  import type { Next } from 'koa';

  export default function assembleParams(allowList: Set<string>, ctx: unknown, next: Next): Promise<void>;
}
declare module 'oidc-provider/lib/shared/reject_dupes.js' {
  import type { Next } from 'koa';

  export default function rejectDupes(options: { only?: Set<string>; except?: Set<string> }, ctx: unknown, next: Next): Promise<void>;
}
declare module 'oidc-provider/lib/shared/error_handler.js' {
  import type { Middleware } from 'koa';

  export default function getErrorHandler(eventName: string): Middleware;
}
declare module 'oidc-provider/lib/helpers/als.js' {
  import type { AsyncLocalStorage } from 'node:async_hooks';

  const als: AsyncLocalStorage<unknown>;
  export default als;
}
// The engine's client_credentials grant and the helpers it is given, so that DPoP
// (src/oauth/bindings/dpop.ts) can register it again with two helpers of its own.
declare module 'oidc-provider/lib/actions/grants/client_credentials.js' {
  import type Provider from 'oidc-provider';
  import type { KoaContextWithOIDC } from 'oidc-provider';

  /** `helpers`: every export of lib/helpers/grants.js, bound to the provider. */
  export function handler(provider: Provider, helpers: Record<string, unknown>, ctx: KoaContextWithOIDC): Promise<void>;
  export const parameters: Set<string>;
  export const grantType: string;
}
declare module 'oidc-provider/lib/helpers/grants.js' {
  import type Provider from 'oidc-provider';
  import type { KoaContextWithOIDC } from 'oidc-provider';

  // The DPoP helper replaced; the module exports more helpers, passed on untouched.
  export function checkDpopRequired(provider: Provider, ctx: KoaContextWithOIDC, dPoP: unknown, ErrorClass?: unknown): void;
}
// The engine's per-provider internals: DPoP nonces (lib/helpers/challenge.js), made from
// features.dPoP.nonceSecret, read by src/oauth/bindings/dpop.ts.
declare module 'oidc-provider/lib/helpers/weak_cache.js' {
  import type Provider from 'oidc-provider';

  interface ServerChallenge {
    nextChallenge(): string;
    checkChallenge(value: string): boolean;
  }
  export default function instance(provider: Provider): { DPoPNonces?: ServerChallenge };
}
