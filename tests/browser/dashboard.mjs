// Drives the sfsync dashboard in headless Chromium against a running sfsync (the demo):
//   node tests/browser/dashboard.mjs 'http://127.0.0.1:PORT/ui/#token=TOKEN'
// Checks: the sign-in form without a token (and after a refused token); every page loads
// without console errors; the overview's figures agree with /api/v1/flows, /api/v1/status and
// /api/v1/sync-status fetched around the render; the map draws one edge per flow; redrive (dead
// letter), release (quarantine) and resolve (conflict, keep Salesforce) done by clicking show in
// the API.
// Screenshots of every page go to $SFSYNC_ARTIFACTS (default ./browser-artifacts).
// Exits 0 when every check passed, 1 otherwise; prints one line per check and a summary.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const start = process.argv[2];
if (!start || !start.includes('#token=')) {
  console.error('usage: node dashboard.mjs http://HOST:PORT/ui/#token=TOKEN');
  process.exit(2);
}
const url = new URL(start);
const token = decodeURIComponent(url.hash.replace(/^#token=/, ''));
const origin = url.origin;
const uiUrl = `${origin}/ui/`;
const artifacts = process.env.SFSYNC_ARTIFACTS || 'browser-artifacts';
mkdirSync(artifacts, { recursive: true });
const chromiumPath = process.env.SFSYNC_CHROMIUM || '/usr/bin/chromium';

const WAIT = 30_000;
let passed = 0;
let failed = 0;

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function assertEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const b = JSON.stringify(expected);
  if (a !== b) throw new Error(`${what}: the page shows ${a}, the API ${b}`);
}

async function api(path, { method = 'GET', body } = {}) {
  const resp = await fetch(`${origin}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  if (!resp.ok) throw new Error(`${method} ${path}: HTTP ${resp.status}: ${text}`);
  return JSON.parse(text);
}

/** Polls `fn` (returns a problem string, or null when satisfied) for up to `ms`. */
async function eventually(what, ms, fn) {
  const deadline = Date.now() + ms;
  let problem = null;
  for (;;) {
    problem = await fn();
    if (problem === null) return;
    if (Date.now() > deadline) throw new Error(`${what}: still not true after ${ms} ms: ${problem}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const problems = [];
function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${label}: console error: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => problems.push(`${label}: uncaught: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`${label}: request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
}

const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

async function ready(page, name) {
  await page.waitForSelector(`[data-testid=page][data-ready="${name}"]`, { timeout: WAIT });
}

async function goPage(page, hash, name) {
  await page.evaluate((hsh) => { window.location.hash = hsh; }, hash);
  await ready(page, name);
}

try {
  // ---- sign-in ----
  await check('no token: the sign-in form, no data', async () => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    watch(page, 'signin');
    await page.goto(uiUrl);
    await page.waitForSelector('[data-testid=signin]:not([hidden])', { timeout: WAIT });
    assert(await page.isHidden('#app'), 'the app is visible without a token');
    await shot(page, 'signin');
    await ctx.close();
  });

  await check('a refused token: back to the sign-in form with the API\'s reason', async () => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(uiUrl);
    await page.fill('[data-testid=token-input]', 'not-a-configured-token-0123456789');
    await page.click('[data-testid=signin-submit]');
    await page.waitForFunction(() => /refused/.test(document.querySelector('[data-testid=signin-reason]').textContent), null, { timeout: WAIT });
    assert(await page.isVisible('[data-testid=signin]'), 'the sign-in form is not shown after a 401');
    assert(errors.length === 0, `uncaught errors: ${errors.join('; ')}`);
    await shot(page, 'signin-refused');
    await ctx.close();
  });

  await check('an API error shows in the banner with the API\'s message', async () => {
    // Its own tab: the 404 is logged by the browser, which the main tab counts as a problem.
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const missing = 2_000_000_000;
    const resp = await fetch(`${origin}/api/v1/runs/${missing}`, { headers: { Authorization: `Bearer ${token}` } });
    const message = (await resp.json()).error.message;
    await page.goto(start);
    await ready(page, 'overview');
    await page.evaluate((id) => { window.location.hash = `#/runs/${id}`; }, missing);
    await page.waitForSelector('[data-testid=error-banner]:not([hidden])', { timeout: WAIT });
    const text = await page.textContent('[data-testid=error-text]');
    assert(text.includes(message), `the banner says ${JSON.stringify(text)}, the API ${JSON.stringify(message)}`);
    await shot(page, 'error-banner');
    await ctx.close();
  });

  await check('a viewer token reads but cannot act: actions disabled from the start, the API refuses its redrive', async () => {
    const viewer = process.env.SFSYNC_VIEWER_TOKEN;
    assert(viewer, 'SFSYNC_VIEWER_TOKEN is not set (the demo writes api-viewer.token)');
    const d = (await api('/api/v1/deadletters?kind=write&limit=1000')).dead_letters[0];
    assert(d, 'no failed write among the dead letters');
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    watch(page, 'viewer');
    const posts = [];
    page.on('request', (r) => { if (r.method() === 'POST') posts.push(r.url()); });
    await page.goto(`${uiUrl}#token=${encodeURIComponent(viewer)}`);
    await ready(page, 'overview');
    await goPage(page, `#/deadletters/${d.kind}/${d.id}`, 'deadletters');
    await page.waitForSelector('[data-testid=deadletter-detail][data-present=yes]', { timeout: WAIT });
    // The page asked the API who the token is: no refused action was needed to know.
    await page.waitForSelector('[data-testid=redrive][disabled]', { timeout: WAIT });
    await page.waitForSelector('[data-testid=readonly-hint]', { timeout: WAIT });
    assert(await page.isHidden('[data-testid=error-banner]'), `error banner: ${await page.textContent('[data-testid=error-text]')}`);
    await page.click('[data-testid=redrive]', { force: true, trial: false }).catch(() => {});
    assert(posts.length === 0, `the viewer's page sent ${JSON.stringify(posts)}`);
    // And the API itself refuses the viewer's redrive.
    const resp = await fetch(`${origin}/api/v1/deadletters/${d.kind}/${d.id}/redrive`, {
      method: 'POST', headers: { Authorization: `Bearer ${viewer}`, 'Content-Type': 'application/json' }, body: '{}',
    });
    assertEq(resp.status, 403, 'a viewer\'s redrive answer status');
    const w = await api(`/api/v1/writes/${d.id}`);
    assert(!(w.transitions || []).some((x) => /redriven/.test(x.detail || '')), `the viewer's redrive changed the write: ${JSON.stringify(w.transitions)}`);
    await shot(page, 'viewer-read-only');
    await ctx.close();
  });

  // ---- signed in through the demo's link ----
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await ctx.newPage();
  watch(page, 'dashboard');

  await check('the #token= link signs in and leaves the address bar', async () => {
    await page.goto(start);
    await ready(page, 'overview');
    const hash = await page.evaluate(() => window.location.hash);
    assertEq(hash, '#/overview', 'the fragment after sign-in');
    const stored = await page.evaluate(() => sessionStorage.getItem('sfsync.token'));
    assert(stored === token, 'the token is not kept in sessionStorage');
  });

  await check('overview agrees with /api/v1/flows and /api/v1/status', async () => {
    // API before; then two page refreshes (the second started after the first ended, so
    // after `before`); then API after. Live traffic only adds, so before ≤ page ≤ after.
    const before = await api('/api/v1/status');
    const seen = Number(await page.getAttribute('[data-testid=page]', 'data-refreshes'));
    await page.waitForFunction((n) => Number(document.querySelector('[data-testid=page]').dataset.refreshes) >= n + 2, seen, { timeout: WAIT });
    const shown = await page.evaluate(() => ({
      flows: [...document.querySelectorAll('[data-testid=flow-row]')].map((r) => ({
        id: r.dataset.flowId,
        object: r.querySelector('[data-testid=flow-object]').textContent,
        health: r.querySelector('[data-testid=flow-health]').dataset.health,
        sparkline: r.querySelectorAll('[data-testid=sparkline]').length,
      })),
      quarantine: Number(document.querySelector('[data-testid=stat-quarantine]').dataset.value),
      deadLetters: Number(document.querySelector('[data-testid=stat-dead-letters]').dataset.value),
      failedWrites: Number(document.querySelector('[data-testid=stat-failed-writes]').dataset.value),
      openRuns: Number(document.querySelector('[data-testid=stat-open-runs]').dataset.value),
    }));
    const after = await api('/api/v1/status');
    const flows = (await api('/api/v1/flows')).flows;
    assert(flows.length > 0, 'the API lists no flows');
    assertEq(shown.flows.length, flows.length, 'number of flows');
    assertEq(shown.flows.map((f) => f.id).sort(), flows.map((f) => f.id).sort(), 'flow ids');
    assertEq(shown.flows.map((f) => f.object).sort(), flows.map((f) => f.object).sort(), 'flow objects');
    for (const f of shown.flows) {
      assert(['green', 'amber', 'red', 'grey'].includes(f.health), `flow ${f.id} health ${f.health}`);
      assertEq(f.sparkline, 1, `sparklines of flow ${f.id}`);
    }
    const counters = [
      ['quarantine', (x) => x.quarantine_open, shown.quarantine],
      ['event dead letters', (x) => x.dead_letters, shown.deadLetters],
      ['failed writes', (x) => (x.writes && x.writes.failed) || 0, shown.failedWrites],
    ];
    for (const [what, get, v] of counters) {
      assert(get(before) <= v && v <= get(after), `${what}: the page shows ${v}, the API ${get(before)} before and ${get(after)} after the render`);
    }
    assert(Number.isInteger(shown.openRuns) && shown.openRuns >= 0, `open runs shows ${shown.openRuns}`);
    // The freshness table lists the objects of /api/v1/sync-status, each with a status.
    const fresh = await api('/api/v1/sync-status');
    const freshRows = await page.$$eval('[data-testid=freshness-row]', (rs) => rs.map((r) => ({ object: r.dataset.object, status: r.dataset.status })));
    assertEq(freshRows.map((r) => r.object).sort(), fresh.objects.map((o) => o.object).sort(), 'freshness objects');
    for (const r of freshRows) assert(['current', 'delayed', 'partial'].includes(r.status), `freshness of ${r.object}: ${r.status}`);
    await shot(page, 'overview');
  });

  await check('every page loads and is screenshotted', async () => {
    for (const name of ['budget', 'runs', 'deadletters', 'quarantine', 'conflicts', 'map', 'overview']) {
      await page.click(`[data-testid=nav-${name}]`);
      await ready(page, name);
      assert(await page.isHidden('[data-testid=error-banner]'), `${name}: error banner: ${await page.textContent('[data-testid=error-text]')}`);
      await shot(page, name);
    }
  });

  await check('API budget page shows the API\'s lanes, forecast and burn chart', async () => {
    await goPage(page, '#/budget', 'budget');
    const b = await api('/api/v1/budget');
    const lanes = await page.$$eval('[data-testid=lane-row]', (rs) => rs.map((r) => r.dataset.lane));
    assertEq(lanes, b.lanes.map((l) => l.lane), 'lanes');
    const forecast = await page.textContent('[data-testid=forecast]');
    assert(forecast.trim().length > 0, 'no forecast text');
    assert(await page.isVisible('[data-testid=burn-chart]'), 'no burn-rate chart');
    // The page catches up with the API's history within a refresh.
    if (b.history.points.length > 0) await page.waitForSelector('[data-testid=series-ours]', { state: 'attached', timeout: WAIT });
    assertEq(await page.getAttribute('[data-testid=budget-org-max]', 'data-value'), String(b.org_max), 'org max');
  });

  await check('runs: list and one run\'s detail', async () => {
    await goPage(page, '#/runs?state=all', 'runs');
    const runs = (await api('/api/v1/runs?state=all&limit=200')).runs;
    const rows = await page.$$eval('[data-testid=run-row]', (rs) => rs.map((r) => r.dataset.id));
    assert(rows.length > 0 || runs.length === 0, 'the runs table is empty but the API lists runs');
    if (runs.length > 0) {
      const id = runs[runs.length - 1].id;
      await goPage(page, `#/runs/${id}`, 'runs');
      await page.waitForSelector('[data-testid=run-detail]', { timeout: WAIT });
      const st = await page.getAttribute('[data-testid=run-detail]', 'data-state');
      assertEq(st, (await api(`/api/v1/runs/${id}`)).state, `run ${id} state`);
      await shot(page, 'run-detail');
    }
  });

  await check('the map draws one edge per flow of /api/v1/map', async () => {
    await goPage(page, '#/map', 'map');
    const m = await api('/api/v1/map');
    const edges = await page.$$eval('[data-testid=map-edge]', (es) => es.map((e) => `${e.dataset.object}|${e.dataset.pattern}|${e.dataset.source}|${e.dataset.target}`));
    const want = m.flows.map((f) => `${f.object}|${f.pattern}|${f.source}|${f.target}`);
    assertEq(edges.sort(), want.sort(), 'map edges');
    assertEq(await page.$$eval('[data-testid=map-flow-row]', (r) => r.length), m.flows.length, 'map table rows');
    // CDC and polled flows show their live mode (cdc, poll, degraded-poll) as the API gives it.
    const lives = await page.$$eval('[data-testid=map-live]', (cs) => cs.map((c) => c.dataset.mode));
    assertEq(lives.sort(), m.flows.filter((f) => f.live).map((f) => f.live.mode).sort(), 'live modes');
    if (!m.flows.some((f) => f.live)) throw new Error('no flow of the demo has a live state');
    const mermaid = await page.$eval('[data-testid=mermaid] pre', (p) => p.textContent);
    assertEq(mermaid, m.mermaid, 'mermaid text');
    await shot(page, 'map');
  });

  await check('redrive a dead letter → redriven in the API', async () => {
    // Failed writes are redriven; event dead letters are a record with a recovery hint.
    const d = (await api('/api/v1/deadletters?kind=write&limit=1000')).dead_letters[0];
    assert(d, 'no failed write among the dead letters');
    await goPage(page, `#/deadletters/${d.kind}/${d.id}`, 'deadletters');
    await page.waitForSelector('[data-testid=deadletter-detail][data-present=yes]', { timeout: WAIT });
    await shot(page, 'deadletter-detail');
    await page.fill('[data-testid=action-note]', 'browser test: redrive');
    await page.click('[data-testid=redrive]');
    await page.waitForSelector('[data-testid=confirm][open]', { timeout: WAIT });
    await shot(page, 'confirm-redrive');
    const clickedAt = Date.now() - 1000;
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/api/v1/deadletters/${d.kind}/${d.id}/redrive`) && r.request().method() === 'POST', { timeout: WAIT }),
      page.click('[data-testid=confirm-ok]'),
    ]);
    assertEq(resp.status(), 200, 'redrive answer status');
    // Redriven = moved out of `failed` by this operator after the click (a write that
    // Salesforce refuses again may be back in `failed` by now: that is a new attempt).
    await eventually(`failed write ${d.id} redriven`, WAIT, async () => {
      const w = await api(`/api/v1/writes/${d.id}`);
      const t = (w.transitions || []).find((x) => x.from === 'failed' && /redriven/.test(x.detail || '') && Date.parse(x.at) >= clickedAt);
      return t ? null : `no redrive out of failed since the click: ${JSON.stringify(w.transitions)}`;
    });
    await page.waitForFunction(() => /Done: redrive/.test(document.querySelector('[data-testid=notice]').textContent), null, { timeout: WAIT });
  });

  await check('release a quarantined change → released in the API', async () => {
    const list = (await api('/api/v1/quarantine?status=held&limit=1000')).entries;
    assert(list.length > 0, 'nothing held in the quarantine');
    const q = list[0];
    await goPage(page, `#/quarantine/${q.id}`, 'quarantine');
    await page.waitForSelector('[data-testid=quarantine-detail]', { timeout: WAIT });
    await shot(page, 'quarantine-detail');
    // The demo's held Contacts still fail their rule: a plain release would be re-held, so
    // this is the person's "apply it anyway".
    await page.check('[data-testid=release-force]');
    await page.fill('[data-testid=action-note]', 'browser test: release');
    await page.click('[data-testid=release]');
    await page.waitForSelector('[data-testid=confirm][open]', { timeout: WAIT });
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/api/v1/quarantine/${q.id}/release`) && r.request().method() === 'POST', { timeout: WAIT }),
      page.click('[data-testid=confirm-ok]'),
    ]);
    assertEq(resp.status(), 200, 'release answer status');
    await eventually(`quarantined change ${q.id} released`, 60_000, async () => {
      const now = await api(`/api/v1/quarantine/${q.id}`);
      return now.status === 'released' ? null : `status ${now.status}`;
    });
    // The page follows on its next refresh.
    await page.waitForSelector('[data-testid=quarantine-detail][data-status=released]', { timeout: WAIT });
  });

  await check('resolve a conflict (keep Salesforce) → no longer open in the API', async () => {
    const list = (await api('/api/v1/conflicts?state=open&limit=1000')).conflicts;
    assert(list.length > 0, 'no open conflict');
    const c = list[0];
    await goPage(page, `#/conflicts/${c.id}`, 'conflicts');
    await page.waitForSelector('[data-testid=conflict-detail]', { timeout: WAIT });
    const fields = await page.$$eval('[data-testid=conflict-field]', (rs) => rs.map((r) => r.dataset.field));
    const detail = await api(`/api/v1/conflicts/${c.id}`);
    const sides = Array.isArray(detail.conflict) ? detail.conflict : detail.conflict.fields;
    assertEq(fields, sides.map((f) => f.field), 'conflicting fields');
    await shot(page, 'conflict-detail');
    await page.check('[data-testid=resolve-keep-salesforce]');
    await page.fill('#conflict-note', 'browser test: keep Salesforce');
    await page.click('[data-testid=resolve-submit]');
    await page.waitForSelector('[data-testid=confirm][open]', { timeout: WAIT });
    const body = JSON.parse(await page.textContent('[data-testid=confirm-body]'));
    assertEq(body.action, 'keep_salesforce', 'the action shown for confirmation');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/api/v1/conflicts/${c.id}/resolve`) && r.request().method() === 'POST', { timeout: WAIT }),
      page.click('[data-testid=confirm-ok]'),
    ]);
    assertEq(resp.status(), 200, 'resolve answer status');
    await eventually(`conflict ${c.id} resolved`, WAIT, async () => {
      const open = (await api('/api/v1/conflicts?state=open&limit=1000')).conflicts;
      return open.some((x) => x.id === c.id) ? 'still open' : null;
    });
    await goPage(page, '#/conflicts', 'conflicts');
    const rows = await page.$$eval('[data-testid=conflict-row]', (rs) => rs.map((r) => Number(r.dataset.id)));
    assert(!rows.includes(c.id), `conflict ${c.id} is still listed as open on the page`);
    await shot(page, 'conflicts-after-resolve');
  });

  await check('no console errors, uncaught exceptions or failed requests', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
  await ctx.close();
} finally {
  await browser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
