// WORKERS > 1: the primary process forks the workers, replaces any that dies, answers the
// management listener for all of them, and stops them all on SIGTERM.
import cluster from 'node:cluster';
import { randomBytes } from 'node:crypto';

import { answerWorkers, askOtherWorkers, askWorkers, READY, REVOKED } from '../cluster.ts';
import { closeManagement, startManagement, type Readiness } from '../http/management.ts';
import type { Logger } from '../log.ts';
import { clusterMetricsSource } from '../metrics.ts';
import { TLS_TICKET_KEYS_ENV, type Settings } from '../settings.ts';

/** The primary's readiness: every worker that answers is ready, and at least one does. */
async function clusterReadiness(): Promise<Readiness> {
  // A worker that is still starting does not answer yet, and gets no connections either.
  const answers = (await askWorkers<Readiness & { worker: number }>(READY, null, 3000))
    .flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const ready = answers.length > 0 && answers.every((answer) => answer.ready);
  return { ready, body: { status: ready ? 'ready' : 'unready', workers: answers.map(({ worker, body }) => ({ worker, ...body })) } };
}

export async function supervise(settings: Settings, logger: Logger): Promise<void> {
  const management = await startManagement(settings, logger, { metrics: clusterMetricsSource(), readiness: clusterReadiness });
  // A worker's revocation reaches every other worker before the revoking one answers.
  answerWorkers(REVOKED, (body, from) => askOtherWorkers(from, REVOKED, body, 500));
  // Workers share TLS ticket keys, so a session resumes whichever worker takes the connection.
  const env = { [TLS_TICKET_KEYS_ENV]: randomBytes(48).toString('base64') };
  let stopping = false;
  for (let i = 0; i < settings.workers; i += 1) cluster.fork(env);
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    logger.error({ worker: worker.id, code, signal }, 'worker died; starting another');
    cluster.fork(env);
  });
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, workers: settings.workers }, 'stopping workers');
    if (management) void closeManagement(management);
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill(signal);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
