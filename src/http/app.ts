// The HTTP application: oidc-provider's Koa app with our middleware in front of it. The
// order of `use` calls is the order a request meets them.
import Router from '@koa/router';
import type { Middleware } from 'koa';
import Provider from 'oidc-provider';
import proxyAddr from 'proxy-addr';

import type { IssuerRegistry } from '../clients/issuers.ts';
import type { ClientRegistry } from '../clients/registry.ts';
import type { Metrics } from '../metrics.ts';
import type { KeySet } from '../keys/signing-keys.ts';
import type { Logger } from '../log.ts';
import type { Settings } from '../settings.ts';
import type { ReplayStore } from '../storage/replay.ts';
import type { RevocationStore } from '../storage/revocations.ts';
import { tokenVerifier } from '../oauth/access-tokens.ts';
import type { CertificateHooks } from '../oauth/client-certificates.ts';
import { authenticatedClient, unreadableAssertionIsInvalidClient } from '../oauth/client-auth.ts';
import { metadata } from '../oauth/discovery.ts';
import { useFederatedClients } from '../oauth/client-auth/federated.ts';
import { ASSERTION_ALGS, CLOCK_TOLERANCE, createEngine, unlessStorageDown } from '../oauth/engine.ts';
import type { IssuerKeys } from '../oauth/issuer-keys.ts';
import { introspection } from '../oauth/introspection.ts';
import { holdAttempt, settleAttempts, type BruteForce } from '../oauth/brute-force.ts';
import { revocation } from '../oauth/revocation.ts';
import { audit, recordIssued, recordRefusal, type Issued } from './audit.ts';
import { clientAddress } from './client-address.ts';
import { readiness } from './management.ts';

export interface AppDeps {
  settings: Settings;
  registry: ClientRegistry;
  /** Trusted issuers of federated clients, and their keys (kept across rebuilds). */
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

/**
 * Every endpoint and its methods; anything else is 404 or 405 before it reaches the engine.
 * /metrics is not here: it is on the management listener only (management.ts).
 */
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

/** What the engine's CORS middleware may set. */
const CORS_HEADERS = ['access-control-allow-origin', 'access-control-expose-headers', 'access-control-allow-methods',
  'access-control-allow-headers', 'access-control-allow-credentials', 'access-control-max-age'];

/** Endpoints where a client authenticates, and so where brute force is limited. */
const AUTHENTICATING = new Set(['/token', '/token/introspection', '/token/revocation']);

function jsonError(ctx: Parameters<Middleware>[0], status: number, error: string, description: string): void {
  ctx.status = status;
  ctx.set('cache-control', 'no-store');
  ctx.body = { error, error_description: description };
}

/** Answered to anyone, also in proxy mode: load balancers and orchestrators probe them directly. */
const PROBES = new Set(['/healthz', '/readyz']);

function frontDoor(deps: AppDeps, signingKid: string | undefined): Middleware {
  const { settings, logger, bruteForce, metrics, lifecycle } = deps;
  const addressOf = clientAddress(settings);
  const fromProxy = proxyAddr.compile(settings.trustedProxies);
  // Proxy mode speaks plain HTTP: a token answered to anyone but the proxy would travel in clear.
  const peerRefused = (ctx: Parameters<Middleware>[0]): boolean => settings.tlsMode === 'proxy' && !PROBES.has(ctx.path)
    && !fromProxy(ctx.req.socket.remoteAddress ?? '', 0);
  return async (ctx, next) => {
    lifecycle.inFlight += 1;
    try {
      await handle(ctx, next);
    } finally {
      lifecycle.inFlight -= 1;
    }
  };

  async function handle(ctx: Parameters<Middleware>[0], next: () => Promise<unknown>): Promise<void> {
    const startedAt = process.hrtime.bigint();
    // While draining, every answer closes its connection, so keep-alive clients move on.
    if (lifecycle.draining) ctx.set('connection', 'close');
    const address = addressOf(ctx.req);
    ctx.state.address = address;
    ctx.set('x-content-type-options', 'nosniff');
    ctx.set('x-frame-options', 'DENY');
    ctx.set('content-security-policy', "default-src 'none'; frame-ancestors 'none'");
    ctx.set('referrer-policy', 'no-referrer');
    ctx.set('strict-transport-security', 'max-age=63072000');
    try {
      await guarded(ctx, next);
      if (AUTHENTICATING.has(ctx.path)) unreadableAssertionIsInvalidClient(ctx);
    } catch (err) {
      logger.error({ err, path: ctx.path }, 'unhandled error');
      jsonError(ctx, 500, 'server_error', 'internal error');
    }
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
      audit(ctx, logger, metrics, address, startedAt, signingKid, ENDPOINTS[ctx.path] ? ctx.path : 'other');
    } catch (err) {
      logger.error({ err }, 'writing the audit line failed');
      // A token whose line may not have been written does not leave.
      if (ctx.path === '/token' && ctx.status < 400) jsonError(ctx, 500, 'server_error', 'internal error');
    }
    // After the audit step, which can turn a token answer into a 503 of its own.
    if (ctx.status === 503) ctx.set('retry-after', '5');
  }

  async function guarded(ctx: Parameters<Middleware>[0], next: () => Promise<unknown>): Promise<void> {
    if (peerRefused(ctx)) {
      recordRefusal(ctx, 'not sent through a trusted proxy (TRUSTED_PROXIES)');
      return jsonError(ctx, 403, 'invalid_request', 'requests are accepted only through the TLS proxy');
    }
    const methods = ENDPOINTS[ctx.path];
    if (!methods) return jsonError(ctx, 404, 'invalid_request', 'no such endpoint');
    if (!methods.includes(ctx.method)) {
      ctx.set('allow', methods.join(', '));
      return jsonError(ctx, 405, 'invalid_request', `use ${methods.join(' or ')} on ${ctx.path}`);
    }
    // Before any client is authenticated: the refusal is ours, not the client's.
    if (lifecycle.notSigning && ctx.path === '/token') {
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
    if (AUTHENTICATING.has(ctx.path)) {
      // Taken from the address's limit before anything is evaluated, so concurrent attempts
      // cannot together exceed it; the engine takes the client id's when it looks it up.
      const admitted = bruteForce.admitAddress(ctx.state.address as string);
      const admission = 'then' in admitted ? await admitted : admitted;
      if ('refused' in admission) return tooManyAttempts(ctx, admission.waitMs, admission.refused);
      if ('busy' in admission) return jsonError(ctx, 503, 'temporarily_unavailable', 'the service is temporarily unavailable, retry later');
      holdAttempt(ctx.state, admission.attempt);
    }
    await next();
  }
}

export function tooManyAttempts(ctx: Parameters<Middleware>[0], waitMs: number, reason: string): void {
  recordRefusal(ctx, reason);
  jsonError(ctx, 429, 'temporarily_unavailable', 'too many failed authentication attempts; retry later');
  ctx.set('retry-after', String(Math.max(1, Math.ceil(waitMs / 1000))));
}

// The engine knows why it refused (error_detail); the caller sees only the generic
// description, and the audit line records the reason.
function recordRefusals(provider: Provider, logger: Logger): void {
  const record = (ctx: Parameters<Middleware>[0], err: { error_detail?: string; error_description?: string; message?: string }) => {
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

/** Builds the whole app for one key set; rebuilt when the signing keys change. */
export function buildApp(deps: AppDeps, keys: KeySet): Provider {
  const { settings, registry, replay, revocations, logger, certificates } = deps;
  const provider = createEngine({ settings, registry, replay, keys, certificates, logger, bruteForce: deps.bruteForce, dpopNonceSecret: deps.dpopNonceSecret });
  useFederatedClients(provider, {
    settings, issuers: deps.issuers, keys: deps.issuerKeys, algorithms: ASSERTION_ALGS, clockTolerance: CLOCK_TOLERANCE, unlessStorageDown,
  });
  const verifier = tokenVerifier(settings.issuer, keys);
  const tokenDeps = { verify: () => verifier, registry, revocations, maxTokenTtl: settings.maxAccessTokenTtl };
  // Serialised once per key set: these answers are the same for every caller.
  const jwks = JSON.stringify({ keys: keys.published.map((k) => k.jwk) });
  const discovery = JSON.stringify(metadata(settings));

  const router = new Router();
  router.get('/healthz', (ctx) => {
    ctx.set('cache-control', 'no-store');
    ctx.body = { status: 'ok' };
  });
  router.get('/readyz', async (ctx) => {
    ctx.set('cache-control', 'no-store');
    const { ready, body } = await readiness(deps.pingDatabase, deps.lifecycle.notSigning ? undefined : keys.signer?.kid);
    ctx.status = ready ? 200 : 503;
    ctx.body = body;
  });
  router.get('/jwks', (ctx) => {
    ctx.set('cache-control', `public, max-age=${settings.jwksMaxAge}`);
    ctx.type = 'application/jwk-set+json';
    ctx.body = jwks;
  });
  for (const path of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
    router.get(path, (ctx) => {
      ctx.set('cache-control', 'public, max-age=300');
      ctx.type = 'json';
      ctx.body = discovery;
    });
  }
  router.post('introspection', '/token/introspection',
    ...authenticatedClient(provider, 'introspection', ['token', 'token_type_hint']), introspection(tokenDeps));
  router.post('revocation', '/token/revocation',
    ...authenticatedClient(provider, 'revocation', ['token', 'token_type_hint']), revocation(tokenDeps));

  provider.use(frontDoor(deps, keys.signer?.kid));
  // The token endpoint is the engine's: requests for it skip our router's matching.
  const ours = router.routes();
  provider.use((ctx, next) => (ctx.path === '/token' ? next() : ours(ctx as never, next)));
  recordRefusals(provider, logger);
  return provider;
}
