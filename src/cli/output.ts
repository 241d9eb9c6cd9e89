// What every operator command shares: human text or one JSON object, and one clear line
// (exit 2) for bad input, with nothing written.
import { CommanderError } from 'commander';

import { InputError } from '../clients/validate.ts';
import { loadSettings, SettingError, type OperatorCommand, type Settings } from '../settings.ts';

export function say(json: boolean | undefined, object: Record<string, unknown>, lines: string[]): void {
  process.stdout.write(json ? `${JSON.stringify(object)}\n` : `${lines.join('\n')}\n`);
}

export async function run(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed its one line already; help and version are not failures.
      process.exit(err.exitCode === 0 ? 0 : 2);
    }
    if (err instanceof InputError || err instanceof SettingError) {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(2);
    }
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EEXIST' || code === 'EACCES') {
      process.stderr.write(`error: ${(err as Error).message}\n`);
      process.exit(2);
    }
    process.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}

/** The settings this command uses (only those); a bad one is one line and exit 2. */
export function commandSettings(command: OperatorCommand): Settings {
  try {
    return loadSettings(process.env, command);
  } catch (err) {
    if (!(err instanceof SettingError)) throw err;
    process.stderr.write(`error: ${err.message}\n`);
    process.exit(2);
  }
}
