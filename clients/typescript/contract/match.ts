// Pattern matcher of the contract cases (tests/contract/README.md, "Patterns").

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isObject(v: unknown): v is { [key: string]: Json } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isMatcher(v: unknown): v is { [key: string]: Json } {
  return isObject(v) && Object.keys(v).length > 0 && Object.keys(v).every((k) => k.startsWith("$"));
}

/** A JSON number or numeric string (proto3 JSON int64) as a number, else undefined. */
function num(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  if (typeof v === "string" && v.trim() !== "" && !Number.isNaN(Number(v))) return Number(v);
  return undefined;
}

function length(v: unknown): number {
  if (typeof v === "string") return [...v].length;
  if (Array.isArray(v)) return v.length;
  if (isObject(v)) return Object.keys(v).length;
  return -1;
}

const show = (v: unknown): string => JSON.stringify(v) ?? "undefined";

function matchMatcher(path: string, m: { [key: string]: Json }, actual: unknown, present: boolean): string | undefined {
  if ("$present" in m && m["$present"] !== present) {
    return present ? `${path}: want absent, got ${show(actual)}` : `${path}: missing`;
  }
  if (!present) {
    return Object.keys(m).length === 1 && "$present" in m ? undefined : `${path}: missing (want ${show(m)})`;
  }
  for (const k of Object.keys(m).sort()) {
    const arg = m[k];
    switch (k) {
      case "$present":
        break;
      case "$gt":
      case "$gte":
      case "$lt":
      case "$lte": {
        const want = num(arg);
        const got = num(actual);
        if (want === undefined || got === undefined) return `${path}: ${k} needs numbers, got ${show(actual)}`;
        const ok = k === "$gt" ? got > want : k === "$gte" ? got >= want : k === "$lt" ? got < want : got <= want;
        if (!ok) return `${path}: want ${k} ${show(arg)}, got ${show(actual)}`;
        break;
      }
      case "$nonEmpty":
        if (length(actual) > 0 !== (arg === true)) return `${path}: want $nonEmpty=${show(arg)}, got ${show(actual)}`;
        break;
      case "$contains":
        if (typeof actual !== "string" || typeof arg !== "string" || !actual.includes(arg)) {
          return `${path}: want a string containing ${show(arg)}, got ${show(actual)}`;
        }
        break;
      case "$len":
        if (length(actual) !== num(arg)) return `${path}: want length ${show(arg)}, got ${show(actual)}`;
        break;
      default:
        return `${path}: unknown matcher ${k}`;
    }
  }
  return undefined;
}

/** Why actual does not match pattern, or undefined when it matches. */
export function match(path: string, pattern: Json, actual: unknown): string | undefined {
  if (isMatcher(pattern)) return matchMatcher(path, pattern, actual, true);
  if (isObject(pattern)) {
    if (!isObject(actual)) return `${path}: want an object, got ${show(actual)}`;
    for (const k of Object.keys(pattern).sort()) {
      const sub = pattern[k] as Json;
      const present = Object.prototype.hasOwnProperty.call(actual, k);
      if (isMatcher(sub)) {
        const err = matchMatcher(`${path}.${k}`, sub, actual[k], present);
        if (err) return err;
        continue;
      }
      if (!present) return `${path}.${k}: missing (want ${show(sub)})`;
      const err = match(`${path}.${k}`, sub, actual[k]);
      if (err) return err;
    }
    return undefined;
  }
  if (Array.isArray(pattern)) {
    if (!Array.isArray(actual)) return `${path}: want an array, got ${show(actual)}`;
    for (const [i, want] of pattern.entries()) {
      if (!actual.some((v) => match("", want, v) === undefined)) {
        return `${path}[${i}]: no element matches ${show(want)} in ${show(actual)}`;
      }
    }
    return undefined;
  }
  if (typeof pattern === "number") {
    return num(actual) === pattern ? undefined : `${path}: want ${show(pattern)}, got ${show(actual)}`;
  }
  return pattern === actual ? undefined : `${path}: want ${show(pattern)}, got ${show(actual)}`;
}

/**
 * The string at path (dotted proto field names, e.g. "client.token_prefix") of a
 * response's JSON view: the value a case's "save" stores for later cases. Throws
 * when the field is missing or not a string.
 */
export function savedValue(view: unknown, path: string): string {
  let v: unknown = view;
  for (const key of path.split(".")) {
    if (!isObject(v)) throw new Error(`the response has no field ${JSON.stringify(path)} (${key} is not a message)`);
    if (!Object.prototype.hasOwnProperty.call(v, key)) {
      // Field names only: the values may be secrets (tokens).
      const fields = Object.keys(v).sort().join(", ");
      throw new Error(`the response has no field ${JSON.stringify(path)} (fields there: ${fields})`);
    }
    v = v[key];
  }
  if (typeof v !== "string") throw new Error(`${path} is not a string`);
  return v;
}
