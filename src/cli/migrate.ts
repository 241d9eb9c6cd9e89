// `npm run migrate` / `npm run migrate:rollback`, on the database and folder of knexfile.ts.
import { InputError } from '../clients/validate.ts';
import { loadSettings } from '../settings.ts';
import { openDatabase, type Database } from '../storage/database.ts';
import { run } from './output.ts';

/**
 * The signing_keys migration refuses to drop the only copy of the keys; knex rolls a batch
 * back one migration per transaction, so the refusal comes here, before the first of them.
 */
async function refuseKeyLoss(db: Database): Promise<void> {
  const exists = await db.raw("SELECT to_regclass('knex_migrations') AS m, to_regclass('signing_keys') AS k");
  const { m, k } = (exists as { rows: { m: unknown; k: unknown }[] }).rows[0]!;
  if (!m || !k) return;
  const last = await db.raw('SELECT name FROM knex_migrations WHERE batch = (SELECT max(batch) FROM knex_migrations)');
  if (!(last as { rows: { name: string }[] }).rows.some((r) => /_signing_keys\.[jt]s$/.test(r.name))) return;
  const count = await db.raw('SELECT count(*)::int AS n FROM signing_keys');
  const n = Number((count as { rows: { n: number }[] }).rows[0]!.n);
  if (n > 0) throw new InputError(`refusing to roll back: signing_keys holds ${n} signing key(s), the only copy of the private keys; back up the database, or set M2M_ALLOW_KEY_LOSS=true to roll back anyway. Nothing was rolled back`);
}

await run(async () => {
  const direction = process.argv[2];
  if (direction !== 'latest' && direction !== 'rollback') throw new Error('usage: migrate.ts latest|rollback');
  const settings = loadSettings(process.env, 'migrate');
  const database = openDatabase(settings);
  try {
    if (direction === 'latest') {
      const [batch, applied] = await database.db.migrate.latest();
      process.stdout.write(applied.length ? `applied batch ${batch}:\n${applied.map((f: string) => `  ${f}`).join('\n')}\n` : 'already up to date\n');
    } else {
      if (!settings.allowKeyLoss) await refuseKeyLoss(database.db);
      const [batch, undone] = await database.db.migrate.rollback();
      process.stdout.write(undone.length ? `rolled back batch ${batch}:\n${undone.map((f: string) => `  ${f}`).join('\n')}\n` : 'nothing to roll back\n');
    }
  } finally {
    await database.close();
  }
});
