// Whether a notebook differs from its last saved state only by the kernel's language_info: pure,
// tested by jest.

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Deep equality of JSON values, whatever the order of object keys. */
export function sameJson(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) {
    return true;
  }
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) {
    return false;
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => sameJson(item, b[i]))
    );
  }
  const keys = Object.keys(a);
  return (
    keys.length === Object.keys(b).length &&
    keys.every(key => Object.prototype.hasOwnProperty.call(b, key) && sameJson(a[key], b[key]))
  );
}

/** True when `now` is `saved` with only `metadata.language_info` changed, its language the same (what
 * JupyterLab writes in when a kernel starts: the kernel's version, lexer, codemirror mode). */
export function onlyLanguageInfoChanged(saved: any, now: any): boolean {
  const before = saved?.metadata?.language_info;
  const after = now?.metadata?.language_info;
  if (!before || !after || before.name !== after.name) {
    return false;
  }
  const withSavedInfo = { ...now, metadata: { ...now.metadata, language_info: before } };
  return sameJson(saved, withSavedInfo);
}
