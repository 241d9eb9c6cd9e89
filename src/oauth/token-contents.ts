// What a token says: its audience (the `resource` asked for, among the client's audiences),
// its scope (among the client's), its lifetime, and the key it is signed with.
import { errors, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';

import type { Settings } from '../settings.ts';
import type { EngineClient } from './client-metadata.ts';

function clientOf(ctx: KoaContextWithOIDC): EngineClient {
  return ctx.oidc.client as EngineClient;
}

// A resource server registered with --introspect alone authenticates (to introspect and
// revoke) but has no audience to get a token for. (The engine's own grant-type check would
// say invalid_request; RFC 6749 section 5.2 says unauthorized_client.)
function noAudience() {
  return new errors.UnauthorizedClient('this client has no audience: it may introspect and revoke, not get tokens');
}

function tokenTtl(settings: Settings, client: EngineClient | undefined): number {
  return Math.min(client?.m2m_ttl ?? settings.accessTokenTtl, settings.maxAccessTokenTtl);
}

/** The requested scope, checked against the client's; a request without scope gets them all. */
function grantScope(ctx: KoaContextWithOIDC, allowed: string[]): void {
  const params = ctx.oidc.params!;
  if (params.scope === undefined) {
    // The engine grants what was requested.
    if (allowed.length) params.scope = allowed.join(' ');
    return;
  }
  const denied = String(params.scope).split(' ').find((scope) => !allowed.includes(scope));
  if (denied !== undefined) throw new errors.InvalidScope('requested scope is not allowed for this client', denied);
}

/** The engine's resource indicators and token lifetime, as this server shapes tokens. */
export function tokenContents(settings: Settings): Pick<Configuration, 'ttl'> & { resourceIndicators: NonNullable<Configuration['features']>['resourceIndicators'] } {
  return {
    resourceIndicators: {
      enabled: true,
      // Without `resource`, the client's only audience; with several, the client must say.
      async defaultResource(ctx) {
        const audiences = clientOf(ctx).m2m_audiences;
        if (audiences.length === 1) return audiences[0]!;
        if (audiences.length === 0) throw noAudience();
        throw new errors.InvalidTarget('this client has several audiences: the resource parameter is required');
      },
      useGrantedResource: () => false,
      async getResourceServerInfo(ctx, resource) {
        const client = clientOf(ctx);
        if (client.m2m_audiences.length === 0) throw noAudience();
        if (!client.m2m_audiences.includes(resource)) {
          throw new errors.InvalidTarget('the requested resource is not one of this client\'s audiences');
        }
        grantScope(ctx, client.m2m_scopes);
        return {
          scope: client.m2m_scopes.join(' '),
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: tokenTtl(settings, client),
          // The engine's one signing key (token-signer.ts), whichever key is behind it when
          // the token is signed: its kid goes into the header then.
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
    ttl: {
      ClientCredentials: (_ctx, _token, client) => tokenTtl(settings, client as EngineClient),
    },
  };
}
