// shardmq interop in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core from tests/interop/browser/node_modules) opens index.html, served by a tiny HTTP
// server started here on 127.0.0.1, which loads MQTT.js's browser bundle from
// tests/interop/js/node_modules (no CDN), connects over ws://, subscribes, publishes and reports
// in document.title. Run by tests/interop/security.sh, which passes SECURITY_WS_PORT.
// Prints `@@ PASS|FAIL security browser/ws [:: detail]`.
//   CHROMIUM  the browser binary (default /usr/bin/chromium)
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { launchOptions } from './chromium.mjs';

const here = new URL('.', import.meta.url).pathname;
const require = createRequire(new URL('./package.json', import.meta.url));
const { chromium } = require('playwright-core');

const CLIENT = 'security';
const PAGE_MS = 12000; // bound on one page's run (the page gives up after 8 s)
const wsPort = Number(process.env.SECURITY_WS_PORT);

const files = {
  '/index.html': ['text/html', readFileSync(join(here, 'index.html'))],
  '/mqtt.min.js': ['text/javascript', readFileSync(join(here, '../js/node_modules/mqtt/dist/mqtt.min.js'))],
};
const server = createServer((req, res) => {
  const file = files[new URL(req.url, 'http://x').pathname];
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': file[0] }).end(file[1]);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const httpPort = server.address().port;

function expectedToFail(full) {
  const name = full.split('/')[1];
  const names = (process.env.INTEROP_XFAIL ?? '').split(/\s+/).filter(Boolean);
  return names.some((e) => [name, full, `${CLIENT}:${name}`, `${CLIENT}:${full}`].includes(e));
}

let browser;
const problems = [];
const full = 'browser/ws';
try {
  browser = await chromium.launch(launchOptions());
  for (const v of [4, 5]) {
    const page = await browser.newPage();
    const consoleLines = [];
    page.on('console', (m) => consoleLines.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    const query = new URLSearchParams({
      port: String(wsPort),
      path: '/mqtt',
      username: 'alice',
      password: 'alice-pw',
      topic: `alice/browser/${v}`,
      v: String(v),
    });
    await page.goto(`http://127.0.0.1:${httpPort}/index.html?${query}`, { timeout: PAGE_MS });
    let title = 'RUNNING';
    try {
      await page.waitForFunction(() => document.title !== 'RUNNING', null, { timeout: PAGE_MS });
      title = await page.title();
    } catch (e) {
      title = `FAIL: page did not finish: ${e.message.split('\n')[0]}`;
    }
    if (title !== 'PASS') {
      const log = await page.locator('#log').textContent().catch(() => '');
      problems.push(`MQTT ${v}: ${title}`, ...log.trim().split('\n').map((l) => `  page: ${l}`), ...consoleLines);
    }
    await page.close();
  }
} catch (e) {
  problems.push(`browser: ${e.message}`);
} finally {
  await browser?.close().catch(() => {});
  server.close();
}

if (!full.includes(process.env.INTEROP_ONLY ?? '')) process.exit(0);
if (problems.length === 0) {
  console.log(`@@ PASS ${CLIENT} ${full}`);
  process.exit(0);
}
console.log(`@@ FAIL ${CLIENT} ${full} :: ${problems[0]}`);
for (const line of problems) for (const l of line.split('\n')) console.log(`    | ${l}`);
process.exit(expectedToFail(full) ? 0 : 1);
