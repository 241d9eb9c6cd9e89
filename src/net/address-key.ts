// What one client address counts as, wherever addresses are counted (brute-force limits,
// connections per address): IPv4 as it is, IPv6 by its /64, since one host usually holds a
// whole /64 and could otherwise take a fresh address per attempt.
import ipaddr from 'ipaddr.js';

export function addressKey(address: string): string {
  if (!ipaddr.isValid(address)) return address;
  const parsed = ipaddr.process(address);
  if (parsed.kind() === 'ipv4') return parsed.toString();
  const parts = (parsed as ipaddr.IPv6).parts.slice(0, 4);
  return `${new ipaddr.IPv6([...parts, 0, 0, 0, 0]).toString()}/64`;
}
