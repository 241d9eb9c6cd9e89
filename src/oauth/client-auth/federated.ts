// Federated client authentication: a workload authenticates with the token its platform
// gave it (a Kubernetes service-account token, a SPIFFE JWT-SVID, a CI system's OIDC
// token), issued by an issuer the operator trusts (`npm run issuer`), whose subject is
// mapped to one client (`client add --auth federated --issuer <name> --subject <sub>`).
//
// The engine knows no such method, so it is fitted into the engine's own client
// authentication (token, introspection and revocation endpoints alike):
// 1. When the engine assembles a request's parameters, an external token sent as the
//    client assertion (type jwt-spiffe, or jwt-bearer with an `iss` no client id can be)
//    is taken out of them, so the engine sees a request without credentials.
// 2. The engine then looks the client up (Client.find): here the token is checked and
//    its (issuer, subject) resolved to the client, which the engine knows as a `none`
//    client. A federated client is returned for no other request: one that names it
//    without a verified external token is refused.
// Everything the engine and our front door do around client authentication (brute-force
// limits, disabled clients, database outages, --bound, audit lines and metrics) therefore
// applies as for any method. The external token is neither logged nor stored, and may be
// presented again until it expires (platforms cache them): no jti is recorded.
import { decodeJwt, decodeProtectedHeader, errors as jose, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import Provider, { errors, type KoaContextWithOIDC } from 'oidc-provider';

import type { IssuerRecord, IssuerRegistry } from '../../clients/issuers.ts';
import { CLIENT_ID_PATTERN } from '../../clients/validate.ts';
import type { Settings } from '../../settings.ts';
import { IssuerKeysUnavailable, type IssuerKeys } from '../issuer-keys.ts';

export const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** draft-ietf-oauth-spiffe-client-auth. */
export const JWT_SPIFFE = 'urn:ietf:params:oauth:client-assertion-type:jwt-spiffe';

const KUBERNETES_SUBJECT = /^system:serviceaccount:[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?:[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;
// SPIFFE ID (SPIFFE standard, section 2): spiffe://<trust domain>/<path>, no query or fragment.
const SPIFFE_ID = /^(spiffe:\/\/[a-z0-9._-]{1,255})(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$/;
/** Stands in for the client id the engine asks for, until the token says which client it is. */
const NOT_YET_KNOWN = '(federated)';

/** What the audit line tells about a federated authentication (ctx.state[FEDERATED]). */
export interface FederatedAudit {
  client_id?: string;
  issuer?: string;
  /** The external token's sub (an identity, not a secret). */
  subject?: string;
  kubernetes?: { namespace?: unknown; serviceaccount?: unknown; pod?: unknown };
}
export const FEDERATED = Symbol('federated');

interface Pending {
  assertion: string;
  type: string;
  /** The form's client_id, when one was sent. */
  clientId: string | undefined;
}
const PENDING = Symbol('federated assertion');
const PARAMS = Symbol('params');

type EngineParams = Record<string, string | undefined>;
type Oidc = { ctx: KoaContextWithOIDC; [PARAMS]?: EngineParams; [PENDING]?: Pending };
type EngineClientLike = { m2m_federated?: { issuer: string; subject: string } };

export interface FederatedDeps {
  settings: Settings;
  issuers: IssuerRegistry;
  keys: IssuerKeys;
  /** Asymmetric algorithms only. */
  algorithms: string[];
  clockTolerance: number;
  /** Turns a database outage into the engine's 503. */
  unlessStorageDown: <T>(work: () => Promise<T>) => Promise<T>;
}

// A reason is also a metrics label (m2m_refusals_total): it names nothing the caller chose,
// which goes into the audit line's own fields instead.
function refuse(reason: string): never {
  throw new errors.InvalidClientAuth(reason);
}

/** Step 1: an external token leaves the parameters the engine authenticates with. */
function takeExternalToken(oidc: Oidc, params: EngineParams | undefined): void {
  const assertion = params?.client_assertion;
  if (!params || typeof assertion !== 'string') return;
  // Mixed with other credentials: the engine refuses that itself.
  if (oidc.ctx.headers.authorization !== undefined || params.client_secret) return;
  const type = params.client_assertion_type;
  let federated = type === JWT_SPIFFE;
  if (type === JWT_BEARER) {
    // A private_key_jwt assertion's iss is its client id; an issuer's is a URL.
    try {
      const { iss } = decodeJwt(assertion);
      federated = typeof iss === 'string' && !CLIENT_ID_PATTERN.test(iss);
    } catch {
      return;
    }
  }
  if (!federated) return;
  oidc[PENDING] = { assertion, type: type!, clientId: params.client_id };
  params.client_assertion = undefined;
  params.client_assertion_type = undefined;
  params.client_id ??= NOT_YET_KNOWN;
}

function auditOf(ctx: KoaContextWithOIDC): FederatedAudit {
  const state = ctx.state as { [FEDERATED]?: FederatedAudit };
  state[FEDERATED] ??= {};
  return state[FEDERATED];
}

/**
 * Whether a PostgreSQL text column could hold this: no NUL, no lone surrogate. Anything else
 * names no registered issuer or subject, and sent in a query it would fail there, reading
 * as a database error instead of the failed authentication it is.
 */
const storable = (value: string) => !value.includes('\u0000') && value.isWellFormed();

/** Which trusted issuer vouches for the token, and for which subject. */
async function issuerOf(deps: FederatedDeps, pending: Pending, claims: JWTPayload, audit: FederatedAudit): Promise<{ issuer: IssuerRecord; subject: string }> {
  const subject = claims.sub;
  if (typeof subject !== 'string' || !subject) refuse('the external token has no sub');
  // Checked before any query: the token is not verified yet, so its claims are anyone's.
  if (!storable(subject) || (typeof claims.iss === 'string' && !storable(claims.iss))) refuse('the external token\'s iss or sub holds characters no issuer or subject can have');
  audit.subject = subject.slice(0, 256);
  let issuer: IssuerRecord | undefined;
  if (pending.type === JWT_SPIFFE) {
    // draft-ietf-oauth-spiffe-client-auth: iss is optional; the trust domain is the SPIFFE ID's.
    const spiffeId = SPIFFE_ID.exec(subject);
    if (!spiffeId) refuse('the JWT-SVID\'s sub is not a SPIFFE ID');
    issuer = await deps.unlessStorageDown(() => deps.issuers.byIssuer(spiffeId[1]!));
    if (!issuer) refuse('no trusted issuer for the SPIFFE ID\'s trust domain');
    if (issuer.kind !== 'spiffe') refuse(`issuer ${issuer.name} is not a SPIFFE trust domain`);
  } else {
    if (typeof claims.iss !== 'string') refuse('the external token has no iss');
    issuer = await deps.unlessStorageDown(() => deps.issuers.byIssuer(claims.iss!));
    if (!issuer) refuse('the external token\'s iss is not a trusted issuer');
    if (issuer.kind === 'spiffe') refuse(`issuer ${issuer.name} is a SPIFFE trust domain: use client_assertion_type ${JWT_SPIFFE}`);
    if (issuer.kind === 'kubernetes' && !KUBERNETES_SUBJECT.test(subject)) refuse('the sub of a Kubernetes token is not system:serviceaccount:<namespace>:<name>');
  }
  return { issuer, subject };
}

/** Signature (asymmetric, by a key of the issuer), aud, exp, nbf, iat, and the issuer's lifetime cap. */
async function verified(deps: FederatedDeps, issuer: IssuerRecord, assertion: string): Promise<JWTPayload> {
  const audience = issuer.audience ?? [deps.settings.issuer, `${deps.settings.issuer}/token`];
  const options = { algorithms: deps.algorithms, audience, clockTolerance: deps.clockTolerance, requiredClaims: ['exp'] };
  const verify = (keys: JWTVerifyGetKey) => jwtVerify(assertion, keys, options);
  let claims: JWTPayload;
  try {
    try {
      claims = (await verify(await deps.keys.keys(issuer))).payload;
    } catch (err) {
      // An unknown kid: the issuer may have rotated its keys since they were fetched.
      if (!(err instanceof jose.JWKSNoMatchingKey)) throw err;
      const again = await deps.keys.refetched(issuer);
      if (!again) throw err;
      claims = (await verify(again)).payload;
    }
  } catch (err) {
    if (err instanceof IssuerKeysUnavailable) refuse(err.message);
    if (err instanceof jose.JWKSNoMatchingKey) refuse(`no key of issuer ${issuer.name} matches the token's kid and alg`);
    if (err instanceof jose.JOSEError) refuse(`the external token is invalid: ${err.message}`);
    throw err;
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.iat === 'number' && claims.iat > now + deps.clockTolerance) refuse('the external token was issued in the future');
  const lifetime = claims.exp! - (typeof claims.iat === 'number' ? claims.iat : now);
  if (lifetime > issuer.maxLifetime) refuse(`the external token is valid for longer than issuer ${issuer.name} allows (${issuer.maxLifetime} s)`);
  return claims;
}

/** Steps 1 and 2 (see the top of this file), on the engine `provider`. */
export function useFederatedClients(provider: Provider, deps: FederatedDeps): void {
  Object.defineProperty(provider.OIDCContext.prototype, 'params', {
    configurable: true,
    get(this: Oidc) {
      return this[PARAMS];
    },
    set(this: Oidc, params: EngineParams | undefined) {
      this[PARAMS] = params;
      takeExternalToken(this, params);
    },
  });

  const find = provider.Client.find.bind(provider.Client);
  provider.Client.find = async (id: string) => {
    const ctx = Provider.ctx as KoaContextWithOIDC | undefined;
    const oidc = ctx?.oidc as Oidc | undefined;
    const pending = oidc?.[PENDING];
    if (!ctx || !oidc || !pending) {
      const client = await find(id);
      // Without a verified external token, a federated client is not authenticated by anything.
      if ((client as EngineClientLike | undefined)?.m2m_federated) refuse('a federated client authenticates with an external token only');
      return client;
    }
    delete oidc[PENDING];
    const audit = auditOf(ctx);
    let claims: JWTPayload;
    try {
      claims = decodeJwt(pending.assertion);
      decodeProtectedHeader(pending.assertion);
    } catch {
      refuse('the external token is not a JWT');
    }
    const { issuer, subject } = await issuerOf(deps, pending, claims, audit);
    audit.issuer = issuer.name;
    if (!issuer.enabled) refuse(`issuer ${issuer.name} is disabled`);
    const clientId = await deps.unlessStorageDown(() => deps.issuers.clientFor(issuer.name, subject));
    if (!clientId) refuse(`no client is mapped to this subject of issuer ${issuer.name}`);
    audit.client_id = clientId;
    if (pending.clientId !== undefined && pending.clientId !== clientId) refuse('the form\'s client_id is not the client mapped to this subject');
    // Brute-force limits, the registry, disabled clients and outages: as for any client.
    const client = await find(clientId);
    if (!client) return undefined;
    const mapped = (client as EngineClientLike).m2m_federated;
    if (mapped?.issuer !== issuer.name || mapped.subject !== subject) refuse(`client ${clientId} is not mapped to this subject`);
    const checked = await verified(deps, issuer, pending.assertion);
    const k8s = checked['kubernetes.io'] as { namespace?: unknown; serviceaccount?: { name?: unknown }; pod?: { name?: unknown } } | undefined;
    if (issuer.kind === 'kubernetes' && k8s && typeof k8s === 'object') {
      // Kubernetes names are at most 253 characters; anything else is not one.
      const name = (value: unknown) => (typeof value === 'string' ? value.slice(0, 253) : undefined);
      audit.kubernetes = { namespace: name(k8s.namespace), serviceaccount: name(k8s.serviceaccount?.name), pod: name(k8s.pod?.name) };
    }
    oidc[PARAMS]!.client_id = clientId;
    return client;
  };
}
