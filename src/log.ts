// JSON logs on stdout. Secrets, assertions, tokens and certificates never reach a log line:
// the fields that could carry them are redacted here, whatever a caller passes.
import { pino, type Logger } from 'pino';

export type { Logger };

const REDACT = [
  'client_secret', '*.client_secret', 'secret', '*.secret',
  'client_assertion', '*.client_assertion', 'token', '*.token', 'access_token', '*.access_token',
  'authorization', '*.authorization', 'headers.authorization', 'req.headers.authorization',
  'cookie', '*.cookie',
];

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  // Written asynchronously: a slow reader of stdout must not stall token issuance. The
  // server flushes before it exits.
  }, pino.destination({ dest: 1, sync: false }));
}
