// Requests and answers between the primary process and its workers (WORKERS > 1), over
// node:cluster's IPC channel. Each request carries an id; its answer comes back as
// `<type>:reply` with the same id. A peer that has gone away is not an error here: a
// request to it times out, and an answer to it is dropped.
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
  send(message: Message, callback: (err: Error | null) => void): unknown;
  on(event: 'message', listener: (message: Message) => void): unknown;
}

const REPLY = ':reply';

/** A worker revoked a token: it tells the primary, which passes it on to the other workers. */
export const REVOKED = 'm2m:revoked';
/** The primary asks each worker whether it is ready (/readyz on the management listener). */
export const READY = 'm2m:ready';

/** Sends without throwing: a closed channel only means the peer is gone. */
function sendQuietly(port: Port, connected: boolean, message: Message): void {
  if (!connected) return;
  try {
    port.send(message, () => {});
  } catch {
    // The channel closed between the check and the send.
  }
}

/** Answers awaited on each port, by request id; one listener per port. */
const pending = new WeakMap<Port, Map<string, (message: Message) => void>>();

function awaiting(port: Port): Map<string, (message: Message) => void> {
  let byId = pending.get(port);
  if (!byId) {
    const created = new Map<string, (message: Message) => void>();
    port.on('message', (message: Message) => {
      if (typeof message?.type === 'string' && message.type.endsWith(REPLY) && message.id) created.get(message.id)?.(message);
    });
    pending.set(port, created);
    byId = created;
  }
  return byId;
}

/** Sends a request through `port` and resolves with the answer, or rejects after `timeoutMs`. */
export function request<T>(port: Port, type: string, body: unknown, timeoutMs: number): Promise<T> {
  const id = randomUUID();
  const byId = awaiting(port);
  return new Promise((resolve, reject) => {
    const done = (err: Error | undefined, value?: unknown) => {
      clearTimeout(timer);
      byId.delete(id);
      if (err) reject(err);
      else resolve(value as T);
    };
    const timer = setTimeout(() => done(new Error(`no answer to ${type} within ${timeoutMs} ms`)), timeoutMs);
    byId.set(id, (message) => {
      if (message.type !== type + REPLY) return;
      done(message.error === undefined ? undefined : new Error(message.error), message.body);
    });
    try {
      port.send({ type, id, body }, (err) => {
        if (err) done(err);
      });
    } catch (err) {
      done(err as Error);
    }
  });
}

function reply(port: Port, connected: () => boolean, message: Message, work: () => unknown): void {
  Promise.resolve()
    .then(work)
    .then(
      (body) => sendQuietly(port, connected(), { type: message.type + REPLY, id: message.id!, body }),
      (err: unknown) => sendQuietly(port, connected(), { type: message.type + REPLY, id: message.id!, error: String((err as Error)?.message ?? err) }),
    );
}

/** Worker: answers the primary's requests of one type. */
export function answerPrimary(type: string, work: (body: unknown) => unknown): void {
  process.on('message', (message: Message) => {
    if (message?.type === type) reply(primary(), () => process.connected === true, message, () => work(message.body));
  });
}

/** Primary: answers every worker's requests of one type, workers forked later included. */
export function answerWorkers(type: string, work: (body: unknown, from: Worker) => unknown): void {
  cluster.on('message', (worker, message: Message) => {
    if (message?.type === type) reply(worker as unknown as Port, () => worker.isConnected(), message, () => work(message.body, worker));
  });
}

/** Primary: asks every worker but one; resolves once each has answered or timed out. */
export async function askOtherWorkers(except: Worker, type: string, body: unknown, timeoutMs: number): Promise<void> {
  const others = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w !== except && w.isConnected());
  await Promise.allSettled(others.map((w) => request(w as unknown as Port, type, body, timeoutMs)));
}

/** Primary: asks every worker; one settled result per worker, in no particular order. */
export async function askWorkers<T>(type: string, body: unknown, timeoutMs: number): Promise<PromiseSettledResult<T>[]> {
  const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected());
  return Promise.allSettled(workers.map((w) => request<T>(w as unknown as Port, type, body, timeoutMs)));
}

/** Worker: the channel to the primary. */
export function primary(): Port {
  return process as unknown as Port;
}
