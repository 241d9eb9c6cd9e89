// PostgreSQL LISTEN for client changes, so a running server drops a cached client the
// moment a migration changes it. The embedded database is opened by this process alone,
// so there nothing else can change a client while it runs.
import pg from 'pg';

export const CLIENT_CHANNEL = 'm2m_client_changed';

export interface Listener {
  close(): Promise<void>;
}

export function listenForClientChanges(
  databaseUrl: string,
  onChange: (clientId: string | undefined) => void,
  onError: (err: Error) => void,
): Listener {
  let client: pg.Client | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;

  const connect = async () => {
    const next = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 3000 });
    next.on('notification', (msg) => onChange(msg.payload || undefined));
    next.on('error', (err) => {
      onError(err);
      reconnect();
    });
    try {
      await next.connect();
      await next.query(`LISTEN ${CLIENT_CHANNEL}`);
      client = next;
      // Whatever changed while we were not listening is unknown: start from a clean cache.
      onChange(undefined);
    } catch (err) {
      onError(err as Error);
      void next.end().catch(() => {});
      reconnect();
    }
  };
  const reconnect = () => {
    if (closed || retry) return;
    client = undefined;
    retry = setTimeout(() => {
      retry = undefined;
      void connect();
    }, 2000);
    retry.unref();
  };
  void connect();
  return {
    async close() {
      closed = true;
      if (retry) clearTimeout(retry);
      await client?.end().catch(() => {});
    },
  };
}
