// The GPUs and backends page: each GPU's memory and utilisation with its
// pressure state, each backend's slots and health, the fair queue by class.
// It draws the live snapshot (system and backends) every second.

import {$, el, fill, rows, bytes, fmt, ms, setStatus} from './dom.js';

/** drawGPUs renders /api/system and /api/backends bodies. */
export function drawGPUs(system, backends) {
  if (system) drawSystem(system);
  else setStatus($('gpus-pressure'), 'GPU figures are not available (GET /api/system).', 'warn');
  if (backends) drawBackends(backends);
  else {
    rows($('backends-table'), [], null, 'No farm on this gateway (GET /api/backends).');
    rows($('queue-table'), [], null, 'not available');
    rows($('tenants-table'), [], null, 'not available');
  }
}

function meter(value, label, opts = {}) {
  return el('meter', {min: 0, max: opts.max ?? 1, low: opts.low, high: opts.high, optimum: 0, value, 'aria-label': label, title: label}, label);
}

function drawSystem(s) {
  const p = s.gpu_pressure || {};
  setStatus($('gpus-pressure'), p.active
    ? `GPU pressure: new jobs are ${p.action === 'reject' ? 'refused' : p.action || 'held'}${p.factor && p.factor !== 1 ? ` (factor ${fmt(p.factor)})` : ''}` +
      `${(p.devices || []).length ? ' on ' + p.devices.join(', ') : ''}.`
    : `No GPU pressure. CPU ${fmt((s.cpu_usage || 0) * 100, 0)} %, load ${fmt(s.load1)}.`, p.active ? 'error' : 'ok');
  const gpus = s.gpus || [];
  fill($('gpus-list'), gpus.length === 0 ? el('p', {class: 'empty'}, 'No GPU reported.') : gpus.map((g) => {
    const ratio = g.memory_used_ratio ?? (g.memory_total_bytes ? g.memory_used_bytes / g.memory_total_bytes : 0);
    const util = g.utilization;
    return el('article', {class: 'card gpu' + (g.pressure ? ' pressure' : ''), 'data-gpu': g.id},
      el('h2', {}, g.name || g.id, ' ', el('span', {class: 'badge ' + (g.pressure ? 'bad' : 'ok')}, g.pressure ? 'under pressure' : 'ok')),
      el('p', {class: 'muted'}, [g.backend, g.source && `via ${g.source}`, g.type].filter(Boolean).join(' · ')),
      el('div', {class: 'bar-row'}, el('span', {}, 'Memory'),
        meter(ratio, `memory ${fmt(ratio * 100, 0)} %`, {low: 0.8, high: 0.875}),
        el('span', {class: 'num'}, `${bytes(g.memory_used_bytes)} / ${bytes(g.memory_total_bytes)} (${fmt(ratio * 100, 0)} %)`)),
      el('div', {class: 'bar-row'}, el('span', {}, 'Utilisation'),
        util >= 0 ? meter(util > 1 ? util / 100 : util, `utilisation ${fmt(util > 1 ? util : util * 100, 0)} %`, {low: 0.8, high: 0.95}) : el('span', {class: 'muted'}, 'not reported'),
        el('span', {class: 'num'}, util >= 0 ? `${fmt(util > 1 ? util : util * 100, 0)} %` : '')));
  }));
  fill($('gpu-sources'), (s.gpu_sources || []).map((src) => el('li', {},
    el('span', {class: 'badge ' + (src.available ? 'ok' : 'muted')}, src.available ? 'available' : 'unavailable'), ' ', src.name,
    src.error ? el('span', {class: 'muted'}, ` — ${src.error}`) : '')));
}

function drawBackends(b) {
  rows($('backends-table'), b.backends || [], (x) => el('tr', {},
    el('td', {}, el('code', {}, x.name)),
    el('td', {}, el('div', {class: 'bar-row'}, meter(x.in_use || 0, `${x.in_use || 0} of ${x.slots} slots in use`, {max: x.slots || 1, high: Math.max(0.5, (x.slots || 1) - 0.5)}),
      el('span', {class: 'num'}, `${x.in_use || 0} / ${x.slots}`))),
    el('td', {}, el('span', {class: 'badge ' + (x.healthy ? 'ok' : 'bad')}, x.healthy ? 'healthy' : 'down')),
    el('td', {}, x.gpu_pressure ? el('span', {class: 'badge bad'}, 'pressure') : 'no'),
    el('td', {class: 'num'}, fmt(x.started_total || 0))), 'No backends.');
  $('queue-summary').textContent = `${fmt(b.queued || 0)} job(s) queued; average job time ${ms(b.avg_job_time_ms)}.`;
  rows($('queue-table'), b.classes || [], (c) => el('tr', {}, el('th', {scope: 'row'}, c.class),
    el('td', {class: 'num'}, fmt(c.running || 0)), el('td', {class: 'num'}, fmt(c.waiting || 0))), 'No classes.');
  rows($('tenants-table'), b.tenants || [], (t) => el('tr', {}, el('td', {}, t.tenant || t.name || ''), el('td', {}, t.tier || ''),
    el('td', {}, t.class || ''), el('td', {class: 'num'}, fmt(t.running || 0)), el('td', {class: 'num'}, fmt(t.waiting || 0))),
  'No tenant has jobs running or waiting.');
}
