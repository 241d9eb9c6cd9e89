// Signing keys as an earlier version kept them: one file per key in KEYS_DIR (`sig-<kid>.pem`,
// and `sig-<kid>.retired.json` for a retired one), scheduled by the files' times. Read once,
// at start, to import them into the database with the schedule they had: which key signed.
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import type { JWK } from 'jose';

import { checkSigningKey, publicJwk, type LegacyKeys, type ScheduleTimes } from './signing-keys.ts';

const KEY_FILE = /^sig-([A-Za-z0-9_-]{43})\.pem$/;
const RETIRED_FILE = /^sig-([A-Za-z0-9_-]{43})\.retired\.json$/;

/** When a key file appeared (the later of its modification and change times), as the earlier version judged it. */
function appearedAt(file: string): number {
  const { mtimeMs, ctimeMs } = statSync(file);
  return Math.max(mtimeMs, ctimeMs) / 1000;
}

/** The key files in `dir`, or undefined when there are none; a file that cannot be used throws, naming it. */
export async function readKeyFiles(dir: string, times: ScheduleTimes, now = Date.now() / 1000): Promise<(LegacyKeys & { files: string[] }) | undefined> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return undefined;
  }
  const active: { privateKey: KeyObject; appeared: number; kid: string }[] = [];
  const retired: LegacyKeys['retired'] = [];
  const files: string[] = [];
  for (const name of names.sort()) {
    const file = join(dir, name);
    const isKey = KEY_FILE.exec(name);
    const isRetired = RETIRED_FILE.exec(name);
    if (!isKey && !isRetired) continue;
    files.push(file);
    try {
      if (isKey) {
        const privateKey = createPrivateKey(readFileSync(file));
        checkSigningKey(privateKey);
        const { kid } = await publicJwk(privateKey);
        if (kid !== isKey[1]) throw new Error(`file name does not match the key's thumbprint ${kid}`);
        active.push({ privateKey, appeared: appearedAt(file), kid });
      } else {
        const record = JSON.parse(readFileSync(file, 'utf8')) as { jwk: JWK; published_at: number; retired_at: number };
        retired.push({ kid: isRetired![1]!, jwk: record.jwk, publishedAt: record.published_at, retiredAt: record.retired_at });
      }
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  if (!files.length) return undefined;
  // The earlier version's rule: a key signed once it had been there for the signing delay;
  // the newest such key signed, or with none ready, the oldest.
  const live = active.filter((k) => !retired.some((r) => r.kid === k.kid));
  live.sort((a, b) => a.appeared - b.appeared || a.kid.localeCompare(b.kid));
  const ready = live.filter((k) => Math.ceil(k.appeared) + times.jwksMaxAge + times.reloadSeconds <= now);
  const signer = ready.at(-1) ?? live[0];
  return { active: live.map((k) => ({ privateKey: k.privateKey, signs: k === signer })), retired, files };
}
