// A TCP relay between the server and PostgreSQL that a test can make hang (connections stay
// open, nothing is forwarded either way: a database that does not answer) or refuse
// (connections are closed and new ones refused: a database that is down).
import { connect, createServer, type Server, type Socket } from 'node:net';

import { freePort } from './server.ts';

interface Pair {
  client: Socket;
  upstream: Socket;
}

export class DatabaseRelay {
  #server: Server | undefined;
  readonly #pairs = new Set<Pair>();
  #hanging = false;
  port = 0;
  readonly #target: { host: string; port: number };

  constructor(databaseUrl: string) {
    const url = new URL(databaseUrl);
    this.#target = { host: url.hostname, port: Number(url.port || 5432) };
  }

  /** `databaseUrl` with the relay in front of it. */
  url(databaseUrl: string): string {
    const url = new URL(databaseUrl);
    url.hostname = '127.0.0.1';
    url.port = String(this.port);
    return url.toString();
  }

  async open(): Promise<void> {
    this.port ||= await freePort();
    this.#server = createServer((client) => {
      const upstream = connect(this.#target.port, this.#target.host);
      const pair = { client, upstream };
      this.#pairs.add(pair);
      for (const socket of [client, upstream]) {
        socket.on('close', () => this.#pairs.delete(pair));
        socket.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      if (this.#hanging) {
        client.pause();
        upstream.pause();
      } else {
        this.#forward(pair);
      }
    });
    await new Promise<void>((done) => this.#server!.listen(this.port, '127.0.0.1', done));
  }

  #forward({ client, upstream }: Pair): void {
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Stops forwarding: bytes wait unread on both sides, connections are still accepted. */
  hang(): void {
    this.#hanging = true;
    for (const { client, upstream } of this.#pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
  }

  /** Forwards again, what waited first. */
  resume(): void {
    this.#hanging = false;
    for (const pair of this.#pairs) this.#forward(pair);
  }

  /** Closes every connection and the listener: connecting is refused until open(). */
  async refuse(): Promise<void> {
    const closed = new Promise<void>((done) => (this.#server ? this.#server.close(() => done()) : done()));
    for (const { client, upstream } of this.#pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.#hanging = false;
    await closed;
    this.#server = undefined;
  }
}
