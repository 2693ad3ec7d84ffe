// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core from
// tests/dashboard/node_modules), against the broker tests/dashboard/run.sh started and its real
// clients. Each page is opened from the navigation bar and must show live data without a
// console error, a failed request or a request to another origin; then the Pub/Sub tab
// publishes over WebSocket (a mosquitto_sub receives it) and the Clients tab kicks dash-sub
// (its mosquitto_sub exits, or the API stops listing it). Prints `PASS|FAIL dashboard/<check>
// [:: detail]` per check; exits 1 if one failed. Every wait has a timeout.
//   DASHBOARD_URL          the node's API listener, e.g. http://127.0.0.1:18083/ (required)
//   DASHBOARD_NODES        nodes in the cluster (default 1); with 2, the node at DASHBOARD_URL
//                          is a replicant, and the run first waits for the cluster to form
//   DASHBOARD_SUB_PID      pid of the dash-sub mosquitto_sub (the client to kick)
//   DASHBOARD_CHECK_OUT    output file of the mosquitto_sub subscribed to dash/ui
//   DASHBOARD_SCREENSHOTS  1: a full-page screenshot of each page into DASHBOARD_SHOTS_DIR
//   DASHBOARD_SHOTS_DIR    default docs/dashboard
//   CHROMIUM               the browser binary (default /usr/bin/chromium)
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { launchOptions } from '../interop/browser/chromium.mjs';

const require = createRequire(new URL('./package.json', import.meta.url));
const { chromium } = require('playwright-core');

const base = process.env.DASHBOARD_URL;
if (!base) {
  console.log('FAIL dashboard/setup :: DASHBOARD_URL is not set (run tests/dashboard/run.sh)');
  process.exit(1);
}
const origin = new URL(base).origin;
const nodes = Number(process.env.DASHBOARD_NODES || 1);
const subPid = Number(process.env.DASHBOARD_SUB_PID || 0);
const checkOut = process.env.DASHBOARD_CHECK_OUT;
const shots = process.env.DASHBOARD_SCREENSHOTS === '1';
const shotsDir = process.env.DASHBOARD_SHOTS_DIR || new URL('../../docs/dashboard/', import.meta.url).pathname;

// Bounds, in milliseconds.
const WAIT_MS = 10000; // one element or state to appear
const LIVE_MS = 15000; // the overview: three polls and a chart
const FORM_MS = 20000; // a two-node cluster to form, with every client listed
const SHOT_TRAFFIC_MS = 20000; // screenshots: let the charts fill a little first

const results = [];
function record(name, ok, detail = '') {
  results.push({ name, ok });
  console.log(`${ok ? 'PASS' : 'FAIL'} dashboard/${name}${detail ? ` :: ${detail}` : ''}`);
}

async function check(name, fn) {
  try {
    const detail = await fn();
    record(name, true, typeof detail === 'string' ? detail : '');
    return true;
  } catch (e) {
    record(name, false, String(e.message).split('\n')[0]);
    return false;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` (async, truthy = done) every 250 ms for up to `ms`; the last value, or throws. */
async function until(what, ms, fn) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms${last instanceof Error ? ` (${last.message})` : ''}`);
    await sleep(250);
  }
}

async function apiGet(path) {
  const res = await fetch(new URL(path, base), { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.json().catch(() => null) };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// Problems seen while a page is shown: console errors, page errors, failed requests, HTTP
// errors, requests to another origin.
let pageName = 'load';
const problems = new Map();
const problem = (line) => {
  if (!problems.has(pageName)) problems.set(pageName, []);
  problems.get(pageName).push(line);
};

let browser;
try {
  if (nodes > 1) {
    // The replicant follows the core's RLOG shards, and lists node 1's clients.
    const ok = await check('cluster_formed', async () => {
      await until('the replicant normal on every RLOG shard, two members running', FORM_MS, async () => {
        const rlog = (await apiGet('api/v1/rlog')).body;
        const cluster = (await apiGet('api/v1/cluster')).body;
        return rlog?.shards?.length > 0 && rlog.shards.every((x) => x.state === 'normal') &&
          cluster?.members?.filter((m) => m.status === 'running').length === nodes;
      });
      await until('dash-sub listed through the replicant', FORM_MS, async () =>
        ((await apiGet('api/v1/clients?clientid=dash-sub')).body?.data ?? []).some((c) => c.clientid === 'dash-sub'));
    });
    if (!ok) throw new Error('the cluster did not form');
  }
  browser = await chromium.launch(launchOptions());
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(WAIT_MS);
  page.on('console', (m) => {
    if (m.type() === 'error') problem(`console.error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problem(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => problem(`request failed: ${r.method()} ${r.url()} (${r.failure()?.errorText})`));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith('data:') && new URL(url).origin !== origin) problem(`request to another origin: ${url}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problem(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`);
  });

  const shot = async (name) => {
    if (!shots) return;
    mkdirSync(shotsDir, { recursive: true });
    await page.screenshot({ path: join(shotsDir, `${name}.png`), fullPage: true });
  };
  /** Opens page `name` from the navigation bar, runs `body`, then checks it stayed clean. */
  const visit = async (name, body) => {
    pageName = name;
    await check(`${name}/open`, async () => {
      await page.click(`#nav a[data-route="${name}"]`);
      await page.waitForSelector(`body[data-page="${name}"]`);
    });
    await body();
    const seen = problems.get(name) ?? [];
    record(`${name}/no_console_error_or_failed_request`, seen.length === 0, seen.slice(0, 3).join(' | '));
  };

  // ---- the page itself ----
  let loaded = false;
  await check('load', async () => {
    const res = await page.goto(`${base}#/overview`, { timeout: WAIT_MS });
    const csp = res.headers()['content-security-policy'] ?? '';
    if (res.status() !== 200) throw new Error(`GET / answered ${res.status()}`);
    if (!csp.includes("default-src 'self'")) throw new Error(`Content-Security-Policy: ${csp || 'none'}`);
    await page.waitForSelector('body[data-page="overview"]');
    loaded = true;
  });
  if (!loaded) throw new Error('the dashboard did not load');

  // ---- overview ----
  await visit('overview', async () => {
    await check('overview/connections', async () => {
      const n = await until('the connections tile at 1 or more', LIVE_MS, () =>
        page.evaluate(() => {
          const v = Number(document.querySelector('.tile-connections .tile-value')?.textContent.replace(/,/g, ''));
          return v >= 1 ? v : 0;
        }));
      return `${n} connections`;
    });
    await check('overview/chart', async () => {
      // The connections chart has drawn a series line: pixels of neither the grid's nor the
      // labels' colour.
      const px = await until('a line on the connections chart', LIVE_MS, () =>
        page.evaluate(() => {
          const c = document.querySelector('.chart-canvas');
          if (!c || !c.width) return 0;
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          const far = (i, [r, g, b]) => Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) > 90;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 150 && far(i, [0xe3, 0xe6, 0xea]) && far(i, [0x6b, 0x72, 0x80])) n++;
          }
          return n >= 8 ? n : 0;
        }));
      return `${px} line pixels`;
    });
    await check('overview/nodes_table', async () => {
      await until(`${nodes} nodes running in the nodes table`, WAIT_MS, () =>
        page.evaluate((n) => [...document.querySelectorAll('.overview tr[data-node]')].filter((r) => r.textContent.includes('running')).length === n, nodes));
    });
    if (shots) {
      await sleep(SHOT_TRAFFIC_MS);
      await shot('overview');
      await page.click('.segmented button[data-mode="shard"]');
      await sleep(300);
      await shot('overview-shards');
      await page.click('.segmented button[data-mode="node"]');
    }
  });

  // ---- cluster ----
  await visit('cluster', async () => {
    await check('cluster/members', async () => {
      await until(`${nodes} members running`, WAIT_MS, () =>
        page.evaluate((n) => [...document.querySelectorAll('.cluster tr[data-node]')].filter((r) => r.textContent.includes('running')).length === n, nodes));
    });
    await check('cluster/rlog', async () => {
      // A standalone node has no RLOG shards and says so; a replicant lists its shards, each
      // with its state, seq and lag.
      const rows = await until('the RLOG shards', WAIT_MS, () =>
        page.evaluate(() => {
          const s = [...document.querySelectorAll('.cluster section')].find((x) => x.querySelector('h2')?.textContent.startsWith('RLOG'));
          if (!s) return null;
          const rows = [...s.querySelectorAll('tr[data-shard]')].map((r) => [...r.cells].map((c) => c.textContent));
          return rows.length ? rows : s.querySelector('.empty') ? 'standalone' : null;
        }));
      if (nodes === 1) return rows === 'standalone' ? 'standalone: none' : `${rows.length} shards`;
      if (rows === 'standalone' || !rows.every((r) => r[1] === 'normal')) throw new Error(`shards: ${JSON.stringify(rows)}`);
      return rows.map((r) => `${r[0]} ${r[1]} seq ${r[2]} lag ${r[3]}`).join(', ');
    });
    await shot('cluster');
  });

  // ---- subscriptions ----
  await visit('subscriptions', async () => {
    await check('subscriptions/list', async () => {
      await page.waitForSelector('tr[data-filter="dash/#"]');
    });
    await shot('subscriptions');
    await check('subscriptions/filter', async () => {
      await page.fill('.filters input[name="clientid"]', 'dash-sub');
      await page.click('.filters button[type="submit"]');
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('.subscriptions tbody tr')];
        return rows.length >= 1 && rows.every((r) => r.textContent.includes('dash-sub'));
      });
    });
  });

  // ---- retained ----
  await visit('retained', async () => {
    await check('retained/list', async () => {
      await page.waitForSelector('tr[data-topic="dash/retained/1"]');
      await page.waitForSelector('tr[data-topic="dash/retained/2"]');
    });
    await check('retained/view', async () => {
      await page.click('tr[data-topic="dash/retained/1"] button.view');
      await page.waitForSelector('.detail .payload >> text=retained message 1 from mosquitto_pub');
    });
    await shot('retained');
    await check('retained/delete', async () => {
      const del = page.locator('tr[data-topic="dash/retained/2"] button.delete');
      await del.click();
      await del.click(); // the second click confirms
      await page.waitForSelector('tr[data-topic="dash/retained/2"]', { state: 'detached' });
      const r = await until('GET /api/v1/retained/dash%2Fretained%2F2 is 404', WAIT_MS, async () =>
        (await apiGet('api/v1/retained/dash%2Fretained%2F2')).status === 404);
      return r && 'gone from the API too';
    });
  });

  // ---- pub/sub over WebSocket ----
  await visit('pubsub', async () => {
    const payload = `hello from chromium ${Date.now()}`;
    await check('pubsub/connect', async () => {
      await page.click('#ws-connect button[name="go"]');
      await page.waitForSelector('#ws-state[data-state="connected"]');
    });
    await check('pubsub/subscribe', async () => {
      await page.fill('#ws-subscribe input[name="filter"]', 'dash/#');
      await page.click('#ws-subscribe button[type="submit"]');
      await page.waitForSelector('#ws-subscriptions li >> text=dash/#');
    });
    await check('pubsub/publish', async () => {
      await page.fill('#ws-publish input[name="topic"]', 'dash/ui');
      await page.fill('#ws-publish textarea[name="payload"]', payload);
      await page.click('#ws-publish button[type="submit"]');
      await page.waitForSelector(`#ws-messages tr[data-topic="dash/ui"] >> text=${payload}`);
    });
    await check('pubsub/mosquitto_sub_received', async () => {
      if (!checkOut) throw new Error('DASHBOARD_CHECK_OUT is not set');
      await until('dash-check to print it', WAIT_MS, () => readFileSync(checkOut, 'utf8').includes(`dash/ui ${payload}`));
    });
    await shot('pubsub');
  });

  // ---- clients: search, inspect, kick ----
  await visit('clients', async () => {
    const row = 'tr[data-clientid="dash-sub"]';
    await check('clients/list', async () => {
      await page.waitForSelector(row);
    });
    await check('clients/search', async () => {
      await page.fill('#client-search', 'dash-s');
      await page.click('.clients .filters button[type="submit"]');
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('.clients .paged tbody tr')];
        return rows.length >= 1 && rows.every((r) => r.dataset.clientid.includes('dash-s'));
      });
      await page.waitForSelector(row);
    });
    await check('clients/inspect', async () => {
      await page.click(`${row} button.inspect`);
      await page.waitForSelector('.detail >> text=dash/#');
    });
    if (shots) {
      // Every client (dash-sub, dash-load, the page's own; dash-check left after its message),
      // the inspected one below.
      await check('clients/screenshot', async () => {
        await page.fill('#client-search', '');
        await page.click('.clients .filters button[type="submit"]');
        await until('the whole list', WAIT_MS, () => page.evaluate(() => document.querySelectorAll('.clients .paged tbody tr').length >= 3));
        await shot('clients');
      });
    }
    await check('clients/kick', async () => {
      const kick = page.locator(`${row} button.kick`);
      await kick.click();
      await kick.click(); // the second click confirms
      const how = await until('dash-sub disconnected', WAIT_MS, async () => {
        if (subPid && !alive(subPid)) return 'its mosquitto_sub exited';
        const { status, body } = await apiGet('api/v1/clients?clientid=dash-sub');
        if (status === 200 && !(body?.data ?? []).some((c) => c.clientid === 'dash-sub')) return 'the API no longer lists it';
        return false;
      });
      await page.waitForSelector(row, { state: 'detached' });
      return `${how}; gone from the table`;
    });
  });
} catch (e) {
  record('run', false, e.message.split('\n')[0]);
} finally {
  await browser?.close().catch(() => {});
}

const failed = results.filter((r) => !r.ok).length;
console.log(`dashboard: ${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
