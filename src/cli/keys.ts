// `npm run keys -- generate|list|retire <kid>|import <pem file>|reencrypt`: the signing keys
// in the database. Needs only the database and the key-encryption key. Running servers hear
// of a change at once (NOTIFY on PostgreSQL) or within KEYS_RELOAD_SECONDS.
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { Command } from 'commander';

import { InputError } from '../clients/validate.ts';
import { keyEncryption } from '../keys/key-encryption.ts';
import { addKey, generateSigningKey, KeyRefusal, loadKeys, reencryptKeys, retireKey, stateOf, type Added } from '../keys/signing-keys.ts';
import { openDatabase, type OpenDatabase } from '../storage/database.ts';
import { commandSettings, run, say } from './output.ts';

const settings = commandSettings('keys');
const iso = (epoch: number) => new Date(epoch * 1000).toISOString();

/** Opens the database for one command; a refusal of the schedule is one line, exit 2. */
async function withDatabase<T>(work: (database: OpenDatabase) => Promise<T>): Promise<T> {
  const database = openDatabase(settings);
  try {
    const table = await database.db.raw("SELECT to_regclass('signing_keys') AS t");
    if (!(table as { rows: { t: unknown }[] }).rows[0]?.t) throw new InputError('the database has no signing_keys table: run `npm run migrate` first');
    return await work(database);
  } catch (err) {
    throw err instanceof KeyRefusal ? new InputError(err.message) : err;
  } finally {
    await database.close();
  }
}

/** The time to sign from is each server's own: the one shown is what this command's settings give. */
function reportAdded(json: boolean | undefined, added: Added, verb: string): void {
  const signsFrom = added.signsNow ? 'now' : iso(added.signsFrom);
  say(json, { kid: added.kid, state: added.signsNow ? 'signing' : 'pending', signs_from: signsFrom }, [
    added.signsNow
      ? `${verb} ${added.kid}: published and signing now.`
      : `${verb} ${added.kid}: published now; each server signs with it once it has been published for that server's JWKS_MAX_AGE + KEYS_RELOAD_SECONDS (with this command's settings: from ${signsFrom}).`,
  ]);
}

const program = new Command('keys').description('manage the token signing keys (in the database)');
program.exitOverride();

program.command('generate')
  .description('add a new RSA-2048 signing key: published at once, signing once /jwks caches have caught up')
  .option('--json', 'print one JSON object')
  .action((options: { json?: boolean }) => run(async () => {
    const encryption = keyEncryption(settings);
    const privateKey = await generateSigningKey();
    const added = await withDatabase(({ db }) => addKey(db, encryption, settings.schedule, privateKey, 'command'));
    reportAdded(options.json, added!, 'Generated');
  }));

program.command('import <pem>')
  .description('add an existing RSA private key (PEM file), scheduled like a generated one')
  .option('--json', 'print one JSON object')
  .action((file: string, options: { json?: boolean }) => run(async () => {
    const encryption = keyEncryption(settings);
    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey(readFileSync(file));
    } catch (err) {
      throw new InputError(`${file} is not a readable PEM private key (${(err as Error).message})`);
    }
    const added = (await withDatabase(({ db }) => addKey(db, encryption, settings.schedule, privateKey, 'import')))!;
    if (!added.added) throw new InputError(`key ${added.kid} is in the database already`);
    reportAdded(options.json, added, 'Imported');
  }));

program.command('list')
  .description('list the signing keys and their state')
  .option('--json', 'print one JSON array')
  .action((options: { json?: boolean }) => run(async () => {
    const set = await withDatabase(({ db }) => loadKeys(db, keyEncryption(settings), settings.schedule));
    const rows: Record<string, string | null>[] = set.all.map((k) => ({
      kid: k.kid,
      state: stateOf(k, set),
      published_at: iso(k.publishedAt),
      signs_from: k.retiredAt === undefined ? iso(k.signsFrom) : null,
      retired_at: k.retiredAt === undefined ? null : iso(k.retiredAt),
      unpublish_at: k.unpublishAt === undefined ? null : iso(k.unpublishAt),
      kek_id: k.kekId ?? null,
      origin: k.origin,
      replaces: k.replaces ?? null,
    }));
    // Shown, never used: the servers leave them out of /jwks and out of the schedule.
    for (const r of set.rejected) rows.push({ kid: r.kid, state: 'rejected', reason: r.reason });
    if (options.json) {
      process.stdout.write(`${JSON.stringify(rows)}\n`);
      return;
    }
    if (!rows.length) process.stdout.write('no signing keys\n');
    for (const r of rows) {
      if (r.state === 'rejected') {
        process.stdout.write(`${r.kid}  rejected   ${r.reason}\n`);
        continue;
      }
      const when = r.retired_at ? `retired ${r.retired_at}, unpublished from ${r.unpublish_at}` : `published ${r.published_at}, signs from ${r.signs_from}, encrypted under ${r.kek_id}`;
      process.stdout.write(`${r.kid}  ${(r.state ?? '').padEnd(9)}  ${when}\n`);
    }
  }));

program.command('retire <kid>')
  .description('stop signing with a key and delete its private part; it stays in /jwks until every token it signed has expired')
  .option('--force', 'retire the signer even before its successor has been published long enough to take over')
  .option('--json', 'print one JSON object')
  .action((kid: string, options: { force?: boolean; json?: boolean }) => run(async () => {
    const retired = await withDatabase(({ db }) => retireKey(db, keyEncryption(settings), settings.schedule, kid, { force: options.force ?? false }));
    say(options.json, { kid, state: 'retired', retired_at: iso(retired.retiredAt), unpublish_at: iso(retired.unpublishAt) }, [
      `Retired ${kid}: its private key is deleted; it stays in /jwks until ${iso(retired.unpublishAt)}.`,
    ]);
  }));

program.command('reencrypt')
  .description('re-encrypt every stored private key under the first KEYS_ENCRYPTION_KEY (after adding a new one in front)')
  .option('--json', 'print one JSON object')
  .action((options: { json?: boolean }) => run(async () => {
    const encryption = keyEncryption(settings);
    const done = await withDatabase(({ db }) => reencryptKeys(db, encryption).catch((err: unknown) => {
      throw new InputError(`${(err as Error).message}; nothing was changed`);
    }));
    say(options.json, { kek_id: encryption.current.id, reencrypted: done.reencrypted, already: done.kept, secrets: done.secrets, rejected: done.rejected }, [
      `Re-encrypted ${done.reencrypted.length} key(s) under key-encryption key ${encryption.current.id}; ${done.kept.length} already were.`,
      ...(done.rejected.length ? [`Left alone ${done.rejected.length} row(s) that are not authentic (see \`keys list\`): ${done.rejected.join(', ')}.`] : []),
      ...(encryption.keks.length > 1 ? ['Every key now decrypts with the first key-encryption key alone: the others can be removed from KEYS_ENCRYPTION_KEY.'] : []),
    ]);
  }));

// A kid is base64url and may start with '-': after `retire`, end option parsing so such a
// kid is taken as the argument it is, not as an unknown option.
function withKidsAsArguments(argv: string[]): string[] {
  const at = argv.indexOf('retire');
  const kid = argv[at + 1];
  if (at === -1 || kid === undefined || !/^-[A-Za-z0-9_-]{42}$/.test(kid)) return argv;
  return [...argv.slice(0, at + 1), ...argv.slice(at + 2).filter((a) => a.startsWith('--')), '--', kid];
}

await run(async () => {
  await program.parseAsync(withKidsAsArguments(process.argv));
});
