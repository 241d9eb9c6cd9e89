// `https://user:password@host/…`: the WHATWG URL parser keeps the userinfo, and Node's
// https.request sends it as Basic credentials. Operators' URLs must carry none, and a URL
// is never logged or printed with them. Worked on the raw string, so a URL the parser
// refuses is handled the same.
const USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)[^/?#\\]*@/i;

export function hasUserinfo(url: string): boolean {
  return USERINFO.test(url);
}

/** The URL as it may be shown: its userinfo, if any, left out. */
export function withoutUserinfo(url: string): string {
  return url.replace(USERINFO, '$1');
}
