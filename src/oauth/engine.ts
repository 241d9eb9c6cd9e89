// oidc-provider, configured for the client-credentials grant and nothing else. This is
// where a token is shaped and signed: audience and scope per client, lifetime, signing key.
import { randomBytes } from 'node:crypto';

import Provider, { errors, type Adapter, type AdapterPayload, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';

import type { ClientRecord, ClientRegistry } from '../clients/registry.ts';
import { secretMatches } from '../clients/secrets.ts';
import { CLIENT_ID_PATTERN } from '../clients/validate.ts';
import type { KeySet } from '../keys/signing-keys.ts';
import type { Settings } from '../settings.ts';
import type { Logger } from '../log.ts';
import { DPOP_ALGS, dpopFeature, useDpop } from './bindings/dpop.ts';
import { holdAttempt, holdsClient, type BruteForce } from './brute-force.ts';
import type { CertificateHooks } from './client-certificates.ts';
import { useRemoteJwks } from './jwks-uri.ts';
import { RsaSigningKey } from './signing-key.ts';
import { StorageUnavailable } from '../storage/errors.ts';
import type { ReplayStore } from '../storage/replay.ts';

/** Client-assertion algorithms: asymmetric only (no HS*, no none). */
export const ASSERTION_ALGS = ['RS256', 'PS256', 'ES256', 'ES384', 'EdDSA'];
export const CLOCK_TOLERANCE = 15;

export const AUTH_METHODS_SUPPORTED = [
  'client_secret_basic',
  'client_secret_post',
  'private_key_jwt',
  'tls_client_auth',
  'self_signed_tls_client_auth',
];

export class TemporarilyUnavailable extends errors.OIDCProviderError {
  constructor() {
    super(503, 'temporarily_unavailable');
    this.error_description = 'the service is temporarily unavailable, retry later';
    this.expose = true;
  }
}

export class TooManyAttempts extends errors.OIDCProviderError {
  /** `reason`: which limit refused, for the audit line (error_detail is never sent). */
  constructor(reason: string) {
    super(429, 'temporarily_unavailable');
    this.error_description = 'too many failed authentication attempts; retry later';
    this.error_detail = reason;
    this.expose = true;
  }
}

export interface EngineDeps {
  settings: Settings;
  registry: ClientRegistry;
  replay: ReplayStore;
  keys: KeySet;
  certificates: CertificateHooks;
  /** Where a failed jwks_uri fetch is reported. */
  logger?: Logger;
  /** Brute-force limits, checked when the engine looks a client up. */
  bruteForce?: BruteForce;
  /** DPoP nonces' secret, the same in every process (needed with DPOP_NONCE=true). */
  dpopNonceSecret?: Buffer | undefined;
}

/** What the engine keeps about a client beyond standard metadata. */
interface M2mMetadata {
  m2m_audiences: string[];
  m2m_scopes: string[];
  m2m_ttl: number | null;
  m2m_secrets: { digest: string; expiresAt: number | null }[];
  m2m_introspect: string[];
  /** `federated` clients: who vouches for them (client-auth/federated.ts). */
  m2m_federated?: { issuer: string; subject: string };
}

export type EngineClient = InstanceType<Provider['Client']> & M2mMetadata;

// A client_secret the engine requires for secret-based methods. It is never compared
// (compareClientSecret below checks digests), and it is random so that even a mistake
// there could not be exploited.
const SECRET_PLACEHOLDER = `unused-${randomBytes(32).toString('base64url')}`;

function engineMetadata(record: ClientRecord): AdapterPayload {
  const metadata: Record<string, unknown> = {
    client_id: record.clientId,
    // The engine knows no federated method: such a client is `none` to it, and is returned
    // by Client.find only once client-auth/federated.ts has verified its external token.
    token_endpoint_auth_method: record.authMethod === 'federated' ? 'none' : record.authMethod,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    tls_client_certificate_bound_access_tokens: record.certificateBound,
    dpop_bound_access_tokens: record.dpopBound,
    m2m_audiences: record.audiences,
    m2m_scopes: record.scopes,
    m2m_ttl: record.ttl,
    m2m_secrets: record.secrets,
    m2m_introspect: record.introspectAudiences,
  };
  if (record.authMethod === 'client_secret_basic') metadata.client_secret = SECRET_PLACEHOLDER;
  if (record.jwks) metadata.jwks = record.jwks;
  if (record.jwksUri) metadata.jwks_uri = record.jwksUri;
  if (record.tlsSubjectDn) metadata.tls_client_auth_subject_dn = record.tlsSubjectDn;
  if (record.tlsSanDns) metadata.tls_client_auth_san_dns = record.tlsSanDns;
  if (record.tlsSanUri) metadata.tls_client_auth_san_uri = record.tlsSanUri;
  if (record.federatedIssuer && record.federatedSubject) metadata.m2m_federated = { issuer: record.federatedIssuer, subject: record.federatedSubject };
  return metadata as AdapterPayload;
}

/** Runs `work`; a database outage becomes the engine's 503 temporarily_unavailable. */
export async function unlessStorageDown<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof StorageUnavailable) throw new TemporarilyUnavailable();
    throw err;
  }
}

function lookUp(registry: ClientRegistry, id: string): Promise<ClientRecord | undefined> {
  return unlessStorageDown(() => registry.find(id));
}

/** The engine asks its adapter for clients only; tokens are JWTs and are never stored. */
function adapterFor(registry: ClientRegistry) {
  return class EngineAdapter implements Adapter {
    readonly #name: string;

    constructor(name: string) {
      this.#name = name;
    }

    async find(id: string): Promise<AdapterPayload | undefined> {
      if (this.#name !== 'Client') return undefined;
      const record = await lookUp(registry, id);
      return record?.enabled ? engineMetadata(record) : undefined;
    }

    async upsert(): Promise<void> {
      throw new Error(`the engine tried to store a ${this.#name}; nothing is stored but clients`);
    }

    async findByUserCode(): Promise<undefined> { return undefined; }
    async findByUid(): Promise<undefined> { return undefined; }
    async consume(): Promise<void> {}
    async destroy(): Promise<void> {}
    async revokeByGrantId(): Promise<void> {}
  };
}

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

/** The engine's per-client key store, as far as it is used here. */
interface VerifyKeyStore {
  selectForVerify(options: { alg?: string; kid?: string }): unknown[];
}

/**
 * Every signature is checked against exactly one key. The engine tries each key that matches
 * the header's alg (and kid, when there is one) until one verifies, so a made-up assertion
 * cost one verification per key of the set. No two keys of a set share a kid
 * (../clients/key-policy.ts), so a kid selects at most one; an assertion without one selects
 * none when the set has several keys for its alg (invalid_client, the reason in the log).
 */
function oneKeyPerSignature(client: object): void {
  const store = (client as { asymmetricKeyStore: VerifyKeyStore }).asymmetricKeyStore;
  const select = store.selectForVerify.bind(store);
  store.selectForVerify = (options) => {
    const keys = select(options);
    return keys.length === 1 ? keys : [];
  };
}

export function createEngine({ settings, registry, replay, keys, certificates, logger, bruteForce, dpopNonceSecret }: EngineDeps): Provider {
  const signer = keys.signer;
  if (!signer?.privateKey) throw new Error('no signing key: run `npm run keys -- generate`');

  const configuration: Configuration = {
    adapter: adapterFor(registry),
    clients: [],
    jwks: { keys: [new RsaSigningKey(signer) as never] },
    // `none` is for federated clients only, and is never advertised (discovery.ts).
    clientAuthMethods: [...AUTH_METHODS_SUPPORTED, 'none'] as Configuration['clientAuthMethods'],
    enabledJWA: {
      clientAuthSigningAlgValues: ASSERTION_ALGS as never,
      idTokenSigningAlgValues: ['RS256'],
      dPoPSigningAlgValues: [...DPOP_ALGS],
    },
    clockTolerance: CLOCK_TOLERANCE,
    scopes: ['openid'],
    claims: { openid: ['sub'] },
    responseTypes: ['none'],
    pkce: { required: () => false },
    extraClientMetadata: {
      properties: ['m2m_audiences', 'm2m_scopes', 'm2m_ttl', 'm2m_secrets', 'm2m_introspect', 'm2m_federated'],
    },
    features: {
      devInteractions: { enabled: false },
      externalSigningSupport: { enabled: true, ack: 'experimental-01' },
      clientCredentials: { enabled: true },
      // DPoP-bound tokens (RFC 9449): bindings/dpop.ts.
      dPoP: dpopFeature(settings, dpopNonceSecret),
      introspection: { enabled: false },
      revocation: { enabled: false },
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx) => certificates.getCertificate(ctx),
        certificateAuthorized: (ctx) => certificates.certificateAuthorized(ctx),
        certificateSubjectMatches: (ctx, property, expected) => certificates.certificateSubjectMatches(ctx, property, expected),
      },
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
          const allowed = client.m2m_scopes;
          const params = ctx.oidc.params!;
          if (params.scope === undefined) {
            // The engine grants what was requested; a request without scope gets them all.
            if (allowed.length) params.scope = allowed.join(' ');
          } else {
            const denied = String(params.scope).split(' ').find((scope) => !allowed.includes(scope));
            if (denied !== undefined) throw new errors.InvalidScope('requested scope is not allowed for this client', denied);
          }
          return {
            scope: allowed.join(' '),
            audience: resource,
            accessTokenFormat: 'jwt',
            accessTokenTTL: tokenTtl(settings, client),
            jwt: { sign: { alg: 'RS256', kid: signer.kid } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: (_ctx, _token, client) => tokenTtl(settings, client as EngineClient),
    },
    // RFC 7523 leaves an assertion's lifetime to the server; its jti is kept until its exp
    // (ReplayDetection below), so the lifetime also bounds what the replay table holds.
    async assertJwtClientAuthClaimsAndHeader(_ctx, claims) {
      const now = Math.floor(Date.now() / 1000);
      const longest = settings.maxAssertionLifetime;
      if (typeof claims.exp !== 'number' || claims.exp > now + longest + CLOCK_TOLERANCE) {
        throw new errors.InvalidClientAuth(`client assertions may be valid for ${longest} seconds at most`);
      }
      if (claims.iat !== undefined && (typeof claims.iat !== 'number' || claims.exp - claims.iat > longest)) {
        throw new errors.InvalidClientAuth(`client assertions may be valid for ${longest} seconds at most (exp - iat)`);
      }
      if (typeof claims.iat === 'number' && claims.iat > now + CLOCK_TOLERANCE) {
        throw new errors.InvalidClientAuth('client assertion issued in the future');
      }
      if (claims.sub !== claims.iss) throw new errors.InvalidClientAuth('client assertion sub must equal iss');
    },
    async renderError(ctx, out) {
      // Machine clients only: errors are JSON whatever Accept says.
      ctx.type = 'json';
      ctx.body = out;
    },
  };

  const provider = new Provider(settings.issuer, configuration);
  // Forwarded headers are never believed wholesale: ISSUER comes from the settings, and the
  // client certificate from a trusted proxy only (client-certificates.ts).
  provider.proxy = false;

  provider.Client.prototype.compareClientSecret = function compareClientSecret(this: EngineClient, actual: string) {
    return secretMatches(actual, this.m2m_secrets, Math.floor(Date.now() / 1000));
  };

  // `aud` of a client assertion: the issuer or the token endpoint, from the settings; the
  // engine would also accept URLs built from the request's Host header.
  const audiences = new Set([settings.issuer, `${settings.issuer}/token`]);
  provider.OIDCContext.prototype.clientJwtAuthExpectedAudience = () => audiences;

  // One atomic INSERT decides first use of an assertion's jti (and of a DPoP proof's:
  // bindings/dpop.ts); the engine's default (find, then insert) would let concurrent
  // replays through.
  provider.ReplayDetection.unique = (iss: string, jti: string, exp: number) => unlessStorageDown(() => replay.claim(`${iss}\u0000${jti}`, exp));

  // Where the engine looks a client up, before it checks any credential: first an attempt
  // is taken from the brute-force limit of this client id at this address (the front door
  // took one from the address's), then the registry. The engine would rebuild (serialise
  // and hash) the client on every request; it is built once per record.
  const built = new WeakMap<ClientRecord, InstanceType<Provider['Client']>>();
  const engineFind = provider.Client.find.bind(provider.Client);
  provider.Client.find = async (id: string) => {
    // An id no client can have is unknown without asking the database (which refuses some
    // bytes outright, and such an error must not read as an outage).
    if (typeof id !== 'string' || !CLIENT_ID_PATTERN.test(id)) return undefined;
    const ctx = Provider.ctx as { state?: { address?: string }; set?: (name: string, value: string) => void } | undefined;
    const address = ctx?.state?.address;
    if (bruteForce && address && !holdsClient(ctx.state!, id)) {
      const admitted = bruteForce.admitClient(address, id);
      const admission = 'then' in admitted ? await admitted : admitted;
      if ('refused' in admission) {
        ctx.set?.('retry-after', String(Math.max(1, Math.ceil(admission.waitMs / 1000))));
        throw new TooManyAttempts(admission.refused);
      }
      if ('busy' in admission) throw new TemporarilyUnavailable();
      holdAttempt(ctx.state!, admission.attempt, id);
    }
    const record = await lookUp(registry, id);
    if (!record) return undefined;
    // Refused like an unknown client, but the log says what happened.
    if (!record.enabled) throw new errors.InvalidClientAuth('client is disabled');
    let client = built.get(record);
    if (!client) {
      client = await engineFind(id);
      if (client) {
        if (record.jwks || record.jwksUri) oneKeyPerSignature(client);
        built.set(record, client);
      }
    }
    return client;
  };

  useDpop(provider, settings, logger);
  useRemoteJwks(provider, { allowPrivate: settings.jwksUriAllowPrivate, caFile: settings.jwksUriCa }, logger);

  return provider;
}
