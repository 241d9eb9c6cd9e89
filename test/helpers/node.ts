// How tests start node: servers, operator commands and helper scripts alike.
export const NODE = process.execPath;

/**
 * The flags for a node process with this environment. The embedded database is PostgreSQL
 * compiled to WebAssembly, and V8's optimising compiler spends more CPU on it in a process's
 * first seconds than the process then runs; the suite starts hundreds of short-lived servers
 * and commands, so on the embedded database they run it on the baseline compiler alone
 * (--liftoff-only: the same code, requests cost the same, a start about 40% less CPU). With
 * DATABASE_URL there is no WebAssembly to compile, and node runs as in production.
 */
export function nodeFlags(env: Record<string, string | undefined>): string[] {
  return env.DATABASE_URL ? [] : ['--liftoff-only'];
}
