// The dashboard: a view of the detector's state, fed over the WebSocket at /ws.
//
// Messages (all carry `seq`; anything not newer than what we have is ignored):
//   snapshot  the whole picture, with each target's response-time history
//   status    every target's state, with its newest sample only (merged into our history)
//   alert     one new alert (down / recovered / rollout)
//   event     one new event from orch
//   traffic   the balancer's request counts and rate
//   autoscale orch's autoscaled services: figure per instance and replicas over time
// Every text from the server is set with textContent: nothing it says can become markup.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const FEED_KEPT = 50;
const RESTART_RECENT_MS = 5 * 60 * 1000;

const state = {
  seq: -1,
  config: { historySize: 120, orch: false, checkIntervalMs: 5000 },
  status: null,
  histories: new Map(), // target key -> samples, oldest first
  alerts: [],
  alertsTotal: 0,
  events: [],
  traffic: null,
  autoscale: { services: {} },
};

// ---------------------------------------------------------------- helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function byId(id) { return document.getElementById(id); }

function replaceChildren(node, children) {
  node.replaceChildren(...children);
}

const naturally = (a, b) => a.localeCompare(b, undefined, { numeric: true, sensitivity: 'base' });

function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 10) return ms.toFixed(1) + ' ms';
  if (ms < 1000) return Math.round(ms) + ' ms';
  return (ms / 1000).toFixed(2) + ' s';
}

function fmtCount(n) { return (n || 0).toLocaleString('en-US'); }

function fmtRate(r) {
  if (r === null || r === undefined) return '–';
  if (r >= 100) return Math.round(r).toLocaleString('en-US');
  return r.toFixed(1);
}

function ago(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}

// A text that says how long ago `iso` was, kept fresh by the ticker.
function when(iso, className) {
  const node = el('span', className || 'when', ago(iso));
  node.dataset.time = iso;
  node.title = new Date(iso).toLocaleString();
  return node;
}

function targets(status) {
  const list = [];
  if (!status) return list;
  for (const [type, members] of Object.entries(status.services || {})) {
    for (const m of members) list.push(['i:' + m.serviceId, m, type]);
  }
  if (status.balancer) list.push(['infra:balancer', status.balancer, null]);
  if (status.registry) list.push(['infra:registry', status.registry, null]);
  return list;
}

// ---------------------------------------------------------------- messages

function handle(msg) {
  if (msg.type === 'snapshot') {
    state.seq = msg.seq;
    state.config = msg.config || state.config;
    state.status = msg.status;
    state.histories = new Map();
    for (const [key, m] of targets(msg.status)) state.histories.set(key, (m.history || []).slice());
    state.alerts = msg.alerts || [];
    state.alertsTotal = msg.alertsTotal || 0;
    state.events = msg.events || [];
    state.traffic = msg.traffic || null;
    state.autoscale = msg.autoscale || { services: {} };
    renderAll();
    return;
  }
  if (typeof msg.seq !== 'number' || msg.seq <= state.seq) return;
  state.seq = msg.seq;
  switch (msg.type) {
    case 'status':
      mergeStatus(msg.status);
      renderStatus();
      break;
    case 'alert':
      state.alerts.unshift(msg.alert);
      state.alerts.length = Math.min(state.alerts.length, FEED_KEPT);
      state.alertsTotal = msg.alertsTotal;
      renderAlerts();
      renderTiles();
      break;
    case 'event':
      state.events.unshift(msg.event);
      state.events.length = Math.min(state.events.length, FEED_KEPT);
      renderEvents();
      break;
    case 'traffic':
      state.traffic = msg.traffic;
      renderTraffic();
      renderTiles();
      break;
    case 'autoscale':
      state.autoscale = msg.autoscale;
      renderAutoscale();
      break;
  }
}

function mergeStatus(status) {
  const keep = state.config.historySize || 120;
  const seen = new Set();
  for (const [key, m] of targets(status)) {
    seen.add(key);
    const history = state.histories.get(key) || [];
    for (const sample of m.history || []) {
      const last = history[history.length - 1];
      if (!last || sample.t > last.t) history.push(sample);
    }
    if (history.length > keep) history.splice(0, history.length - keep);
    state.histories.set(key, history);
  }
  for (const key of [...state.histories.keys()]) if (!seen.has(key)) state.histories.delete(key);
  state.status = status;
}

// ---------------------------------------------------------------- rendering

function renderAll() {
  renderStatus();
  renderAutoscale();
  renderTraffic();
  renderAlerts();
  renderEvents();
}

function renderStatus() {
  renderServices();
  renderInfra();
  renderTiles();
  renderTraffic();
}

function statusWord(m) {
  if (m.status === 'up') return 'up';
  if (m.status === 'down') return 'down';
  return 'checking…';
}

function recentRestart(m) {
  const exit = m.orch && m.orch.lastExit;
  if (!exit || !exit.at) return null;
  const t = Date.parse(exit.at);
  return Date.now() - t < RESTART_RECENT_MS ? exit : null;
}

// The cluster's own machinery shares one card, after the services it serves.
const INFRA_TYPES = ['registry', 'balancer', 'detector'];

function serviceGroups(status) {
  const groups = [];
  const infra = [];
  for (const [type, members] of Object.entries((status && status.services) || {}).sort(([a], [b]) => naturally(a, b))) {
    if (INFRA_TYPES.includes(type)) infra.push(...members);
    else groups.push([type, members]);
  }
  if (infra.length) groups.push(['infrastructure', infra]);
  return groups;
}

function renderServices() {
  const root = byId('services');
  const services = serviceGroups(state.status);
  if (services.length === 0) {
    replaceChildren(root, [el('p', 'placeholder', 'No instances registered yet.')]);
    return;
  }
  const cards = services.map(([type, members]) => {
    const card = el('section', 'card service');
    card.dataset.service = type;
    const up = members.filter((m) => m.status === 'up').length;
    const down = members.filter((m) => m.status === 'down').length;
    if (down) card.classList.add('has-down');
    const head = el('div', 'card-head');
    head.append(el('h2', null, type));
    const count = el('span', 'service-count' + (down ? ' bad' : up === members.length ? '' : ' unknown'),
      `${up}/${members.length} up`);
    head.append(count);
    const list = el('ul', 'instances');
    for (const m of [...members].sort((a, b) => naturally(a.serviceId, b.serviceId))) {
      list.append(instanceRow('i:' + m.serviceId, m));
    }
    card.append(head, list);
    return card;
  });
  replaceChildren(root, cards);
}

function instanceRow(key, m) {
  const row = el('li', 'instance');
  row.dataset.instance = m.serviceId;
  row.dataset.status = m.status;
  row.append(el('span', 'dot ' + m.status));

  const who = el('div', 'inst-who');
  const nameLine = el('div', 'inst-name-line');
  const name = el('span', 'inst-name', m.name || m.serviceId);
  name.title = m.url;
  nameLine.append(name);
  const exit = recentRestart(m);
  if (exit) {
    const signal = exit.signal ? exit.signal : exit.code !== null && exit.code !== undefined ? 'exit code ' + exit.code : 'exited';
    // orch's reason (OOMKilled: past its memory limit) says more than the signal.
    const how = exit.reason ? `${exit.reason} (${signal})` : signal;
    const pill = el('span', exit.reason ? 'pill bad' : 'pill warn');
    pill.title = `last exit: ${how}, ${new Date(exit.at).toLocaleTimeString()}`;
    pill.append(document.createTextNode(exit.reason ? exit.reason + ' ' : 'crashed '), when(exit.at, 'pill-when'));
    nameLine.append(pill);
  }
  if (m.orch && m.orch.status && m.orch.status !== 'running') {
    const bad = ['crashloop', 'failed', 'backoff', 'exited', 'stopped'].includes(m.orch.status);
    nameLine.append(el('span', 'pill ' + (bad ? 'bad' : 'muted'), m.orch.status));
  }
  const meta = el('div', 'inst-meta');
  const parts = [];
  if (m.port) parts.push(':' + m.port);
  if (m.orch && m.orch.pid) parts.push('pid ' + m.orch.pid);
  meta.append(document.createTextNode(parts.join(' · ')));
  if (m.orch) {
    const restarts = el('span', 'restarts' + (m.orch.restarts ? ' some' : ''), `↻ ${m.orch.restarts}`);
    restarts.title = m.orch.restarts === 1 ? '1 restart' : `${m.orch.restarts} restarts`;
    meta.append(restarts);
  }
  who.append(nameLine, meta);

  const st = el('div', 'inst-state');
  st.append(el('div', 'inst-status ' + m.status, statusWord(m)));
  if (m.status === 'down') {
    const since = el('div', 'inst-sub');
    if (m.since) {
      since.dataset.since = m.since;
      since.textContent = forHowLong(m.since);
    }
    st.append(since);
  } else {
    st.append(el('div', 'inst-sub', m.status === 'up' ? fmtMs(m.responseTimeMs) : 'not checked yet'));
  }

  row.append(who, st, sparkline(state.histories.get(key) || [], 120, 34));
  if (m.status === 'down') {
    const why = el('div', 'inst-error', m.lastError || 'health check failed');
    why.title = m.lastError || '';
    row.append(why);
  }
  return row;
}

function forHowLong(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `for ${s} s`;
  if (s < 3600) return `for ${Math.floor(s / 60)} min`;
  return `for ${Math.floor(s / 3600)} h`;
}

// A response-time chart: the line over the kept samples, failed checks as red ticks.
function sparkline(samples, w, h) {
  const chart = svg('svg', { class: 'spark', width: w, height: h, viewBox: `0 0 ${w} ${h}`, 'aria-hidden': 'true' });
  // Up to 60 slots; fewer while the history is short, so a young chart is not a sliver.
  const shown = samples.slice(-Math.min(state.config.historySize || 60, 60));
  const cap = Math.max(20, shown.length);
  const top = 11;
  const bottom = h - 3;
  chart.append(svg('line', { class: 'base', x1: 0, y1: bottom + 0.5, x2: w, y2: bottom + 0.5 }));
  const values = shown.filter((s) => s.ok && s.ms !== null).map((s) => s.ms);
  const max = Math.max(1, ...values) * 1.15;
  const step = w / (cap - 1);
  const x0 = w - (shown.length - 1) * step;
  const y = (ms) => bottom - (Math.min(ms, max) / max) * (bottom - top);
  // Runs of healthy checks are drawn as lines; a failed check breaks the line.
  const runs = [];
  let run = null;
  shown.forEach((s, i) => {
    const x = x0 + i * step;
    if (s.ok && s.ms !== null) {
      if (!run) runs.push((run = []));
      run.push([x, y(s.ms)]);
    } else {
      run = null;
      // A failed check: a pale band over its slot, and a red mark on the baseline.
      const left = Math.max(0, x - step / 2);
      const width = Math.min(w, x + step / 2) - left;
      chart.append(svg('rect', { class: 'fail', x: left, y: top - 3, width, height: bottom - top + 3 }));
      chart.append(svg('rect', { class: 'fail-mark', x: left, y: bottom - 2, width, height: 3 }));
    }
  });
  const xy = ([x, yy]) => `${x.toFixed(1)},${yy.toFixed(1)}`;
  for (const points of runs) {
    if (points.length === 1) {
      chart.append(svg('circle', { class: 'last', cx: points[0][0], cy: points[0][1], r: 1.5 }));
      continue;
    }
    const first = points[0][0].toFixed(1);
    const lastX = points[points.length - 1][0].toFixed(1);
    chart.append(svg('path', { class: 'area', d: `M${first},${bottom} L${points.map(xy).join(' L')} L${lastX},${bottom} Z` }));
    chart.append(svg('path', { class: 'line', d: 'M' + points.map(xy).join(' L') }));
  }
  const last = shown[shown.length - 1];
  if (last && last.ok && last.ms !== null) {
    chart.append(svg('circle', { class: 'last', cx: w - 2, cy: y(last.ms), r: 2 }));
  }
  if (values.length) chart.append(svg('text', { class: 'label', x: 0, y: 8 }, 'max ' + fmtMs(Math.max(...values))));
  return chart;
}

function renderInfra() {
  const root = byId('infra');
  const items = [];
  for (const key of ['balancer', 'registry']) {
    const m = state.status && state.status[key];
    if (!m) continue;
    const item = el('div', 'infra-item');
    item.dataset.target = key;
    item.dataset.status = m.status;
    item.title = m.status === 'down' ? (m.lastError || 'down') : m.url;
    item.append(el('span', 'dot ' + m.status), el('span', null, key));
    const detail = m.status === 'up' ? fmtMs(m.responseTimeMs) : m.status === 'down' ? 'down' : '…';
    item.append(el('span', 'infra-detail', detail));
    items.push(item);
  }
  replaceChildren(root, items);
}

function setTile(id, value, hint, mood) {
  const tile = byId(id);
  tile.classList.remove('good', 'bad', 'warn');
  if (mood) tile.classList.add(mood);
  if (hint !== undefined) tile.querySelector('.tile-hint').textContent = hint || '\u00a0';
  return value;
}

function renderTiles() {
  const s = state.status;
  if (s) {
    const sum = s.summary;
    byId('up-count').textContent = sum.healthy;
    byId('total-count').textContent = sum.total;
    const hint = sum.unhealthy ? `${sum.unhealthy} down` + (sum.unknown ? `, ${sum.unknown} checking` : '')
      : sum.unknown ? `${sum.unknown} not checked yet` : sum.total ? 'all healthy' : 'none registered';
    setTile('tile-instances', null, hint, sum.unhealthy ? 'bad' : sum.total && !sum.unknown ? 'good' : null);
    document.title = (sum.unhealthy ? `(${sum.unhealthy} down) ` : '') + 'Cluster health · orch';

    const all = targets(s).map(([, m]) => m).filter((m) => m.orch);
    if (state.config.orch) {
      const restarts = all.reduce((n, m) => n + (m.orch.restarts || 0), 0);
      byId('restarts').textContent = fmtCount(restarts);
      const latest = all.map((m) => m.orch.lastExit && m.orch.lastExit.at ? [m, m.orch.lastExit.at] : null)
        .filter(Boolean).sort((a, b) => Date.parse(b[1]) - Date.parse(a[1]))[0];
      setTile('tile-restarts', null, latest ? `last: ${latest[0].serviceId}, ${ago(latest[1])}` : 'no crashes', restarts ? 'warn' : null);
    } else {
      byId('restarts').textContent = '–';
      setTile('tile-restarts', null, 'orch not connected');
    }
  }
  byId('alert-count').textContent = fmtCount(state.alertsTotal);
  const newest = state.alerts[0];
  const openDown = s ? targets(s).filter(([, m]) => m.status === 'down').length : 0;
  setTile('tile-alerts', null, newest ? `last: ${newest.serviceId} ${newest.type}, ${ago(newest.at)}` : 'none yet',
    openDown ? 'bad' : null);

  const t = state.traffic;
  if (t && t.available) {
    byId('rps').textContent = fmtRate(t.requestsPerSecond);
    setTile('tile-rps', null, `${fmtCount(t.requests)} requests · ${fmtCount(t.errors)} errors · ${t.inFlight} in flight`);
  } else {
    byId('rps').textContent = '–';
    setTile('tile-rps', null, 'balancer metrics unavailable');
  }
  rateChart(byId('rps-chart'), (t && t.rateHistory) || []);
}

function rateChart(chart, points) {
  const w = Number(chart.getAttribute('width'));
  const h = Number(chart.getAttribute('height'));
  const children = [];
  const bottom = h - 2;
  children.push(svg('line', { class: 'base', x1: 0, y1: bottom + 0.5, x2: w, y2: bottom + 0.5, stroke: '#e3e7ed' }));
  if (points.length >= 2) {
    const shown = points.slice(-60);
    const max = Math.max(1, ...shown) * 1.15;
    const step = w / (Math.max(20, shown.length) - 1);
    const x0 = w - (shown.length - 1) * step;
    const pts = shown.map((v, i) => `${(x0 + i * step).toFixed(1)},${(bottom - (v / max) * (bottom - 4)).toFixed(1)}`);
    children.push(svg('path', { d: `M${x0.toFixed(1)},${bottom} L${pts.join(' L')} L${w},${bottom} Z`, fill: 'rgba(58,111,216,0.12)' }));
    children.push(svg('path', { d: 'M' + pts.join(' L'), fill: 'none', stroke: '#3a6fd8', 'stroke-width': 1.5, 'stroke-linejoin': 'round' }));
  }
  chart.replaceChildren(...children);
}

function renderTraffic() {
  const root = byId('distribution');
  const note = byId('distribution-note');
  const t = state.traffic;
  if (!t || !t.available) {
    note.textContent = '';
    replaceChildren(root, [el('p', 'empty', 'The balancer\u2019s metrics are not available.')]);
    return;
  }
  const services = Object.entries(t.services || {}).sort(([a], [b]) => naturally(a, b))
    .filter(([, s]) => Object.keys(s.instances || {}).length);
  note.textContent = `${fmtCount(t.requests)} requests`;
  if (services.length === 0) {
    replaceChildren(root, [el('p', 'empty', 'No requests through the balancer yet.')]);
    return;
  }
  const w = 346;
  const labelW = 84;
  const valueW = 92;
  const barH = 10;
  const rowH = 19;
  let yPos = 0;
  const chart = svg('svg', { width: '100%', viewBox: '0 0 0 0', role: 'img', 'aria-label': 'requests per instance' });
  for (const [name, s] of services) {
    yPos += 13;
    chart.append(svg('text', { class: 'bar-service', x: 0, y: yPos }, name));
    yPos += 3;
    const entries = Object.entries(s.instances).sort(([a], [b]) => naturally(a, b));
    const total = entries.reduce((n, [, i]) => n + i.requests, 0);
    const max = Math.max(1, ...entries.map(([, i]) => i.requests));
    for (const [id, i] of entries) {
      const g = svg('g', { 'data-instance': id });
      const cy = yPos + rowH / 2;
      g.append(svg('text', { class: 'bar-label', x: 0, y: cy + 4 }, id.length > 12 ? id.slice(0, 11) + '…' : id));
      const trackW = w - labelW - valueW;
      g.append(svg('rect', { class: 'bar-track', x: labelW, y: cy - barH / 2, width: trackW, height: barH, rx: 3 }));
      const bw = Math.max(i.requests ? 2 : 0, (i.requests / max) * trackW);
      g.append(svg('rect', { class: 'bar' + (i.healthy === false ? ' unhealthy' : ''), x: labelW, y: cy - barH / 2, width: bw.toFixed(1), height: barH, rx: 3 }));
      const pct = total ? Math.round((i.requests / total) * 100) : 0;
      g.append(svg('text', { class: 'bar-value', x: w, y: cy + 4, 'text-anchor': 'end' }, `${fmtCount(i.requests)} · ${pct}%`));
      const tip = svg('title', {}, `${id}: ${fmtCount(i.requests)} requests, ${fmtCount(i.errors)} errors`);
      g.append(tip);
      chart.append(g);
      yPos += rowH;
    }
    yPos += 4;
  }
  chart.setAttribute('viewBox', `0 0 ${w} ${yPos}`);
  chart.setAttribute('height', yPos);
  replaceChildren(root, [chart]);
}

function renderAlerts() {
  const root = byId('alerts');
  byId('alerts-note').textContent = state.alertsTotal ? `${fmtCount(state.alertsTotal)} in all` : '';
  if (!state.alerts.length) {
    replaceChildren(root, [el('li', 'empty', 'No alerts. Every change of health shows here.')]);
    return;
  }
  replaceChildren(root, state.alerts.map((a) => {
    const li = el('li');
    li.dataset.alert = a.type;
    li.append(el('span', 'mark ' + (a.type === 'recovered' ? 'good' : 'bad')));
    li.append(el('span', 'msg', a.message));
    li.append(when(a.at));
    return li;
  }));
}

const EVENT_MOOD = {
  exited: 'bad', crashloop: 'bad', 'rollout-failed': 'bad', 'rolled-back': 'warn', 'manifest-rejected': 'bad', 'liveness-failed': 'bad', failed: 'bad',
  restarted: 'warn', backoff: 'warn', 'not-ready': 'warn', stopping: 'warn', chaos: 'warn',
  ready: 'good', started: 'good', 'manifest-applied': 'info', scaled: 'info', rolled: 'info', stopped: 'info',
};

function renderEvents() {
  const root = byId('events');
  if (!state.config.orch) {
    byId('events-note').textContent = '';
    replaceChildren(root, [el('li', 'empty', 'Not connected to orch (ORCH_CONTROL_URL is not set).')]);
    return;
  }
  byId('events-note').textContent = state.events.length ? `latest ${state.events.length}` : '';
  if (!state.events.length) {
    replaceChildren(root, [el('li', 'empty', 'No events yet.')]);
    return;
  }
  replaceChildren(root, state.events.map((e) => {
    const li = el('li');
    li.dataset.event = e.type;
    li.append(el('span', 'mark ' + (EVENT_MOOD[e.type] || '')));
    const msg = el('span', 'msg');
    msg.append(el('span', 'kind', e.type), document.createTextNode(e.message || ''));
    li.append(msg, when(e.time));
    return li;
  }));
}

// Each autoscaled service: its figure per instance (blue) against the target (dashed),
// and its ready replicas (green) and desired replicas (grey) between min and max.
function renderAutoscale() {
  const services = Object.entries((state.autoscale && state.autoscale.services) || {})
    .sort(([a], [b]) => naturally(a, b));
  byId('autoscale-card').hidden = services.length === 0;
  byId('autoscale-note').textContent = services.length ? 'figure per instance · replicas' : '';
  replaceChildren(byId('autoscale'), services.map(([name, a]) => {
    const box = el('div', 'scaled');
    box.dataset.service = name;
    const last = a.samples[a.samples.length - 1];
    const head = el('div', 'scaled-head');
    head.append(el('strong', null, name),
      el('span', 'card-note', `${last ? `${last.current}/${last.desired}` : '–'} (${a.min}-${a.max}) · ${a.measured || 'not measured yet'} · target ${a.target}`));
    const chart = svg('svg', { class: 'autoscale-chart', width: 300, height: 64, viewBox: '0 0 300 64', 'data-service': name });
    autoscaleChart(chart, a);
    box.append(head, chart);
    return box;
  }));
}

function autoscaleChart(chart, a) {
  const w = 300, h = 64, bottom = h - 2;
  const shown = a.samples.slice(-90);
  const children = [svg('line', { x1: 0, y1: bottom + 0.5, x2: w, y2: bottom + 0.5, stroke: '#e3e7ed' })];
  if (shown.length >= 2) {
    const step = w / (Math.max(20, shown.length) - 1);
    const x0 = w - (shown.length - 1) * step;
    const x = (i) => (x0 + i * step).toFixed(1);
    const top = Math.max(1, a.targetValue, ...shown.map((s) => s.figure || 0)) * 1.15;
    const y = (v, max) => (bottom - (v / max) * (bottom - 4)).toFixed(1);
    const ty = y(a.targetValue, top);
    children.push(svg('line', { class: 'target', x1: 0, y1: ty, x2: w, y2: ty, stroke: '#9aa5b4', 'stroke-dasharray': '3 3' }));
    const line = (pts, stroke, cls) => svg('path', { class: cls, d: 'M' + pts.join(' L'), fill: 'none', stroke, 'stroke-width': 1.5, 'stroke-linejoin': 'round' });
    const figures = shown.map((s, i) => [i, s.figure]).filter(([, f]) => typeof f === 'number');
    if (figures.length >= 2) children.push(line(figures.map(([i, f]) => `${x(i)},${y(f, top)}`), '#3a6fd8', 'figure'));
    const most = Math.max(1, a.max) * 1.15;
    const steps = (key) => shown.map((s, i) => `${x(i)},${y(s[key], most)}`);
    children.push(line(steps('desired'), '#9aa5b4', 'desired'));
    children.push(line(steps('current'), '#2f9e58', 'replicas'));
  }
  chart.replaceChildren(...children);
}

// ---------------------------------------------------------------- the socket

let socket = null;
let retries = 0;
let retryTimer = null;

function setConnection(kind, text) {
  const conn = byId('conn');
  conn.dataset.state = kind;
  byId('conn-text').textContent = text;
  document.body.classList.toggle('stale', kind === 'reconnecting');
}

function connect() {
  clearTimeout(retryTimer);
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  socket = new WebSocket(scheme + location.host + '/ws');
  socket.onopen = () => {
    retries = 0;
    setConnection('live', 'live');
  };
  socket.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    handle(msg);
  };
  socket.onclose = () => {
    socket = null;
    // Back off: 0.5 s, 1 s, 2 s, ... at most 5 s, with a little jitter.
    const delay = Math.min(5000, 500 * 2 ** retries) * (0.8 + Math.random() * 0.4);
    retries += 1;
    setConnection('reconnecting', 'reconnecting…');
    retryTimer = setTimeout(connect, delay);
  };
  socket.onerror = () => { /* onclose follows */ };
}

// Times shown as "3 s ago" stay true.
setInterval(() => {
  for (const node of document.querySelectorAll('[data-time]')) node.textContent = ago(node.dataset.time);
  for (const node of document.querySelectorAll('[data-since]')) node.textContent = forHowLong(node.dataset.since);
}, 1000);

// The link to the last `orch verify` run's timeline, shown when there is one.
function showVerifyLink() {
  fetch('/verify/timeline.html', { method: 'HEAD', cache: 'no-store' })
    .then((r) => { document.getElementById('verify-link').hidden = !r.ok; })
    .catch(() => {});
}
showVerifyLink();
setInterval(showVerifyLink, 30000);

connect();
