// Prints every row of every table of the workspace's database as JSON, for tests that
// search the stored data (run as its own process: the embedded database is a file here).
import { loadSettings } from '../../src/settings.ts';
import { openDatabase } from '../../src/storage/database.ts';

const database = openDatabase(loadSettings());
try {
  const tables = await database.db('pg_tables').where({ schemaname: 'public' }).pluck('tablename');
  const dump: Record<string, unknown[]> = {};
  for (const table of tables as string[]) dump[table] = await database.db(table).select('*');
  process.stdout.write(JSON.stringify(dump));
} finally {
  await database.close();
}
