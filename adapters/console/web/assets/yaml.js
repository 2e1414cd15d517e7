// toYAML writes a rule document (plain JSON data) as block YAML, the way
// people write rule files: short maps and lists of scalars inline.

const plainKey = /^[A-Za-z_][A-Za-z0-9_]*$/;
const reserved = /^(?:true|false|yes|no|on|off|null|~|y|n)$/i;
// A value stays plain only where no YAML reader could take it for anything
// but this string: a word of safe characters that starts with a letter, or a
// Go duration (1s, 1m30s, 250ms). Everything else (numbers in any base,
// dates, " #", line breaks of any kind, flow indicators) is quoted.
const plainWord = /^[A-Za-z_](?:[A-Za-z0-9_./@+-]| (?! ))*[A-Za-z0-9_./@+-]$|^[A-Za-z_]$/;
const duration = /^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$/;

/** quote writes s as a YAML double-quoted scalar, escaping what JSON leaves raw. */
function quote(s) {
  return JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029\ufeff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function scalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : Number.isNaN(v) ? '.nan' : v > 0 ? '.inf' : '-.inf';
  if (typeof v === 'boolean') return String(v);
  const s = String(v);
  if (reserved.test(s) || !(plainWord.test(s) || duration.test(s))) return quote(s);
  return s;
}

function key(k) {
  return plainKey.test(k) && !reserved.test(k) ? k : quote(k);
}

const isScalar = (v) => v === null || typeof v !== 'object';

function inline(v) {
  if (Array.isArray(v)) return v.every(isScalar) ? '[' + v.map(scalar).join(', ') + ']' : null;
  if (v && typeof v === 'object') {
    const e = Object.entries(v);
    return e.every(([, x]) => isScalar(x)) ? '{' + e.map(([k, x]) => key(k) + ': ' + scalar(x)).join(', ') + '}' : null;
  }
  return scalar(v);
}

function block(v, indent, out) {
  const pad = ' '.repeat(indent);
  if (Array.isArray(v)) {
    for (const item of v) {
      if (isScalar(item)) { out.push(pad + '- ' + scalar(item)); continue; }
      const sub = [];
      block(item, indent + 2, sub);
      if (sub.length === 0) { out.push(pad + '- {}'); continue; }
      out.push(pad + '- ' + sub[0].slice(indent + 2), ...sub.slice(1));
    }
    return;
  }
  for (const [k, x] of Object.entries(v)) {
    const one = inline(x);
    const empty = x && typeof x === 'object' && Object.keys(x).length === 0;
    if (isScalar(x) || empty || (one !== null && one.length + indent + k.length <= 72 && !(Array.isArray(x) && x.length > 0 && !x.every(isScalar)))) {
      out.push(pad + key(k) + ': ' + (one ?? (Array.isArray(x) ? '[]' : '{}')));
      continue;
    }
    out.push(pad + key(k) + ':');
    block(x, Array.isArray(x) ? indent + 2 : indent + 2, out);
  }
}

/** toYAML renders a JSON value (a rule document) as YAML text. */
export function toYAML(doc) {
  const out = [];
  block(doc, 0, out);
  return out.join('\n') + '\n';
}

/**
 * splitDocuments splits a multi-document YAML stream into its documents,
 * each with the resource it names (top-level `resource:`).
 */
export function splitDocuments(text) {
  const docs = [];
  for (const part of text.split(/^---[ \t]*(?:#.*)?$/m)) {
    if (!part.trim() || part.split('\n').every((l) => !l.trim() || l.trim().startsWith('#'))) continue;
    const m = part.match(/^resource:[ \t]*["']?([^"'\s#]+)/m);
    docs.push({resource: m ? m[1] : '', text: part.replace(/^\n+/, '')});
  }
  return docs;
}
