// PostgreSQL LISTEN, so a running server hears at once when a migration changes a client
// (it drops the cached entry), another process revokes a token (it adds the id to its
// list) or the signing keys change (it reads them again). The embedded database is opened by this process alone: nothing else changes it.
import pg from 'pg';

export const CLIENT_CHANNEL = 'm2m_client_changed';
export const REVOCATION_CHANNEL = 'm2m_token_revoked';
/** Any change to the signing keys (a trigger on the table): read them again. */
export const KEYS_CHANNEL = 'm2m_signing_keys_changed';

export interface Listener {
  close(): Promise<void>;
}

/**
 * Listens on each channel of `channels` (name → what to do with a payload). `onConnected`
 * runs after every (re)connection: whatever was sent while nobody listened is lost.
 */
export function listen(
  databaseUrl: string,
  channels: Record<string, (payload: string) => void>,
  onConnected: () => void,
  onError: (err: Error) => void,
): Listener {
  let client: pg.Client | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;

  const connect = async () => {
    const next = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 3000 });
    next.on('notification', (msg) => channels[msg.channel]?.(msg.payload ?? ''));
    next.on('error', (err) => {
      onError(err);
      reconnect();
    });
    try {
      await next.connect();
      for (const channel of Object.keys(channels)) await next.query(`LISTEN ${channel}`);
      client = next;
      onConnected();
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
