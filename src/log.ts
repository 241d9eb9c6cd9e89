// JSON logs on stdout. Secrets, assertions, tokens and certificates never reach a log line:
// the fields that could carry them are redacted here, whatever a caller passes.
import { pino, type Logger } from 'pino';

export type { Logger };

// Explicit paths only: wildcard paths cost a walk of every logged object.
const REDACT = [
  'client_secret', 'secret', 'client_assertion', 'token', 'access_token', 'authorization',
  'headers.authorization', 'req.headers.authorization', 'cookie',
];

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    redact: { paths: REDACT, censor: '[redacted]' },
  // Written asynchronously, in batches of 2-4 KB or every 100 ms: a slow reader of stdout
  // must not stall token issuance, and one write per token cost a wake-up of the reader each
  // time. A write holds whole lines and never exceeds PIPE_BUF (4096), so workers sharing a
  // pipe cannot interleave within a line. pino flushes what is buffered when the process exits.
  }, pino.destination({ dest: 1, sync: false, minLength: 2048, maxWrite: 4096, periodicFlush: 100 }));
}
