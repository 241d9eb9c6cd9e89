// A running server's view of the signing keys: read from the database at start, then again
// whenever a NOTIFY says they changed and every KEYS_RELOAD_SECONDS (for a lost notification,
// and for a key whose time to sign or to leave /jwks has come). Never read per token: the
// server swaps its keys (oauth/current-keys.ts) only when the set it would serve changes. Each read also does
// what automatic rotation asks, under the schedule's lock.
import type { Logger } from '../log.ts';
import type { Database } from '../storage/database.ts';
import type { KeyEncryption } from './key-encryption.ts';
import { loadKeys, rotate, sealOlderRows, type KeySet, type ScheduleTimes } from './signing-keys.ts';

export interface KeyReloaderOptions {
  db: Database;
  encryption: KeyEncryption;
  times: ScheduleTimes;
  /** KEY_ROTATION_DAYS in seconds; 0: no automatic rotation. */
  rotationSeconds: number;
  logger: Logger;
  /** The set served now. */
  current: KeySet;
  /** A set that differs in its signer or published keys: serve it. */
  onChange(next: KeySet): void;
  /** The current signer is retired and the scheduled one cannot be used: issue nothing until `onChange`. */
  onHalt(): void;
  onRotation?(event: 'generated' | 'retired'): void;
}

export interface KeyReloader {
  /** Reads the keys now (coalesced: one read at a time, one more if asked meanwhile). */
  reload(reason: string): Promise<void>;
  stop(): void;
}

/** Rows that are not authentic, logged when they change: an operator learns of a row slipped into the table, not of its key. */
function logRejected(logger: Logger, set: KeySet, before = ''): string {
  const seen = set.rejected.map((r) => `${r.kid}:${r.reason}`).join(',');
  if (seen !== before) for (const { kid, reason } of set.rejected) logger.error({ kid, reason }, 'a signing_keys row is not authentic: it is neither published nor trusted');
  return seen;
}

/** `work`, never twice at once: a call while it runs makes one more run after it, and waits for the current one. */
function coalesced(work: (reason: string) => Promise<void>): (reason: string) => Promise<void> {
  let running: Promise<void> | undefined;
  let again = false;
  return (reason) => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await work(reason);
        } while (again);
      } finally {
        running = undefined;
      }
    })();
    return running;
  };
}

/** Automatic rotation, when due: whether it changed the keys. */
async function rotateDue(options: KeyReloaderOptions, keys: KeySet): Promise<boolean> {
  const { db, encryption, times, rotationSeconds, logger } = options;
  const rotated = await rotate(db, encryption, times, rotationSeconds, keys);
  if (rotated.generated) {
    logger.info({ kid: rotated.generated, replaces: rotated.replaces }, 'automatic rotation: generated the successor of the signing key');
    options.onRotation?.('generated');
  }
  for (const kid of rotated.retired) {
    logger.info({ kid, signer: keys.signer?.kid }, 'automatic rotation: retired an older key, a newer one signs');
    options.onRotation?.('retired');
  }
  return Boolean(rotated.generated || rotated.retired.length);
}

export function reloadKeys(options: KeyReloaderOptions): KeyReloader {
  const { db, encryption, times, logger } = options;
  let current = options.current;
  let rejected = logRejected(logger, current);
  let halted = false;

  const once = async (reason: string) => {
    let next = await loadKeys(db, encryption, times);
    // An instance of an earlier version, still running during an upgrade, adds keys unsealed.
    if (next.rejected.some((r) => r.unsealed) && (await sealOlderRows(db, encryption)).sealed.length) next = await loadKeys(db, encryption, times);
    rejected = logRejected(logger, next, rejected);
    if (await rotateDue(options, next)) next = await loadKeys(db, encryption, times);
    for (const problem of next.problems) logger.error({ problem }, 'a signing key does not decrypt with KEYS_ENCRYPTION_KEY');
    if (next.fingerprint === current.fingerprint && !halted) return;
    if (!next.signer?.privateKey) {
      // Until the database retires it, the current signer is still published everywhere: keep it.
      const signer = current.signer?.kid;
      if (next.all.some((k) => k.kid === signer && k.retiredAt === undefined)) {
        logger.error({ signer: next.signer?.kid ?? null, kek_id: next.signer?.kekId ?? null }, 'the scheduled signing key cannot be used; keeping the current keys');
        return;
      }
      // Retired: its tokens would fail wherever /jwks no longer has it. Stop issuing instead (503, not ready).
      if (!halted) {
        halted = true;
        logger.error({
          kid: next.signer?.kid ?? null, kek_id: next.signer?.kekId ?? null, retired: signer ?? null, have: encryption.keks.map((k) => k.id),
        }, 'the signing key was retired and the scheduled one cannot be used (its key-encryption key is not in KEYS_ENCRYPTION_KEY?): not issuing tokens');
        options.onHalt();
      }
      return;
    }
    halted = false;
    logger.info({ signer: next.signer.kid, published: next.published.map((k) => k.kid), reason }, 'signing keys changed');
    current = next;
    options.onChange(next);
  };

  const reload = coalesced((reason: string) => once(reason).catch((err: unknown) => {
    logger.error({ err: (err as Error).message }, 'reading signing keys failed; keeping the current ones');
  }));

  const timer = setInterval(() => void reload('poll'), times.reloadSeconds * 1000);
  timer.unref();
  return { reload, stop: () => clearInterval(timer) };
}
