// The Rules page: a resource's document as YAML in an editor, Check (the
// dry run: errors at their field, the diff and the rules the change loses),
// Apply (PUT, enforced live), and the last push the gateway rejected.

import {$, el, fill, setStatus} from './dom.js';
import {call, get, session} from './api.js';
import {toYAML} from './yaml.js';

let docs = [];
let loadedText = '';
let errorLines = new Map();
let autoTimer = 0; // the check that follows typing
let seq = 0; // the latest check or apply: older answers are dropped
let dryRunMissing = false;
let lostText = null; // the text whose last Check listed rules it removes
let armed = false; // Apply was clicked once on that text: the next click applies

/** disarm puts Apply back to one click. */
function disarm() {
  armed = false;
  $('rules-apply').textContent = 'Apply';
}

/** docYAML turns a document of GET /api/rules into the YAML one edits. */
export function docYAML(d) {
  if (d.rules) return toYAML(d.rules);
  // The system document holds system and gpu only: its name is its key.
  const rest = {...d};
  delete rest.source;
  delete rest.resource;
  return toYAML(rest);
}

/** initRules wires the page's controls. */
export function initRules() {
  const ed = $('rules-editor');
  ed.addEventListener('input', () => {
    if (armed) disarm();
    gutter();
    dirty();
    // Check as one types (the dry run is a read): 700 ms after the last key.
    clearTimeout(autoTimer);
    if (!dryRunMissing && isDirty()) autoTimer = setTimeout(check, 700);
  });
  ed.addEventListener('scroll', () => { $('rules-gutter').scrollTop = ed.scrollTop; });
  ed.addEventListener('keydown', (e) => {
    if (e.key === 'Tab' && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey) { // two spaces, as YAML wants
      e.preventDefault();
      ed.setRangeText('  ', ed.selectionStart, ed.selectionEnd, 'end');
      gutter();
    }
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); check(); }
  });
  $('rules-resource').addEventListener('change', () => select($('rules-resource').value));
  $('rules-reload').addEventListener('click', () => loadRules(true));
  $('rules-check').addEventListener('click', check);
  $('rules-apply').addEventListener('click', apply);
}

/** loadRules reads GET /api/rules; force reloads the editor too. */
export async function loadRules(force) {
  const a = await get('/api/rules');
  if (!a.ok) {
    setStatus($('rules-status'), `Cannot read the rules: ${a.problem()}`, 'error');
    return;
  }
  const body = a.body || {};
  docs = body.documents || [];
  const sel = $('rules-resource');
  const keep = sel.value;
  fill(sel, docs.map((d) => el('option', {value: d.resource}, d.resource)));
  if (keep && docs.some((d) => d.resource === keep)) sel.value = keep;
  const src = [body.source && `source ${body.source}`, body.revision && `revision ${body.revision}`,
    body.applied_at && `applied ${new Date(body.applied_at).toLocaleString('en-GB')}`].filter(Boolean).join(', ');
  $('rules-source').textContent = src || 'rules from files (read-only)';
  rejection(body.last_rejection);
  if (force || !isDirty() || !keep) select(sel.value);
}

function rejection(r) {
  const box = $('rules-rejection');
  if (!r) {
    fill(box, el('p', {class: 'muted'}, 'None: every push since the start was applied.'));
    return;
  }
  fill(box, el('div', {class: 'rejection', role: 'group', 'aria-label': 'Last rejected push'},
    el('p', {}, el('strong', {}, r.key || ''), r.revision ? ` at revision ${r.revision}` : '',
      r.time || r.at ? ` (${new Date(r.time || r.at).toLocaleString('en-GB')})` : ''),
    el('ul', {}, (r.errors || []).map((e) => el('li', {}, e)))));
}

function select(resource) {
  clearTimeout(autoTimer);
  seq++;
  const d = docs.find((x) => x.resource === resource);
  loadedText = d ? docYAML(d) : '';
  $('rules-editor').value = loadedText;
  clearResults();
  gutter();
  dirty();
}

const isDirty = () => $('rules-editor').value !== loadedText;

function dirty() {
  setStatus($('rules-status'), isDirty() ? 'Edited: Check it, then Apply.' : '', '');
}

function clearResults() {
  lostText = null;
  disarm();
  errorLines = new Map();
  fill($('rules-errors'));
  $('rules-diff').textContent = 'Check a document to see what it changes.';
  fill($('rules-lost'));
}

/** gutter draws the line numbers, marking the lines with errors. */
function gutter() {
  const n = $('rules-editor').value.split('\n').length;
  const g = $('rules-gutter');
  const lines = [];
  for (let i = 1; i <= n; i++) {
    const msg = errorLines.get(i);
    lines.push(el('div', {class: msg ? 'err' : '', title: msg || undefined, 'data-line': i}, String(i)));
  }
  fill(g, lines);
  g.scrollTop = $('rules-editor').scrollTop;
}

const docRE = /document \d+(?: \([^)]*\))?: (.*)$/;

/** fieldsOf gives the answer's field errors, parsing the strings of older gateways. */
export function fieldsOf(body) {
  if (body && Array.isArray(body.fields) && body.fields.length) return body.fields;
  return ((body && body.errors) || [body && body.detail].filter(Boolean)).map((s) => {
    const m = String(s).match(docRE);
    const rest = m ? m[1] : String(s);
    const i = rest.indexOf(': ');
    return i > 0 && !/\s/.test(rest.slice(0, i)) ? {path: rest.slice(0, i), message: rest.slice(i + 2)} : {path: '', message: rest};
  });
}

/** locate finds the line of a field path such as flow[0].threshold in YAML text (1-based, 0 if not found). */
export function locate(text, path) {
  if (!path) return 0;
  const lines = text.split('\n');
  const segs = [];
  for (const p of path.split('.')) {
    const m = p.match(/^([^[]+)((?:\[\d+\])*)$/);
    if (!m) return 0;
    segs.push({key: m[1], idx: [...m[2].matchAll(/\[(\d+)\]/g)].map((x) => Number(x[1]))});
  }
  let from = 0, to = lines.length, indent = -1, found = 0;
  const ind = (l) => l.match(/^\s*/)[0].length;
  for (const s of segs) {
    let hit = -1;
    for (let i = from; i < to; i++) {
      const l = lines[i];
      if (!l.trim() || l.trim().startsWith('#')) continue;
      const lead = l.replace(/^(\s*)- /, '$1  ');
      if (ind(lead) <= indent) break;
      const m = lead.match(/^(\s*)["']?([^"':\s]+)["']?\s*:/);
      if (m && m[2] === s.key) { hit = i; break; }
      const flow = l.match(new RegExp('[{,]\\s*["\']?' + s.key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '["\']?\\s*:'));
      if (flow) { hit = i; break; }
    }
    if (hit < 0) return found;
    found = hit + 1;
    const keyIndent = ind(lines[hit].replace(/^(\s*)- /, '$1  '));
    from = hit + 1;
    let end = lines.length;
    for (let i = hit + 1; i < lines.length; i++) {
      const l = lines[i];
      if (l.trim() && !l.trim().startsWith('#') && ind(l.replace(/^(\s*)- /, '$1  ')) <= keyIndent && !/^\s*- /.test(l)) { end = i; break; }
      if (l.trim() && /^\s*- /.test(l) && ind(l) < keyIndent) { end = i; break; }
    }
    to = end;
    indent = keyIndent;
    for (const want of s.idx) { // the want-th "- " item of the block list
      let n = -1, item = -1, itemIndent = -1;
      for (let i = from; i < to; i++) {
        const m = lines[i].match(/^(\s*)- /);
        if (m && (itemIndent < 0 || m[1].length === itemIndent)) {
          itemIndent = m[1].length;
          if (++n === want) { item = i; break; }
        }
      }
      if (item < 0) return found;
      found = item + 1;
      from = item;
      let next = to;
      for (let i = item + 1; i < to; i++) {
        const m = lines[i].match(/^(\s*)- /);
        if (m && m[1].length === itemIndent) { next = i; break; }
      }
      to = next;
      indent = itemIndent;
    }
  }
  return found;
}

function showErrors(body) {
  const text = $('rules-editor').value;
  const fields = fieldsOf(body);
  errorLines = new Map();
  const items = fields.map((f) => {
    const line = f.line || locate(text, f.path);
    if (line) errorLines.set(line, [errorLines.get(line), f.message].filter(Boolean).join('; '));
    const where = f.line ? `line ${f.line}${f.column ? ':' + f.column : ''}` : (line ? `near line ${line}` : '');
    return el('li', {},
      el('button', {type: 'button', class: 'field-error', 'data-path': f.path || '', 'data-line': line || undefined,
        onclick: () => goTo(line, f.column)},
      where && el('span', {class: 'where'}, where), f.path && el('code', {}, f.path), ' ', f.message));
  });
  fill($('rules-errors'), el('h2', {}, fields.length === 1 ? '1 problem' : `${fields.length} problems`), el('ul', {}, items));
  gutter();
}

function goTo(line, column) {
  if (!line) return;
  const ed = $('rules-editor');
  const lines = ed.value.split('\n');
  let pos = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
  const len = (lines[line - 1] || '').length;
  ed.focus();
  ed.setSelectionRange(pos + Math.max(0, (column || 1) - 1), pos + len);
  const lh = parseFloat(getComputedStyle(ed).lineHeight) || 20;
  ed.scrollTop = Math.max(0, (line - 3) * lh);
}

function showDiff(diff) {
  const pre = $('rules-diff');
  if (!diff) {
    pre.textContent = 'No change: the document is what is in force.';
    return;
  }
  fill(pre, diff.split('\n').map((l) => el('span', {class: l.startsWith('+++') || l.startsWith('---') ? 'file' :
    l.startsWith('@@') ? 'hunk' : l.startsWith('+') ? 'add' : l.startsWith('-') ? 'del' : ''}, l + '\n')));
}

function showLost(lost) {
  const box = $('rules-lost');
  if (!lost || lost.length === 0) {
    fill(box);
    return;
  }
  fill(box, el('div', {class: 'lost', role: 'alert'}, el('strong', {}, 'Applying this removes rules in force: '),
    el('ul', {}, lost.map((x) => el('li', {}, x)))));
}

async function check() {
  clearTimeout(autoTimer);
  const r = $('rules-resource').value;
  if (!r) return;
  const mine = ++seq;
  setStatus($('rules-status'), 'Checking…');
  const text = $('rules-editor').value;
  const a = await call('POST', `/api/rules/${encodeURIComponent(r)}/dry-run`, text, 'application/yaml');
  if (mine !== seq) return; // the text changed, or Apply ran, since
  if (a.missing) {
    dryRunMissing = true;
    clearResults();
    gutter();
    setStatus($('rules-status'), 'The dry run is not available on this gateway (no POST /api/rules/:resource/dry-run): Apply still validates.', 'warn');
    return;
  }
  if (a.status === 422) {
    showErrors(a.body);
    showDiff('');
    $('rules-diff').textContent = 'Fix the problems to see the diff.';
    fill($('rules-lost'));
    setStatus($('rules-status'), 'Invalid: see the problems below.', 'error');
    return;
  }
  if (!a.ok || !a.body) {
    setStatus($('rules-status'), `Check failed: ${a.ok ? 'the gateway answered no result' : a.problem()}`, 'error');
    return;
  }
  errorLines = new Map();
  fill($('rules-errors'));
  gutter();
  showDiff(a.body.diff);
  showLost(a.body.lost);
  lostText = a.body.lost && a.body.lost.length ? text : null;
  disarm();
  setStatus($('rules-status'), a.body.lost && a.body.lost.length ? 'Valid, but it removes rules: see below.' : 'Valid.', a.body.lost && a.body.lost.length ? 'warn' : 'ok');
}

async function apply() {
  clearTimeout(autoTimer);
  seq++;
  const r = $('rules-resource').value;
  if (!r) return;
  if (!session.can_write) {
    setStatus($('rules-status'), session.read_only ? 'This gateway is read-only (no admin token configured).' : 'Log in with the admin token to apply.', 'warn');
    return;
  }
  if (lostText !== null && lostText === $('rules-editor').value && !armed) {
    armed = true;
    $('rules-apply').textContent = 'Confirm: apply, removing rules';
    setStatus($('rules-status'), 'Applying this removes the rules listed below: click Apply again to confirm.', 'warn');
    return;
  }
  disarm();
  setStatus($('rules-status'), 'Applying…');
  const a = await call('PUT', `/api/rules/${encodeURIComponent(r)}`, $('rules-editor').value, 'application/yaml');
  if (a.status === 422) {
    showErrors(a.body);
    setStatus($('rules-status'), 'Not applied: the document is invalid.', 'error');
    return;
  }
  if (!a.ok) {
    setStatus($('rules-status'), `Not applied: ${a.problem()}`, 'error');
    return;
  }
  const rev = a.body && (a.body.revision || a.body.rev);
  await loadRules(true);
  setStatus($('rules-status'), `Applied${rev ? ` at revision ${rev}` : ''}: in force now.`, 'ok');
  $('rules-status').dataset.applied = String(rev || Date.now());
}
