// RFC 7009 for our JWT access tokens. The token's own client may revoke it, and so may a
// client that may introspect it (a resource API cutting off a token it was handed).
// Unknown, invalid and expired tokens get 200 and change nothing, as the RFC asks;
// token_type_hint is accepted and ignored (every token here is an access token).
import type { Middleware } from 'koa';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import type { EngineClient } from './client-metadata.ts';
import { unlessStorageDown } from './errors.ts';
import { mayIntrospect, tokenParam, type TokenCheckDeps } from './introspection.ts';

export function revocation(deps: TokenCheckDeps): Middleware {
  return async (ctx) => {
    const oidcCtx = ctx as unknown as KoaContextWithOIDC;
    const caller = oidcCtx.oidc.client as EngineClient;
    const token = tokenParam(oidcCtx);
    // Any token of ours that has not expired can be revoked, even one whose client is now
    // disabled: re-enabling the client must not bring a revoked token back.
    const claims = await deps.verify()(token);
    if (claims) {
      if (claims.client_id !== caller.clientId && !mayIntrospect(caller, claims)) {
        const err = new errors.UnauthorizedClient('this client may not revoke that token');
        err.status = err.statusCode = 403;
        throw err;
      }
      await unlessStorageDown(() => deps.revocations.revoke(claims.jti, claims.exp));
    }
    ctx.status = 200;
    ctx.body = '';
  };
}
