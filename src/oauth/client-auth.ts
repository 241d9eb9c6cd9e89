// Client authentication for our own endpoints (introspection, revocation): the engine's
// own middleware, with the same hooks (secret digests, assertion rules, certificates) the
// token endpoint uses. One path, so a method added there works here too.
import type { Middleware } from 'koa';
import type Provider from 'oidc-provider';
import clientAuth, { getClientAuthParams } from 'oidc-provider/lib/shared/client_auth.js';
import assembleParams from 'oidc-provider/lib/shared/assemble_params.js';
import rejectDupes from 'oidc-provider/lib/shared/reject_dupes.js';
import getErrorHandler from 'oidc-provider/lib/shared/error_handler.js';
import { urlencoded as parseBody } from 'oidc-provider/lib/shared/selective_body.js';
import als from 'oidc-provider/lib/helpers/als.js';

/** Middleware that authenticates the caller as a client; `extra` names the other body parameters. */
export function authenticatedClient(provider: Provider, route: string, extra: string[]): Middleware[] {
  const withEngineContext: Middleware = (ctx, next) => {
    let oidc: unknown;
    Object.defineProperty(ctx, 'oidc', {
      configurable: true,
      get: () => {
        oidc ??= new provider.OIDCContext(ctx as never);
        return oidc;
      },
    });
    return als.run(ctx, () => next());
  };
  const noStore: Middleware = (ctx, next) => {
    ctx.set('cache-control', 'no-store');
    return next();
  };
  const params: Middleware = (ctx, next) => assembleParams(new Set([...extra, ...getClientAuthParams(ctx)]), ctx, next);
  // A repeated parameter (token=a&token=b) is ambiguous: 400, as the engine's own endpoints do.
  const noDupes: Middleware = (ctx, next) => rejectDupes({ only: new Set(extra) }, ctx, next);
  return [withEngineContext, getErrorHandler(`${route}.error`), noStore, parseBody, params, noDupes, ...clientAuth];
}
