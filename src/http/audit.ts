// One audit line per token issued and per refusal, and the matching metrics. The line
// names the client, the method, the audience, scope, jti, kid and binding (and the DPoP
// key's thumbprint, which is public), or the internal reason of a refusal; never a secret,
// an assertion, a certificate or a token. No token leaves without its line: one whose line
// the log could not keep is withheld.
import type { Context } from 'koa';

import { lineKept, type Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { FEDERATED, type FederatedAudit } from '../oauth/client-auth/federated.ts';
import { endpointAt } from './endpoints.ts';

/** What the engine knew when it refused a request (set from its error events). */
interface Refusal {
  reason: string | undefined;
}

const REFUSAL = Symbol('refusal');
const ISSUED = Symbol('issued');

/** What the engine issued, as it tells in its `client_credentials.issued` event. */
export interface Issued {
  jti: string;
  clientId: string;
  scope?: string | undefined;
  resourceServer?: { audience?: string } | undefined;
  'x5t#S256'?: string | undefined;
  /** The DPoP proof key's RFC 7638 thumbprint, when the token is DPoP-bound. */
  jkt?: string | undefined;
}

/** What a token is bound to: `bearer`, `certificate`, `dpop`, or `certificate+dpop`. */
export function bindingOf(token: Issued): string {
  const bindings = [token['x5t#S256'] && 'certificate', token.jkt && 'dpop'].filter(Boolean);
  return bindings.length ? bindings.join('+') : 'bearer';
}

export function recordIssued(ctx: Context, token: Issued): void {
  (ctx.state as { [ISSUED]?: Issued })[ISSUED] = token;
}

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
function clientIdAsSent(ctx: Context): string | undefined {
  const federated = federatedOf(ctx);
  if (federated) return federated.client_id;
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

function federatedOf(ctx: Context): FederatedAudit | undefined {
  return (ctx.state as { [FEDERATED]?: FederatedAudit })[FEDERATED];
}

/** How the caller tried to authenticate, as far as the request shows. */
function methodOf(ctx: Context): string | undefined {
  if (federatedOf(ctx)) return 'federated';
  const client = (ctx as { oidc?: { client?: { clientAuthMethod?: string } } }).oidc?.client;
  if (client?.clientAuthMethod) return client.clientAuthMethod;
  const params = (ctx as { oidc?: { params?: Record<string, unknown> } }).oidc?.params;
  if (/^basic /i.test(ctx.get('authorization'))) return 'client_secret_basic';
  if (params?.client_secret) return 'client_secret_post';
  if (params?.client_assertion) return 'private_key_jwt';
  return undefined;
}

/** The trusted issuer, and a Kubernetes token's namespace, service account and pod. */
function federatedFields(ctx: Context): Record<string, unknown> {
  const federated = federatedOf(ctx);
  if (!federated) return {};
  return { issuer: federated.issuer, subject: federated.subject, ...(federated.kubernetes ? { kubernetes: federated.kubernetes } : {}) };
}

/** `kid`: the key that signs now (the token's header need not be decoded to learn it). */
export function audit(ctx: Context, logger: Logger, metrics: Metrics, address: string, startedAt: bigint, kid: string | undefined, endpointLabel: string): void {
  const latencyMs = Number(process.hrtime.bigint() - startedAt) / 1e6;
  const endpoint = endpointAt(ctx.path)?.event;
  const issued = (ctx.state as { [ISSUED]?: Issued })[ISSUED];
  if (endpoint && ctx.status === 200 && issued) {
    const method = methodOf(ctx) ?? 'unknown';
    const binding = bindingOf(issued);
    const kept = lineKept(logger, () => logger.info({
      event: 'token.issued', client_id: issued.clientId, method, aud: issued.resourceServer?.audience, scope: issued.scope,
      jti: issued.jti, kid, bound: issued['x5t#S256'] !== undefined, binding, ...(issued.jkt ? { jkt: issued.jkt } : {}), address, latency_ms: Math.round(latencyMs * 10) / 10,
      ...federatedFields(ctx),
    }, 'token issued'));
    if (kept) {
      metrics.tokensIssued.inc({ client_id: issued.clientId, method, binding });
    } else {
      // stdout has not been read for as long as the log buffer lasts, or is gone: the token stays here.
      recordRefusal(ctx, 'the audit line could not be kept (stdout is not read); token withheld');
      ctx.status = 503;
      ctx.body = { error: 'temporarily_unavailable', error_description: 'the service is temporarily unavailable, retry later' };
    }
  }
  metrics.observeRequest(endpointLabel, ctx.status, latencyMs / 1000);
  if (!endpoint || ctx.status < 400) return;
  const body = ctx.body as { error?: string } | undefined;
  const refusal = (ctx.state as { [REFUSAL]?: Refusal })[REFUSAL];
  const error = body?.error ?? String(ctx.status);
  const reason = refusal?.reason ?? error;
  metrics.refusals.inc({ endpoint, error, reason: reason.slice(0, 80) });
  logger.info({
    event: `${endpoint}.refused`, client_id: clientIdAsSent(ctx), method: methodOf(ctx), error, reason,
    status: ctx.status, address, latency_ms: Math.round(latencyMs * 10) / 10, ...federatedFields(ctx),
  }, 'request refused');
}
