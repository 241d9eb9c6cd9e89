// One audit line per token issued and per refusal, and the matching metrics. The line
// names the client, the method, the audience, scope, jti and kid, or the internal reason
// of a refusal; never a secret, an assertion, a certificate or a token.
import type { Context } from 'koa';

import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';

/** What the engine knew when it refused a request (set from its error events). */
export interface Refusal {
  reason: string | undefined;
}

const REFUSAL = Symbol('refusal');

export function recordRefusal(ctx: Context, reason: string | undefined): void {
  (ctx.state as { [REFUSAL]?: Refusal })[REFUSAL] = { reason };
}

function decodePart(token: string, index: 0 | 1): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token.split('.')[index] ?? '', 'base64url').toString('utf8'));
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? parsed as Record<string, unknown> : {};
  } catch {
    return {};
  }
}

/** The client id the caller claimed, whether or not it exists: Basic, form, or assertion `sub`. */
export function clientIdAsSent(ctx: Context): string | undefined {
  const authorization = ctx.get('authorization');
  if (/^basic /i.test(authorization)) {
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon > 0) {
      try {
        return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20')).slice(0, 128);
      } catch {
        return undefined;
      }
    }
  }
  const params = (ctx as { oidc?: { params?: Record<string, unknown> } }).oidc?.params;
  if (typeof params?.client_id === 'string') return params.client_id.slice(0, 128);
  if (typeof params?.client_assertion === 'string') {
    const { sub } = decodePart(params.client_assertion, 1);
    if (typeof sub === 'string') return sub.slice(0, 128);
  }
  return undefined;
}

/** How the caller tried to authenticate, as far as the request shows. */
function methodOf(ctx: Context): string | undefined {
  const client = (ctx as { oidc?: { client?: { clientAuthMethod?: string } } }).oidc?.client;
  if (client?.clientAuthMethod) return client.clientAuthMethod;
  const params = (ctx as { oidc?: { params?: Record<string, unknown> } }).oidc?.params;
  if (/^basic /i.test(ctx.get('authorization'))) return 'client_secret_basic';
  if (params?.client_secret) return 'client_secret_post';
  if (params?.client_assertion) return 'private_key_jwt';
  return undefined;
}

const ENDPOINT_EVENTS: Record<string, string> = {
  '/token': 'token',
  '/token/introspection': 'introspection',
  '/token/revocation': 'revocation',
};

export function audit(ctx: Context, logger: Logger, metrics: Metrics, address: string, startedAt: bigint): void {
  const latencyMs = Number(process.hrtime.bigint() - startedAt) / 1e6;
  const endpoint = ENDPOINT_EVENTS[ctx.path];
  metrics.requestDuration.observe({ endpoint: ctx.path, status: String(ctx.status) }, latencyMs / 1000);
  if (!endpoint) return;
  const body = ctx.body as { access_token?: string; error?: string } | undefined;
  if (ctx.status === 200 && endpoint === 'token' && typeof body?.access_token === 'string') {
    const header = decodePart(body.access_token, 0);
    const claims = decodePart(body.access_token, 1);
    const method = methodOf(ctx) ?? 'unknown';
    metrics.tokensIssued.inc({ client_id: String(claims.client_id), method });
    logger.info({
      event: 'token.issued', client_id: claims.client_id, method, aud: claims.aud, scope: claims.scope,
      jti: claims.jti, kid: header.kid, bound: claims.cnf !== undefined, address, latency_ms: Math.round(latencyMs * 10) / 10,
    }, 'token issued');
    return;
  }
  if (ctx.status < 400) return;
  const refusal = (ctx.state as { [REFUSAL]?: Refusal })[REFUSAL];
  const error = body?.error ?? String(ctx.status);
  const reason = refusal?.reason ?? error;
  metrics.refusals.inc({ endpoint, error, reason: reason.slice(0, 80) });
  logger.info({
    event: `${endpoint}.refused`, client_id: clientIdAsSent(ctx), method: methodOf(ctx), error, reason,
    status: ctx.status, address, latency_ms: Math.round(latencyMs * 10) / 10,
  }, 'request refused');
}
