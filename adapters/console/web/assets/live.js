// The live feed: one snapshot a second from GET /api/live (Server-Sent
// Events, shared by every viewer), or, where the gateway has no stream, the
// same figures polled from /api/resources, /api/system and /api/backends.
// The Live page draws a uPlot chart per resource from it.

import uPlot from './vendor/uplot/uPlot.esm.js';
import {$, el, fill, fmt, ms, setStatus} from './dom.js';
import {get} from './api.js';

const windowPoints = 120; // two minutes at one snapshot a second
const subscribers = new Set();
let latest = null;
let source = null;
let pollTimer = 0;
let retryTimer = 0;
let retries = 0; // stream failures in a row, for the backoff
let mode = '';
let notice = ''; // the last frame the page set aside, and why

/** subscribe calls fn with every snapshot (and the latest one at once). */
export function subscribe(fn) {
  subscribers.add(fn);
  if (latest) fn(latest);
  return () => subscribers.delete(fn);
}

/** latestSnapshot is the last snapshot received, or null. */
export function latestSnapshot() {
  return latest;
}

/** publish hands a snapshot to every subscriber, unless it is incomplete. */
export function publish(snap) {
  // A frame the gateway could not fill (it sends {"time", "error"} when a
  // snapshot fails to encode) would wipe the charts and the filters: keep
  // what is drawn and say so.
  if (!snap || snap.error || !Array.isArray(snap.resources)) {
    notice = `The gateway sent an incomplete update${snap && snap.error ? ` (${snap.error})` : ''}; showing the last good one.`;
    status();
    return;
  }
  if (notice) { notice = ''; status(); }
  latest = snap;
  for (const fn of subscribers) fn(snap);
}

/** startFeed opens the stream (again, after a login). */
export function startFeed() {
  stopFeed();
  mode = 'connecting';
  status();
  source = new EventSource('/api/live');
  source.addEventListener('stats', (e) => {
    retries = 0;
    if (mode !== 'stream') { mode = 'stream'; status(); }
    let snap;
    try { snap = JSON.parse(e.data); } catch (err) { console.error('bad /api/live event', err); return; }
    publish(snap);
  });
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      // The browser gives up on a non-200 answer: find out why, then open
      // the stream again later, or poll where the gateway has no stream.
      source.close();
      source = null;
      whyClosed();
    } else {
      mode = 'reconnecting';
      status();
    }
  };
}

/** whyClosed asks /api/live for its status: 404 means no stream here (poll), anything else a retry with backoff. */
async function whyClosed() {
  let code = 0;
  const abort = new AbortController();
  try {
    const r = await fetch('/api/live', {credentials: 'same-origin', cache: 'no-store', signal: abort.signal});
    code = r.status;
  } catch { /* unreachable: retry */ }
  abort.abort(); // the headers are enough; a 200 would stream forever
  if (source || pollTimer || retryTimer) return; // started again meanwhile
  if (code === 404) { startPolling(); return; }
  mode = code === 401 || code === 403 ? 'login' : 'reconnecting';
  status();
  const delay = Math.min(30000, 1000 * 2 ** Math.min(retries, 5));
  retries++;
  retryTimer = setTimeout(() => { retryTimer = 0; startFeed(); }, delay);
}

/** stopFeed closes the stream and stops polling. */
export function stopFeed() {
  if (source) source.close();
  source = null;
  clearInterval(pollTimer);
  pollTimer = 0;
  clearTimeout(retryTimer);
  retryTimer = 0;
}

function startPolling() {
  mode = 'polling';
  status();
  let busy = false;
  const tick = async () => {
    if (busy) return; // the last tick has not been answered yet
    busy = true;
    let res, sys, back;
    try {
      [res, sys, back] = await Promise.all([get('/api/resources'), get('/api/system'), get('/api/backends')]);
    } finally {
      busy = false;
    }
    if (!res.ok || !res.body) {
      mode = res.status === 401 || res.status === 403 ? 'login' : 'down';
      status();
      return;
    }
    if (mode !== 'polling') { mode = 'polling'; status(); }
    publish({time: new Date().toISOString(), resources: res.body.resources || [],
      system: sys.ok && sys.body ? sys.body : null, backends: back.ok && back.body ? back.body : null});
  };
  tick();
  pollTimer = setInterval(tick, 1000);
}

function status() {
  const n = $('live-status');
  if (!n) return;
  const text = {
    connecting: ['Connecting to the live stream…', ''],
    stream: ['Live: one update a second from /api/live.', 'ok'],
    reconnecting: ['The live stream dropped: reconnecting…', 'warn'],
    polling: ['The live stream (/api/live) is not available on this gateway: polling /api/resources every second.', 'warn'],
    login: ['Log in to see the live figures.', 'warn'],
    down: ['The gateway does not answer.', 'error'],
  }[mode] || ['', ''];
  if (notice && (mode === 'stream' || mode === 'polling')) setStatus(n, notice, 'warn');
  else setStatus(n, text[0], text[1]);
}

// ---- the Live page ----

const palette = {
  passed: '#2563eb', completed: '#16a34a', shadow: '#9333ea',
  flow: '#dc2626', hotspot: '#ea580c', concurrency: '#ca8a04', ban: '#7f1d1d', system: '#db2777',
  cpu: '#be123c', gpu: '#b45309', tier_rate: '#0f766e',
};
const extra = ['#64748b', '#0891b2', '#4d7c0f', '#a21caf'];
const colour = (k, i) => palette[k] || extra[i % extra.length];
const sum = (m) => Object.values(m || {}).reduce((a, b) => a + (Number(b) || 0), 0);

const timeAxis = {space: 80, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300], values: (u, splits) => splits.map((v) => new Date(v * 1000).toLocaleTimeString('en-GB'))};

/**
 * Chart is one resource's card: its figures and two uPlot charts. It keeps
 * two minutes of history itself, so that the rate chart can be rebuilt with
 * a series for each kind of refusal that happened in that window.
 */
class Chart {
  constructor(name) {
    this.name = name;
    this.xs = [];
    this.hist = {passed: [], completed: [], shadow: [], avg: [], p95: [], inflight: [], waiting: []};
    this.refused = {}; // kind → per-second values, aligned with xs
    this.kinds = null;
    const id = cssId(name);
    this.figs = el('dl', {class: 'kpis'});
    this.rate = el('div', {id: 'live-chart-' + id, class: 'chart', role: 'img', 'data-resource': name, 'data-points': 0,
      'aria-label': `${name}: admissions, refusals by kind, shadow would-refuse and completions per second over the last two minutes`});
    this.times = el('div', {id: 'live-time-' + id, class: 'chart', role: 'img',
      'aria-label': `${name}: job time (average and p95), jobs in flight and waiting`});
    this.card = el('article', {class: 'card', id: 'live-' + id}, el('h2', {}, name), this.figs, this.rate, this.times);
    this.u = null;
    this.t = new uPlot({width: 560, height: 130, legend: {live: false},
      series: [{}, {label: 'avg job time', stroke: '#0369a1', width: 2, scale: 'ms'},
        {label: 'p95 job time', stroke: '#0ea5e9', dash: [4, 3], width: 2, scale: 'ms'},
        {label: 'in flight', stroke: '#15803d', width: 1.5, scale: 'n'},
        {label: 'waiting', stroke: '#b91c1c', width: 1.5, scale: 'n'}],
      scales: {x: {time: true}, ms: {range: (u, min, max) => [0, Math.max(10, max * 1.1)]}, n: {range: (u, min, max) => [0, Math.max(1, max * 1.2)]}},
      axes: [timeAxis, {scale: 'ms', label: 'ms', size: 56}, {scale: 'n', side: 1, label: 'jobs', grid: {show: false}}]},
    this.timeData(), this.times);
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.card);
  }

  /** destroy lets go of the charts (uPlot keeps them in its cursor sync set and window listeners). */
  destroy() {
    this.observer.disconnect();
    if (this.u) this.u.destroy();
    this.t.destroy();
    this.u = null;
    this.card.remove();
  }

  width() {
    return Math.max(280, Math.floor(this.card.clientWidth - 26));
  }

  resize() {
    if (this.card.clientWidth === 0) return;
    const w = this.width();
    if (this.u && w !== this.u.width) this.u.setSize({width: w, height: 180});
    if (w !== this.t.width) this.t.setSize({width: w, height: 130});
  }

  timeData() {
    const h = this.hist;
    return [this.xs, h.avg, h.p95, h.inflight, h.waiting];
  }

  /** activeKinds are the kinds of refusal seen in the window. */
  activeKinds() {
    return Object.keys(this.refused).filter((k) => this.refused[k].some((v) => v > 0)).sort();
  }

  rateData() {
    const h = this.hist;
    const refused = this.kinds.length ? this.kinds.map((k) => this.refused[k])
      : [this.xs.map((_, i) => Object.values(this.refused).reduce((a, col) => a + (col[i] || 0), 0))];
    return [this.xs, h.passed, h.completed, h.shadow, ...refused];
  }

  /** build (re)makes the rate chart for the kinds refused in the window. */
  build() {
    if (this.u) this.u.destroy();
    const refused = this.kinds.length ? this.kinds.map((k, i) => ({label: `refused ${k}/s`, stroke: colour(k, i), width: 1.5}))
      : [{label: 'refused/s', stroke: colour('flow'), width: 1.5}];
    this.u = new uPlot({width: this.card.clientWidth ? this.width() : 560, height: 180, legend: {live: false},
      series: [{}, {label: 'passed/s', stroke: colour('passed'), width: 2},
        {label: 'completed/s', stroke: colour('completed'), width: 2, dash: [2, 2]},
        {label: 'shadow would refuse/s', stroke: colour('shadow'), dash: [6, 4], width: 2}, ...refused],
      scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}},
      axes: [timeAxis, {label: 'per second', size: 56}]}, this.rateData(), this.rate);
  }

  push(x, r, farmWaiting) {
    const h = this.hist;
    // Where the farm's queue does not tell resources apart, show its total.
    this.farmWide = (r.waiting === null || r.waiting === undefined) && farmWaiting !== undefined && farmWaiting !== null;
    if (this.farmWide) r = {...r, waiting: farmWaiting};
    const refused = r.refused_per_sec || {};
    const n = this.xs.length;
    this.xs.push(x);
    h.passed.push(r.passed_per_sec || 0);
    h.completed.push(r.completed_per_sec || 0);
    h.shadow.push(sum(r.shadow_per_sec));
    h.avg.push(r.avg_rt_ms || null);
    h.p95.push(r.p95_rt_ms || null);
    h.inflight.push(r.in_flight || 0);
    h.waiting.push(r.waiting ?? null);
    for (const k of Object.keys(refused)) if (!this.refused[k]) this.refused[k] = new Array(n).fill(0);
    for (const [k, col] of Object.entries(this.refused)) col.push(refused[k] || 0);
    if (this.xs.length > windowPoints) {
      this.xs.shift();
      for (const col of Object.values(h)) col.shift();
      for (const col of Object.values(this.refused)) col.shift();
    }
    const kinds = this.activeKinds();
    if (!this.kinds || kinds.join() !== this.kinds.join()) {
      this.kinds = kinds;
      this.build();
    } else {
      this.u.setData(this.rateData());
    }
    this.t.setData(this.timeData());
    this.rate.dataset.points = String(this.xs.length);
    this.rate.dataset.passedTotal = String(r.passed_total || 0);
    this.rate.dataset.shadowTotal = String(sum(r.shadow_total));
    this.rate.dataset.maxPassed = String(Math.max(...h.passed));
    this.rate.dataset.lastTime = String(x);
    this.figures(r);
  }

  figures(r) {
    const item = (label, value, cls) => el('div', {}, el('dt', {}, label), el('dd', {class: cls}, value));
    const refused = sum(r.refused_per_sec);
    const shadow = sum(r.shadow_per_sec);
    fill(this.figs,
      item('passed/s', fmt(r.passed_per_sec || 0)), item('refused/s', fmt(refused), refused > 0 ? 'bad' : ''),
      item('shadow/s', r.shadow_per_sec === undefined ? 'n/a' : fmt(shadow), shadow > 0 ? 'shadow' : ''),
      item('completed/s', fmt(r.completed_per_sec || 0)), item('in flight', fmt(r.in_flight || 0)),
      item('avg job', ms(r.avg_rt_ms)), item('p95 job', r.p95_rt_ms === undefined ? 'n/a' : ms(r.p95_rt_ms)),
      item(this.farmWide ? 'waiting (farm)' : 'waiting', r.waiting === undefined || r.waiting === null ? 'n/a' : fmt(r.waiting)),
      item('passed', fmt(r.passed_total || 0)), item('refused', fmt(sum(r.refused_total))));
  }
}

/** cssId makes a resource name safe for an element id. */
export function cssId(name) {
  return String(name).replace(/[^A-Za-z0-9_-]/g, '_');
}

const charts = new Map();

/** initLive draws every snapshot on the Live page. */
export function initLive() {
  subscribe((snap) => {
    const x = Math.floor(new Date(snap.time || Date.now()).getTime() / 1000);
    const box = $('live-charts');
    const names = new Set();
    for (const r of snap.resources || []) {
      names.add(r.resource);
      let c = charts.get(r.resource);
      if (!c) {
        c = new Chart(r.resource);
        charts.set(r.resource, c);
        box.append(c.card);
        c.resize();
      }
      c.push(x, r, snap.waiting);
    }
    for (const [name, c] of charts) {
      if (!names.has(name)) { c.destroy(); charts.delete(name); }
    }
    if (charts.size === 0) fill(box, el('p', {class: 'empty'}, 'No resources have rules yet.'));
    else box.querySelector(':scope > p.empty')?.remove();
  });
}

/** resizeCharts fits the charts after their page became visible. */
export function resizeCharts() {
  for (const c of charts.values()) c.resize();
}
