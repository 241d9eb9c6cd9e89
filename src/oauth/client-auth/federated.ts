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
// 2. The engine then looks the client up (../client-lookup.ts). Its first step asks this
//    module which client the token names: its (issuer, subject), resolved to a client id,
//    before anything is verified. The engine knows that client as a `none` client.
// 3. The lookup's last step, once the client is found: the client must be the one mapped to
//    the token's issuer and subject, and the token's signature and claims must verify. A
//    federated client is returned for no other request: one that names it without an
//    external token is refused.
// Everything the engine and our front door do around client authentication (brute-force
// limits, disabled clients, database outages, --bound, audit lines and metrics) therefore
// applies as for any method. The external token is neither logged nor stored, and may be
// presented again until it expires (platforms cache them): no jti is recorded.
import { decodeJwt, decodeProtectedHeader, errors as jose, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';
import type Provider from 'oidc-provider';

import type { IssuerRecord, IssuerRegistry } from '../../clients/issuers.ts';
import { CLIENT_ID_PATTERN } from '../../clients/validate.ts';
import { assertionAudiences } from '../../http/endpoints.ts';
import { CLOCK_TOLERANCE, SIGNATURE_ALGS } from '../algorithms.ts';
import type { EngineClient } from '../client-metadata.ts';
import { unlessStorageDown } from '../errors.ts';
import { IssuerKeysUnavailable, type IssuerKeys } from '../issuer-keys.ts';
import type { ClientAuthMethod } from './method.ts';

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
/** Step 2's answer, for step 3: the token and whom it names. */
interface Named {
  pending: Pending;
  issuer: IssuerRecord;
  subject: string;
  clientId: string;
}
const PENDING = Symbol('federated assertion');
const NAMED = Symbol('federated client');
const PARAMS = Symbol('params');

type EngineParams = Record<string, string | undefined>;
type Oidc = { ctx: KoaContextWithOIDC; [PARAMS]?: EngineParams; [PENDING]?: Pending; [NAMED]?: Named };

interface FederatedDeps {
  issuers: IssuerRegistry;
  issuerKeys: IssuerKeys;
  /** `aud` of an external token when its issuer names none: ISSUER or the token endpoint. */
  audience: string[];
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
    issuer = await unlessStorageDown(() => deps.issuers.byIssuer(spiffeId[1]!));
    if (!issuer) refuse('no trusted issuer for the SPIFFE ID\'s trust domain');
    if (issuer.kind !== 'spiffe') refuse(`issuer ${issuer.name} is not a SPIFFE trust domain`);
  } else {
    if (typeof claims.iss !== 'string') refuse('the external token has no iss');
    issuer = await unlessStorageDown(() => deps.issuers.byIssuer(claims.iss!));
    if (!issuer) refuse('the external token\'s iss is not a trusted issuer');
    if (issuer.kind === 'spiffe') refuse(`issuer ${issuer.name} is a SPIFFE trust domain: use client_assertion_type ${JWT_SPIFFE}`);
    if (issuer.kind === 'kubernetes' && !KUBERNETES_SUBJECT.test(subject)) refuse('the sub of a Kubernetes token is not system:serviceaccount:<namespace>:<name>');
  }
  return { issuer, subject };
}

/** Signature (asymmetric, by a key of the issuer), aud, exp, nbf, iat, and the issuer's lifetime cap. */
async function verified(deps: FederatedDeps, issuer: IssuerRecord, assertion: string): Promise<JWTPayload> {
  const audience = issuer.audience ?? deps.audience;
  const options = { algorithms: SIGNATURE_ALGS, audience, clockTolerance: CLOCK_TOLERANCE, requiredClaims: ['exp'] };
  const verify = (keys: JWTVerifyGetKey) => jwtVerify(assertion, keys, options);
  let claims: JWTPayload;
  try {
    try {
      claims = (await verify(await deps.issuerKeys.keys(issuer))).payload;
    } catch (err) {
      // An unknown kid: the issuer may have rotated its keys since they were fetched.
      if (!(err instanceof jose.JWKSNoMatchingKey)) throw err;
      const again = await deps.issuerKeys.refetched(issuer);
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
  if (typeof claims.iat === 'number' && claims.iat > now + CLOCK_TOLERANCE) refuse('the external token was issued in the future');
  const lifetime = claims.exp! - (typeof claims.iat === 'number' ? claims.iat : now);
  if (lifetime > issuer.maxLifetime) refuse(`the external token is valid for longer than issuer ${issuer.name} allows (${issuer.maxLifetime} s)`);
  return claims;
}

/** Step 1: the engine's parameters pass through takeExternalToken as they are set. */
function takeExternalTokens(provider: Provider): void {
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
}

/** Step 2: the client the request's external token names, not verified yet. */
async function named(deps: FederatedDeps, ctx: KoaContextWithOIDC | undefined): Promise<string | undefined> {
  const oidc = ctx?.oidc as Oidc | undefined;
  const pending = oidc?.[PENDING];
  if (!ctx || !oidc || !pending) return undefined;
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
  const clientId = await unlessStorageDown(() => deps.issuers.clientFor(issuer.name, subject));
  if (!clientId) refuse(`no client is mapped to this subject of issuer ${issuer.name}`);
  audit.client_id = clientId;
  if (pending.clientId !== undefined && pending.clientId !== clientId) refuse('the form\'s client_id is not the client mapped to this subject');
  oidc[NAMED] = { pending, issuer, subject, clientId };
  return clientId;
}

/** Step 3: the client found is the one mapped to the token, and the token verifies. */
async function authenticated(deps: FederatedDeps, client: EngineClient, ctx: KoaContextWithOIDC | undefined): Promise<void> {
  const oidc = ctx?.oidc as Oidc | undefined;
  const token = oidc?.[NAMED];
  // Without an external token, a federated client is not authenticated by anything.
  if (!ctx || !oidc || !token) refuse('a federated client authenticates with an external token only');
  delete oidc[NAMED];
  const { pending, issuer, subject, clientId } = token;
  const mapped = client.m2m_federated;
  if (mapped?.issuer !== issuer.name || mapped.subject !== subject) refuse(`client ${clientId} is not mapped to this subject`);
  const checked = await verified(deps, issuer, pending.assertion);
  const k8s = checked['kubernetes.io'] as { namespace?: unknown; serviceaccount?: { name?: unknown }; pod?: { name?: unknown } } | undefined;
  if (issuer.kind === 'kubernetes' && k8s && typeof k8s === 'object') {
    // Kubernetes names are at most 253 characters; anything else is not one.
    const name = (value: unknown) => (typeof value === 'string' ? value.slice(0, 253) : undefined);
    auditOf(ctx).kubernetes = { namespace: name(k8s.namespace), serviceaccount: name(k8s.serviceaccount?.name), pod: name(k8s.pod?.name) };
  }
  oidc[PARAMS]!.client_id = clientId;
}

export const federated: ClientAuthMethod = {
  registered: ['federated'],
  // The engine knows no federated method: such a client is `none` to it, never advertised.
  engineMethods: ['none'],
  advertised: false,
  metadata: (record) => ({
    token_endpoint_auth_method: 'none',
    ...(record.federatedIssuer && record.federatedSubject ? { m2m_federated: { issuer: record.federatedIssuer, subject: record.federatedSubject } } : {}),
  }),
  hooks: ({ settings, issuers, issuerKeys }) => {
    const deps: FederatedDeps = { issuers, issuerKeys, audience: assertionAudiences(settings.issuer) };
    return {
      install: takeExternalTokens,
      identify: (ctx) => named(deps, ctx),
      found: (client, ctx) => authenticated(deps, client, ctx),
    };
  },
};
