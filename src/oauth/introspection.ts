// RFC 7662 for our JWT access tokens (the engine refuses to introspect JWTs). A caller sees
// a token as active only when it may see the token's audience (`client add --introspect`).
// A good signature is not enough: a token this server could not have issued (longer-lived
// than MAX_ACCESS_TOKEN_TTL, or with a scope its client does not have) is inactive too, so
// a verification key slipped into the key set cannot mint tokens that pass here.
import type { Middleware } from 'koa';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import type { ClientRegistry } from '../clients/registry.ts';
import type { RevocationStore } from '../storage/revocations.ts';
import type { AccessTokenClaims, TokenVerifier } from './access-tokens.ts';
import type { EngineClient } from './client-metadata.ts';
import { unlessStorageDown } from './errors.ts';

export interface TokenCheckDeps {
  verify: () => TokenVerifier;
  registry: ClientRegistry;
  revocations: RevocationStore;
  /** MAX_ACCESS_TOKEN_TTL: the longest `exp - iat` this server issues. */
  maxTokenTtl: number;
}

function audiencesOf(claims: AccessTokenClaims): string[] {
  return Array.isArray(claims.aud) ? claims.aud : [claims.aud!];
}

export function tokenParam(ctx: KoaContextWithOIDC): string {
  const { token } = ctx.oidc.params as { token?: string };
  if (!token) throw new errors.InvalidRequest("missing required parameter 'token'");
  return token;
}

/** The claims of a token that is ours, unexpired, unrevoked, whose client is enabled and could have been given it. */
async function liveToken(deps: TokenCheckDeps, token: string): Promise<AccessTokenClaims | undefined> {
  const claims = await deps.verify()(token);
  if (!claims || claims.exp - claims.iat > deps.maxTokenTtl) return undefined;
  // Without the database, revocation cannot be ruled out: say so rather than guess.
  return unlessStorageDown(async () => {
    if (await deps.revocations.isRevoked(claims.jti)) return undefined;
    const owner = await deps.registry.find(claims.client_id);
    if (!owner?.enabled) return undefined;
    const scopes = (claims.scope ?? '').split(' ').filter(Boolean);
    return scopes.every((scope) => owner.scopes.includes(scope)) ? claims : undefined;
  });
}

export function mayIntrospect(caller: EngineClient, claims: AccessTokenClaims): boolean {
  return audiencesOf(claims).some((aud) => caller.m2m_introspect.includes(aud));
}

export function introspection(deps: TokenCheckDeps): Middleware {
  return async (ctx) => {
    const oidcCtx = ctx as unknown as KoaContextWithOIDC;
    const caller = oidcCtx.oidc.client as EngineClient;
    if (!caller.m2m_introspect.length) {
      const err = new errors.UnauthorizedClient('this client is not registered to introspect tokens');
      err.status = err.statusCode = 403;
      throw err;
    }
    const token = tokenParam(oidcCtx);
    const claims = await liveToken(deps, token);
    if (!claims || !mayIntrospect(caller, claims)) {
      ctx.body = { active: false };
      return;
    }
    ctx.body = {
      active: true,
      client_id: claims.client_id,
      sub: claims.sub,
      aud: claims.aud,
      scope: claims.scope,
      iss: claims.iss,
      exp: claims.exp,
      iat: claims.iat,
      jti: claims.jti,
      // RFC 9449 §6.2: a DPoP-bound token says so, and cnf.jkt names its key.
      token_type: claims.cnf?.jkt ? 'DPoP' : 'Bearer',
      ...(claims.cnf ? { cnf: claims.cnf } : {}),
    };
  };
}
