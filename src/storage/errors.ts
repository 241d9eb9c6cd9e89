/** The database did not answer (down, unreachable, timed out); callers answer 503. */
export class StorageUnavailable extends Error {
  constructor(cause: unknown) {
    super('the database is unavailable', { cause });
    this.name = 'StorageUnavailable';
  }
}

/** Runs a query; any failure of the database itself becomes StorageUnavailable. */
export async function query<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw new StorageUnavailable(err);
  }
}
