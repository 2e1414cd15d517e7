// The sluice console: a single page with hash routes (#/live #/rules
// #/refusals #/gpus #/planner) over the gateway's operator API. No build
// step: ES modules served from the binary, uPlot vendored beside them.

import {$, setStatus} from './dom.js';
import {loadSession, login, logout, onSession, session} from './api.js';
import {initLive, latestSnapshot, resizeCharts, startFeed, subscribe} from './live.js';
import {initRules, loadRules} from './rules.js';
import {hideRefusals, initRefusals, setResources, showRefusals} from './refusals.js';
import {drawGPUs} from './gpus.js';
import {initPlanner, loadPlan} from './planner.js';

// A blocked inline style or script, or a request elsewhere, is a bug: say so.
document.addEventListener('securitypolicyviolation', (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline code'} (${e.sourceFile || ''}:${e.lineNumber || ''})`);
});

const pages = ['live', 'rules', 'refusals', 'gpus', 'planner'];
let current = '';

function route() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const page = pages.includes(name) ? name : 'live';
  const locked = session.protect_reads && !session.logged_in;
  for (const p of pages) {
    $('page-' + p).hidden = locked || p !== page;
    const a = $('nav-' + p);
    if (p === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  $('nav').hidden = locked;
  if (locked) {
    if (current === 'refusals') hideRefusals();
    current = '';
    return;
  }
  if (page !== current) {
    if (current === 'refusals') hideRefusals();
    current = page;
    document.title = `${$('nav-' + page).textContent} · sluice console`;
    if (page === 'live') resizeCharts();
    if (page === 'rules') loadRules(false);
    if (page === 'refusals') showRefusals();
    if (page === 'planner') loadPlan();
    if (page === 'gpus' && latestSnapshot()) drawGPUs(latestSnapshot().system, latestSnapshot().backends);
  }
}

function drawSession(s) {
  const form = $('login-form');
  form.hidden = s.logged_in || s.read_only;
  $('logout').hidden = !s.logged_in;
  $('readonly-banner').hidden = !s.read_only;
  $('protect-banner').hidden = !(s.protect_reads && !s.logged_in);
  $('session-state').textContent = s.logged_in ? 'Logged in: changes allowed' : s.read_only ? 'Read-only' : 'Viewing (log in to change)';
  document.body.dataset.session = s.logged_in ? 'admin' : s.read_only ? 'read-only' : 'viewer';
  for (const id of ['rules-apply', 'plan-apply-shadow']) {
    $(id).disabled = !s.can_write;
    $(id).title = s.can_write ? '' : (s.read_only ? 'Read-only gateway: no admin token configured' : 'Log in with the admin token first');
  }
  for (const b of document.querySelectorAll('button.unban')) b.disabled = !s.can_write;
}

async function main() {
  initLive();
  initRules();
  initRefusals();
  initPlanner();
  subscribe((snap) => {
    setResources((snap.resources || []).map((r) => r.resource));
    if (current === 'gpus') drawGPUs(snap.system, snap.backends);
  });
  onSession(drawSession);
  onSession((s) => { if (current && s.protect_reads && !s.logged_in) route(); }); // the session ended: lock the page
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const err = await login($('login-token').value);
    $('login-token').value = '';
    $('login-error').hidden = !err;
    $('login-error').textContent = err;
    if (!err) {
      startFeed();
      current = '';
      route();
    }
  });
  $('logout').addEventListener('click', async () => {
    await logout();
    startFeed();
    current = '';
    route();
  });
  window.addEventListener('hashchange', route);
  try {
    await loadSession();
  } catch (e) {
    setStatus($('live-status'), `Cannot reach the gateway: ${e.message}`, 'error');
  }
  startFeed();
  route();
  document.body.dataset.ready = 'true';
}

main();
