// JSON logs on stdout. Secrets, assertions, tokens and certificates never reach a log line:
// the fields that could carry them are redacted here, whatever a caller passes.
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

// Explicit paths only: wildcard paths cost a walk of every logged object.
const REDACT = [
  'client_secret', 'secret', 'client_assertion', 'token', 'access_token', 'authorization',
  'headers.authorization', 'req.headers.authorization', 'cookie',
];

/** Per output (a child logger shares its parent's): lines dropped, and whether stdout is gone. */
interface Output {
  dropped: number;
  broken: boolean;
  listeners: (() => void)[];
}

const outputs = new WeakMap<DestinationStream, Output>();

function outputOf(logger: Logger): Output | undefined {
  return outputs.get((logger as unknown as Record<symbol, DestinationStream>)[pino.symbols.streamSym]!);
}

function drop(output: Output): void {
  output.dropped += 1;
  for (const listener of output.listeners) listener();
}

/**
 * Written asynchronously, in batches of 2-4 KB or every 100 ms: a slow reader of stdout must
 * not stall token issuance, and one write per token cost a wake-up of the reader each time.
 * A write holds whole lines and never exceeds PIPE_BUF (4096), so workers sharing a pipe
 * cannot interleave within a line. pino flushes what is buffered when the process exits.
 *
 * While stdout is not read, at most `bufferBytes` wait; past that a line is dropped, within
 * the logging call, so memory stays bounded and the caller can know (lineKept). Once the
 * reader is gone (EPIPE), pino discards every line, and lineKept says so too.
 */
export function createLogger(level: string, bufferBytes = 16 * 2 ** 20): Logger {
  const destination = pino.destination({ dest: 1, sync: false, minLength: 2048, maxWrite: 4096, periodicFlush: 100, maxLength: bufferBytes });
  const output: Output = { dropped: 0, broken: false, listeners: [] };
  destination.on('drop', () => drop(output));
  // pino's own listener turns EPIPE into silence and passes any other error on, which then
  // ends the process as an unhandled error did before this listener existed.
  destination.on('error', (err: NodeJS.ErrnoException) => {
    output.broken = true;
    if (err.code !== 'EPIPE') throw err;
  });
  outputs.set(destination, output);
  return pino({ level, base: { pid: process.pid }, redact: { paths: REDACT, censor: '[redacted]' } }, destination);
}

/**
 * Runs `write` (one logging call) and says whether its line was kept for stdout: false if
 * the buffer was full and it was dropped, or if stdout is gone.
 */
export function lineKept(logger: Logger, write: () => void): boolean {
  const output = outputOf(logger);
  const before = output?.dropped;
  write();
  if (!output) return true;
  if (output.broken) drop(output);
  return output.dropped === before;
}

/** Calls `listener` for every line dropped from here on. */
export function onDroppedLine(logger: Logger, listener: () => void): void {
  outputOf(logger)?.listeners.push(listener);
}
