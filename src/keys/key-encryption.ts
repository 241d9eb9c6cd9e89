// The private part of every signing key is stored encrypted (AES-256-GCM) under a
// key-encryption key (KEK) from KEYS_ENCRYPTION_KEY. Each ciphertext names its KEK by an id
// (a hash of it), so the KEK can rotate: the first of the list encrypts, every one decrypts,
// and `keys reencrypt` moves every key to the first. The kid is authenticated with the
// ciphertext: a private key copied into another key's row does not decrypt.
//
// The same KEKs seal what is stored in clear (a signing key's public part and schedule):
// an HMAC under a key derived from each KEK of the list, so an instance holding any one of
// them (old or new, during a KEK rollout) can check a row written by another.
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { invalidSetting, type KeySettings } from '../settings.ts';

const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Outside production, with no KEYS_ENCRYPTION_KEY: generated once, git-ignored like the dev CA. */
export const DEV_KEK_FILE = 'dev-keys-encryption-key';

export interface KeyEncryptionKey {
  id: string;
  key: Buffer;
  /** Derived from `key` for sealing only: the AES key itself never keys an HMAC. */
  macKey: Buffer;
}

/** `valid`: under every KEK of ours it names; `unknown`: under none of ours. */
export type SealCheck = 'valid' | 'invalid' | 'unknown';

export class KeyEncryption {
  readonly keks: readonly KeyEncryptionKey[];

  constructor(keys: Buffer[]) {
    if (keys.length === 0) throw new Error('no key-encryption key');
    this.keks = keys.map((key) => ({ key, id: kekId(key), macKey: createHmac('sha256', key).update('m2m-row-seal').digest() }));
  }

  /** The KEK that encrypts. */
  get current(): KeyEncryptionKey {
    return this.keks[0]!;
  }

  /** `purpose` binds the ciphertext to its use: a signing key's never opens as a shared secret, nor the reverse. */
  encrypt(kid: string, plaintext: Buffer, purpose = SIGNING_KEY): { kekId: string; ciphertext: string } {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.current.key, iv);
    cipher.setAAD(aad(purpose, kid));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return { kekId: this.current.id, ciphertext: Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url') };
  }

  /** Throws a message fit for an operator when no KEK of the list opens it. */
  decrypt(kid: string, id: string, ciphertext: string, purpose = SIGNING_KEY): Buffer {
    const kek = this.keks.find((k) => k.id === id);
    if (!kek) throw new Error(`key ${kid} is encrypted under key-encryption key ${id}, which is not in KEYS_ENCRYPTION_KEY (it has ${this.keks.map((k) => k.id).join(', ')})`);
    const raw = Buffer.from(ciphertext, 'base64url');
    try {
      const decipher = createDecipheriv('aes-256-gcm', kek.key, raw.subarray(0, IV_BYTES));
      decipher.setAAD(aad(purpose, kid));
      decipher.setAuthTag(raw.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
      return Buffer.concat([decipher.update(raw.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]);
    } catch {
      throw new Error(`key ${kid} does not decrypt under key-encryption key ${id}: the stored key or the key-encryption key is not the one it was encrypted with`);
    }
  }

  /** A seal of `data` under every KEK of the list: `<kek id>.<HMAC-SHA256>`, comma-separated. */
  seal(data: Buffer): string {
    return this.keks.map((kek) => `${kek.id}.${createHmac('sha256', kek.macKey).update(data).digest('base64url')}`).join(',');
  }

  /** Checks each tag made under a KEK of ours, in constant time; tags under other KEKs are not ours to judge. */
  checkSeal(data: Buffer, seal: string): SealCheck {
    let checked = 0;
    let valid = true;
    for (const tag of seal.split(',')) {
      const [id, mac = ''] = tag.split('.', 2) as [string, string?];
      const kek = this.keks.find((k) => k.id === id);
      if (!kek) continue;
      checked += 1;
      const expected = createHmac('sha256', kek.macKey).update(data).digest();
      const given = Buffer.from(mac, 'base64url');
      valid = given.length === expected.length && timingSafeEqual(given, expected) && valid;
    }
    return checked === 0 ? 'unknown' : valid ? 'valid' : 'invalid';
  }
}

const SIGNING_KEY = 'm2m-signing-key';

function aad(purpose: string, kid: string): Buffer {
  return Buffer.from(`${purpose}:${kid}`);
}

/** Names a KEK without revealing it (it is 32 random bytes: its hash gives nothing away). */
function kekId(key: Buffer): string {
  return createHash('sha256').update('m2m-kek-id:').update(key).digest('base64url').slice(0, 12);
}

/**
 * KEYS_ENCRYPTION_KEY, or outside production the development KEK in KEYS_DIR (generated on
 * first use). Production without one has been refused by the settings already.
 */
export function keyEncryption(settings: KeySettings): KeyEncryption {
  if (settings.keysEncryptionKeys) return new KeyEncryption(settings.keysEncryptionKeys);
  if (settings.production) throw invalidSetting('KEYS_ENCRYPTION_KEY', '', 'expected a key-encryption key when NODE_ENV=production');
  const file = join(settings.keysDir, DEV_KEK_FILE);
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch {
    mkdirSync(settings.keysDir, { recursive: true });
    text = randomBytes(32).toString('base64url');
    try {
      writeFileSync(file, `${text}\n`, { mode: 0o600, flag: 'wx' });
    } catch {
      // Another process wrote it first: use theirs.
      text = readFileSync(file, 'utf8').trim();
    }
  }
  const key = Buffer.from(text, 'base64url');
  if (key.length !== 32) throw invalidSetting('KEYS_DIR', settings.keysDir, `${file} does not hold 32 bytes in base64url`);
  return new KeyEncryption([key]);
}
