// The sfsync dashboard: a hash-routed single page over the /api/v1 JSON API. Every figure on
// screen is fetched from the API with the signed-in token (kept in sessionStorage only); pages
// refresh every 5 s; actions ask for confirmation and show the API's answer.

import { h, table, dl, show, secs, num, when } from './dom.js';
import { sparkline, lineChart, usageBar, mapDiagram, humanSecs } from './charts.js';

const REFRESH_MS = 5000;
const TOKEN_KEY = 'sfsync.token';
const READONLY_KEY = 'sfsync.readonly';
const NEEDS_OPERATOR = 'needs an operator token';

const state = {
  token: null,
  readOnly: false,
  timer: null,
  gen: 0,
  // The route whose action forms are on screen (rebuilt when it changes or after an action).
  built: null,
  refreshes: 0,
};

const $ = (id) => document.getElementById(id);

// ---- API ----

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Where the API is: the path this page is served under, less its `/ui/` (empty for `/ui/`;
 * `/orgs/<name>` for one org of a deployment, or a reverse proxy's prefix).
 */
const API_BASE = window.location.pathname.replace(/\/ui(\/[^/]*)?$/, '');

/** Calls the API with the bearer token; non-2xx answers throw with the API's message. */
async function api(path, { method = 'GET', body } = {}) {
  if (!state.token) throw new ApiError(401, 'unauthorized', 'not signed in');
  const headers = { Authorization: `Bearer ${state.token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(API_BASE + path, { method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', `${method} ${path}: cannot reach the API (${e.message})`);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const err = data && data.error ? data.error : { code: String(resp.status), message: text || resp.statusText };
    if (resp.status === 401) signOut(`The API refused the token: ${err.message}`);
    throw new ApiError(resp.status, err.code, `${method} ${path}: ${err.message} (HTTP ${resp.status})`);
  }
  return data;
}

// ---- banner, notices, confirmation ----

/**
 * Shows the API's message. `source` is `load` (cleared by the page's next good refresh) or
 * `action` (stays until dismissed, another action or another page).
 */
function showError(message, source = 'load') {
  const b = $('banner');
  $('banner-text').textContent = message;
  b.dataset.source = source;
  b.hidden = false;
}

function clearError(onlyLoad = false) {
  const b = $('banner');
  if (onlyLoad && b.dataset.source === 'action') return;
  b.hidden = true;
  $('banner-text').textContent = '';
}

function notice(message) {
  $('notice').textContent = message;
}

let confirmResolve = null;

/** Shows what will be sent and resolves true only when the person confirms. */
function confirmAction(text, body) {
  const d = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-body').textContent = JSON.stringify(body, null, 2);
  d.showModal();
  return new Promise((resolve) => {
    confirmResolve = resolve;
  });
}

function closeConfirm(ok) {
  const d = $('confirm');
  if (d.open) d.close();
  if (confirmResolve) {
    const r = confirmResolve;
    confirmResolve = null;
    r(ok);
  }
}

/** Confirms, POSTs `body` to `path`, reports the outcome and redraws the page. */
async function act(what, path, body) {
  if (!(await confirmAction(what, body))) {
    notice(`Not sent: ${what}`);
    return null;
  }
  try {
    const out = await api(path, { method: 'POST', body });
    clearError();
    notice(`Done: ${what}. The API answered ${JSON.stringify(out)}`);
    state.built = null;
    await refresh();
    return out;
  } catch (e) {
    if (e.status === 403) {
      state.readOnly = true;
      sessionStorage.setItem(READONLY_KEY, '1');
      state.built = null;
      await refresh();
    }
    showError(e.message, 'action');
    return null;
  }
}

/** An action button; disabled, saying why, once the token has been refused an action. */
function actionButton(label, testid, onclick) {
  const b = h('button', { type: 'button', testid, class: 'action' }, label);
  if (state.readOnly) {
    b.disabled = true;
    b.title = NEEDS_OPERATOR;
  } else {
    b.addEventListener('click', onclick);
  }
  return b;
}

function readOnlyHint() {
  return state.readOnly ? h('p', { class: 'hint', testid: 'readonly-hint' }, `Actions disabled: ${NEEDS_OPERATOR}.`) : null;
}

function noteField(id) {
  return h('p', {},
    h('label', { for: id }, 'Note (recorded with the action): '),
    h('input', { id, type: 'text', testid: 'action-note', size: 50, autocomplete: 'off' }));
}

const noteOf = (id) => {
  const v = ($(id) || {}).value || '';
  return v.trim() === '' ? {} : { note: v.trim() };
};

// ---- sign-in ----

function readFragmentToken() {
  const m = /^#token=([^&]*)/.exec(window.location.hash);
  if (!m) return;
  const token = decodeURIComponent(m[1]);
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.removeItem(READONLY_KEY);
  }
  // The token must not stay in the address bar, the history or a copied link.
  window.history.replaceState(null, '', `${window.location.pathname}${window.location.search}#/overview`);
}

function showSignIn(reason) {
  stopTimer();
  $('signin').hidden = false;
  $('app').hidden = true;
  $('signin-reason').textContent = reason;
  $('token-input').focus();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(READONLY_KEY);
  state.token = null;
  state.readOnly = false;
  state.built = null;
  showSignIn(reason);
}

/** Asks the API who the token is: actions are enabled for an operator only. */
async function learnRole() {
  try {
    const st = await api('/api/v1/status');
    const readOnly = !(st.caller && st.caller.role === 'operator');
    if (readOnly) sessionStorage.setItem(READONLY_KEY, '1');
    else sessionStorage.removeItem(READONLY_KEY);
    if (readOnly !== state.readOnly) {
      state.readOnly = readOnly;
      state.built = null;
    }
  } catch {
    // The page's own refresh shows what went wrong (and a refused token signs out).
  }
}

function signIn(token) {
  state.token = token;
  state.readOnly = sessionStorage.getItem(READONLY_KEY) === '1';
  $('signin').hidden = true;
  $('app').hidden = false;
  state.built = null;
  if (!window.location.hash.startsWith('#/')) window.location.hash = '#/overview';
  learnRole().then(() => refresh());
}

// ---- routing ----

function parseRoute() {
  const raw = window.location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'overview', args: parts.slice(1), query: new URLSearchParams(qs || ''), key: raw };
}

function go(hash) {
  window.location.hash = hash;
}

function link(hash, text, testid) {
  return h('a', { href: hash, testid }, text);
}

function stopTimer() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function schedule() {
  stopTimer();
  state.timer = setTimeout(() => {
    // Never redraw under an open confirmation.
    if ($('confirm').open) schedule();
    else refresh();
  }, REFRESH_MS);
}

/** Loads the current page; its view is replaced, its action forms are kept across refreshes. */
async function refresh() {
  if (!state.token) return;
  const route = parseRoute();
  const page = PAGES[route.name];
  const gen = ++state.gen;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === route.name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const main = $('page');
  if (!page) {
    main.replaceChildren(h('h2', {}, 'Not found'), h('p', {}, `No page ${route.name}.`), link('#/overview', 'Overview'));
    return;
  }
  document.title = `sfsync · ${page.title}`;
  try {
    const { view, data } = await page.load(route);
    if (gen !== state.gen) return;
    if (state.built !== route.key) {
      main.replaceChildren(h('h2', { id: 'page-title' }, page.title), h('div', { id: 'view' }), h('div', { id: 'actions' }));
      if (page.actions) $('actions').replaceChildren(...[readOnlyHint(), page.actions(route, data)].filter(Boolean));
      state.built = route.key;
    }
    $('view').replaceChildren(view);
    state.refreshes += 1;
    main.dataset.ready = route.name;
    main.dataset.refreshes = String(state.refreshes);
    $('updated').replaceChildren('Updated ', when(new Date().toISOString()));
    clearError(true);
  } catch (e) {
    if (gen !== state.gen) return;
    if (e.status === 401) return;
    showError(e.message);
    if (state.built !== route.key) {
      main.replaceChildren(h('h2', {}, page.title), h('p', { class: 'empty' }, 'Could not load this page; see the message above.'));
      state.built = null;
    }
  } finally {
    if (gen === state.gen && state.token) schedule();
  }
}

// ---- pages ----

function healthBadge(health, reason) {
  return h('span', { class: `health health-${health || 'grey'}`, testid: 'flow-health', 'data-health': health || 'grey' },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), `${health || 'grey'}: ${reason || ''}`);
}

function stat(label, value, testid, raw) {
  return h('div', { class: 'stat', testid, 'data-value': raw === undefined ? value : raw },
    h('div', { class: 'stat-value' }, show(value)), h('div', { class: 'stat-label' }, label));
}

const FRESHNESS_COLOUR = { current: 'green', delayed: 'red', partial: 'amber' };

/** The freshness contract (the warehouse's sync_status view), one row per object. */
function freshnessTable(fresh) {
  const rows = (fresh.objects || []).map((o) => h('tr', { testid: 'freshness-row', 'data-object': o.object, 'data-status': o.status },
    h('th', { scope: 'row' }, o.object),
    h('td', {}, h('span', { class: `health health-${FRESHNESS_COLOUR[o.status] || 'grey'}`, testid: 'freshness-status' },
      h('span', { class: 'dot', 'aria-hidden': 'true' }), o.status)),
    h('td', { class: 'num' }, secs(o.lag_seconds)),
    h('td', {}, when(o.current_as_of)),
    h('td', { class: 'num' }, num(o.open_repairs)),
    h('td', { class: 'num' }, num(o.open_resyncs)),
    h('td', {}, o.backfill_running ? 'running' : '—'),
    h('td', {}, o.last_reconcile_result ? `${o.last_reconcile_result}${o.last_reconcile_detail ? ` (${o.last_reconcile_detail})` : ''}` : '—'),
    h('td', { class: 'small' }, o.status_reason)));
  return table(`Freshness (sync_status): ${fresh.status}`,
    ['Object', 'Status', 'Lag', 'Current as of', 'Open repairs', 'Open re-syncs', 'Backfill', 'Last reconciliation', 'Reason'], rows, 'freshness-table');
}

async function overview() {
  const [flows, status, fresh] = await Promise.all([api('/api/v1/flows'), api('/api/v1/status'), api('/api/v1/sync-status')]);
  const writes = status.writes || {};
  const stats = h('section', { 'aria-label': 'Headline figures', class: 'stats', testid: 'stats' },
    stat('open runs', num(status.open_runs), 'stat-open-runs', status.open_runs),
    stat('quarantined (open)', num(status.quarantine_open), 'stat-quarantine', status.quarantine_open),
    stat('failed writes (dead letters)', num(writes.failed || 0), 'stat-failed-writes', writes.failed || 0),
    stat('event dead letters', num(status.dead_letters), 'stat-dead-letters', status.dead_letters),
    stat('open conflicts', num(writes.conflict || 0), 'stat-conflicts', writes.conflict || 0),
    stat('consumer lag', secs(status.pipeline && status.pipeline.lag_seconds), 'stat-lag', status.pipeline && status.pipeline.lag_seconds),
    stat('uptime', secs(status.uptime_seconds), 'stat-uptime', status.uptime_seconds));
  const writeRows = Object.entries(writes).map(([st, n]) => h('tr', { testid: 'writes-row', 'data-state': st }, h('th', { scope: 'row' }, st), h('td', { class: 'num', 'data-value': n }, num(n))));
  const rows = (flows.flows || []).map((f) => h('tr', { testid: 'flow-row', 'data-flow-id': f.id, 'data-object': f.object },
    h('th', { scope: 'row', testid: 'flow-object' }, f.object),
    h('td', {}, f.direction),
    h('td', {}, `${f.source} → ${f.target}`),
    h('td', {}, f.pattern),
    h('td', { class: 'num', testid: 'flow-lag' }, secs(f.lag_seconds)),
    h('td', { class: 'num', testid: 'flow-freshness' }, secs(f.freshness_seconds)),
    h('td', {}, sparkline(f.throughput && f.throughput.points, f.throughput && f.throughput.interval_seconds, f.direction === 'outbound' ? 'writes applied' : 'changes')),
    h('td', {}, healthBadge(f.health, f.health_reason)),
    h('td', { class: 'small' }, Object.entries(f.counts || {}).map(([k, v]) => `${k} ${num(v)}`).join(' · '))));
  const view = h('div', {},
    stats,
    table(`Flows (${(flows.flows || []).length}); SLA and team on the integration map`,
      ['Object', 'Direction', 'Source → target', 'Pattern', 'Lag', 'Freshness', 'Throughput', 'Health', 'Counts'], rows, 'flows-table'),
    freshnessTable(fresh),
    h('div', { class: 'narrow' }, table('Writeback ledger by state', ['State', 'Writes'], writeRows, 'writes-table')),
    h('p', { class: 'small' }, `sfsync ${status.version}, run ${status.run_id}; pending repairs ${num(status.pending_repairs)}, pending re-syncs ${num(status.pending_resyncs)}.`));
  return { view, data: { flows, status, fresh } };
}

async function budget() {
  const b = await api('/api/v1/budget');
  const points = (b.history && b.history.points) || [];
  const interval = b.history && b.history.interval_seconds;
  const first = points[0];
  const last = points[points.length - 1];
  const fmtTime = (ts) => (ts ? new Date(ts).toLocaleTimeString() : '');
  const chart = lineChart(
    [
      { name: 'sfsync calls used', values: points.map((p) => p.our_used), cls: 'ours' },
      { name: 'org calls used (all clients)', values: points.map((p) => p.org_used), cls: 'org' },
    ],
    [fmtTime(first && first.at), fmtTime(last && last.at)],
    `API calls used over the last ${points.length} intervals of ${interval} s`,
    'burn-chart');
  const bar = usageBar([
    { name: 'org used', value: b.org_used, kind: 'fill', cls: 'org' },
    { name: 'sfsync used', value: b.our_used, kind: 'fill', cls: 'ours' },
    { name: 'sfsync allowance', value: b.our_allowance, kind: 'mark', cls: 'allowance' },
    { name: 'org ceiling', value: b.org_ceiling, kind: 'mark', cls: 'ceiling' },
  ], b.org_max, `sfsync used ${num(b.our_used)} of an allowance of ${num(b.our_allowance)}; the org used ${num(b.org_used)} of ${num(b.org_max)}`);
  const view = h('div', {},
    h('p', { class: `forecast${b.exhausted ? ' bad' : ''}`, testid: 'forecast' }, b.forecast && b.forecast.text),
    dl([
      ['sfsync used', h('span', { testid: 'budget-our-used', 'data-value': b.our_used }, num(b.our_used))],
      ['sfsync allowance', h('span', { testid: 'budget-allowance', 'data-value': b.our_allowance }, num(b.our_allowance))],
      ['org used', num(b.org_used)],
      ['org ceiling (max less headroom)', num(b.org_ceiling)],
      ['org maximum', h('span', { testid: 'budget-org-max', 'data-value': b.org_max }, num(b.org_max))],
      ['burn rate', `${num(b.burn_per_min)} calls/min`],
      ['allowance exhausted in', b.forecast && b.forecast.allowance_exhausted_in_seconds !== null ? secs(b.forecast.allowance_exhausted_in_seconds) : '—'],
      ['exhausted now', b.exhausted ? 'yes' : 'no'],
      ['calls refused for the limit', num(b.limit_refusals)],
      ['backfill resumes in', b.backfill_resume_secs === null ? '—' : secs(b.backfill_resume_secs)],
      ['usage observed', b.observed_age_secs === null ? 'never' : `${secs(b.observed_age_secs)} ago`],
    ], 'budget-facts'),
    h('figure', {}, bar, h('figcaption', {}, 'Dark: sfsync’s calls; light: the org’s; marks: sfsync’s allowance (blue) and the org ceiling (red); the bar ends at the org maximum.')),
    h('figure', {}, chart, h('figcaption', {}, h('span', { class: 'key ours' }, '■'), ' sfsync calls used  ', h('span', { class: 'key org' }, '■'), ' org calls used (rolling window)')),
    table('Lanes (priority order: a lane may not spend the reserves of the lanes above it)', ['Lane', 'In flight', 'Waiting', 'Calls in the last hour', 'Calls in the 24 h window', 'Blocked by the budget'],
      (b.lanes || []).map((l) => h('tr', { testid: 'lane-row', 'data-lane': l.lane },
        h('th', { scope: 'row' }, l.lane), h('td', { class: 'num' }, num(l.in_flight)), h('td', { class: 'num' }, num(l.deferred ?? l.waiting)),
        h('td', { class: 'num' }, num(l.calls_last_hour)), h('td', { class: 'num' }, num(l.calls_window ?? l.used)),
        h('td', {}, l.budget_blocked === undefined ? '—' : l.budget_blocked ? 'yes' : 'no'))), 'lanes-table'));
  return { view, data: b };
}

const RUN_STATES = ['open', 'all', 'pending', 'running', 'succeeded', 'failed', 'cancelled'];

function filterSelect(id, label, options, current, onchange) {
  const sel = h('select', { id, testid: id }, options.map((o) => h('option', { value: o, selected: o === current }, o)));
  sel.addEventListener('change', () => onchange(sel.value));
  return h('p', { class: 'filter' }, h('label', { for: id }, label), ' ', sel);
}

async function runs(route) {
  if (route.args[0]) return runDetail(route);
  const st = route.query.get('state') || 'all';
  const data = await api(`/api/v1/runs?state=${encodeURIComponent(st)}&limit=200`);
  const rows = (data.runs || []).map((r) => h('tr', { testid: 'run-row', 'data-id': r.id, 'data-state': r.state },
    h('td', {}, link(`#/runs/${r.id}`, `#${r.id}`, 'run-link')), h('td', {}, r.kind), h('td', {}, show(r.object)), h('td', {}, r.state),
    h('td', {}, when(r.requested_at)), h('td', {}, when(r.finished_at)),
    h('td', { class: 'num' }, num(r.counts && r.counts.read)), h('td', { class: 'num' }, num(r.counts && r.counts.applied)), h('td', { class: 'small' }, show(r.error))));
  const view = h('div', {},
    filterSelect('runs-filter', 'State', RUN_STATES, st, (v) => go(`#/runs?state=${v}`)),
    table(`Runs (${rows.length}, newest first)`, ['Run', 'Kind', 'Object', 'State', 'Requested', 'Finished', 'Read', 'Applied', 'Error'], rows, 'runs-table'));
  return { view, data };
}

async function runDetail(route) {
  const id = route.args[0];
  const r = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
  const view = h('div', { testid: 'run-detail', 'data-state': r.state },
    h('p', {}, link('#/runs', '← all runs')),
    dl([['Run', `#${r.id}`], ['Kind', r.kind], ['Object', r.object], ['State', r.state], ['Reason', r.reason], ['Requested by', r.requested_by],
      ['Window', r.since || r.until ? `${show(r.since)} … ${show(r.until)}` : null], ['Rows total', r.rows_total],
      ['Requested', when(r.requested_at)], ['Started', when(r.started_at)], ['Finished', when(r.finished_at)], ['Process run id', r.run_id]], 'run-facts'),
    table('Counts', Object.keys(r.counts || {}), [Object.values(r.counts || {}).map((v) => h('td', { class: 'num' }, num(v)))], 'run-counts'),
    ...sliceTable(r.slices || []),
    h('h3', {}, 'Error'), h('pre', { testid: 'run-error' }, show(r.error)),
    h('h3', {}, 'Report'), h('pre', { testid: 'run-report' }, r.report === null ? '—' : JSON.stringify(r.report, null, 2)));
  return { view, data: r };
}

/** A large run's slices (SystemModstamp windows, oldest first), one row each; none: nothing. */
function sliceTable(slices) {
  if (!slices.length) return [];
  const done = slices.filter((s) => s.state === 'succeeded').length;
  const rows = slices.map((s) => h('tr', { testid: 'slice-row', 'data-state': s.state },
    h('td', { class: 'num' }, num(s.seq)), h('td', {}, show(s.since)), h('td', {}, show(s.until)), h('td', {}, s.state),
    h('td', { class: 'num' }, num(s.attempts)), h('td', { class: 'num' }, num(s.counts.read)), h('td', { class: 'num' }, num(s.counts.applied)),
    h('td', { class: 'num' }, num(s.counts.api_calls)), h('td', { class: 'small' }, show(s.error))));
  return [table(`Slices (${done} of ${slices.length} done)`, ['Slice', 'Since', 'Until', 'State', 'Attempts', 'Read', 'Applied', 'API calls', 'Error'], rows, 'slices-table')];
}

function runActions(route, r) {
  if (!route.args[0] || !r || !['pending', 'running'].includes(r.state)) return null;
  return h('section', { 'aria-label': 'Actions' }, h('h3', {}, 'Actions'), noteField('run-note'),
    actionButton('Cancel run', 'cancel-run', () => act(`cancel run #${r.id}`, `/api/v1/runs/${r.id}/cancel`, noteOf('run-note'))));
}

async function deadLetters(route) {
  if (route.args.length >= 2) return deadLetterDetail(route);
  const data = await api('/api/v1/deadletters?limit=1000');
  const items = data.dead_letters || [];
  const rows = items.map((d) => h('tr', { testid: 'deadletter-row', 'data-kind': d.kind, 'data-id': d.id },
    h('td', {}, link(`#/deadletters/${d.kind}/${d.id}`, `${d.kind} #${d.id}`, 'deadletter-link')),
    h('td', {}, show(d.object)), h('td', {}, show(d.kind === 'write' ? d.state : d.stage)),
    h('td', {}, show(d.kind === 'write' ? `${d.source_system} → ${d.target}` : d.channel)),
    h('td', { class: 'small' }, show(d.error)), h('td', {}, when(d.created_at))));
  const view = h('div', {},
    h('p', {}, 'Writes Salesforce refused for good (open one to redrive it — deliver it again — or discard it) and change events that could not be processed (kept as a record, with how to recover them).'),
    table(`Dead letters (${items.length})`, ['Item', 'Object', 'Stage / state', 'Write / channel', 'Error', 'Created'], rows, 'deadletters-table'));
  return { view, data };
}

async function deadLetterDetail(route) {
  const [kind, id] = route.args;
  const data = await api('/api/v1/deadletters?limit=1000');
  const d = (data.dead_letters || []).find((x) => x.kind === kind && String(x.id) === String(id)) || null;
  const write = kind === 'write' ? await api(`/api/v1/writes/${encodeURIComponent(id)}`) : null;
  const pairs = d ? Object.entries(d).map(([k, v]) => [k, k.endsWith('_at') ? when(v) : v]) : [['Status', `${kind} #${id} is not a dead letter now (redriven or discarded)`]];
  const view = h('div', { testid: 'deadletter-detail', 'data-present': d ? 'yes' : 'no' },
    h('p', {}, link('#/deadletters', '← all dead letters')),
    dl(pairs, 'deadletter-facts'),
    write ? [h('h3', {}, 'The write'), dl([['State', write.state], ['Source system', write.source_system], ['Target', write.target], ['Idempotency key', write.idempotency_key],
      ['Fields', write.fields], ['Last error', write.last_error], ['Attempts', write.attempts]], 'write-facts'),
    transitions(write.transitions)] : null);
  return { view, data: d };
}

function transitions(list) {
  return table('Transitions', ['From', 'To', 'At', 'By', 'Note', 'Detail'], (list || []).map((t) => [show(t.from), t.to, when(t.at), show(t.actor), show(t.note), h('td', { class: 'small' }, show(t.detail))]), 'transitions');
}

function deadLetterActions(route, d) {
  if (route.args.length < 2 || !d) return null;
  const [kind, id] = route.args;
  if (kind === 'event') {
    // Event dead letters have no redrive of their own: the API says how to recover them.
    return h('section', { 'aria-label': 'Recovery' }, h('h3', {}, 'Recovery'), h('p', { testid: 'event-hint' }, show(d.hint)));
  }
  if (d.state && d.state !== 'failed') return null;
  const base = `/api/v1/deadletters/${encodeURIComponent(kind)}/${encodeURIComponent(id)}`;
  return h('section', { 'aria-label': 'Actions' }, h('h3', {}, 'Actions'), noteField('dl-note'),
    h('p', {},
      actionButton('Redrive', 'redrive', () => act(`redrive ${kind} dead letter #${id}`, `${base}/redrive`, noteOf('dl-note'))), ' ',
      actionButton('Discard', 'discard', () => act(`discard ${kind} dead letter #${id}`, `${base}/discard`, noteOf('dl-note')))));
}

const QUARANTINE_STATES = ['open', 'all', 'held', 'release_requested', 'force_requested', 'released', 'discarded'];

async function quarantine(route) {
  if (route.args[0]) {
    const q = await api(`/api/v1/quarantine/${encodeURIComponent(route.args[0])}`);
    const view = h('div', { testid: 'quarantine-detail', 'data-status': q.status },
      h('p', {}, link('#/quarantine', '← quarantine')),
      dl([['Change', `#${q.id}`], ['Status', q.status], ['Object', q.object], ['Record', q.record_id], ['Rule', q.rule], ['Reason', q.reason],
        ['Parent', q.parent], ['Commit time', when(q.commit_time)], ['First seen', when(q.first_seen)], ['Last seen', when(q.last_seen)],
        ['Attempts', q.attempts], ['Alert after', when(q.alert_after)], ['Resolved', when(q.resolved_at)], ['Resolved by', q.resolved_by], ['Note', q.note]], 'quarantine-facts'),
      h('h3', {}, 'The held change (PII masked)'), h('pre', { testid: 'quarantine-change' }, typeof q.change === 'string' ? q.change : JSON.stringify(q.change, null, 2)));
    return { view, data: q };
  }
  const st = route.query.get('status') || 'open';
  const data = await api(`/api/v1/quarantine?status=${encodeURIComponent(st)}&limit=1000`);
  const rows = (data.entries || []).map((q) => h('tr', { testid: 'quarantine-row', 'data-id': q.id, 'data-status': q.status },
    h('td', {}, link(`#/quarantine/${q.id}`, `#${q.id}`, 'quarantine-link')), h('td', {}, q.status), h('td', {}, q.object), h('td', {}, q.record_id),
    h('td', {}, q.rule), h('td', { class: 'small' }, q.reason), h('td', {}, when(q.first_seen)), h('td', { class: 'num' }, num(q.attempts))));
  const view = h('div', {},
    filterSelect('quarantine-filter', 'Status', QUARANTINE_STATES, st, (v) => go(`#/quarantine?status=${v}`)),
    table(`Quarantined changes (${rows.length})`, ['Change', 'Status', 'Object', 'Record', 'Rule', 'Reason', 'First seen', 'Attempts'], rows, 'quarantine-table'));
  return { view, data };
}

function quarantineActions(route, q) {
  if (!route.args[0] || !q || !['held', 'release_requested', 'force_requested'].includes(q.status)) return null;
  const force = h('input', { type: 'checkbox', id: 'q-force', testid: 'release-force' });
  return h('section', { 'aria-label': 'Actions' }, h('h3', {}, 'Actions'), noteField('q-note'),
    h('p', {}, force, ' ', h('label', { for: 'q-force' }, 'Force: apply the change even though it still fails its rule')),
    h('p', {},
      actionButton('Release', 'release', () => act(`release quarantined change #${q.id}${force.checked ? ' (forced)' : ''}`, `/api/v1/quarantine/${q.id}/release`, { ...noteOf('q-note'), ...(force.checked ? { force: true } : {}) })), ' ',
      actionButton('Discard', 'discard', () => act(`discard quarantined change #${q.id}`, `/api/v1/quarantine/${q.id}/discard`, noteOf('q-note')))));
}

async function conflicts(route) {
  if (route.args[0]) return conflictDetail(route);
  const data = await api('/api/v1/conflicts?state=open&limit=1000');
  const rows = (data.conflicts || []).map((c) => h('tr', { testid: 'conflict-row', 'data-id': c.id, 'data-state': c.state },
    h('td', {}, link(`#/conflicts/${c.id}`, `#${c.id}`, 'conflict-link')), h('td', {}, c.object),
    h('td', {}, show(c.target || c.record_id)), h('td', {}, c.source_system), h('td', { class: 'small' }, show((c.conflict_fields || []).join(', ') || c.reason)),
    h('td', {}, when(c.created_at)), h('td', {}, when(c.updated_at))));
  const view = h('div', {},
    h('p', {}, 'Writes that would overwrite a newer change made in Salesforce. A person decides: open one to compare the values and resolve it.'),
    table(`Open conflicts (${rows.length})`, ['Write', 'Object', 'Record', 'Source system', 'Conflicting fields', 'Created', 'Updated'], rows, 'conflicts-table'));
  return { view, data };
}

function conflictFields(w) {
  const list = Array.isArray(w.conflict) ? w.conflict : (w.conflict && w.conflict.fields) || [];
  return list.map((f) => ({
    field: f.field,
    writer: 'writer_value' in f ? f.writer_value : f.writer,
    salesforce: 'salesforce_value' in f ? f.salesforce_value : f.salesforce,
    changed: f.salesforce_changed_at || (f.salesforce_changed_ms ? new Date(f.salesforce_changed_ms).toISOString() : null),
  }));
}

async function conflictDetail(route) {
  const w = await api(`/api/v1/conflicts/${encodeURIComponent(route.args[0])}`);
  const fields = conflictFields(w);
  const view = h('div', { testid: 'conflict-detail', 'data-state': w.state },
    h('p', {}, link('#/conflicts', '← conflicts')),
    dl([['Write', `#${w.id}`], ['State', w.state], ['Object', w.object], ['Record', w.target || w.record_id], ['Source system', w.source_system],
      ['Idempotency key', w.idempotency_key], ['Version the writer saw', w.seen_version], ['Fields written', w.fields],
      ['Waiting with the conflict', (w.held || []).join(', ') || null], ['Created', when(w.created_at)], ['Updated', when(w.updated_at)]], 'conflict-facts'),
    table('Per field: what the writer asked for against what Salesforce has now', ['Field', 'Writer’s value', 'Salesforce’s value', 'Changed in Salesforce'],
      fields.map((f) => h('tr', { testid: 'conflict-field', 'data-field': f.field },
        h('th', { scope: 'row' }, f.field), h('td', { testid: 'writer-value' }, show(f.writer)), h('td', { testid: 'salesforce-value' }, show(f.salesforce)), h('td', {}, when(f.changed)))), 'conflict-fields'),
    transitions(w.transitions));
  return { view, data: { w, fields } };
}

/** A typed value from what was typed: empty → null; numbers and booleans keep their type. */
function typed(text, like) {
  if (text === '') return null;
  if (typeof like === 'number' && text.trim() !== '' && Number.isFinite(Number(text))) return Number(text);
  if (typeof like === 'boolean' && (text === 'true' || text === 'false')) return text === 'true';
  return text;
}

function conflictActions(route, data) {
  if (!route.args[0] || !data || data.w.state !== 'conflict') return null;
  const { w, fields } = data;
  const choice = (value, label, testid) => h('p', {},
    h('input', { type: 'radio', name: 'resolve-action', id: `ra-${value}`, value, testid }), ' ', h('label', { for: `ra-${value}` }, label));
  const setInputs = fields.map((f) => {
    const like = f.writer !== null && f.writer !== undefined ? f.writer : f.salesforce;
    const input = h('input', { type: 'text', id: `set-${f.field}`, testid: 'set-value', 'data-field': f.field, autocomplete: 'off' });
    input.value = f.salesforce === null || f.salesforce === undefined ? '' : typeof f.salesforce === 'object' ? JSON.stringify(f.salesforce) : String(f.salesforce);
    input.dataset.like = typeof like;
    return h('p', {}, h('label', { for: `set-${f.field}` }, `${f.field}: `), input);
  });
  const form = h('form', { testid: 'resolve-form', 'aria-label': 'Resolve the conflict' },
    h('fieldset', {}, h('legend', {}, 'Resolve: which value should Salesforce keep?'),
      choice('keep_salesforce', 'Keep Salesforce’s values (drop the write)', 'resolve-keep-salesforce'),
      choice('take_writer', 'Take the writer’s values (overwrite Salesforce)', 'resolve-take-writer'),
      choice('set', 'Set these values (empty = null):', 'resolve-set'),
      h('div', { class: 'indent' }, setInputs)),
    noteField('conflict-note'),
    actionButton('Resolve…', 'resolve-submit', async () => {
      const picked = form.querySelector('input[name=resolve-action]:checked');
      if (!picked) {
        showError('Choose how to resolve the conflict first: keep Salesforce, take the writer’s values, or set values.', 'action');
        return;
      }
      const body = { action: picked.value, ...noteOf('conflict-note') };
      if (picked.value === 'set') {
        body.values = {};
        for (const f of fields) {
          const input = $(`set-${f.field}`);
          body.values[f.field] = typed(input.value, f.writer !== null && f.writer !== undefined ? f.writer : f.salesforce);
        }
      }
      const label = { keep_salesforce: 'keep Salesforce’s values', take_writer: 'take the writer’s values', set: 'set the values below' }[picked.value];
      await act(`resolve conflict on write #${w.id} (${w.object} ${w.target || w.record_id || ''}): ${label}`, `/api/v1/conflicts/${w.id}/resolve`, body);
    }));
  form.addEventListener('submit', (e) => e.preventDefault());
  return h('section', { 'aria-label': 'Actions' }, h('h3', {}, 'Decision'), form);
}

// A CDC or polled flow's state now: its mode and, while polled, its last round and cursor lag.
function liveCell(live) {
  if (!live) return h('td', { class: 'small' }, '');
  const p = live.poll;
  const parts = [live.mode];
  if (p) {
    parts.push(p.last_round_seconds_ago == null ? 'no complete round yet' : `last round ${humanSecs(Math.round(p.last_round_seconds_ago))} ago`);
    if (p.cursor_lag_seconds != null) parts.push(`cursor lag ${humanSecs(Math.round(p.cursor_lag_seconds))}${p.lag_bound_seconds ? ` (bound ${humanSecs(p.lag_bound_seconds)})` : ''}`);
    parts.push(`${num(p.rows_appended)} rows appended, ${num(p.api_calls)} calls`);
  }
  return h('td', { class: 'small', testid: 'map-live', 'data-mode': live.mode }, parts.join(' · '));
}

async function integrationMap() {
  const m = await api('/api/v1/map');
  const flows = m.flows || [];
  const names = new Map((m.nodes || []).map((n) => [n.id, n.label]));
  const label = (id) => names.get(id) || id;
  const view = h('div', {},
    h('p', {}, `${flows.length} flows between ${(m.nodes || []).length} systems, drawn from the running configuration. Hover an arrow for its trigger and transformation.`),
    h('div', { class: 'map-wrap' }, mapDiagram(m)),
    table('Every flow', ['Object', 'Source', 'Target', 'Direction', 'Pattern', 'Frequency', 'Trigger', 'Transformation', 'SLA', 'Owner', 'Live'],
      flows.map((f) => h('tr', { testid: 'map-flow-row', 'data-object': f.object },
        h('th', { scope: 'row' }, f.object), h('td', {}, label(f.source)), h('td', {}, label(f.target)), h('td', {}, f.direction), h('td', {}, f.pattern),
        h('td', {}, f.frequency), h('td', {}, f.trigger), h('td', { class: 'small' }, f.transformation), h('td', {}, humanSecs(f.sla_secs ?? f.sla_seconds)),
        h('td', {}, f.team || 'unowned'), liveCell(f.live))), 'map-table'),
    h('details', { testid: 'mermaid' }, h('summary', {}, 'Mermaid (paste into a wiki or an issue)'), h('pre', {}, m.mermaid)),
    m.dot ? h('details', {}, h('summary', {}, 'Graphviz DOT'), h('pre', {}, m.dot)) : null);
  return { view, data: m };
}

const PAGES = {
  overview: { title: 'Overview', load: overview },
  budget: { title: 'API budget', load: budget },
  runs: { title: 'Runs', load: runs, actions: runActions },
  deadletters: { title: 'Dead letters', load: deadLetters, actions: deadLetterActions },
  quarantine: { title: 'Quarantine', load: quarantine, actions: quarantineActions },
  conflicts: { title: 'Conflicts', load: conflicts, actions: conflictActions },
  map: { title: 'Integration map', load: integrationMap },
};

// ---- start ----

function start() {
  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) {
      $('signin-reason').textContent = 'Enter a token.';
      return;
    }
    $('token-input').value = '';
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.removeItem(READONLY_KEY);
    signIn(token);
  });
  $('signout').addEventListener('click', () => signOut('Signed out.'));
  $('banner-close').addEventListener('click', () => clearError());
  $('confirm-ok').addEventListener('click', () => closeConfirm(true));
  $('confirm-cancel').addEventListener('click', () => closeConfirm(false));
  $('confirm').addEventListener('cancel', () => closeConfirm(false));
  window.addEventListener('hashchange', () => {
    if (/^#token=/.test(window.location.hash)) {
      readFragmentToken();
      signIn(sessionStorage.getItem(TOKEN_KEY));
      return;
    }
    clearError();
    notice('');
    state.built = null;
    refresh();
  });
  readFragmentToken();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showSignIn('Sign in with an API token (a viewer token reads; an operator token can also act).');
}

start();
