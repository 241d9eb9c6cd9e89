// Runs one SQL statement on the workspace's database, as a database writer would (no key
// material, no application code): `node sql.ts "<statement>" '<JSON array of bindings>'`.
// Prints the rows as JSON. Its own process: the embedded database is a file here.
import { loadSettings } from '../../src/settings.ts';
import { openDatabase } from '../../src/storage/database.ts';

const database = openDatabase(loadSettings());
try {
  const result = await database.db.raw(process.argv[2]!, JSON.parse(process.argv[3] ?? '[]') as never[]);
  process.stdout.write(JSON.stringify((result as { rows?: unknown[] }).rows ?? []));
} finally {
  await database.close();
}
