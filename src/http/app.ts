// The HTTP application: oidc-provider's Koa app with our middleware in front of it. The
// order of `use` calls is the order a request meets them.
import Router from '@koa/router';
import type { Middleware } from 'koa';
import type Provider from 'oidc-provider';

import type { ClientRegistry } from '../clients/registry.ts';
import type { KeySet } from '../keys/signing-keys.ts';
import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import type { ReplayStore } from '../storage/replay.ts';
import type { RevocationStore } from '../storage/revocations.ts';
import { tokenVerifier } from '../oauth/access-tokens.ts';
import type { CertificateHooks } from '../oauth/client-certificates.ts';
import { authenticatedClient } from '../oauth/client-auth.ts';
import { metadata } from '../oauth/discovery.ts';
import { createEngine } from '../oauth/engine.ts';
import { introspection } from '../oauth/introspection.ts';
import { revocation } from '../oauth/revocation.ts';

export interface AppDeps {
  settings: Settings;
  registry: ClientRegistry;
  replay: ReplayStore;
  revocations: RevocationStore;
  logger: Logger;
  /** Resolves when the database answers; rejects otherwise. */
  pingDatabase: () => Promise<void>;
  certificates: CertificateHooks;
}

/** Every endpoint and its methods; anything else is 404 or 405 before it reaches the engine. */
const ENDPOINTS: Record<string, string[]> = {
  '/token': ['POST'],
  '/token/introspection': ['POST'],
  '/token/revocation': ['POST'],
  '/jwks': ['GET', 'HEAD'],
  '/.well-known/oauth-authorization-server': ['GET', 'HEAD'],
  '/.well-known/openid-configuration': ['GET', 'HEAD'],
  '/healthz': ['GET', 'HEAD'],
  '/readyz': ['GET', 'HEAD'],
};

function jsonError(ctx: Parameters<Middleware>[0], status: number, error: string, description: string): void {
  ctx.status = status;
  ctx.set('cache-control', 'no-store');
  ctx.body = { error, error_description: description };
}

function frontDoor(settings: Settings, logger: Logger): Middleware {
  return async (ctx, next) => {
    ctx.set('x-content-type-options', 'nosniff');
    ctx.set('x-frame-options', 'DENY');
    ctx.set('content-security-policy', "default-src 'none'; frame-ancestors 'none'");
    ctx.set('referrer-policy', 'no-referrer');
    ctx.set('strict-transport-security', 'max-age=63072000');
    const methods = ENDPOINTS[ctx.path];
    if (!methods) return jsonError(ctx, 404, 'invalid_request', 'no such endpoint');
    if (!methods.includes(ctx.method)) {
      ctx.set('allow', methods.join(', '));
      return jsonError(ctx, 405, 'invalid_request', `use ${methods.join(' or ')} on ${ctx.path}`);
    }
    if (ctx.method === 'POST') {
      const length = ctx.get('content-length');
      if (length === '') return jsonError(ctx, 411, 'invalid_request', 'a Content-Length header is required');
      if (Number(length) > settings.maxBodyBytes) {
        ctx.set('connection', 'close');
        return jsonError(ctx, 413, 'invalid_request', `the request body exceeds ${settings.maxBodyBytes} bytes`);
      }
    }
    try {
      await next();
    } catch (err) {
      logger.error({ err, path: ctx.path }, 'unhandled error');
      jsonError(ctx, 500, 'server_error', 'internal error');
    }
    if (ctx.status === 503) ctx.set('retry-after', '5');
    // Machine clients only: no browser is to read these answers cross-origin.
    for (const header of Object.keys(ctx.response.headers)) {
      if (header.startsWith('access-control-')) ctx.remove(header);
    }
  };
}

function refusalLogger(provider: Provider, logger: Logger): void {
  const log = (event: string) => (ctx: { oidc?: { params?: { client_id?: unknown }; client?: { clientId: string } } }, err: {
    error?: string; error_detail?: string; error_description?: string; status?: number;
  }) => {
    // The internal reason (error_detail) is for the log only; the caller sees the generic description.
    logger.info({
      event, error: err.error, reason: err.error_detail ?? err.error_description, status: err.status,
      client_id: ctx.oidc?.client?.clientId ?? (typeof ctx.oidc?.params?.client_id === 'string' ? ctx.oidc.params.client_id : undefined),
    }, 'request refused');
  };
  provider.on('grant.error', log('grant.error'));
  provider.on('introspection.error', log('introspection.error'));
  provider.on('revocation.error', log('revocation.error'));
  provider.on('server_error', (_ctx: unknown, err: Error) => logger.error({ err }, 'engine error'));
}

/** Builds the whole app for one key set; rebuilt when the signing keys change. */
export function buildApp(deps: AppDeps, keys: KeySet): Provider {
  const { settings, registry, replay, revocations, logger, certificates } = deps;
  const provider = createEngine({ settings, registry, replay, keys, certificates });
  const verifier = tokenVerifier(settings.issuer, keys);
  const tokenDeps = { verify: () => verifier, registry, revocations };
  const jwks = { keys: keys.published.map((k) => k.jwk) };
  const discovery = metadata(settings);

  const router = new Router();
  router.get('/healthz', (ctx) => {
    ctx.set('cache-control', 'no-store');
    ctx.body = { status: 'ok' };
  });
  router.get('/readyz', async (ctx) => {
    ctx.set('cache-control', 'no-store');
    try {
      await deps.pingDatabase();
      ctx.body = { status: 'ready', database: 'ok', signing_key: keys.signer?.kid };
    } catch {
      ctx.status = 503;
      ctx.body = { status: 'unready', database: 'unreachable', signing_key: keys.signer?.kid };
    }
  });
  router.get('/jwks', (ctx) => {
    ctx.set('cache-control', `public, max-age=${settings.jwksMaxAge}`);
    ctx.type = 'application/jwk-set+json';
    ctx.body = jwks;
  });
  for (const path of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
    router.get(path, (ctx) => {
      ctx.set('cache-control', 'public, max-age=300');
      ctx.body = discovery;
    });
  }
  router.post('introspection', '/token/introspection',
    ...authenticatedClient(provider, 'introspection', ['token', 'token_type_hint']), introspection(tokenDeps));
  router.post('revocation', '/token/revocation',
    ...authenticatedClient(provider, 'revocation', ['token', 'token_type_hint']), revocation(tokenDeps));

  provider.use(frontDoor(settings, logger));
  provider.use(router.routes());
  refusalLogger(provider, logger);
  return provider;
}
