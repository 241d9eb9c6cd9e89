// RFC 4514 distinguished names in a comparable form, for tls_client_auth_subject_dn. The
// operator writes the DN as `openssl x509 -subject -nameopt RFC2253` prints it; the
// certificate's subject is read from its DER. Both become the same canonical string:
// attribute types as OIDs (so `cn`, `CN` and `2.5.4.3` agree), values unescaped and
// without the spaces around separators, most specific RDN first.
import type { X509Certificate } from 'node:crypto';

import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

export class DnSyntaxError extends Error {}

/** Names openssl (RFC2253 option) and RFC 4514 print, and the other spellings in use. */
const ATTRIBUTE_OIDS: Record<string, string> = {
  CN: '2.5.4.3',
  SN: '2.5.4.4', SURNAME: '2.5.4.4',
  SERIALNUMBER: '2.5.4.5',
  C: '2.5.4.6',
  L: '2.5.4.7',
  ST: '2.5.4.8',
  STREET: '2.5.4.9',
  O: '2.5.4.10',
  OU: '2.5.4.11',
  T: '2.5.4.12', TITLE: '2.5.4.12',
  G: '2.5.4.42', GN: '2.5.4.42', GIVENNAME: '2.5.4.42',
  I: '2.5.4.43', INITIALS: '2.5.4.43',
  DC: '0.9.2342.19200300.100.1.25',
  UID: '0.9.2342.19200300.100.1.1',
  E: '1.2.840.113549.1.9.1', EMAILADDRESS: '1.2.840.113549.1.9.1',
  NAME: '2.5.4.41',
  GENERATIONQUALIFIER: '2.5.4.44',
  DNQUALIFIER: '2.5.4.46',
  PSEUDONYM: '2.5.4.65',
  POSTALCODE: '2.5.4.17',
  BUSINESSCATEGORY: '2.5.4.15',
  ORGANIZATIONIDENTIFIER: '2.5.4.97',
  JURISDICTIONC: '1.3.6.1.4.1.311.60.2.1.3',
  JURISDICTIONST: '1.3.6.1.4.1.311.60.2.1.2',
  JURISDICTIONL: '1.3.6.1.4.1.311.60.2.1.1',
};

function attributeOid(type: string): string {
  if (/^\d+(\.\d+)+$/.test(type)) return type;
  const oid = ATTRIBUTE_OIDS[type.toUpperCase()];
  if (!oid) throw new DnSyntaxError(`unknown attribute type ${JSON.stringify(type)}`);
  return oid;
}

/** One RDN: its attribute=value pairs sorted, since a multi-valued RDN is a set. */
function canonical(rdns: [string, string][][]): string {
  return JSON.stringify(rdns.map((rdn) => rdn.map(([oid, value]) => `${oid}=${value}`).sort()));
}

/** Parses an RFC 4514 string (escapes `\,` and `\2C` both); throws DnSyntaxError. */
function parseDn(text: string): [string, string][][] {
  const dn = [...text]; // by code point, so a character outside the BMP stays whole
  const rdns: [string, string][][] = [[]];
  let i = 0;
  const skipSpaces = () => { while (dn[i] === ' ') i++; };
  for (;;) {
    skipSpaces();
    const typeStart = i;
    while (i < dn.length && dn[i] !== '=' && dn[i] !== ',' && dn[i] !== '+') i++;
    if (dn[i] !== '=') throw new DnSyntaxError(`expected type=value at position ${typeStart + 1}`);
    const type = dn.slice(typeStart, i).join('').trim();
    if (!type) throw new DnSyntaxError(`missing attribute type at position ${typeStart + 1}`);
    i++;
    skipSpaces();
    // Hex-encoded BER values (#04...) are refused: write the value as a string instead.
    if (dn[i] === '#') throw new DnSyntaxError(`hex-encoded values are not supported (${type})`);
    const bytes: number[] = [];
    let kept = 0; // length of the value without its unescaped trailing spaces
    while (i < dn.length && dn[i] !== ',' && dn[i] !== '+' && dn[i] !== ';') {
      if (dn[i] === '\\') {
        const hex = dn.slice(i + 1, i + 3).join('');
        if (/^[0-9a-fA-F]{2}$/.test(hex)) {
          bytes.push(parseInt(hex, 16));
          i += 3;
        } else if (i + 1 < dn.length) {
          bytes.push(...Buffer.from(dn[i + 1]!, 'utf8'));
          i += 2;
        } else {
          throw new DnSyntaxError('the DN ends in a lone backslash');
        }
        kept = bytes.length;
      } else {
        if (dn[i] === '"') throw new DnSyntaxError('quoted values are not RFC 4514: escape with \\ instead');
        bytes.push(...Buffer.from(dn[i]!, 'utf8'));
        i++;
        if (bytes[bytes.length - 1] !== 0x20) kept = bytes.length;
      }
    }
    const value = Buffer.from(bytes.slice(0, kept)).toString('utf8');
    rdns[rdns.length - 1]!.push([attributeOid(type), value]);
    if (i >= dn.length) break;
    if (dn[i] !== '+') rdns.push([]);
    i++;
  }
  return rdns;
}

/** The registered DN's comparable form; throws DnSyntaxError for a malformed one. */
export function normaliseDn(dn: string): string {
  return canonical(parseDn(dn));
}

/** The certificate subject's comparable form (DER order reversed: most specific first). */
export function certificateSubjectDn(cert: X509Certificate): string {
  const subject = new x509.X509Certificate(cert.raw).subjectName.toJSON();
  const rdns = subject.reverse().map((rdn) => Object.entries(rdn)
    .flatMap(([type, values]) => values.map((value): [string, string] => [attributeOid(type), value])));
  return canonical(rdns);
}
