// `npm run migrate` / `npm run migrate:rollback`, on the database and folder of knexfile.ts.
import { loadSettings } from '../settings.ts';
import { openDatabase } from '../storage/database.ts';
import { run } from './output.ts';

await run(async () => {
  const direction = process.argv[2];
  if (direction !== 'latest' && direction !== 'rollback') throw new Error('usage: migrate.ts latest|rollback');
  const database = openDatabase(loadSettings(process.env, 'migrate'));
  try {
    if (direction === 'latest') {
      const [batch, applied] = await database.db.migrate.latest();
      process.stdout.write(applied.length ? `applied batch ${batch}:\n${applied.map((f: string) => `  ${f}`).join('\n')}\n` : 'already up to date\n');
    } else {
      const [batch, undone] = await database.db.migrate.rollback();
      process.stdout.write(undone.length ? `rolled back batch ${batch}:\n${undone.map((f: string) => `  ${f}`).join('\n')}\n` : 'nothing to roll back\n');
    }
  } finally {
    await database.close();
  }
});
