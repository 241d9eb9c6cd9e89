// Every setting, its default and its meaning, in one place. Parsed and checked once at
// start; a bad value stops the start with one line naming the setting.
import { accessSync, constants, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';

import ipaddr from 'ipaddr.js';

import type { ScheduleTimes } from './keys/signing-keys.ts';
import { withoutUserinfo } from './url-userinfo.ts';

export class SettingError extends Error {}

/**
 * The one wording of a refused setting: its name, its value as it may be shown (a secret
 * is shown as `<redacted>`), and what is wrong with it.
 */
export function invalidSetting(name: string, shown: string, problem: string): SettingError {
  return new SettingError(`setting ${name}=${JSON.stringify(shown)} is invalid: ${problem}`);
}

/** Set by the primary process for its workers (never by an operator): TLS session-ticket keys they share. */
export const TLS_TICKET_KEYS_ENV = 'M2M_TLS_TICKET_KEYS';

type Env = Record<string, string | undefined>;

export interface Settings {
  /** PORT: listening port. */
  port: number;
  /** HOST: listening address (`::`: every address, IPv4 included). */
  host: string;
  /** MANAGEMENT_PORT: plain-HTTP management listener (/metrics, /healthz, /readyz); 0 turns it off. */
  managementPort: number;
  /** MANAGEMENT_HOST: the management listener's address; defaults to HOST. */
  managementHost: string;
  /** TLS_HANDSHAKE_TIMEOUT: seconds a connection may take to finish its TLS handshake, and then to send its first request (proxy mode: from connecting to its first request), before it is closed. */
  tlsHandshakeTimeout: number;
  /** MAX_CONNECTIONS_PER_ADDRESS: open connections one address (IPv6: one /64) may hold per process; more are closed at once. TRUSTED_PROXIES are exempt. */
  maxConnectionsPerAddress: number;
  /** ISSUER: `iss` of every token and the base of every endpoint URL. */
  issuer: string;
  /** DATABASE_URL: postgres://… for a server; unset means embedded PGlite in DATA_DIR. */
  databaseUrl: string | undefined;
  /** DATA_DIR: where the embedded database lives. */
  dataDir: string;
  /** MIGRATIONS_DIR: migrations read by `npm run migrate` and written by `npm run client`. */
  migrationsDir: string;
  /** MIGRATE_ON_START: apply pending migrations when the server starts. */
  migrateOnStart: boolean;
  /** TLS_MODE: `direct` (HTTPS here) or `proxy` (plain HTTP behind a TLS-terminating proxy). */
  tlsMode: 'direct' | 'proxy';
  /** TLS_CERT / TLS_KEY: server certificate and key; unset outside production: dev ones in KEYS_DIR. */
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  /** TLS_CLIENT_CA: CAs trusted for tls_client_auth; unset outside production: the dev CA. */
  tlsClientCa: string | undefined;
  /** TRUSTED_PROXIES: proxy mode: IPs/CIDRs of the TLS proxies: only they may send requests (except to /healthz and /readyz), and only their X-Forwarded-For and certificate header are believed. */
  trustedProxies: string[];
  /** CLIENT_CERT_HEADER: proxy mode: header with the URL-encoded PEM client certificate. */
  clientCertHeader: string;
  /** JWKS_URI_ALLOW_PRIVATE: fetch a client's jwks_uri from loopback, private, link-local and other non-public addresses (after DNS resolution); off, such a jwks_uri is refused. */
  jwksUriAllowPrivate: boolean;
  /** JWKS_URI_CA: PEM file of CAs trusted for jwks_uri fetches in addition to the system's (for an internal CA). */
  jwksUriCa: string | undefined;
  /** KEYS_DIR: development material: dev CA and TLS certificate, dev key-encryption key. */
  keysDir: string;
  /**
   * KEYS_ENCRYPTION_KEY: key-encryption keys for the signing keys in the database, each 32
   * random bytes in base64url or `file:<path>` holding them; the first encrypts, all decrypt.
   * Unset outside production: a development one in KEYS_DIR.
   */
  keysEncryptionKeys: Buffer[] | undefined;
  /** KEY_ROTATION_DAYS: a new signing key when the signer is this old (fractions allowed); 0: never. */
  keyRotationDays: number;
  /** ACCESS_TOKEN_TTL: default access-token lifetime, seconds. */
  accessTokenTtl: number;
  /** MAX_ACCESS_TOKEN_TTL: cap on any client's TTL, seconds; also how long a retired key stays published. */
  maxAccessTokenTtl: number;
  /** MAX_ASSERTION_LIFETIME: longest `exp - iat` and `exp - now` of a private_key_jwt assertion, seconds; its jti is kept until its exp. */
  maxAssertionLifetime: number;
  /** JWKS_MAX_AGE: Cache-Control max-age of /jwks, seconds; a new key signs only after it was published this long. */
  jwksMaxAge: number;
  /** KEYS_RELOAD_SECONDS: how often a running server re-reads the signing keys (NOTIFY tells it at once on PostgreSQL). */
  keysReloadSeconds: number;
  /** CLIENT_CACHE_SECONDS: how long a client record is served from memory; the bound on disable/enable taking effect. */
  clientCacheSeconds: number;
  /** MAX_BODY_BYTES: larger request bodies get 413. */
  maxBodyBytes: number;
  /** AUTH_FAILURE_LIMIT: failed client authentications per client id and source address per window before 429. */
  authFailureLimit: number;
  /** AUTH_FAILURE_ADDRESS_LIMIT: failed client authentications per source address per window before 429. */
  authFailureAddressLimit: number;
  /** AUTH_FAILURE_WINDOW: seconds over which failures are counted; a blocked key waits out the window. */
  authFailureWindow: number;
  /**
   * DATABASE_TIMEOUT: seconds a request may wait for the database, for a connection and for
   * a statement each; past it the request gets 503 with Retry-After, and for a moment
   * every query fails at once (one probes) instead of waiting too.
   */
  databaseTimeout: number;
  /**
   * MAX_IN_FLIGHT: requests one process answers at once; past it a new one gets 503 with
   * Retry-After at once instead of waiting (health probes excepted). It bounds latency
   * under overload: a request waits for about MAX_IN_FLIGHT / throughput. The default is
   * MAX_CONNECTIONS_PER_ADDRESS's: one address's burst (one request per connection) is
   * never shed on its own.
   */
  maxInFlight: number;
  /** DB_OUTAGE_GRACE_SECONDS: while the database is unreachable, a client fetched this recently keeps getting tokens. */
  dbOutageGraceSeconds: number;
  /**
   * DPOP_NONCE: the token endpoint demands a server nonce in every DPoP proof (RFC 9449 §8),
   * answering `400 use_dpop_nonce` with a `DPoP-Nonce` header first. Off by default: each
   * client then pays one more round trip per nonce period, while replay is already stopped
   * by single-use jti and pre-made proofs by the 60 s iat window.
   */
  dpopNonce: boolean;
  /** WORKERS: server processes (`auto`: one per core); the embedded database allows 1. */
  workers: number;
  /** LOG_LEVEL: pino level of the JSON logs on stdout. */
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** LOG_BUFFER_KB: most log output a process holds while stdout is not read; a token whose line does not fit is withheld. */
  logBufferKb: number;
  /** NODE_ENV=production refuses every development default. */
  production: boolean;
  /** M2M_ALLOW_KEY_LOSS=true: `npm run migrate:rollback` may drop the signing_keys table while it holds keys. */
  allowKeyLoss: boolean;
  /** Derived: when a published key signs and a retired one is unpublished (JWKS_MAX_AGE, KEYS_RELOAD_SECONDS, MAX_ACCESS_TOKEN_TTL). */
  schedule: ScheduleTimes;
  /** M2M_TLS_TICKET_KEYS (TLS_TICKET_KEYS_ENV): the workers' shared TLS session-ticket keys; unset in a single process. */
  tlsTicketKeys: Buffer | undefined;
}

function fail(name: string, value: string, expected: string): never {
  throw invalidSetting(name, value, `expected ${expected}`);
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) fail(name, raw, `a whole number from ${min} to ${max}`);
  const value = Number(raw);
  if (value < min || value > max) fail(name, raw, `a whole number from ${min} to ${max}`);
  return value;
}

function file(env: Env, name: string): string | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  try {
    accessSync(raw, constants.R_OK);
  } catch {
    fail(name, raw, 'a readable file');
  }
  return raw;
}

function oneOf<T extends string>(env: Env, name: string, fallback: T, allowed: readonly T[]): T {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!(allowed as readonly string[]).includes(raw)) fail(name, raw, `one of ${allowed.join(', ')}`);
  return raw as T;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (raw === 'true' || raw === '1') return true;
  if (raw === 'false' || raw === '0') return false;
  return fail(name, raw, 'true or false');
}

function address(env: Env, name: string, fallback: string): string {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  // An IP address only: a host name binds just the first address it resolves to (`localhost`
  // may be ::1 alone), and a typo such as 10.0.0.300 would pass as a name.
  if (isIP(raw) === 0) fail(name, raw, 'an IP address (:: for every address)');
  return raw;
}

function cidr(name: string, raw: string, entry: string): string {
  const valid = entry.includes('/') ? ipaddr.isValidCIDR(entry) : ipaddr.isValid(entry);
  if (!valid) fail(name, raw, 'comma-separated IP addresses or CIDR ranges');
  return entry;
}

const KEK_FORMAT = '32 random bytes in base64url (43 characters) or file:<path> holding them, comma-separated';

/** Never echoes a key: the value printed is the entry's file name, or <redacted>. */
function keyEncryptionKeys(env: Env): Buffer[] | undefined {
  const raw = env.KEYS_ENCRYPTION_KEY;
  if (raw === undefined || raw.trim() === '') return undefined;
  return raw.split(',').map((entry) => {
    entry = entry.trim();
    let text = entry;
    if (entry.startsWith('file:')) {
      try {
        text = readFileSync(entry.slice(5), 'utf8').trim();
      } catch {
        fail('KEYS_ENCRYPTION_KEY', entry, `a readable file (${KEK_FORMAT})`);
      }
    }
    const key = /^[A-Za-z0-9_-]{43}$/.test(text) ? Buffer.from(text, 'base64url') : undefined;
    if (key?.length !== 32) fail('KEYS_ENCRYPTION_KEY', entry.startsWith('file:') ? entry : '<redacted>', KEK_FORMAT);
    return key;
  });
}

function decimal(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!/^\d+(\.\d+)?$/.test(raw) || value < min || value > max) fail(name, raw, `a number from ${min} to ${max}`);
  return value;
}

/** What the signing keys need: the server's part and the whole of `npm run keys`. */
export type KeySettings = Pick<Settings, 'databaseUrl' | 'dataDir' | 'migrationsDir' | 'keysDir' | 'keysEncryptionKeys'
  | 'keyRotationDays' | 'jwksMaxAge' | 'keysReloadSeconds' | 'maxAccessTokenTtl' | 'schedule' | 'production'>;

function keySettings(env: Env): KeySettings {
  const databaseUrl = env.DATABASE_URL || undefined;
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    fail('DATABASE_URL', '<redacted>', 'a postgres:// or postgresql:// URL');
  }
  const jwksMaxAge = integer(env, 'JWKS_MAX_AGE', 300, 0, 86400);
  const keysReloadSeconds = integer(env, 'KEYS_RELOAD_SECONDS', 30, 1, 60);
  const maxAccessTokenTtl = integer(env, 'MAX_ACCESS_TOKEN_TTL', 3600, 1, 86400);
  return {
    databaseUrl,
    dataDir: resolve(env.DATA_DIR || 'data'),
    migrationsDir: resolve(env.MIGRATIONS_DIR || 'migrations'),
    keysDir: resolve(env.KEYS_DIR || 'keys'),
    keysEncryptionKeys: keyEncryptionKeys(env),
    keyRotationDays: decimal(env, 'KEY_ROTATION_DAYS', 30, 0, 3650),
    jwksMaxAge,
    keysReloadSeconds,
    maxAccessTokenTtl,
    schedule: { jwksMaxAge, reloadSeconds: keysReloadSeconds, maxTokenTtl: maxAccessTokenTtl },
    production: env.NODE_ENV === 'production',
  };
}

function requireKeyEncryptionKey(settings: KeySettings): void {
  if (settings.production && !settings.keysEncryptionKeys) {
    fail('KEYS_ENCRYPTION_KEY', '', `${KEK_FORMAT}, when NODE_ENV=production`);
  }
}

/**
 * The settings each operator command reads (besides NODE_ENV). A command sees only these:
 * the others keep their defaults, and the server's own requirements (ISSUER, TLS files) are
 * not checked, so a deploy job that migrates carries no TLS files.
 */
const COMMAND_SETTINGS = {
  migrate: ['DATABASE_URL', 'DATA_DIR', 'MIGRATIONS_DIR', 'M2M_ALLOW_KEY_LOSS'],
  client: ['DATABASE_URL', 'DATA_DIR', 'MIGRATIONS_DIR', 'KEYS_DIR', 'PORT', 'ISSUER', 'ACCESS_TOKEN_TTL', 'MAX_ACCESS_TOKEN_TTL'],
  keys: ['DATABASE_URL', 'DATA_DIR', 'MIGRATIONS_DIR', 'KEYS_DIR', 'KEYS_ENCRYPTION_KEY', 'ACCESS_TOKEN_TTL', 'MAX_ACCESS_TOKEN_TTL', 'JWKS_MAX_AGE', 'KEYS_RELOAD_SECONDS'],
  issuer: ['DATABASE_URL', 'DATA_DIR', 'MIGRATIONS_DIR'],
} as const;

export type OperatorCommand = keyof typeof COMMAND_SETTINGS;

/** ISSUER: an absolute https:// URL without credentials, query, fragment or trailing slash. */
function issuerSetting(env: Env, port: number): string {
  const issuer = env.ISSUER || `https://localhost:${port}`;
  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    fail('ISSUER', issuer, 'an absolute https:// URL');
  }
  if (url.protocol !== 'https:') fail('ISSUER', issuer, 'an https:// URL');
  if (url.username || url.password) fail('ISSUER', withoutUserinfo(issuer), 'a URL without user:password@');
  if (url.search || url.hash || issuer.endsWith('/')) fail('ISSUER', issuer, 'a URL without query, fragment or trailing slash');
  return issuer;
}

function trustedProxies(env: Env, tlsMode: Settings['tlsMode']): string[] {
  const raw = env.TRUSTED_PROXIES ?? '';
  const proxies = raw.split(',').map((s) => s.trim()).filter(Boolean).map((entry) => cidr('TRUSTED_PROXIES', raw, entry));
  // Proxy mode answers only its proxies: without one it could serve nobody but health checks.
  // Refused rather than guessed (loopback), as a proxy on another host would then meet 403s.
  if (tlsMode === 'proxy' && proxies.length === 0) {
    fail('TRUSTED_PROXIES', raw, "the TLS proxy's IP addresses or CIDR ranges when TLS_MODE=proxy");
  }
  return proxies;
}

function workerCount(env: Env, databaseUrl: string | undefined): number {
  const raw = env.WORKERS || '1';
  const workers = raw === 'auto' ? availableParallelism() : integer(env, 'WORKERS', 1, 1, 256);
  if (workers > 1 && !databaseUrl) fail('WORKERS', raw, '1 with the embedded database (set DATABASE_URL for more)');
  return workers;
}

function tlsTicketKeys(env: Env): Buffer | undefined {
  const raw = env[TLS_TICKET_KEYS_ENV];
  return raw ? Buffer.from(raw, 'base64') : undefined;
}

/** What production requires of the server (or of a command that reads the setting). */
function requireProductionSettings(env: Env, settings: Settings, command: OperatorCommand | undefined): void {
  const reads = (name: string) => !command || (COMMAND_SETTINGS[command] as readonly string[]).includes(name);
  if (settings.production && reads('DATABASE_URL') && !settings.databaseUrl) {
    fail('DATABASE_URL', '', 'a postgres:// URL when NODE_ENV=production (the embedded database is for development)');
  }
  if (settings.production && !command) {
    if (!env.ISSUER) fail('ISSUER', '', 'an https:// URL when NODE_ENV=production');
    if (settings.tlsMode === 'direct' && (!settings.tlsCert || !settings.tlsKey)) {
      fail(settings.tlsCert ? 'TLS_KEY' : 'TLS_CERT', '', 'a PEM file when NODE_ENV=production and TLS_MODE=direct');
    }
  }
  if (reads('KEYS_ENCRYPTION_KEY')) requireKeyEncryptionKey(settings);
}

/**
 * The server's settings, or with `command` those of one operator command. One setting per
 * line: this function is the table of settings, defaults and bounds, so it is not split.
 */
export function loadSettings(env: Env = process.env, command?: OperatorCommand): Settings {
  if (command) {
    const used: readonly string[] = ['NODE_ENV', ...COMMAND_SETTINGS[command]];
    env = Object.fromEntries(Object.entries(env).filter(([name]) => used.includes(name)));
  }
  const keys = keySettings(env);
  const port = integer(env, 'PORT', 8443, 0, 65535);
  const host = address(env, 'HOST', '::');
  const managementPort = integer(env, 'MANAGEMENT_PORT', 9000, 0, 65535);
  if (managementPort !== 0 && managementPort === port) {
    fail('MANAGEMENT_PORT', String(managementPort), `a port other than PORT (${port}), or 0 to turn the management listener off`);
  }
  const tlsMode = oneOf(env, 'TLS_MODE', 'direct', ['direct', 'proxy'] as const);
  const issuer = issuerSetting(env, port);
  const accessTokenTtl = integer(env, 'ACCESS_TOKEN_TTL', 300, 1, 86400);
  if (accessTokenTtl > keys.maxAccessTokenTtl) {
    fail('ACCESS_TOKEN_TTL', String(accessTokenTtl), `at most MAX_ACCESS_TOKEN_TTL (${keys.maxAccessTokenTtl})`);
  }
  const clientCertHeader = (env.CLIENT_CERT_HEADER || 'x-ssl-client-cert').toLowerCase();
  if (!/^[a-z0-9-]+$/.test(clientCertHeader)) fail('CLIENT_CERT_HEADER', clientCertHeader, 'an HTTP header name');

  const settings: Settings = {
    ...keys,
    port,
    host,
    managementPort,
    managementHost: address(env, 'MANAGEMENT_HOST', host),
    tlsHandshakeTimeout: integer(env, 'TLS_HANDSHAKE_TIMEOUT', 10, 1, 300),
    maxConnectionsPerAddress: integer(env, 'MAX_CONNECTIONS_PER_ADDRESS', 256, 1, 1000000),
    issuer,
    migrateOnStart: bool(env, 'MIGRATE_ON_START', true),
    tlsMode,
    tlsCert: file(env, 'TLS_CERT'),
    tlsKey: file(env, 'TLS_KEY'),
    tlsClientCa: file(env, 'TLS_CLIENT_CA'),
    trustedProxies: trustedProxies(env, tlsMode),
    clientCertHeader,
    jwksUriAllowPrivate: bool(env, 'JWKS_URI_ALLOW_PRIVATE', false),
    jwksUriCa: file(env, 'JWKS_URI_CA'),
    accessTokenTtl,
    // 3600: what authlib and Google's libraries sign by default.
    maxAssertionLifetime: integer(env, 'MAX_ASSERTION_LIFETIME', 3600, 60, 3600),
    clientCacheSeconds: integer(env, 'CLIENT_CACHE_SECONDS', 10, 0, 10),
    maxBodyBytes: integer(env, 'MAX_BODY_BYTES', 16384, 1024, 1048576),
    authFailureLimit: integer(env, 'AUTH_FAILURE_LIMIT', 10, 1, 100000),
    authFailureAddressLimit: integer(env, 'AUTH_FAILURE_ADDRESS_LIMIT', 100, 1, 1000000),
    authFailureWindow: integer(env, 'AUTH_FAILURE_WINDOW', 300, 1, 86400),
    databaseTimeout: decimal(env, 'DATABASE_TIMEOUT', 2, 0.1, 60),
    dbOutageGraceSeconds: integer(env, 'DB_OUTAGE_GRACE_SECONDS', 300, 0, 86400),
    maxInFlight: integer(env, 'MAX_IN_FLIGHT', 256, 1, 100000),
    dpopNonce: bool(env, 'DPOP_NONCE', false),
    workers: workerCount(env, keys.databaseUrl),
    logLevel: oneOf(env, 'LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const),
    logBufferKb: integer(env, 'LOG_BUFFER_KB', 16384, 64, 262144),
    // Exactly `true`: anything else keeps the refusal.
    allowKeyLoss: env.M2M_ALLOW_KEY_LOSS === 'true',
    tlsTicketKeys: tlsTicketKeys(env),
  };
  requireProductionSettings(env, settings, command);
  return Object.freeze(settings);
}
