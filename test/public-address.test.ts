// The address filter of the jwks_uri fetcher (and any fetch made on someone else's say-so):
// public unicast only, and an IPv6 address that embeds an IPv4 one is judged by that one.
import { isPublicAddress } from '../src/net/public-address.ts';

test.each([
  // IPv4
  ['8.8.8.8', true], ['1.1.1.1', true], ['127.0.0.1', false], ['10.0.0.1', false], ['172.16.5.4', false], ['192.168.1.1', false],
  ['169.254.169.254', false], ['100.64.0.1', false], ['0.0.0.0', false], ['224.0.0.1', false], ['255.255.255.255', false],
  ['192.0.2.1', false],
  // IPv6 proper
  ['2606:4700:4700::1111', true], ['::1', false], ['::', false], ['fe80::1', false], ['fc00::1', false], ['fd12:3456::1', false],
  ['ff02::1', false], ['2001:db8::1', false], ['fec0::1', false],
  // IPv4-mapped (::ffff:a.b.c.d), in both notations
  ['::ffff:127.0.0.1', false], ['::ffff:7f00:1', false], ['::ffff:10.0.0.1', false], ['::ffff:8.8.8.8', true],
  // IPv4-compatible (::a.b.c.d, deprecated): the forms the filter used to miss
  ['::7f00:1', false], ['::a00:1', false], ['::a9fe:a9fe', false], ['::127.0.0.1', false], ['::c0a8:101', false], ['::808:808', true],
  // SIIT (::ffff:0:a.b.c.d)
  ['::ffff:0:7f00:1', false], ['::ffff:0:808:808', true],
  // NAT64, RFC 6052 well-known prefix; the local-use /48 (RFC 8215) is never public
  ['64:ff9b::7f00:1', false], ['64:ff9b::a9fe:a9fe', false], ['64:ff9b::808:808', true], ['64:ff9b:1::808:808', false],
  // 6to4 (2002:AABB:CCDD::/48 carries AA.BB.CC.DD)
  ['2002:7f00:1::1', false], ['2002:a00:1::1', false], ['2002:a9fe:a9fe::1', false], ['2002:808:808::1', true],
  // Teredo: server 2001:0:SSSS:SSSS, client's address inverted in the last 32 bits
  ['2001:0:808:808::80ff:fffe', false], // client 127.0.0.1
  ['2001:0:7f00:1::f7f7:f7f7', false], // server 127.0.0.1
  ['2001:0:808:808::f7f7:f7f7', true], // both 8.8.8.8
  // not addresses at all
  ['localhost', false], ['', false], ['1.2.3', false],
])('%s public: %s', (address, expected) => {
  expect(isPublicAddress(address)).toBe(expected);
});
