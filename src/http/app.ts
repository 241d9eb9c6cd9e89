// The HTTP application: oidc-provider's Koa app with our middleware in front of it. The
// order of `use` calls is the order a request meets them.
import Router from '@koa/router';
import type { Middleware } from 'koa';
import Provider from 'oidc-provider';

import type { IssuerRegistry } from '../clients/issuers.ts';
import type { ClientRegistry } from '../clients/registry.ts';
import type { Metrics } from '../metrics.ts';
import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import type { ReplayStore } from '../storage/replay.ts';
import type { RevocationStore } from '../storage/revocations.ts';
import { authenticatedEndpoint, unreadableAssertionIsInvalidClient } from '../oauth/authenticated-endpoint.ts';
import type { CertificateHooks } from '../oauth/client-certificates.ts';
import type { CurrentKeys } from '../oauth/current-keys.ts';
import { metadata } from '../oauth/discovery.ts';
import { createEngine } from '../oauth/engine.ts';
import type { IssuerKeys } from '../oauth/issuer-keys.ts';
import { introspection } from '../oauth/introspection.ts';
import { holdAttempt, settleAttempts, type BruteForce } from '../oauth/brute-force.ts';
import { revocation } from '../oauth/revocation.ts';
import { audit, recordIssued, recordRefusal, type Issued } from './audit.ts';
import { clientAddress } from './client-address.ts';
import { ENDPOINTS, endpointAt } from './endpoints.ts';
import { readiness } from './management.ts';
import { isTrustedProxy } from './trusted-proxies.ts';

export interface AppDeps {
  settings: Settings;
  registry: ClientRegistry;
  /** Trusted issuers of federated clients, and their keys. */
  issuers: IssuerRegistry;
  issuerKeys: IssuerKeys;
  replay: ReplayStore;
  revocations: RevocationStore;
  logger: Logger;
  /** Resolves when the database answers; rejects otherwise. */
  pingDatabase: () => Promise<void>;
  certificates: CertificateHooks;
  bruteForce: BruteForce;
  metrics: Metrics;
  /** Shared with the shutdown logic: requests in flight, and whether the server is draining. */
  lifecycle: Lifecycle;
  /** DPoP nonces' secret, read from the database at start (DPOP_NONCE=true only). */
  dpopNonceSecret?: Buffer | undefined;
}

export interface Lifecycle {
  draining: boolean;
  inFlight: number;
  /** Set while this instance must not sign (its signer retired, the next one unusable): /token answers 503. */
  notSigning?: boolean;
}

/** What the engine's CORS middleware may set. */
const CORS_HEADERS = ['access-control-allow-origin', 'access-control-expose-headers', 'access-control-allow-methods',
  'access-control-allow-headers', 'access-control-allow-credentials', 'access-control-max-age'];

type Context = Parameters<Middleware>[0];

function jsonError(ctx: Context, status: number, error: string, description: string): void {
  ctx.status = status;
  ctx.set('cache-control', 'no-store');
  ctx.body = { error, error_description: description };
}

/** Answered to anyone, also in proxy mode: load balancers and orchestrators probe them directly. */
const PROBES = new Set<string>([ENDPOINTS.healthz.path, ENDPOINTS.readyz.path]);

function securityHeaders(ctx: Context): void {
  ctx.set('x-content-type-options', 'nosniff');
  ctx.set('x-frame-options', 'DENY');
  ctx.set('content-security-policy', "default-src 'none'; frame-ancestors 'none'");
  ctx.set('referrer-policy', 'no-referrer');
  ctx.set('strict-transport-security', 'max-age=63072000');
}

/** What is refused before the engine or the router sees the request; the rest goes on to `next`. */
function gate(deps: AppDeps): (ctx: Context, next: () => Promise<unknown>) => Promise<void> {
  const { settings, bruteForce, lifecycle } = deps;
  // Proxy mode speaks plain HTTP: a token answered to anyone but the proxy would travel in clear.
  const peerRefused = (ctx: Context): boolean => settings.tlsMode === 'proxy' && !PROBES.has(ctx.path)
    && !isTrustedProxy(settings, ctx.req.socket.remoteAddress);
  return async (ctx, next) => {
    if (peerRefused(ctx)) {
      recordRefusal(ctx, 'not sent through a trusted proxy (TRUSTED_PROXIES)');
      return jsonError(ctx, 403, 'invalid_request', 'requests are accepted only through the TLS proxy');
    }
    const endpoint = endpointAt(ctx.path);
    if (!endpoint) return jsonError(ctx, 404, 'invalid_request', 'no such endpoint');
    if (!endpoint.methods.includes(ctx.method)) {
      ctx.set('allow', endpoint.methods.join(', '));
      return jsonError(ctx, 405, 'invalid_request', `use ${endpoint.methods.join(' or ')} on ${ctx.path}`);
    }
    // Before any client is authenticated: the refusal is ours, not the client's.
    if (lifecycle.notSigning && endpoint === ENDPOINTS.token) {
      recordRefusal(ctx, 'no usable signing key');
      return jsonError(ctx, 503, 'temporarily_unavailable', 'this instance cannot sign tokens right now; retry later');
    }
    if (ctx.method === 'POST') {
      const length = ctx.get('content-length');
      if (length === '') return jsonError(ctx, 411, 'invalid_request', 'a Content-Length header is required');
      if (Number(length) > settings.maxBodyBytes) {
        ctx.set('connection', 'close');
        return jsonError(ctx, 413, 'invalid_request', `the request body exceeds ${settings.maxBodyBytes} bytes`);
      }
    }
    if (endpoint.event) {
      // Taken from the address's limit before anything is evaluated, so concurrent attempts
      // cannot together exceed it; the engine takes the client id's when it looks it up.
      const admitted = bruteForce.admitAddress(ctx.state.address as string);
      const admission = 'then' in admitted ? await admitted : admitted;
      if ('refused' in admission) return tooManyAttempts(ctx, admission.waitMs, admission.refused);
      if ('busy' in admission) return jsonError(ctx, 503, 'temporarily_unavailable', 'the service is temporarily unavailable, retry later');
      holdAttempt(ctx.state, admission.attempt);
    }
    await next();
  };
}

/** Once answered: what every answer gets, the attempts settled, and the audit line. */
function finish(ctx: Context, deps: AppDeps, keys: CurrentKeys, address: string, startedAt: bigint): void {
  const { settings, logger, metrics } = deps;
  // Every failed client authentication looks alike, whichever method was tried: the
  // engine adds this header only when the request carried an Authorization header.
  if (ctx.status === 401 && !ctx.response.get('www-authenticate')) {
    ctx.set('www-authenticate', `Basic realm="${settings.issuer}", error="invalid_client", error_description="client authentication failed"`);
  }
  // Machine clients only: no browser is to read these answers cross-origin.
  if (ctx.response.get('access-control-allow-origin')) for (const header of CORS_HEADERS) ctx.remove(header);
  // The attempts were taken before the credential was evaluated: a failure keeps them.
  settleAttempts(ctx.state, ctx.status);
  try {
    // Unknown paths share one label: a label per path would let anyone grow the metrics.
    audit(ctx, logger, metrics, address, startedAt, keys.signingKid, endpointAt(ctx.path) ? ctx.path : 'other');
  } catch (err) {
    logger.error({ err }, 'writing the audit line failed');
    // A token whose line may not have been written does not leave.
    if (ctx.path === ENDPOINTS.token.path && ctx.status < 400) jsonError(ctx, 500, 'server_error', 'internal error');
  }
  // After the audit step, which can turn a token answer into a 503 of its own.
  if (ctx.status === 503) ctx.set('retry-after', '5');
}

function frontDoor(deps: AppDeps, keys: CurrentKeys): Middleware {
  const { settings, logger, lifecycle } = deps;
  const addressOf = clientAddress(settings);
  const guarded = gate(deps);
  const handle = async (ctx: Context, next: () => Promise<unknown>): Promise<void> => {
    const startedAt = process.hrtime.bigint();
    // While draining, every answer closes its connection, so keep-alive clients move on.
    if (lifecycle.draining) ctx.set('connection', 'close');
    const address = addressOf(ctx.req);
    ctx.state.address = address;
    securityHeaders(ctx);
    try {
      await guarded(ctx, next);
      if (endpointAt(ctx.path)?.event) unreadableAssertionIsInvalidClient(ctx);
    } catch (err) {
      logger.error({ err, path: ctx.path }, 'unhandled error');
      jsonError(ctx, 500, 'server_error', 'internal error');
    }
    finish(ctx, deps, keys, address, startedAt);
  };
  return async (ctx, next) => {
    lifecycle.inFlight += 1;
    try {
      await handle(ctx, next);
    } finally {
      lifecycle.inFlight -= 1;
    }
  };
}

function tooManyAttempts(ctx: Context, waitMs: number, reason: string): void {
  recordRefusal(ctx, reason);
  jsonError(ctx, 429, 'temporarily_unavailable', 'too many failed authentication attempts; retry later');
  ctx.set('retry-after', String(Math.max(1, Math.ceil(waitMs / 1000))));
}

// The engine knows why it refused (error_detail); the caller sees only the generic
// description, and the audit line records the reason.
function recordRefusals(provider: Provider, logger: Logger): void {
  const record = (ctx: Context, err: { error_detail?: string; error_description?: string; message?: string }) => {
    recordRefusal(ctx, err.error_detail ?? err.error_description ?? err.message);
  };
  provider.on('grant.error', record);
  provider.on('introspection.error', record);
  provider.on('revocation.error', record);
  provider.on('server_error', (_ctx: unknown, err: Error) => logger.error({ err }, 'engine error'));
  provider.on('client_credentials.issued', (token) => {
    const ctx = Provider.ctx;
    if (ctx) recordIssued(ctx as never, token as unknown as Issued);
  });
  // Koa's own last resort: anything that escaped every handler.
  (provider as unknown as NodeJS.EventEmitter).on('error', (err: Error) => logger.error({ err }, 'unhandled error'));
}

/** Our endpoints beside the engine's token endpoint: probes, /jwks, metadata, introspection, revocation. */
function ourRoutes(deps: AppDeps, keys: CurrentKeys, provider: Provider): Router {
  const { settings, registry, revocations } = deps;
  const tokenDeps = { verify: () => keys.verify, registry, revocations, maxTokenTtl: settings.maxAccessTokenTtl };
  // Serialised once: these answers are the same for every caller.
  const discovery = JSON.stringify(metadata(settings));
  const router = new Router();
  router.get(ENDPOINTS.healthz.path, (ctx) => {
    ctx.set('cache-control', 'no-store');
    ctx.body = { status: 'ok' };
  });
  router.get(ENDPOINTS.readyz.path, async (ctx) => {
    ctx.set('cache-control', 'no-store');
    const { ready, body } = await readiness(deps.pingDatabase, deps.lifecycle.notSigning ? undefined : keys.signingKid);
    ctx.status = ready ? 200 : 503;
    ctx.body = body;
  });
  router.get(ENDPOINTS.jwks.path, (ctx) => {
    ctx.set('cache-control', `public, max-age=${settings.jwksMaxAge}`);
    ctx.type = 'application/jwk-set+json';
    ctx.body = keys.jwks;
  });
  for (const { path } of [ENDPOINTS.authorizationServer, ENDPOINTS.openidConfiguration]) {
    router.get(path, (ctx) => {
      ctx.set('cache-control', 'public, max-age=300');
      ctx.type = 'json';
      ctx.body = discovery;
    });
  }
  router.post('introspection', ENDPOINTS.introspection.path,
    ...authenticatedEndpoint(provider, 'introspection', ['token', 'token_type_hint']), introspection(tokenDeps));
  router.post('revocation', ENDPOINTS.revocation.path,
    ...authenticatedEndpoint(provider, 'revocation', ['token', 'token_type_hint']), revocation(tokenDeps));
  return router;
}

/**
 * Builds the whole app, once per process. A key-set change goes to `keys` (keys.use): the
 * engine, with what it has cached about clients, is not rebuilt.
 */
export function buildApp(deps: AppDeps, keys: CurrentKeys): Provider {
  const { settings, registry, replay, logger, certificates, issuers, issuerKeys, bruteForce, dpopNonceSecret } = deps;
  const provider = createEngine({ settings, registry, replay, signer: keys.signer, certificates, issuers, issuerKeys, logger, bruteForce, dpopNonceSecret });
  provider.use(frontDoor(deps, keys));
  // The token endpoint is the engine's: requests for it skip our router's matching.
  const ours = ourRoutes(deps, keys, provider).routes();
  provider.use((ctx, next) => (ctx.path === ENDPOINTS.token.path ? next() : ours(ctx as never, next)));
  recordRefusals(provider, logger);
  return provider;
}
