// The Planner page: GET /api/plan (the sustainable rate per resource from
// the farm and the measured job times, the proposed rules as YAML) and
// "Apply in shadow": each proposed document PUT with mode: shadow, after a
// dry run that names the rules it would remove.

import {$, el, fill, rows, fmt, ms, setStatus} from './dom.js';
import {call, get, session} from './api.js';
import {splitDocuments} from './yaml.js';

let pending = null; // documents waiting for a second click (they remove rules)

/** initPlanner wires the page. */
export function initPlanner() {
  $('plan-refresh').addEventListener('click', loadPlan);
  $('plan-apply-shadow').addEventListener('click', applyShadow);
}

/** loadPlan reads the plan, with its YAML in shadow mode. */
export async function loadPlan() {
  pending = null;
  $('plan-apply-shadow').textContent = 'Apply in shadow';
  const a = await get('/api/plan?shadow=true');
  if (a.missing) {
    setStatus($('plan-status'), 'The planner is not available on this gateway (no GET /api/plan).', 'warn');
    rows($('plan-table'), [], null, 'not available');
    $('plan-yaml').textContent = '';
    $('plan-apply-shadow').disabled = true;
    return;
  }
  if (!a.ok) {
    setStatus($('plan-status'), `Cannot compute the plan: ${a.problem()}`, 'error');
    return;
  }
  const p = a.body;
  setStatus($('plan-status'), '');
  $('plan-apply-shadow').disabled = !session.can_write;
  $('plan-farm').textContent = `Farm: ${(p.backends || []).map((b) => `${b.name} × ${b.slots}`).join(', ') || 'no backends'}` +
    ` = ${fmt(p.slots_total)} slot(s).`;
  rows($('plan-table'), p.resources || [], (r) => {
    const pr = r.proposed || {};
    return el('tr', {},
      el('th', {scope: 'row'}, r.resource),
      el('td', {class: 'num'}, ms(r.job_time_ms)), el('td', {class: 'num'}, ms(r.p95_ms)), el('td', {class: 'num'}, fmt(r.samples || 0)),
      el('td', {}, el('span', {class: 'badge ' + (r.measured ? 'ok' : 'muted')}, r.source || (r.measured ? 'measured' : 'estimate'))),
      el('td', {class: 'num'}, fmt(r.sustainable_per_sec)),
      el('td', {class: 'num'}, pr.flow_threshold !== undefined ? `${fmt(pr.flow_threshold)} / ${pr.window || '1s'}` : '–'),
      el('td', {class: 'num'}, fmt(pr.concurrency)),
      el('td', {}, pr.cost ? Object.entries(pr.cost).map(([k, v]) => `${k}: ${v}`).join(', ') : '–'),
      el('td', {class: 'num'}, pr.queue_wait_s !== undefined ? `${fmt(pr.queue_wait_s)} s` : '–'));
  }, 'No resources.');
  fill($('plan-notes'), (p.notes || []).map((n) => el('li', {}, n)));
  $('plan-yaml').textContent = p.yaml || '';
}

async function applyShadow() {
  if (!session.can_write) {
    setStatus($('plan-status'), 'Log in with the admin token to apply.', 'warn');
    return;
  }
  const st = $('plan-status');
  let docs = pending;
  if (!docs) {
    const a = await get('/api/plan?shadow=true');
    if (!a.ok) { setStatus(st, `Cannot compute the plan: ${a.problem()}`, 'error'); return; }
    $('plan-yaml').textContent = a.body.yaml || '';
    docs = splitDocuments(a.body.yaml || '').filter((d) => d.resource);
    if (docs.length === 0) { setStatus(st, 'The plan proposes no rule document.', 'warn'); return; }
    const losses = [];
    for (const d of docs) {
      const dr = await call('POST', `/api/rules/${encodeURIComponent(d.resource)}/dry-run`, d.text, 'application/yaml');
      if (dr.status === 422) { setStatus(st, `${d.resource}: the proposal is invalid: ${((dr.body && dr.body.errors) || []).join('; ')}`, 'error'); return; }
      // Without a dry run nobody knows what the write would remove: stop.
      if (!dr.ok) { setStatus(st, `${d.resource}: the dry run failed, nothing applied: ${dr.problem()}`, 'error'); return; }
      if (dr.body && dr.body.lost && dr.body.lost.length) losses.push(`${d.resource}: ${dr.body.lost.join(', ')}`);
    }
    if (losses.length) {
      pending = docs;
      $('plan-apply-shadow').textContent = `Confirm: apply ${docs.length} document(s) in shadow`;
      setStatus(st, `Applying replaces whole documents and removes: ${losses.join(' · ')}. Click again to confirm.`, 'warn');
      return;
    }
  }
  pending = null;
  $('plan-apply-shadow').textContent = 'Apply in shadow';
  const done = [];
  for (const d of docs) {
    const a = await call('PUT', `/api/rules/${encodeURIComponent(d.resource)}`, d.text, 'application/yaml');
    if (!a.ok) { setStatus(st, `${d.resource} not applied: ${a.problem()}${done.length ? ` (applied: ${done.join(', ')})` : ''}`, 'error'); return; }
    done.push(d.resource);
  }
  setStatus(st, `Applied in shadow: ${done.join(', ')}. Watch their would-refuse counts on the Live page, then switch them to enforce on the Rules page.`, 'ok');
}
