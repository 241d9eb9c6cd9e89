// The log is written in batches (src/log.ts). What a batch must not cost: a line split by
// another worker's write to the same pipe, a line that waits long for a quiet moment, or a
// line lost when the process exits.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

import { ROOT } from './helpers/server.ts';

const LOGGER = join(ROOT, 'src', 'log.ts');

/** Runs `script` (ESM, with `log` a logger from src/log.ts) in `copies` processes sharing one stdout pipe, read slowly. */
function run(script: string, copies = 1, onLine?: (line: string) => void): Promise<{ lines: string[] }> {
  const program = `import { createLogger } from ${JSON.stringify(LOGGER)}; const log = createLogger('info'); ${script}`;
  const node = JSON.stringify(process.execPath);
  const shell = Array.from({ length: copies }, () => `${node} --input-type=module -e "$PROGRAM" &`).join(' ');
  // The reader starts a second late, so the pipe fills and writers meet partial writes.
  const child = spawn('sh', ['-c', `{ ${shell} wait; } | { sleep 1; cat; }`], { env: { ...process.env, NODE_OPTIONS: '', PROGRAM: program }, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let rest = '';
  child.stdout.on('data', (chunk: Buffer) => {
    const parts = (rest + chunk.toString()).split('\n');
    rest = parts.pop()!;
    for (const line of parts) {
      lines.push(line);
      onLine?.(line);
    }
  });
  return new Promise((done) => child.on('close', () => done({ lines: rest ? [...lines, rest] : lines })));
}

test('two processes logging to one pipe never split each other\'s lines', async () => {
  const { lines } = await run("for (let i = 0; i < 4000; i++) log.info({ i, pad: 'x'.repeat(300 + (i % 200)) }, 'line');", 2);
  expect(lines).toHaveLength(8000);
  const parsed = lines.map((line) => JSON.parse(line) as { i: number; pid: number });
  expect(new Set(parsed.map((entry) => entry.pid)).size).toBe(2);
}, 30_000);

test('a line written on a quiet server goes out long before its process exits', async () => {
  let seenAt = -1;
  const { lines } = await run("log.info({ event: 'token.issued' }, 'one'); setTimeout(() => process.exit(0), 4000);", 1, () => {
    if (seenAt < 0) seenAt = Date.now();
  });
  expect(lines).toHaveLength(1);
  // The process lives 4 s after writing the line; the line must not have waited for its exit
  // (flushes every 100 ms; the reader starts up to a second late). Counted from the line's
  // own time, so a slow start of the process is not counted.
  const { time } = JSON.parse(lines[0]!) as { time: number };
  expect(seenAt).toBeGreaterThanOrEqual(time);
  expect(seenAt - time).toBeLessThan(3500);
}, 30_000);

test('lines still buffered when the process exits are written, also on process.exit(1)', async () => {
  const { lines } = await run("for (let i = 0; i < 5; i++) log.info({ i }, 'buffered'); log.error('fatal'); process.exit(1);");
  expect(lines.map((line) => (JSON.parse(line) as { msg: string }).msg)).toEqual(['buffered', 'buffered', 'buffered', 'buffered', 'buffered', 'fatal']);
}, 30_000);
