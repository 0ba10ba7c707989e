// Atelier ops console: live runs (WebSocket feed per project), the actor
// tree with restarts, recent errors. Plain DOM, no build step; everything
// from the server is inserted as text, never as HTML.
'use strict';

window.__consoleErrors = [];
window.addEventListener('error', (e) => window.__consoleErrors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.__consoleErrors.push(String(e.reason)));

const TERMINAL = new Set(['done', 'failed', 'partial', 'canceled', 'planned']);
const RUNS_PER_PROJECT = 10;
const THUMBS_PER_RUN = 6;
const MAX_ERRORS = 20;

const state = {
  token: null,
  projects: new Map(), // slug -> project
  runs: new Map(), // run id -> view model
  sockets: new Map(), // slug -> WebSocket
  errors: [],
  admin: true,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ''));
  return node;
}

function setStatus(text, kind) {
  const s = $('#status');
  s.textContent = text;
  s.dataset.state = kind;
}

async function api(method, path) {
  const res = await fetch(path, { method, headers: { Authorization: `Bearer ${state.token}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(body.error || `${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

// Thumbnails are fetched with the Authorization header and shown through
// object URLs: the token never appears in a URL the server sees.
const thumbUrls = new Map(); // asset id -> object URL, or the promise of one
function thumbnail(slug, id) {
  const img = el('img', { alt: 'candidate', 'data-thumb': id });
  let known = thumbUrls.get(id);
  if (typeof known === 'string') {
    img.src = known;
    return img;
  }
  if (!known) {
    known = fetch(`/api/projects/${encodeURIComponent(slug)}/assets/${id}/content`,
      { headers: { Authorization: `Bearer ${state.token}` } })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
      .then((b) => { const url = URL.createObjectURL(b); thumbUrls.set(id, url); return url; })
      .catch((e) => { thumbUrls.delete(id); throw e; });
    thumbUrls.set(id, known);
  }
  known.then((url) => { img.src = url; }).catch(() => {});
  return img;
}

function addError(when, text) {
  const key = `${when}|${text}`;
  if (state.errors.some((e) => e.key === key)) return;
  state.errors.unshift({ key, when, text });
  state.errors.length = Math.min(state.errors.length, MAX_ERRORS);
}

function runView(slug, run) {
  let v = state.runs.get(run.id);
  if (!v) {
    v = { id: run.id, slug, status: run.status, finished: 0, total: 0, cost: 0, thumbs: [], created: run.created_at || '' };
    state.runs.set(run.id, v);
  }
  if (run.status) v.status = run.status;
  return v;
}

// A full read of a project's recent runs (at start, after a feed reconnect,
// and periodically): the feed then keeps them current.
async function loadProject(slug) {
  const { runs } = await api('GET', `/api/projects/${encodeURIComponent(slug)}/runs?limit=${RUNS_PER_PROJECT}`);
  for (const run of runs) {
    const v = runView(slug, run);
    v.created = run.created_at;
    if (run.last_error) addError(run.finished_at || run.created_at, `${slug} run ${run.id.slice(0, 8)}: ${run.last_error}`);
    if (v.total > 0 && TERMINAL.has(v.status) && v.loaded) continue;
    const { jobs } = await api('GET', `/api/projects/${encodeURIComponent(slug)}/runs/${run.id}/jobs`);
    v.total = jobs.length;
    v.finished = jobs.filter((j) => TERMINAL.has(j.status) || j.status === 'skipped').length;
    const thumbs = [];
    for (const j of jobs) {
      for (const c of j.candidates) {
        const id = c.meta_json && c.meta_json.thumbnail_asset_id;
        if (id) thumbs.push(id);
      }
      if (j.last_error && j.status === 'failed') addError(j.created_at, `${slug} ${j.job_key}: ${j.last_error}`);
    }
    v.thumbs = thumbs.slice(-THUMBS_PER_RUN);
    v.loaded = TERMINAL.has(v.status);
  }
}

function onEvent(slug, ev) {
  const v = runView(slug, { id: ev.run_id });
  if (!v.created) v.created = ev.timestamp || '';
  const p = ev.payload || {};
  switch (ev.event_type) {
    case 'run.queued': v.status = 'queued'; break;
    case 'run.started': v.status = 'running'; break;
    case 'run.canceled': v.status = 'canceled'; break;
    case 'run.finished':
      v.status = p.status || 'done';
      if (typeof p.jobs === 'number') { v.total = p.jobs; v.finished = p.jobs; }
      break;
    case 'candidate.ready':
      if (p.thumbnail_asset_id) {
        v.thumbs.push(p.thumbnail_asset_id);
        v.thumbs = v.thumbs.slice(-THUMBS_PER_RUN);
      }
      break;
    case 'candidate.failed':
    case 'job.failed':
      addError(ev.timestamp, `${slug} ${p.job_key || ''} ${ev.event_type}: ${p.error_code || p.reason || ''}`);
      break;
    default: break;
  }
  if (p.progress) { v.finished = p.progress.jobs_finished; v.total = p.progress.jobs_total; }
  if (typeof p.cost_so_far_usd === 'number') v.cost = p.cost_so_far_usd;
  if (v.status === 'queued' && ev.event_type !== 'run.queued') v.status = 'running';
  render();
}

function openFeed(slug) {
  if (state.sockets.has(slug)) return;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  // The token goes in the subprotocol header (browsers cannot set others),
  // never in the URL.
  const ws = new WebSocket(`${proto}://${location.host}/api/projects/${encodeURIComponent(slug)}/events/ws`,
    ['atelier.bearer', state.token]);
  state.sockets.set(slug, ws);
  // Whatever happened between the last read and the feed going live.
  ws.onopen = () => loadProject(slug).then(render).catch(() => {});
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === 'event') onEvent(slug, msg);
  };
  ws.onclose = () => {
    state.sockets.delete(slug);
    // Resync from the API, then listen again (the project feed starts live).
    setTimeout(() => loadProject(slug).then(render).catch(() => {}).finally(() => openFeed(slug)), 1000);
  };
}

async function refreshProjects() {
  const { projects } = await api('GET', '/api/projects');
  // A full read of every project (new or known): the feeds keep runs
  // current in between, this is the safety net.
  for (const p of projects) {
    state.projects.set(p.slug, p);
    await loadProject(p.slug);
    openFeed(p.slug);
  }
}

async function refreshActors() {
  if (!state.admin) return;
  try {
    const s = await api('GET', '/admin/supervision');
    renderActors(s);
  } catch (e) {
    if (e.status === 403) {
      state.admin = false;
      $('#engine').textContent = 'The actor tree needs an unscoped (admin) token.';
    } else throw e;
  }
}

async function restart(name, button) {
  button.disabled = true;
  try {
    await api('POST', `/admin/actors/${encodeURIComponent(name)}/restart`);
  } catch (e) {
    addError(new Date().toISOString(), `restart ${name}: ${e.message}`);
  } finally {
    button.disabled = false;
    await refreshActors();
    render();
  }
}

function renderActors(s) {
  $('#engine').textContent = `node ${s.node_id} · up ${s.uptime_seconds}s · ${s.live_workers} workers · ${s.leases_held} leases · queue ${s.queue.queued_runs} queued / ${s.queue.running_runs} running${s.paused_all ? ' · PAUSED' : ''}`;
  const rows = s.actors.map((a) => {
    const cell = el('td');
    if (s.restartable.includes(a.name)) {
      const b = el('button', { type: 'button', 'data-restart': a.name }, 'Restart');
      b.addEventListener('click', () => restart(a.name, b));
      cell.append(b);
    }
    if (a.last_error) addError(a.last_restart_at || a.started_at || '', `${a.name}: ${a.last_error}`);
    return el('tr', { 'data-actor': a.name, 'data-status': a.status, 'data-restarts': String(a.restarts) },
      el('td', {}, a.name), el('td', { className: 'st' }, a.status), el('td', { className: 'restarts' }, a.restarts),
      el('td', {}, a.mailbox_depth ?? ''),
      el('td', {}, a.last_error || ''), cell);
  });
  $('#actors tbody').replaceChildren(...rows);
}

function render() {
  const runs = [...state.runs.values()].sort((a, b) => b.created.localeCompare(a.created) || b.id.localeCompare(a.id));
  const rows = runs.map((v) => {
    const bar = el('progress', { max: Math.max(v.total, 1), value: v.finished });
    const thumbs = el('td', { className: 'thumbs' },
      ...v.thumbs.map((id) => thumbnail(v.slug, id)));
    return el('tr', { 'data-run-id': v.id, 'data-status': v.status, 'data-finished': String(v.finished), 'data-total': String(v.total) },
      el('td', {}, v.slug), el('td', { title: v.id }, v.id.slice(0, 8)), el('td', { className: 'st' }, v.status),
      el('td', {}, bar, ` ${v.finished}/${v.total}`), el('td', {}, `$${v.cost.toFixed(2)}`), thumbs);
  });
  $('#runs tbody').replaceChildren(...rows);
  $('#no-runs').hidden = rows.length > 0;
  $('#errors').replaceChildren(...state.errors.map((e) => el('li', {}, el('time', {}, e.when), e.text)));
  $('#no-errors').hidden = state.errors.length > 0;
}

async function start() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  try {
    await refreshProjects();
    await refreshActors();
    render();
    setStatus('Live', 'live');
  } catch (e) {
    setStatus(`Cannot load: ${e.message}`, 'error');
    if (e.status === 401) {
      sessionStorage.removeItem('atelier-token');
      showLogin();
    }
    return;
  }
  setInterval(() => refreshActors().then(render).catch((e) => setStatus(`Supervision: ${e.message}`, 'error')), 1000);
  setInterval(() => refreshProjects().then(render).catch(() => {}), 5000);
}

function showLogin() {
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login').onsubmit = (e) => {
    e.preventDefault();
    state.token = $('#token').value.trim();
    sessionStorage.setItem('atelier-token', state.token);
    start();
  };
}

// The token may come in the fragment (never sent to the server, so never
// logged); it is moved to session storage and the fragment cleared.
const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromHash) {
  sessionStorage.setItem('atelier-token', fromHash);
  history.replaceState(null, '', location.pathname);
}
state.token = sessionStorage.getItem('atelier-token');
if (state.token) start(); else showLogin();
