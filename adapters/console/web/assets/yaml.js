// toYAML writes a rule document (plain JSON data) as block YAML, the way
// people write rule files: short maps and lists of scalars inline.

const plainKey = /^[A-Za-z_][A-Za-z0-9_]*$/;
const reserved = /^(?:true|false|yes|no|on|off|null|~|y|n)$/i;
const numeric = /^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$|^0x[0-9a-fA-F]+$|^[-+]?\.(?:inf|nan)$/i;

function scalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  const s = String(v);
  if (s === '' || reserved.test(s) || numeric.test(s) || /^[\s\-?:,[\]{}#&*!|>'"%@`]/.test(s) ||
      /[:#]\s|\s$|[\n\t]|:$|[{}[\],]/.test(s)) return JSON.stringify(s);
  return s;
}

function key(k) {
  return plainKey.test(k) && !reserved.test(k) ? k : JSON.stringify(k);
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
