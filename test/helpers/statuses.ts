/** How many answers had each status: `{ 200: 38, 503: 2 }`, which a test compares whole. */
export function countStatuses(statuses: number[]): Record<number, number> {
  const out: Record<number, number> = {};
  for (const s of statuses) out[s] = (out[s] ?? 0) + 1;
  return out;
}
