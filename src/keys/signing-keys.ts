// The signing-key schedule, kept in the database every instance shares. A key is published
// in /jwks from the moment it is added, and signs only once it has been published for
// longer than /jwks may be cached plus the time a running server takes to notice it, so no
// resource API meets a kid it has not seen; the newest such key signs (the first key of an
// empty database at once). That delay is each server's own (its JWKS_MAX_AGE and
// KEYS_RELOAD_SECONDS): the row stores no time to sign from, since whoever adds a key (a
// deploy job running `keys generate` with default settings) does not know them. Retiring a key deletes its private part and keeps its public
// part published until no token it signed can still be unexpired. Every time is the
// database's clock, and every change is made under one advisory lock: all instances reach
// the same answer, and two of them racing to add a key add it once.
//
// The private part is encrypted, and the rest of a row (public JWK, schedule, origin) is
// sealed under the key-encryption keys by whoever writes it (the servers and the `keys`
// command all hold them). A row whose seal does not verify, or whose kid is not its JWK's
// thumbprint, is left out of the set: never published, never trusted, never signing.
import { createPrivateKey, createPublicKey, generateKeyPair, type KeyObject } from 'node:crypto';
import { isDeepStrictEqual, promisify } from 'node:util';

import { calculateJwkThumbprint, type JWK } from 'jose';

import { invalidSetting } from '../settings.ts';
import type { Database } from '../storage/database.ts';
import { reencryptSharedSecrets } from '../storage/shared-secrets.ts';
import type { KeyEncryption } from './key-encryption.ts';

/** Every change to the schedule holds this transaction-level advisory lock. */
const SCHEDULE_LOCK = 0x6d326d6b;

export interface ScheduleTimes {
  /** Seconds /jwks may be cached (JWKS_MAX_AGE). */
  jwksMaxAge: number;
  /** Seconds a running server may take to notice a change (KEYS_RELOAD_SECONDS). */
  reloadSeconds: number;
  /** Longest token lifetime (MAX_ACCESS_TOKEN_TTL). */
  maxTokenTtl: number;
}

const signingDelay = (times: ScheduleTimes) => times.jwksMaxAge + times.reloadSeconds;
/** One interval for the slowest instance to stop signing with it, one more for clocks that differ between hosts. */
const unpublishDelay = (times: ScheduleTimes) => 2 * times.reloadSeconds + times.maxTokenTtl;

export type KeyState = 'signing' | 'published' | 'pending' | 'retired' | 'expired';

export interface SigningKey {
  kid: string;
  /** Public JWK, as published. */
  jwk: JWK;
  /** Private key, decrypted; absent for a retired key (and in sets read without the KEK). */
  privateKey?: KeyObject;
  /** The key-encryption key of the stored private part; absent once retired. */
  kekId?: string;
  /** Epoch seconds, database clock: when the key was published. */
  publishedAt: number;
  /** Epoch seconds: when the key may start signing (once scheduled by a server's settings). */
  signsFrom: number;
  /** Stored without a time to sign from: it signs after each server's own delay. */
  ownDelay?: boolean;
  /** Epoch seconds, retired keys only: when it was retired and when it leaves /jwks. */
  retiredAt?: number;
  unpublishAt?: number;
  /** How it came: command, import, file (an earlier version's KEYS_DIR), rotation, first-start. */
  origin: string;
  /** The signer it was generated to succeed, by automatic rotation. */
  replaces?: string;
  /** Insertion order: of keys published in one instant, the later one is newer. */
  order: number;
}

export interface KeySet {
  /** The key that signs now. */
  signer: SigningKey | undefined;
  /** Every key in /jwks, signer first. */
  published: SigningKey[];
  /** Every key in the table, oldest first. */
  all: SigningKey[];
  /** Changes when what is signed or published changes. */
  fingerprint: string;
  /** The database's clock when the set was read, epoch seconds. */
  now: number;
  /** Keys whose private part could not be decrypted, or sealed under none of our KEKs, and why. */
  problems: string[];
  /** Rows left out because they are not authentic (no kid or key material in `reason`). */
  rejected: Rejected[];
}

export interface Rejected {
  kid: string;
  reason: string;
  /** No seal at all: an earlier version's row, which `sealOlderRows` may vouch for. */
  unsealed: boolean;
}

/** An operator's request the schedule refuses (the CLI prints it as one line). */
export class KeyRefusal extends Error {}

interface Row {
  id: string | number;
  kid: string;
  public_jwk: JWK | string;
  kek_id: string | null;
  private_key_encrypted: string | null;
  origin: string;
  replaces: string | null;
  published_at: number;
  /** Null: after each server's own delay; a time: at once (<= published_at) or an earlier version's stored time. */
  signs_from: number | null;
  retired_at: number | null;
  unpublish_at: number | null;
  seal: string | null;
  /** The times in whole microseconds, exactly as stored: what the seal covers. */
  published_us: string;
  signs_from_us: string | null;
  retired_us: string | null;
  unpublish_us: string | null;
}

const TIMES = ['published', 'signs_from', 'retired', 'unpublish'] as const;
const COLUMNS = `id, kid, public_jwk, kek_id, private_key_encrypted, origin, replaces, seal,
  extract(epoch FROM published_at)::float8 AS published_at,
  extract(epoch FROM signs_from)::float8 AS signs_from,
  extract(epoch FROM retired_at)::float8 AS retired_at,
  extract(epoch FROM unpublish_at)::float8 AS unpublish_at,
  ${TIMES.map((t) => `(extract(epoch FROM ${t === 'signs_from' ? t : `${t}_at`}) * 1000000)::bigint::text AS ${t}_us`).join(', ')}`;

async function rows(db: Database): Promise<Row[]> {
  const result = await db.raw(`SELECT ${COLUMNS} FROM signing_keys ORDER BY published_at, id`);
  return (result as { rows: Row[] }).rows;
}

async function clock(db: Database, sql = 'now()'): Promise<number> {
  const result = await db.raw(`SELECT extract(epoch FROM ${sql})::float8 AS now`);
  return Number((result as { rows: { now: number }[] }).rows[0]!.now);
}

const jwkOf = (row: Row): JWK => (typeof row.public_jwk === 'string' ? JSON.parse(row.public_jwk) as JWK : row.public_jwk);

/** What a row's seal covers: every column but its insertion order, the JWK with its members sorted (jsonb reorders them). */
function sealedData(row: Row): Buffer {
  const jwk = jwkOf(row) as Record<string, unknown>;
  const sorted = Object.fromEntries(Object.keys(jwk).sort().map((name) => [name, jwk[name]]));
  return Buffer.from(JSON.stringify([
    'm2m-signing-key-row', row.kid, sorted, row.kek_id, row.private_key_encrypted, row.origin, row.replaces,
    row.published_us, row.signs_from_us, row.retired_us, row.unpublish_us,
  ]));
}

/** A public RSA JWK whose thumbprint is the row's kid; else why not. */
async function jwkMismatch(row: Row): Promise<string | undefined> {
  const jwk = jwkOf(row);
  if (jwk.kty !== 'RSA' || typeof jwk.n !== 'string' || typeof jwk.e !== 'string' || 'd' in jwk) return 'its JWK is not a public RSA key';
  return await calculateJwkThumbprint(jwk, 'sha256') === row.kid ? undefined : 'its kid is not the RFC 7638 thumbprint of its JWK';
}

type Verdict = { ok: true } | { ok: false; problem: string } | { ok: false; rejected: Rejected };

async function authenticate(row: Row, encryption: KeyEncryption): Promise<Verdict> {
  const reject = (reason: string, unsealed = false): Verdict => ({ ok: false, rejected: { kid: row.kid, reason, unsealed } });
  if (!row.seal) return reject('it has no seal (written by an earlier version, or by someone without the key-encryption key)', true);
  const check = encryption.checkSeal(sealedData(row), row.seal);
  if (check === 'unknown') {
    const ids = row.seal.split(',').map((tag) => tag.split('.')[0]).join(', ');
    return { ok: false, problem: `key ${row.kid} is sealed under key-encryption key(s) ${ids}, none of which is in KEYS_ENCRYPTION_KEY (it has ${encryption.keks.map((k) => k.id).join(', ')})` };
  }
  if (check === 'invalid') return reject('its seal does not verify: the row was changed by someone without the key-encryption key');
  const mismatch = await jwkMismatch(row);
  return mismatch ? reject(mismatch) : { ok: true };
}

/**
 * The authentic rows as keys, in table order. With `decrypt`, their private parts too (a
 * failure is a problem: the wrong KEYS_ENCRYPTION_KEY, not an attack).
 */
async function readKeys(db: Database, encryption: KeyEncryption, decrypt: boolean): Promise<{ keys: SigningKey[]; problems: string[]; rejected: Rejected[] }> {
  const problems: string[] = [];
  const rejected: Rejected[] = [];
  const keys: SigningKey[] = [];
  for (const row of await rows(db)) {
    // A private part under a KEK we lack says more than the seal does: name that first.
    if (row.kek_id && !encryption.keks.some((k) => k.id === row.kek_id)) {
      problems.push(`key ${row.kid} is encrypted under key-encryption key ${row.kek_id}, which is not in KEYS_ENCRYPTION_KEY (it has ${encryption.keks.map((k) => k.id).join(', ')})`);
    }
    const verdict = await authenticate(row, encryption);
    if (!verdict.ok) {
      if ('rejected' in verdict) rejected.push(verdict.rejected);
      else if (!row.kek_id || encryption.keks.some((k) => k.id === row.kek_id)) problems.push(verdict.problem);
      continue;
    }
    keys.push(toKey(row, decrypt ? encryption : undefined, problems));
  }
  return { keys, problems, rejected };
}

/** Seals rows `kids` as they are now in the table (after the statement that changed them). */
async function seal(trx: Database, encryption: KeyEncryption, kids: string[]): Promise<void> {
  for (const kid of kids) {
    const result = await trx.raw(`SELECT ${COLUMNS} FROM signing_keys WHERE kid = ?`, [kid]);
    const row = (result as { rows: Row[] }).rows[0];
    if (row) await trx.raw('UPDATE signing_keys SET seal = ? WHERE kid = ?', [encryption.seal(sealedData(row)), kid]);
  }
}

function toKey(row: Row, encryption: KeyEncryption | undefined, problems: string[]): SigningKey {
  const key: SigningKey = {
    kid: row.kid,
    jwk: jwkOf(row),
    publishedAt: Number(row.published_at),
    signsFrom: row.signs_from === null ? Number(row.published_at) : Number(row.signs_from),
    ownDelay: row.signs_from === null,
    origin: row.origin,
    order: Number(row.id),
    ...(row.kek_id ? { kekId: row.kek_id } : {}),
    ...(row.replaces ? { replaces: row.replaces } : {}),
    ...(row.retired_at !== null ? { retiredAt: Number(row.retired_at), unpublishAt: Number(row.unpublish_at) } : {}),
  };
  if (encryption && row.kek_id && row.private_key_encrypted && encryption.keks.some((k) => k.id === row.kek_id)) {
    try {
      const der = encryption.decrypt(row.kid, row.kek_id, row.private_key_encrypted);
      key.privateKey = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  return key;
}

/**
 * A key as a server with `times` applies it: it signs `signingDelay` after it was published.
 * A key stored to sign at once (the first of an empty database, a former signer imported
 * from files) still does; a time an earlier version stored is kept if it is later. A
 * retired key's unpublish time was stored by whoever retired it: a server whose tokens live
 * longer keeps it published longer.
 */
function withOwnDelays(key: SigningKey, times: ScheduleTimes): SigningKey {
  const own = key.publishedAt + signingDelay(times);
  const signsFrom = key.ownDelay ? own : key.signsFrom <= key.publishedAt ? key.signsFrom : Math.max(key.signsFrom, own);
  if (key.retiredAt === undefined) return { ...key, signsFrom };
  return { ...key, signsFrom, unpublishAt: Math.max(key.unpublishAt!, key.retiredAt + unpublishDelay(times)) };
}

/** Which key signs and which are published at `now`, as a server with `times` applies the rules. */
function scheduleOf(stored: SigningKey[], now: number, times: ScheduleTimes, problems: string[] = [], rejected: Rejected[] = []): KeySet {
  const all = stored.map((k) => withOwnDelays(k, times));
  const sorted = [...all].sort((a, b) => a.publishedAt - b.publishedAt || a.order - b.order);
  const active = sorted.filter((k) => k.retiredAt === undefined);
  const ready = active.filter((k) => k.signsFrom <= now);
  // The newest ready key signs; with none ready yet, the oldest active one.
  const signer = ready.at(-1) ?? active[0];
  const published = sorted.filter((k) => k.retiredAt === undefined || now < k.unpublishAt!);
  published.sort((a, b) => (a === signer ? -1 : b === signer ? 1 : 0));
  const fingerprint = [signer?.kid ?? '-', ...published.map((k) => k.kid)].join(',');
  return { signer, published, all: sorted, fingerprint, now, problems, rejected };
}

export function stateOf(key: SigningKey, set: KeySet, at = set.now): KeyState {
  if (key.retiredAt !== undefined) return at < key.unpublishAt! ? 'retired' : 'expired';
  if (set.signer?.kid === key.kid) return 'signing';
  return at >= key.signsFrom ? 'published' : 'pending';
}

/**
 * The authentic keys as of the database's clock now, scheduled as a server with `times`
 * serves them, active keys' private parts decrypted (a failure is listed in `problems`; a
 * row that is not authentic, in `rejected`).
 */
export async function loadKeys(db: Database, encryption: KeyEncryption, times: ScheduleTimes): Promise<KeySet> {
  const now = await clock(db);
  const { keys, problems, rejected } = await readKeys(db, encryption, true);
  return scheduleOf(keys, now, times, problems, rejected);
}

/** Under the lock: the authentic keys, scheduled (private parts left encrypted). */
async function lockedSet(trx: Database, encryption: KeyEncryption, now: number, times: ScheduleTimes): Promise<KeySet> {
  const { keys, problems, rejected } = await readKeys(trx, encryption, false);
  return scheduleOf(keys, now, times, problems, rejected);
}

/** At start, a key that does not decrypt is a wrong or missing KEYS_ENCRYPTION_KEY: never run without it. */
export function requireDecryptable(set: KeySet): void {
  if (set.problems.length) throw invalidSetting('KEYS_ENCRYPTION_KEY', '<redacted>', set.problems[0]!);
}

/** A new signing key pair, made on the thread pool (a server making one keeps answering). */
export async function generateSigningKey(): Promise<KeyObject> {
  const { privateKey } = await promisify(generateKeyPair)('rsa', { modulusLength: 2048 });
  return privateKey;
}

export function checkSigningKey(key: KeyObject): void {
  if (key.type !== 'private' || key.asymmetricKeyType !== 'rsa' || (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
    throw new KeyRefusal('signing keys must be RSA private keys of 2048 bits or more');
  }
}

export async function publicJwk(key: KeyObject): Promise<{ kid: string; jwk: JWK }> {
  const exported = createPublicKey(key).export({ format: 'jwk' }) as JWK;
  const kid = await calculateJwkThumbprint(exported, 'sha256');
  return { kid, jwk: { kty: exported.kty, n: exported.n, e: exported.e, kid, alg: 'RS256', use: 'sig' } };
}

/** Runs `work` holding the schedule lock, with the database's clock read after taking it. */
async function locked<T>(db: Database, work: (trx: Database, now: number) => Promise<T>): Promise<T> {
  return db.transaction(async (trx) => {
    await trx.raw('SELECT pg_advisory_xact_lock(?)', [SCHEDULE_LOCK]);
    return work(trx, await clock(trx, 'clock_timestamp()'));
  });
}

interface Insert {
  privateKey: KeyObject;
  origin: string;
  publishedAt: number;
  /** At once (the first key), or null: after each server's own delay. */
  signsFrom: number | null;
  replaces?: string;
}

async function insert(trx: Database, encryption: KeyEncryption, key: Insert): Promise<{ kid: string; inserted: boolean }> {
  const { kid, jwk } = await publicJwk(key.privateKey);
  const { kekId, ciphertext } = encryption.encrypt(kid, key.privateKey.export({ type: 'pkcs8', format: 'der' }));
  const result = await trx.raw(
    `INSERT INTO signing_keys (kid, public_jwk, kek_id, private_key_encrypted, origin, replaces, published_at, signs_from)
     VALUES (?, ?::jsonb, ?, ?, ?, ?, to_timestamp(?), to_timestamp(?))
     ON CONFLICT (kid) DO NOTHING RETURNING kid`,
    [kid, JSON.stringify(jwk), kekId, ciphertext, key.origin, key.replaces ?? null, key.publishedAt, key.signsFrom],
  );
  const inserted = (result as { rows: unknown[] }).rows.length === 1;
  if (inserted) await seal(trx, encryption, [kid]);
  return { kid, inserted };
}

/** Active rows, but for those that are not authentic: a row slipped into the table never makes a first key wait. */
async function activeKids(trx: Database, encryption: KeyEncryption): Promise<number> {
  const { rejected } = await readKeys(trx, encryption, false);
  return (await rows(trx)).filter((r) => r.retired_at === null && !rejected.some((x) => x.kid === r.kid)).length;
}

export interface Added {
  kid: string;
  /** False when the database has the key already. */
  added: boolean;
  /** When it signs at a server with the adding process's settings (its own estimate; not stored). */
  signsFrom: number;
  /** The first key of an empty database signs at once. */
  signsNow: boolean;
}

/** Adds a key (generated or imported): published now, signing after each server's delay, or at once if it is the only key. */
export async function addKey(db: Database, encryption: KeyEncryption, times: ScheduleTimes, privateKey: KeyObject, origin: string, options: { onlyIfNone?: boolean } = {}): Promise<Added | undefined> {
  checkSigningKey(privateKey);
  return locked(db, async (trx, now) => {
    const others = await activeKids(trx, encryption);
    if (options.onlyIfNone && others > 0) return undefined;
    const { kid, inserted } = await insert(trx, encryption, { privateKey, origin, publishedAt: now, signsFrom: others === 0 ? now : null });
    return { kid, added: inserted, signsFrom: others === 0 ? now : now + signingDelay(times), signsNow: others === 0 };
  });
}

export interface Retired {
  kid: string;
  retiredAt: number;
  unpublishAt: number;
}

/**
 * Stops a key signing and deletes its private part. The signer is kept until a successor may
 * sign (`force` only waives the wait, never the successor).
 */
export async function retireKey(db: Database, encryption: KeyEncryption, times: ScheduleTimes, kid: string, options: { force?: boolean } = {}): Promise<Retired> {
  return locked(db, async (trx, now) => {
    const set = await lockedSet(trx, encryption, now, times);
    const key = set.all.find((k) => k.kid === kid);
    if (!key) throw new KeyRefusal(`no signing key ${kid} in the database`);
    if (key.retiredAt !== undefined) throw new KeyRefusal(`key ${kid} is already retired`);
    const successors = set.all.filter((k) => k.kid !== kid && k.retiredAt === undefined);
    if (!successors.length) throw new KeyRefusal(`key ${kid} is the only signing key: run \`npm run keys -- generate\` first`);
    if (set.signer?.kid === kid && !options.force && !successors.some((k) => k.signsFrom <= now)) {
      const earliest = new Date(Math.min(...successors.map((k) => k.signsFrom)) * 1000).toISOString();
      throw new KeyRefusal(`key ${kid} signs, and no other key has been published for ${signingDelay(times)} s yet (earliest: ${earliest}); wait, or use --force`);
    }
    return retire(trx, encryption, times, kid, now);
  });
}

async function retire(trx: Database, encryption: KeyEncryption, times: ScheduleTimes, kid: string, now: number): Promise<Retired> {
  const unpublishAt = now + unpublishDelay(times);
  await trx.raw(
    `UPDATE signing_keys SET retired_at = to_timestamp(?), unpublish_at = to_timestamp(?), kek_id = NULL, private_key_encrypted = NULL
     WHERE kid = ? AND retired_at IS NULL`,
    [now, unpublishAt, kid],
  );
  await seal(trx, encryption, [kid]);
  return { kid, retiredAt: now, unpublishAt };
}

/**
 * Re-encrypts every stored private key, and every shared secret, under the first
 * key-encryption key, and seals every authentic row under exactly the KEKs given (so a KEK
 * dropped from the list no longer vouches for any row). A row that is not authentic is
 * left as it is: re-sealing it would vouch for it.
 */
export async function reencryptKeys(db: Database, encryption: KeyEncryption): Promise<{ reencrypted: string[]; kept: string[]; secrets: string[]; rejected: string[] }> {
  return locked(db, async (trx) => {
    const { keys, problems, rejected } = await readKeys(trx, encryption, false);
    if (problems.length) throw new Error(problems[0]);
    const result = { reencrypted: [] as string[], kept: [] as string[], secrets: await reencryptSharedSecrets(trx, encryption), rejected: rejected.map((r) => r.kid) };
    const authentic = new Set(keys.map((k) => k.kid));
    for (const row of (await rows(trx)).filter((r) => authentic.has(r.kid))) {
      if (row.kek_id && row.private_key_encrypted && row.kek_id !== encryption.current.id) {
        const { kekId, ciphertext } = encryption.encrypt(row.kid, encryption.decrypt(row.kid, row.kek_id, row.private_key_encrypted));
        await trx.raw('UPDATE signing_keys SET kek_id = ?, private_key_encrypted = ? WHERE kid = ?', [kekId, ciphertext, row.kid]);
        result.reencrypted.push(row.kid);
      } else if (row.kek_id) {
        result.kept.push(row.kid);
      }
      await seal(trx, encryption, [row.kid]);
    }
    return result;
  });
}

/**
 * Seals the rows an earlier version left unsealed, when they prove themselves: the private
 * part decrypts under our KEK (its AES-GCM tag binds it to the kid), the kid is the JWK's
 * thumbprint, and the JWK is the private key's public part. A retired row has no private
 * part left to prove anything, so it stays unsealed and unpublished.
 */
export async function sealOlderRows(db: Database, encryption: KeyEncryption): Promise<{ sealed: string[]; refused: string[] }> {
  return locked(db, async (trx) => {
    const done = { sealed: [] as string[], refused: [] as string[] };
    for (const row of (await rows(trx)).filter((r) => r.seal === null)) {
      let proven = false;
      if (row.kek_id && row.private_key_encrypted && !(await jwkMismatch(row))) {
        try {
          const privateKey = createPrivateKey({ key: encryption.decrypt(row.kid, row.kek_id, row.private_key_encrypted), format: 'der', type: 'pkcs8' });
          const { jwk } = await publicJwk(privateKey);
          const stored = jwkOf(row);
          proven = isDeepStrictEqual([jwk.kty, jwk.n, jwk.e], [stored.kty, stored.n, stored.e]);
        } catch {
          proven = false;
        }
      }
      if (proven) {
        await seal(trx, encryption, [row.kid]);
        done.sealed.push(row.kid);
      } else {
        done.refused.push(row.kid);
      }
    }
    return done;
  });
}

export interface LegacyKeys {
  /** Active keys, in the order they appeared; `signs` marks the one that signed. */
  active: { privateKey: KeyObject; signs: boolean }[];
  retired: { kid: string; jwk: JWK; publishedAt: number; retiredAt: number }[];
}

/**
 * Imports an earlier version's key files, once: a kid the database has (even retired long
 * ago) is never added again. Into a database without keys, the former signer stays the
 * signer: it and the keys before it may sign at once, the keys after it wait their delay.
 */
export async function importLegacyKeys(db: Database, encryption: KeyEncryption, times: ScheduleTimes, legacy: LegacyKeys): Promise<string[]> {
  return locked(db, async (trx, now) => {
    // Every row, authentic or not: a kid the table has is never added again.
    const known = new Set((await rows(trx)).map((r) => r.kid));
    const empty = (await activeKids(trx, encryption)) === 0;
    const imported: string[] = [];
    const signerAt = legacy.active.findIndex((k) => k.signs);
    for (const [i, { privateKey }] of legacy.active.entries()) {
      const { kid } = await publicJwk(privateKey);
      if (known.has(kid)) continue;
      const signsFrom = empty && i <= signerAt ? now : null;
      if ((await insert(trx, encryption, { privateKey, origin: 'file', publishedAt: now, signsFrom })).inserted) imported.push(kid);
    }
    for (const key of legacy.retired) {
      if (known.has(key.kid)) continue;
      await trx.raw(
        `INSERT INTO signing_keys (kid, public_jwk, origin, published_at, signs_from, retired_at, unpublish_at)
         VALUES (?, ?::jsonb, 'file', to_timestamp(?), to_timestamp(?), to_timestamp(?), to_timestamp(?)) ON CONFLICT (kid) DO NOTHING`,
        [key.kid, JSON.stringify(key.jwk), key.publishedAt, key.publishedAt, key.retiredAt, key.retiredAt + unpublishDelay(times)],
      );
      await seal(trx, encryption, [key.kid]);
      imported.push(key.kid);
    }
    return imported;
  });
}

export interface RotationDue {
  /** Generate a successor to the signer. */
  generate: boolean;
  /** Retire these keys: a newer key signs. */
  retire: string[];
}

/**
 * Automatic rotation: a successor when the signer is `rotationSeconds` old and none is on
 * its way; once a key signs by its own schedule, every active key older than it is retired,
 * however it came (rotation, command, import, first start, files), so none stays forever.
 */
function rotationDue(set: KeySet, rotationSeconds: number): RotationDue {
  const signer = set.signer;
  if (!rotationSeconds || !signer) return { generate: false, retire: [] };
  const isNewer = (k: SigningKey) => k.publishedAt > signer.publishedAt || (k.publishedAt === signer.publishedAt && k.order > signer.order);
  const active = set.all.filter((k) => k.retiredAt === undefined && k !== signer);
  // A signer only for want of a ready key (with none ready, the oldest signs) retires nothing.
  const ready = signer.signsFrom <= set.now;
  return {
    generate: set.now - signer.publishedAt >= rotationSeconds && !active.some(isNewer),
    retire: ready ? active.filter((k) => !isNewer(k)).map((k) => k.kid) : [],
  };
}

/** Does what `rotationDue` asks, if it is still due under the lock: however many servers ask, once. */
export async function rotate(db: Database, encryption: KeyEncryption, times: ScheduleTimes, rotationSeconds: number, seen: KeySet): Promise<{ generated?: string; retired: string[]; replaces?: string }> {
  const due = rotationDue(seen, rotationSeconds);
  if (!due.generate && !due.retire.length) return { retired: [] };
  // Made before taking the lock, so that the lock is held for milliseconds; a loser's key is dropped.
  const privateKey = due.generate ? await generateSigningKey() : undefined;
  return locked(db, async (trx, now) => {
    const set = await lockedSet(trx, encryption, now, times);
    const still = rotationDue(set, rotationSeconds);
    const done: { generated?: string; retired: string[]; replaces?: string } = { retired: [] };
    for (const kid of still.retire) done.retired.push((await retire(trx, encryption, times, kid, now)).kid);
    if (still.generate && privateKey && set.signer) {
      const { kid } = await insert(trx, encryption, { privateKey, origin: 'rotation', publishedAt: now, signsFrom: null, replaces: set.signer.kid });
      done.generated = kid;
      done.replaces = set.signer.kid;
    }
    return done;
  });
}
