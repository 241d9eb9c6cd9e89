// Which addresses the server may be sent to fetch from on someone else's say-so (a
// client's jwks_uri, an issuer's keys): ordinary public unicast only. An IPv6 address that
// carries an IPv4 address (IPv4-mapped or -compatible, SIIT, NAT64, 6to4, Teredo) reaches
// that IPv4 address, so it is judged by it: ::7f00:1 is loopback, 64:ff9b::a00:1 private.
import ipaddr from 'ipaddr.js';

const v4 = (high: number, low: number) => new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]);

function prefixed(address: ipaddr.IPv6, prefix: string, bits: number): boolean {
  return address.match(ipaddr.IPv6.parse(prefix), bits);
}

/**
 * The IPv4 addresses an IPv6 address leads to, when it embeds any; undefined when it is
 * IPv6 proper. Teredo names two (its server, and the client's mapped address, stored inverted).
 */
function embeddedIpv4(address: ipaddr.IPv6): ipaddr.IPv4[] | undefined {
  const p = address.parts;
  // ::a.b.c.d (IPv4-compatible, deprecated), ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (SIIT),
  // 64:ff9b::a.b.c.d (NAT64, RFC 6052): the IPv4 address is the last 32 bits.
  if (prefixed(address, '::', 96) || prefixed(address, '::ffff:0:0', 96) || prefixed(address, '::ffff:0:0:0', 96)
    || prefixed(address, '64:ff9b::', 96)) {
    return [v4(p[6]!, p[7]!)];
  }
  if (prefixed(address, '2002::', 16)) return [v4(p[1]!, p[2]!)]; // 6to4, RFC 3056
  if (prefixed(address, '2001::', 32)) return [v4(p[2]!, p[3]!), v4(~p[6]! & 0xffff, ~p[7]! & 0xffff)]; // Teredo, RFC 4380
  return undefined;
}

/** An ordinary public unicast address: not loopback, private, link-local, CGNAT, multicast, reserved… */
export function isPublicAddress(address: string): boolean {
  // Strict forms only: what a resolver returns or a URL's host normalises to ("1.2.3" is not one).
  if (!ipaddr.IPv4.isValidFourPartDecimal(address) && !ipaddr.IPv6.isValid(address)) return false;
  const parsed = ipaddr.parse(address);
  if (parsed.kind() === 'ipv4') return parsed.range() === 'unicast';
  const embedded = embeddedIpv4(parsed as ipaddr.IPv6);
  if (embedded) return embedded.every((inner) => inner.range() === 'unicast');
  // Everything else special (64:ff9b:1::/48 local NAT64 included) is not 'unicast'.
  return parsed.range() === 'unicast';
}
