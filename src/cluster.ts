// Requests and answers between the primary process and its workers (WORKERS > 1), over
// node:cluster's IPC channel. Each request carries an id; its answer comes back as
// `<type>:reply` with the same id.
import cluster, { type Worker } from 'node:cluster';
import { randomUUID } from 'node:crypto';

interface Message {
  type?: string;
  id?: string;
  body?: unknown;
  error?: string;
}

/** One end of the channel: `process` in a worker, a Worker object in the primary. */
interface Port {
  send(message: Message): unknown;
  on(event: 'message', listener: (message: Message) => void): unknown;
  off(event: 'message', listener: (message: Message) => void): unknown;
}

const REPLY = ':reply';

/** Sends a request through `port` and resolves with the answer, or rejects after `timeoutMs`. */
export function request<T>(port: Port, type: string, body: unknown, timeoutMs: number): Promise<T> {
  const id = randomUUID();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      port.off('message', onMessage);
      reject(new Error(`no answer to ${type} within ${timeoutMs} ms`));
    }, timeoutMs);
    const onMessage = (message: Message) => {
      if (message?.type !== type + REPLY || message.id !== id) return;
      clearTimeout(timer);
      port.off('message', onMessage);
      if (message.error !== undefined) reject(new Error(message.error));
      else resolve(message.body as T);
    };
    port.on('message', onMessage);
    port.send({ type, id, body });
  });
}

function reply(port: Pick<Port, 'send'>, message: Message, work: () => unknown): void {
  Promise.resolve()
    .then(work)
    .then(
      (body) => port.send({ type: message.type + REPLY, id: message.id!, body }),
      (err: unknown) => port.send({ type: message.type + REPLY, id: message.id!, error: (err as Error).message }),
    );
}

/** Worker: answers the primary's requests of one type. */
export function answerPrimary(type: string, work: (body: unknown) => unknown): void {
  process.on('message', (message: Message) => {
    if (message?.type === type) reply(process as unknown as Port, message, () => work(message.body));
  });
}

/** Primary: answers every worker's requests of one type, workers forked later included. */
export function answerWorkers(type: string, work: (body: unknown, from: Worker) => unknown): void {
  cluster.on('message', (worker, message: Message) => {
    if (message?.type === type) reply(worker, message, () => work(message.body, worker));
  });
}

/** Primary: asks every worker but one; resolves once each has answered or timed out. */
export async function askOtherWorkers(except: Worker, type: string, body: unknown, timeoutMs: number): Promise<void> {
  const others = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w !== except && w.isConnected());
  await Promise.allSettled(others.map((w) => request(w as unknown as Port, type, body, timeoutMs)));
}

/** Worker: the channel to the primary. */
export function primary(): Port {
  return process as unknown as Port;
}
