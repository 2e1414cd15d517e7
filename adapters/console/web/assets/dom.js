// Small DOM helpers: every node is built with createElement and textContent,
// never from HTML strings, so nothing the gateway returns can inject markup.

/** el builds an element: el('td', {class: 'num'}, 'text', child, ...). */
export function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'text') n.textContent = v;
    else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) n.setAttribute(k, String(v));
    else if (k in n && typeof v !== 'string') n[k] = v;
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

/** $ finds one element by id. */
export const $ = (id) => document.getElementById(id);

/** fill replaces a node's children. */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
}

/** rows fills a table's tbody, or shows one row with the empty text. */
export function rows(table, list, render, empty) {
  const body = table.tBodies[0];
  const cols = table.tHead ? table.tHead.rows[0].cells.length : 1;
  if (!list || list.length === 0) {
    fill(body, el('tr', {class: 'empty'}, el('td', {colSpan: cols}, empty)));
    return;
  }
  fill(body, list.map(render));
}

/** fmt formats a number for people: up to 2 decimals, no trailing zeros. */
export function fmt(x, digits = 2) {
  if (x === undefined || x === null || Number.isNaN(x)) return '–';
  if (typeof x !== 'number') return String(x);
  return x.toLocaleString('en-US', {maximumFractionDigits: digits});
}

/** ms formats milliseconds as ms or s. */
export function ms(x) {
  if (x === undefined || x === null || x <= 0) return '–';
  return x >= 1000 ? fmt(x / 1000, 2) + ' s' : fmt(x, 0) + ' ms';
}

/** bytes formats a byte count in GiB or MiB. */
export function bytes(n) {
  if (!n) return '0';
  const gib = n / 2 ** 30;
  return gib >= 1 ? fmt(gib, 1) + ' GiB' : fmt(n / 2 ** 20, 0) + ' MiB';
}

/** time formats an RFC 3339 time as local hh:mm:ss. */
export function clock(t) {
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleTimeString('en-GB');
}

/** setStatus writes a message into a status element with a tone class. */
export function setStatus(node, text, tone = '') {
  node.textContent = text;
  node.className = tone ? 'tone-' + tone : '';
}
