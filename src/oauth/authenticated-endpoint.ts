// Client authentication for our own endpoints (introspection, revocation): the engine's
// own middleware, with the same hooks (secret digests, assertion rules, certificates) the
// token endpoint uses. One path, so a method added there works here too.
import type { Context, Middleware } from 'koa';
import type Provider from 'oidc-provider';
import clientAuth, { getClientAuthParams } from 'oidc-provider/lib/shared/client_auth.js';
import assembleParams from 'oidc-provider/lib/shared/assemble_params.js';
import rejectDupes from 'oidc-provider/lib/shared/reject_dupes.js';
import getErrorHandler from 'oidc-provider/lib/shared/error_handler.js';
import { urlencoded as parseBody } from 'oidc-provider/lib/shared/selective_body.js';
import als from 'oidc-provider/lib/helpers/als.js';

/** Middleware that authenticates the caller as a client; `extra` names the other body parameters. */
export function authenticatedEndpoint(provider: Provider, route: string, extra: string[]): Middleware[] {
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

// The engine answers 400 invalid_request when it cannot read a client assertion as a JWT,
// or when the assertion's sub is not the form's client_id (lib/shared/client_auth.js). Both
// are failed client authentications (RFC 7523 section 3.2): 401 invalid_client. Its other
// 400s (no grant_type, no client_assertion_type, two mechanisms at once) are the request's.
const UNREADABLE_ASSERTION = new Set(['invalid client_assertion format', 'client_id mismatch']);

/** Turns the engine's 400 for an unreadable or mismatched client assertion into 401 invalid_client. */
export function unreadableAssertionIsInvalidClient(ctx: Context): void {
  if (ctx.status !== 400) return;
  const body = ctx.body as { error?: unknown; error_description?: unknown } | undefined;
  if (body?.error !== 'invalid_request' || !UNREADABLE_ASSERTION.has(String(body.error_description))) return;
  const params = (ctx as { oidc?: { params?: Record<string, unknown> } }).oidc?.params;
  // 'client_id mismatch' also answers a Basic header naming another client than the form.
  if (params?.client_assertion === undefined || ctx.get('authorization') !== '') return;
  ctx.status = 401;
  ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
}
