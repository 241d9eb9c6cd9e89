// `npm start`. The primary process prepares once (migrations, keys, development material);
// with WORKERS=1 it then serves itself, and otherwise forks the workers and supervises them.
// Each worker serves. A bad setting is one line on stderr and exit 2.
import cluster from 'node:cluster';

import { createLogger } from './log.ts';
import { prepare } from './server/prepare.ts';
import { serve } from './server/serve.ts';
import { supervise } from './server/supervise.ts';
import { loadSettings, SettingError } from './settings.ts';
import { openDatabase } from './storage/database.ts';

async function main(): Promise<void> {
  const settings = loadSettings();
  const logger = createLogger(settings.logLevel, settings.logBufferKb * 1024);
  const database = () => openDatabase({ ...settings, poolMax: 10, logger });
  if (cluster.isWorker) return serve(settings, database(), logger);

  const primaryDatabase = database();
  try {
    await prepare(settings, primaryDatabase, logger);
  } catch (err) {
    await primaryDatabase.close().catch(() => {});
    throw err;
  }
  if (settings.workers === 1) return serve(settings, primaryDatabase, logger);
  await primaryDatabase.close();
  return supervise(settings, logger);
}

main().catch((err: unknown) => {
  if (err instanceof SettingError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
