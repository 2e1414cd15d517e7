// The Refusals page: the recent refusals (GET /api/blocked) with filters,
// and the active bans (GET /api/bans) with an Unban button (DELETE /api/bans).

import {$, el, rows, clock, fmt, setStatus} from './dom.js';
import {call, get, session} from './api.js';

const kinds = ['flow', 'hotspot', 'concurrency', 'ban', 'system', 'cpu', 'gpu', 'tier_rate'];
let timer = 0;
let lastRefusals = ''; // what the tables show, to redraw only on a change
let lastBans = '';

/** initRefusals wires the filters. */
export function initRefusals() {
  const kind = $('f-kind');
  for (const k of kinds) kind.append(el('option', {value: k}, k));
  $('refusals-filters').addEventListener('submit', (e) => { e.preventDefault(); refresh(); });
  for (const id of ['f-resource', 'f-kind', 'f-shadow']) $(id).addEventListener('change', refresh);
  $('f-auto').addEventListener('change', schedule);
  $('bans-table').addEventListener('click', (e) => {
    const b = e.target.closest('button.unban');
    if (b) unban(b.dataset.resource, b.dataset.who, b);
  });
}

/** setResources lists the resources in the filter. */
export function setResources(names) {
  const sel = $('f-resource');
  const keep = sel.value;
  const have = [...sel.options].map((o) => o.value).slice(1).join();
  if (have === names.join()) return;
  sel.replaceChildren(el('option', {value: ''}, 'all'), ...names.map((n) => el('option', {value: n}, n)));
  sel.value = names.includes(keep) ? keep : '';
}

/** showRefusals starts refreshing the page; hideRefusals stops. */
export function showRefusals() { refresh(); schedule(); }
export function hideRefusals() { clearInterval(timer); timer = 0; }

function schedule() {
  clearInterval(timer);
  timer = $('f-auto').checked ? setInterval(refresh, 2000) : 0;
}

function filters() {
  return {resource: $('f-resource').value, kind: $('f-kind').value, client: $('f-client').value.trim(), shadow: $('f-shadow').value};
}

/**
 * matches applies the exact filters in the page too, for gateways that
 * ignore them. Not the client: the gateway canonicalises it (an IPv6
 * address matches its /64, ::ffff:a.b.c.d matches a.b.c.d), so the rows it
 * returns for a client are the answer.
 */
function matches(b, f) {
  if (f.resource && b.resource !== f.resource) return false;
  if (f.kind && b.kind !== f.kind) return false;
  if (f.shadow === 'only' && !b.shadow) return false;
  if (f.shadow === 'exclude' && b.shadow) return false;
  return true;
}

async function refresh() {
  const f = filters();
  const q = new URLSearchParams({limit: '200'});
  for (const [k, v] of Object.entries(f)) if (v && !(k === 'shadow' && v === 'include')) q.set(k, v);
  const [blocked, bans] = await Promise.all([get('/api/blocked?' + q), get('/api/bans')]);
  const table = $('refusals-table');
  if (!blocked.ok) {
    lastRefusals = '';
    rows(table, [], null, `Cannot read the refusals: ${blocked.problem()}`);
  } else {
    const list = (blocked.body.blocked || []).filter((b) => matches(b, f));
    const key = JSON.stringify(list);
    if (key === lastRefusals) return showBans(bans); // unchanged: keep the rows (and the focus)
    lastRefusals = key;
    rows(table, list, (b) => el('tr', {class: b.shadow ? 'shadow' : ''},
      el('td', {}, el('time', {datetime: b.time}, clock(b.time))), el('td', {}, b.resource), el('td', {}, el('code', {}, b.rule || '')),
      el('td', {}, b.kind), el('td', {}, b.origin || ''), el('td', {}, b.tenant || ''), el('td', {}, b.tier || ''),
      el('td', {class: 'num'}, b.size ? fmt(b.size) : ''), el('td', {}, b.value ?? ''),
      el('td', {}, b.shadow ? el('span', {class: 'badge shadow'}, 'would refuse') : '')),
    'No refusals match.');
  }
  showBans(bans);
}

function showBans(a) {
  const table = $('bans-table');
  if (a.missing) {
    setStatus($('bans-status'), 'The list of bans is not available on this gateway (no GET /api/bans).', 'warn');
    rows(table, [], null, 'not available');
    return;
  }
  if (!a.ok) {
    setStatus($('bans-status'), `Cannot read the bans: ${a.problem()}`, 'error');
    return;
  }
  const list = a.body.bans || [];
  const key = JSON.stringify([list.map((b) => [b.resource, b.who, b.until]), session.can_write]);
  if (key === lastBans) { // the same bans: count their time down in place
    for (const td of table.querySelectorAll('td[data-until]')) {
      td.textContent = `${fmt(Math.max(0, (new Date(td.dataset.until) - Date.now()) / 1000), 0)} s`;
    }
    return;
  }
  lastBans = key;
  if ($('bans-status').className !== 'tone-ok') setStatus($('bans-status'), '');
  rows(table, list, (b) => el('tr', {},
    el('td', {}, b.resource || 'every resource'), el('td', {}, b.subject), el('td', {}, el('code', {}, b.who)),
    el('td', {}, el('time', {datetime: b.until}, clock(b.until))), el('td', {class: 'num', 'data-until': b.until}, `${fmt(b.remaining_s, 0)} s`),
    el('td', {}, el('button', {type: 'button', class: 'unban', 'data-resource': b.resource || '', 'data-who': b.who,
      disabled: !session.can_write, title: session.can_write ? undefined : 'Log in with the admin token to lift bans',
      'aria-label': `Unban ${b.who}${b.resource ? ' on ' + b.resource : ''}`}, 'Unban'))),
  'No client is banned.');
}

async function unban(resource, who, button) {
  button.disabled = true;
  const q = new URLSearchParams({who});
  if (resource) q.set('resource', resource);
  const a = await call('DELETE', '/api/bans?' + q);
  if (a.ok) setStatus($('bans-status'), `Lifted ${a.body && a.body.lifted !== undefined ? a.body.lifted : ''} ban(s) of ${who}.`, 'ok');
  else setStatus($('bans-status'), `Unban failed: ${a.problem()}`, 'error');
  refresh();
}
