// `npm run keys -- generate|list|retire <kid>`: the signing keys in KEYS_DIR. A running
// server notices changes within KEYS_RELOAD_SECONDS.
import { mkdirSync } from 'node:fs';

import { Command } from 'commander';

import { generateKey, readKeys, retireKey, stateOf } from '../keys/signing-keys.ts';
import { InputError } from '../clients/validate.ts';
import { commandSettings, run, say } from './output.ts';

const settings = commandSettings('keys');
const times = { jwksMaxAge: settings.jwksMaxAge, reloadSeconds: settings.keysReloadSeconds, maxTokenTtl: settings.maxAccessTokenTtl };
const iso = (epoch: number) => (Number.isFinite(epoch) ? new Date(epoch * 1000).toISOString() : '-');

const program = new Command('keys').description('manage the token signing keys');
program.exitOverride();

program.command('generate')
  .description('add a new RSA-2048 signing key: published at once, signing once /jwks caches have caught up')
  .option('--json', 'print one JSON object')
  .action((options: { json?: boolean }) => run(async () => {
    mkdirSync(settings.keysDir, { recursive: true });
    const kid = await generateKey(settings.keysDir);
    const set = await readKeys(settings.keysDir, times);
    const key = set.all.find((k) => k.kid === kid)!;
    const signsFrom = set.signer?.kid === kid ? 'now' : iso(key.signsFrom);
    say(options.json, { kid, state: stateOf(key, set), signs_from: signsFrom }, [
      `Generated ${kid}: published now, signs from ${signsFrom}.`,
    ]);
  }));

program.command('list')
  .description('list the signing keys and their state')
  .option('--json', 'print one JSON array')
  .action((options: { json?: boolean }) => run(async () => {
    const set = await readKeys(settings.keysDir, times);
    for (const problem of set.problems) process.stderr.write(`unusable: ${problem}\n`);
    const rows = set.all.map((k) => ({
      kid: k.kid,
      state: stateOf(k, set),
      published_at: iso(k.publishedAt),
      signs_from: k.retiredAt === undefined ? iso(k.signsFrom) : null,
      retired_at: k.retiredAt === undefined ? null : iso(k.retiredAt),
      unpublish_at: k.unpublishAt === undefined ? null : iso(k.unpublishAt),
    }));
    if (options.json) {
      process.stdout.write(`${JSON.stringify(rows)}\n`);
      return;
    }
    if (!rows.length) process.stdout.write('no signing keys\n');
    for (const r of rows) {
      const when = r.retired_at ? `retired ${r.retired_at}, unpublished from ${r.unpublish_at}` : `published ${r.published_at}, signs from ${r.signs_from}`;
      process.stdout.write(`${r.kid}  ${r.state.padEnd(9)}  ${when}\n`);
    }
  }));

program.command('retire <kid>')
  .description('stop signing with a key; it stays in /jwks until every token it signed has expired')
  .option('--force', 'retire even when no other key has been published long enough to take over')
  .option('--json', 'print one JSON object')
  .action((kid: string, options: { force?: boolean; json?: boolean }) => run(async () => {
    const set = await readKeys(settings.keysDir, times);
    const key = set.all.find((k) => k.kid === kid);
    if (!key) throw new InputError(`no signing key ${kid} in ${settings.keysDir}`);
    if (key.retiredAt !== undefined) throw new InputError(`key ${kid} is already retired`);
    const now = Math.floor(Date.now() / 1000);
    const successors = set.all.filter((k) => k.kid !== kid && k.privateKey);
    if (!successors.length) throw new InputError(`key ${kid} is the only signing key: run \`npm run keys -- generate\` first`);
    if (!options.force && !successors.some((k) => k.signsFrom <= now)) {
      throw new InputError(`no other key has been published for ${times.jwksMaxAge + times.reloadSeconds} s yet (earliest: ${iso(Math.min(...successors.map((k) => k.signsFrom)))}); wait, or use --force`);
    }
    await retireKey(settings.keysDir, kid, now);
    const after = await readKeys(settings.keysDir, times);
    const retired = after.all.find((k) => k.kid === kid)!;
    say(options.json, { kid, state: 'retired', unpublish_at: iso(retired.unpublishAt!) }, [
      `Retired ${kid}: its private key is deleted; it stays in /jwks until ${iso(retired.unpublishAt!)}.`,
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
