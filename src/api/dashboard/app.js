// The shardmq dashboard: plain JavaScript, no build step, no framework. Served by the node from
// the binary (src/api/dashboard.rs); talks only to the management API of the same origin
// (docs/api.md) and, in the Pub/Sub tab, to the node's MQTT-over-WebSocket listener.
//
// Pages are hash routes (#/overview, #/cluster, #/clients, #/subscriptions, #/retained,
// #/pubsub). The overview is polled every POLL_MS on every page, and the last HISTORY_POINTS
// overviews are kept for the charts: rates are counter differences between two polls over the
// time between them. Everything is built with DOM calls and textContent (no innerHTML), so no
// value from the API is ever parsed as markup; no inline style or script (the page's
// Content-Security-Policy forbids both). Errors go to the page, never to the console.
'use strict';

const POLL_MS = 2000;
const HISTORY_POINTS = 150; // 5 minutes of polls
const NOTICE_MS = 6000;
const CONFIRM_MS = 4000; // a two-step button waits this long for its second click
const MESSAGES_MAX = 200; // messages the Pub/Sub tab keeps
const MQTT_REDRAW_MS = 200;
const PAYLOAD_SHOWN_MAX = 2000; // characters of a payload shown in a table cell
const KEY_STORAGE = 'shardmq.apiKey';
const KEY_TRIES = 5; // keys one call asks for before it gives up
const PALETTE = [
  '#2f7ed8', '#e4572e', '#29a36a', '#f0a202', '#8e44ad', '#17becf',
  '#d62728', '#7f7f7f', '#bcbd22', '#1f3a93', '#e377c2', '#8c564b',
];

// ---- DOM helpers ------------------------------------------------------------------------------

/** An element: attrs `class`, `text`, `on<event>` (listeners), others as attributes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = String(v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);

/** Replaces the children of `el` (null, undefined and false are left out). */
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const fmtInt = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });
const fmt1 = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });

function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e9) return `${fmt1.format(v / 1e9)}G`;
  if (a >= 1e6) return `${fmt1.format(v / 1e6)}M`;
  if (a >= 1e4) return `${fmt1.format(v / 1e3)}k`;
  return a < 10 && !Number.isInteger(v) ? fmt1.format(v) : fmtInt.format(v);
}

function fmtBytes(v) {
  if (v === null || v === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? fmtInt.format(v) : fmt1.format(v)} ${units[i]}`;
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return '–';
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400);
  const hr = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function fmtTime(iso) {
  if (!iso) return '–';
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  return `${t.toLocaleString()} (${fmtDuration((Date.now() - t.getTime()) / 1000)} ago)`;
}

const yesNo = (v) => (v === true ? 'yes' : v === false ? 'no' : '–');
const orDash = (v) => (v === null || v === undefined || v === '' ? '–' : v);
const roleName = (r) => (typeof r === 'string' ? r.toLowerCase() : orDash(r));

/** Shows `text` under the header for a while; `kind` is `ok` or `error`. */
function notify(text, kind = 'ok') {
  const el = $('#notice');
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => (el.hidden = true), NOTICE_MS);
}

/** A button that asks for a second click (within CONFIRM_MS) before it runs `action`. */
function confirmButton(label, confirmLabel, cls, action) {
  let armed = null;
  const btn = h('button', { type: 'button', class: `${cls} danger`, text: label });
  btn.addEventListener('click', async () => {
    if (!armed) {
      btn.textContent = confirmLabel;
      btn.classList.add('armed');
      armed = setTimeout(() => {
        armed = null;
        btn.textContent = label;
        btn.classList.remove('armed');
      }, CONFIRM_MS);
      return;
    }
    clearTimeout(armed);
    armed = null;
    btn.disabled = true;
    try {
      await action();
    } finally {
      btn.disabled = false;
      btn.textContent = label;
      btn.classList.remove('armed');
    }
  });
  return btn;
}

// ---- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** `method path` with the stored key; the parsed JSON answer, or an ApiError. A 401 asks for
 *  a key and retries with it, as long as the user gives another (at most KEY_TRIES times).
 *  Paths are relative to the page, so the dashboard also works behind a proxy that serves
 *  the node under a prefix. */
async function api(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: 'application/json' };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `the node did not answer (${e.message})`);
    }
    if (res.status === 401) {
      if (attempt < KEY_TRIES && (await askForKey(Boolean(key)))) continue;
      throw new ApiError(401, 'this node needs an API key');
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const why = data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText}`;
      throw new ApiError(res.status, why);
    }
    return data;
  }
}

const enc = encodeURIComponent;

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

// ---- the API key prompt -----------------------------------------------------------------------

let keyAsked = null; // the pending prompt's promise, shared by every call that got a 401
let keyDeclined = false; // the user closed the prompt: ask again only when they click

/** Shows the key prompt; resolves true once a key is stored, false if it was dismissed. */
function askForKey(refused, force = false) {
  if (keyDeclined && !force) return Promise.resolve(false);
  if (keyAsked) return keyAsked;
  const modal = $('#key-prompt');
  const form = $('#key-form');
  const input = $('#key-input');
  keyAsked = new Promise((resolve) => {
    const done = (ok) => {
      modal.hidden = true;
      form.removeEventListener('submit', onSubmit);
      $('#key-cancel').removeEventListener('click', onCancel);
      keyAsked = null;
      resolve(ok);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      keyDeclined = false;
      input.value = '';
      done(true);
    };
    const onCancel = () => {
      keyDeclined = true;
      done(false);
    };
    form.addEventListener('submit', onSubmit);
    $('#key-cancel').addEventListener('click', onCancel);
    input.placeholder = refused ? 'the stored key was refused: another key' : 'key';
    modal.hidden = false;
    input.focus();
  });
  return keyAsked;
}

// ---- the overview poll and its history -------------------------------------------------------

/** The last overviews, oldest first: {t (ms), ov, items: {node: Map, shard: Map}}. */
const polls = [];
let lastOverview = null;
let pollError = null;
const overviewListeners = new Set();

const NODE_FIGURES = ['connections', 'sessions', 'subscriptions', 'retained', 'messages_in',
  'messages_out', 'messages_dropped', 'bytes_in', 'bytes_out'];

function itemsOf(ov) {
  const node = new Map();
  const shard = new Map();
  for (const n of ov.nodes ?? []) {
    node.set(`n${n.node}`, { label: `node ${n.node}`, fig: n });
    for (const s of n.shards ?? []) shard.set(`n${n.node}s${s.shard}`, { label: `n${n.node}/s${s.shard}`, fig: s });
  }
  return { node, shard };
}

async function poll() {
  try {
    const ov = await api('GET', 'api/v1/overview');
    lastOverview = ov;
    pollError = null;
    polls.push({ t: Date.now(), ov, items: itemsOf(ov) });
    while (polls.length > HISTORY_POINTS + 1) polls.shift();
  } catch (e) {
    pollError = e;
  }
  showNodeInfo();
  for (const f of overviewListeners) {
    try {
      f();
    } catch (e) {
      notify(`overview: ${e.message}`, 'error');
    }
  }
  setTimeout(poll, POLL_MS);
}

function showNodeInfo() {
  const live = $('#live');
  if (pollError) {
    live.textContent = pollError.status === 401 ? 'needs key' : 'no answer';
    live.title = pollError.message;
    live.className = 'live error';
    if (pollError.status === 401) {
      fill(live,
        // Asked for by the user after dismissing the prompt: redraw the page with the key.
        h('button', { type: 'button', class: 'small', text: 'API key', onclick: () => askForKey(false, true).then((ok) => ok && route()) }),
      );
    }
  } else {
    live.textContent = 'live';
    live.title = `overview every ${POLL_MS / 1000} s`;
    live.className = 'live ok';
  }
  const n = lastOverview?.node;
  if (n) {
    $('#node-info').textContent =
      `${n.name} · node ${n.id} · ${roleName(n.role)} · v${n.version} · ${n.shards} shard${n.shards === 1 ? '' : 's'} · up ${fmtDuration(n.uptime_secs)}`;
    document.title = `shardmq · ${n.name}`;
  }
}

/** Counter `key` of item `id` as a rate between snapshots i-1 and i, or null. */
function rateAt(i, mode, id, key) {
  const cur = polls[i];
  const prev = polls[i - 1];
  if (!prev) return null;
  const a = prev.items[mode].get(id);
  const b = cur.items[mode].get(id);
  const dt = (cur.t - prev.t) / 1000;
  if (!a || !b || !(dt > 0)) return null;
  const d = b.fig[key] - a.fig[key];
  return Number.isFinite(d) && d >= 0 ? d / dt : null; // a counter that went down: a restart
}

/** The chart series of `key`: one per node or per shard (`mode`), plus a total per node
 *  mode with more than one node. Each point is [t, value or null]. */
function seriesOf(key, rate, mode) {
  const byId = new Map();
  for (let i = rate ? 1 : 0; i < polls.length; i++) {
    const snap = polls[i];
    for (const [id, item] of snap.items[mode]) {
      const v = rate ? rateAt(i, mode, id, key) : item.fig[key] ?? null;
      if (!byId.has(id)) byId.set(id, { id, label: item.label, points: [] });
      byId.get(id).points.push([snap.t, v]);
    }
  }
  const series = [...byId.values()];
  if (mode === 'node' && series.length > 1) {
    const total = { id: 'total', label: 'all nodes', points: [] };
    for (let i = rate ? 1 : 0; i < polls.length; i++) {
      let sum = 0;
      let any = false;
      for (const [id, item] of polls[i].items.node) {
        const v = rate ? rateAt(i, 'node', id, key) : item.fig[key];
        if (v !== null && v !== undefined) {
          sum += v;
          any = true;
        }
      }
      total.points.push([polls[i].t, any ? sum : null]);
    }
    series.unshift(total);
  }
  return series;
}

/** The cluster's sums of the last overview and, over the last two, rates. */
function clusterFigures() {
  const out = { nodes: 0, running: 0 };
  for (const k of NODE_FIGURES) out[k] = 0;
  if (!lastOverview) return out;
  for (const n of lastOverview.nodes ?? []) {
    out.nodes++;
    if (n.status === 'running') out.running++;
    for (const k of NODE_FIGURES) if (k !== 'retained') out[k] += n[k] ?? 0;
    // Every node holds the cluster's retained messages: the largest copy, not the sum.
    out.retained = Math.max(out.retained, n.retained ?? 0);
  }
  const last = polls.length - 1;
  for (const k of ['messages_in', 'messages_out', 'messages_dropped', 'bytes_in', 'bytes_out']) {
    let sum = null;
    if (last >= 1) {
      for (const id of polls[last].items.node.keys()) {
        const r = rateAt(last, 'node', id, k);
        if (r !== null) sum = (sum ?? 0) + r;
      }
    }
    out[`${k}_rate`] = sum;
  }
  return out;
}

// ---- charts -----------------------------------------------------------------------------------

/** The top of a y axis at or above `v` and its number of grid steps: 1, 2, 5 or 10 times a
 *  power of ten, in steps of 0.2, 0.5, 1 and 2 times that power. */
function niceAxis(v) {
  if (!(v > 0)) return { max: 1, steps: 5 };
  const p = 10 ** Math.floor(Math.log10(v));
  const m = v / p;
  const top = m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10;
  return { max: top * p, steps: top === 2 ? 4 : 5 };
}

/** A small line chart on a canvas, with a legend of the series' last values. */
class LineChart {
  constructor(title, unit) {
    this.unit = unit;
    this.canvas = h('canvas', { class: 'chart-canvas' });
    this.legend = h('div', { class: 'legend' });
    this.el = h('figure', { class: 'chart' }, h('figcaption', { text: title }), this.canvas, this.legend);
  }

  draw(series, colorOf) {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300;
    const ht = canvas.clientHeight || 150;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(ht * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(ht * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, ht);
    const left = 52;
    const right = 8;
    const top = 8;
    const bottom = 20;
    const pw = w - left - right;
    const ph = ht - top - bottom;
    const now = polls.length ? polls[polls.length - 1].t : Date.now();
    const t0 = now - HISTORY_POINTS * POLL_MS;
    let max = 0;
    for (const s of series) for (const [, v] of s.points) if (v !== null && v > max) max = v;
    const { max: ymax, steps } = niceAxis(max);
    const x = (t) => left + ((t - t0) / (now - t0)) * pw;
    const y = (v) => top + ph - (v / ymax) * ph;

    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    ctx.strokeStyle = '#e3e6ea';
    ctx.fillStyle = '#6b7280';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= steps; i++) {
      const v = (ymax * i) / steps;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + pw, yy);
      ctx.stroke();
      ctx.fillText(fmtNum(v), left - 6, yy);
    }
    ctx.textBaseline = 'top';
    ctx.textAlign = 'left';
    ctx.fillText('−5 min', left, top + ph + 5);
    ctx.textAlign = 'right';
    ctx.fillText('now', left + pw, top + ph + 5);

    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 1, pw, ph + 2);
    ctx.clip();
    ctx.lineWidth = 1.5;
    ctx.lineJoin = 'round';
    for (const s of series) {
      ctx.strokeStyle = colorOf(s.id);
      ctx.beginPath();
      let prevT = null;
      for (const [t, v] of s.points) {
        if (v === null) {
          prevT = null;
          continue;
        }
        if (prevT === null || t - prevT > 3 * POLL_MS) ctx.moveTo(x(t), y(v));
        else ctx.lineTo(x(t), y(v));
        prevT = t;
      }
      ctx.stroke();
    }
    ctx.restore();

    const shown = series.slice(0, 16);
    fill(this.legend,
      ...shown.map((s) => {
        const last = [...s.points].reverse().find(([, v]) => v !== null);
        const swatch = h('span', { class: 'swatch' });
        swatch.style.background = colorOf(s.id); // CSSOM, which the policy allows
        return h('span', { class: 'legend-item' }, swatch, `${s.label} ${last ? fmtNum(last[1]) : '–'}${this.unit}`);
      }),
      series.length > shown.length ? h('span', { class: 'legend-item', text: `+${series.length - shown.length} more` }) : null,
    );
  }
}

const colors = new Map();
function colorOf(id) {
  if (id === 'total') return '#111827';
  if (!colors.has(id)) colors.set(id, PALETTE[colors.size % PALETTE.length]);
  return colors.get(id);
}

// ---- tables -----------------------------------------------------------------------------------

/** A table of `rows` with `columns` ([{label, value(row) -> text|Node, class?}]). */
function table(columns, rows, { rowAttrs, empty = 'nothing to show' } = {}) {
  if (!rows.length) return h('p', { class: 'empty', text: empty });
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { class: c.class, text: c.label })))),
      h(
        'tbody',
        null,
        rows.map((r) =>
          h(
            'tr',
            rowAttrs ? rowAttrs(r) : null,
            columns.map((c) => {
              const v = c.value(r);
              return h('td', { class: c.class }, v instanceof Node ? v : String(orDash(v)));
            }),
          ),
        ),
      ),
    ),
  );
}

/** A paged list of `path` (docs/api.md pages: {data, next, unreachable}) with filters. */
class PagedList {
  constructor(path, columns, opts = {}) {
    this.path = path;
    this.columns = columns;
    this.opts = opts;
    this.filters = {};
    this.limit = 50;
    this.cursors = [null]; // cursors[i] fetches page i
    this.page = 0;
    this.body = h('div', { class: 'list-body' });
    this.status = h('span', { class: 'pager-status' });
    this.prev = h('button', { type: 'button', class: 'secondary prev', text: '← Previous', onclick: () => this.go(this.page - 1) });
    this.next = h('button', { type: 'button', class: 'secondary next', text: 'Next →', onclick: () => this.go(this.page + 1) });
    const size = h('select', { class: 'page-size', 'aria-label': 'page size' },
      [25, 50, 100, 500, 1000].map((n) => h('option', { value: n, selected: n === this.limit, text: `${n} a page` })));
    size.addEventListener('change', () => {
      this.limit = Number(size.value);
      this.reset();
    });
    this.refreshBtn = h('button', { type: 'button', class: 'secondary refresh', text: 'Refresh', onclick: () => this.load() });
    this.el = h('div', { class: 'paged' }, this.body,
      h('div', { class: 'pager' }, this.prev, this.next, this.status, size, this.refreshBtn));
  }

  setFilters(filters) {
    this.filters = filters;
    this.reset();
  }

  reset() {
    this.cursors = [null];
    this.page = 0;
    return this.load();
  }

  go(page) {
    if (page < 0 || page >= this.cursors.length) return;
    this.page = page;
    this.load();
  }

  async load() {
    const seq = (this.seq = (this.seq ?? 0) + 1);
    const params = { ...this.filters, limit: this.limit, cursor: this.cursors[this.page] };
    this.status.textContent = 'loading…';
    try {
      const page = await api('GET', `${this.path}${query(params)}`);
      if (seq !== this.seq) return; // a later load won
      const rows = Array.isArray(page?.data) ? page.data : [];
      this.cursors.length = this.page + 1;
      if (page?.next) this.cursors.push(page.next);
      this.rows = rows;
      const unreachable = page?.unreachable ?? [];
      fill(this.body,
        unreachable.length ? h('p', { class: 'warning', text: `not answering: node ${unreachable.join(', ')}` }) : null,
        table(this.columns, rows, { rowAttrs: this.opts.rowAttrs, empty: this.opts.empty }),
      );
      this.prev.disabled = this.page === 0;
      this.next.disabled = !page?.next;
      this.status.textContent = `page ${this.page + 1} · ${rows.length} shown${page?.next ? '' : ' · last page'}`;
    } catch (e) {
      if (seq !== this.seq) return;
      this.status.textContent = '';
      fill(this.body, h('p', { class: 'error', text: `could not load ${this.path}: ${e.message}` }));
    }
  }
}

/** A filter form: fields [{name, label, placeholder}] → onSubmit({name: value}). */
function filterForm(fields, onSubmit, submitLabel = 'Search') {
  const inputs = fields.map((f) =>
    h('input', { type: 'search', name: f.name, placeholder: f.placeholder ?? '', 'aria-label': f.label, value: f.value }));
  const form = h('form', { class: 'filters' },
    fields.map((f, i) => h('label', null, h('span', { text: f.label }), inputs[i])),
    h('button', { type: 'submit', text: submitLabel }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const out = {};
    fields.forEach((f, i) => (out[f.name] = inputs[i].value.trim()));
    onSubmit(out);
  });
  return form;
}

function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', { text: title }), ...children);
}

function detailList(pairs) {
  return h('dl', { class: 'details' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', { text: k }), h('dd', null, v instanceof Node ? v : String(orDash(v)))]));
}

/** A detail panel (under a list) showing one item at a time. */
class DetailPanel {
  constructor() {
    this.el = h('div', { class: 'detail', hidden: true });
  }

  /** Shows "loading `name`…"; the caller fills it next. */
  open(name) {
    this.name = name;
    this.el.hidden = false;
    fill(this.el, h('p', { class: 'muted', text: `loading ${name}…` }));
  }

  close(name) {
    if (name === undefined || name === this.name) this.el.hidden = true;
  }

  /** A heading with `actions` and a Close button. */
  head(title, ...actions) {
    return h('div', { class: 'card-head' }, h('h2', null, title),
      h('div', { class: 'row' }, actions, h('button', { type: 'button', class: 'secondary', text: 'Close', onclick: () => this.close() })));
  }
}

/** DELETE `path` for item `name` of `list` (shown in `detail`): says how it went, and loads
 *  the list again, then once more a moment later (the node finishes the change on its
 *  shards asynchronously). */
async function removeItem(path, name, done, list, detail) {
  try {
    await api('DELETE', path);
    notify(done);
    detail.close(name);
  } catch (e) {
    notify(`${name}: ${e.message}`, 'error');
  }
  setTimeout(() => list.load(), 300);
  setTimeout(() => list.load(), 1500);
}

// ---- pages ------------------------------------------------------------------------------------

/** #/overview: totals, charts per node or shard, node and shard tables. */
function overviewPage() {
  let mode = localStorage.getItem('shardmq.chartMode') === 'shard' ? 'shard' : 'node';
  const tiles = h('div', { class: 'tiles' });
  const charts = [
    ['connections', false, new LineChart('Connections', '')],
    ['messages_in', true, new LineChart('Messages in /s', '/s')],
    ['messages_out', true, new LineChart('Messages out /s', '/s')],
    ['messages_dropped', true, new LineChart('Dropped /s', '/s')],
    ['bytes_in', true, new LineChart('Bytes in /s', ' B/s')],
    ['bytes_out', true, new LineChart('Bytes out /s', ' B/s')],
  ];
  const modeSel = h('div', { class: 'segmented', role: 'group', 'aria-label': 'chart series' },
    ['node', 'shard'].map((m) => h('button', {
      type: 'button', 'data-mode': m, class: m === mode ? 'on' : '', text: m === 'node' ? 'per node' : 'per shard',
      onclick: () => {
        mode = m;
        localStorage.setItem('shardmq.chartMode', m);
        for (const b of modeSel.children) b.className = b.dataset.mode === mode ? 'on' : '';
        drawCharts();
      },
    })));
  const nodes = h('div');
  const shards = h('div');
  const status = h('p', { class: 'muted' });
  const el = h('div', { class: 'page overview' },
    tiles,
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', { text: 'Live (5 minutes, every 2 s)' }), modeSel),
      status,
      h('div', { class: 'charts' }, charts.map(([, , c]) => c.el))),
    section('Nodes', nodes),
    section('Shards', shards));

  function tile(label, value, cls = '') {
    return h('div', { class: `tile ${cls}` }, h('div', { class: 'tile-value', text: value }), h('div', { class: 'tile-label', text: label }));
  }

  function drawCharts() {
    for (const [key, rate, chart] of charts) chart.draw(seriesOf(key, rate, mode), colorOf);
  }

  function update() {
    if (!lastOverview) {
      status.textContent = pollError ? `no overview: ${pollError.message}` : 'waiting for the first overview…';
      return;
    }
    status.textContent = pollError
      ? `last poll failed: ${pollError.message}`
      : polls.length < 3 ? 'rates appear after two polls' : '';
    const c = clusterFigures();
    fill(tiles,
      tile('connections', fmtNum(c.connections), 'tile-connections'),
      tile('sessions', fmtNum(c.sessions)),
      tile('subscriptions', fmtNum(c.subscriptions)),
      tile('retained', fmtNum(c.retained)),
      tile('messages in /s', fmtNum(c.messages_in_rate)),
      tile('messages out /s', fmtNum(c.messages_out_rate)),
      tile('dropped /s', fmtNum(c.messages_dropped_rate), c.messages_dropped_rate > 0 ? 'bad' : ''),
      tile('nodes running', `${c.running} / ${c.nodes}`, c.running < c.nodes ? 'bad' : ''),
    );
    const last = polls.length - 1;
    const unreachable = lastOverview.unreachable ?? [];
    fill(nodes,
      unreachable.length ? h('p', { class: 'warning', text: `not answering: node ${unreachable.join(', ')}` }) : null,
      table([
        { label: 'node', value: (n) => n.node },
        { label: 'role', value: (n) => roleName(n.role) },
        { label: 'status', value: (n) => badge(n.status) },
        { label: 'API', value: (n) => n.api },
        { label: 'connections', class: 'num', value: (n) => fmtNum(n.connections) },
        { label: 'sessions', class: 'num', value: (n) => fmtNum(n.sessions) },
        { label: 'subscriptions', class: 'num', value: (n) => fmtNum(n.subscriptions) },
        { label: 'retained', class: 'num', value: (n) => fmtNum(n.retained) },
        { label: 'in /s', class: 'num', value: (n) => fmtNum(rateAt(last, 'node', `n${n.node}`, 'messages_in')) },
        { label: 'out /s', class: 'num', value: (n) => fmtNum(rateAt(last, 'node', `n${n.node}`, 'messages_out')) },
        { label: 'dropped', class: 'num', value: (n) => fmtNum(n.messages_dropped) },
        { label: 'bytes in', class: 'num', value: (n) => fmtBytes(n.bytes_in) },
        { label: 'bytes out', class: 'num', value: (n) => fmtBytes(n.bytes_out) },
      ], lastOverview.nodes ?? [], { rowAttrs: (n) => ({ 'data-node': n.node }) }),
    );
    const shardRows = (lastOverview.nodes ?? []).flatMap((n) => (n.shards ?? []).map((s) => ({ ...s, node: n.node })));
    fill(shards,
      table([
        { label: 'node', value: (s) => s.node },
        { label: 'shard', value: (s) => s.shard },
        { label: 'connections', class: 'num', value: (s) => fmtNum(s.connections) },
        { label: 'sessions', class: 'num', value: (s) => fmtNum(s.sessions) },
        { label: 'subscriptions', class: 'num', value: (s) => fmtNum(s.subscriptions) },
        { label: 'in /s', class: 'num', value: (s) => fmtNum(rateAt(last, 'shard', `n${s.node}s${s.shard}`, 'messages_in')) },
        { label: 'out /s', class: 'num', value: (s) => fmtNum(rateAt(last, 'shard', `n${s.node}s${s.shard}`, 'messages_out')) },
        { label: 'messages in', class: 'num', value: (s) => fmtNum(s.messages_in) },
        { label: 'messages out', class: 'num', value: (s) => fmtNum(s.messages_out) },
        { label: 'dropped', class: 'num', value: (s) => fmtNum(s.messages_dropped) },
        { label: 'bytes in', class: 'num', value: (s) => fmtBytes(s.bytes_in) },
        { label: 'bytes out', class: 'num', value: (s) => fmtBytes(s.bytes_out) },
      ], shardRows, { empty: 'no shard figures yet' }),
    );
    drawCharts();
  }

  const onResize = () => lastOverview && drawCharts();
  return {
    el,
    enter() {
      overviewListeners.add(update);
      window.addEventListener('resize', onResize);
      update();
    },
    leave() {
      overviewListeners.delete(update);
      window.removeEventListener('resize', onResize);
    },
  };
}

function badge(status) {
  const s = String(status ?? 'unknown');
  const cls = ['running', 'core', 'normal', 'connected'].includes(s) ? 'ok' : ['stopped', 'disconnected'].includes(s) ? 'bad' : 'meh';
  return h('span', { class: `badge ${cls}`, text: s });
}

/** #/cluster: members (GET /api/v1/cluster) and this node's RLOG shards (GET /api/v1/rlog). */
function clusterPage() {
  const summary = h('div');
  const members = h('div');
  const rlog = h('div');
  const el = h('div', { class: 'page cluster' },
    section('Cluster', summary),
    section('Members', members),
    section('RLOG shards of this node', rlog));
  let timer = null;
  let seq = 0;

  async function load() {
    const mine = ++seq;
    const [cluster, rl] = await Promise.allSettled([api('GET', 'api/v1/cluster'), api('GET', 'api/v1/rlog')]);
    if (mine !== seq) return;
    if (cluster.status === 'fulfilled') {
      const c = cluster.value;
      fill(summary, detailList([
        ['this node', c.node_name ? `${c.node} (${c.node_name})` : c.node],
        ['role', roleName(c.role)],
        c.mode ? ['mode', c.mode] : null,
        ['leader', c.leader ?? 'none known'],
        ['routes', fmtNum(c.routes)],
        ['sessions', fmtNum(c.sessions)],
      ]));
      const figures = new Map((lastOverview?.nodes ?? []).map((n) => [n.node, n]));
      fill(members, table([
        { label: 'node', value: (m) => `${m.node}${m.node === c.leader ? ' ★ leader' : ''}${m.node === c.node ? ' (this)' : ''}` },
        { label: 'role', value: (m) => roleName(m.role) },
        { label: 'status', value: (m) => badge(m.status) },
        { label: 'cluster address', value: (m) => m.addr },
        { label: 'API', value: (m) => m.api },
        { label: 'connections', class: 'num', value: (m) => fmtNum(figures.get(m.node)?.connections) },
        { label: 'sessions', class: 'num', value: (m) => fmtNum(figures.get(m.node)?.sessions) },
      ], c.members ?? [], { rowAttrs: (m) => ({ 'data-node': m.node }), empty: 'no members' }));
    } else {
      fill(summary, h('p', { class: 'error', text: `GET /api/v1/cluster: ${cluster.reason.message}` }));
      fill(members);
    }
    if (rl.status === 'fulfilled') {
      const r = rl.value;
      fill(rlog,
        h('p', { class: 'muted', text: `node ${r.node}, ${roleName(r.role)}, leader ${r.leader ?? 'none known'}` }),
        table([
          { label: 'shard', value: (s) => s.shard },
          { label: 'state', value: (s) => badge(s.state) },
          { label: 'seq', class: 'num', value: (s) => fmtInt.format(s.seq) },
          { label: 'lag', class: 'num', value: (s) => fmtInt.format(s.lag) },
          { label: 'replicants', class: 'num', value: (s) => s.replicants },
          { label: 'pending', class: 'num', value: (s) => fmtInt.format(s.pending) },
          { label: 'upstream', value: (s) => s.upstream },
          { label: 'bootstraps', class: 'num', value: (s) => s.bootstraps },
          { label: 'resumes', class: 'num', value: (s) => s.resumes },
          { label: 'last bootstrap', class: 'num', value: (s) => (s.bootstrap_time_ms ? `${fmtInt.format(s.bootstrap_time_ms)} ms, ${fmtNum(s.bootstrap_keys)} keys` : '–') },
          { label: 'replay queue', class: 'num', value: (s) => s.replay_queue_len },
        ], r.shards ?? [], { rowAttrs: (s) => ({ 'data-shard': s.shard }), empty: 'no RLOG shards: this node runs standalone (cluster.enabled = false)' }),
      );
    } else {
      fill(rlog, h('p', { class: 'error', text: `GET /api/v1/rlog: ${rl.reason.message}` }));
    }
  }

  return {
    el,
    enter() {
      const tick = async () => {
        await load();
        timer = setTimeout(tick, POLL_MS);
      };
      tick();
    },
    leave() {
      clearTimeout(timer);
      seq++;
    },
  };
}

/** #/clients: search, pages, inspect, kick. */
function clientsPage() {
  const detail = new DetailPanel();
  let list;
  const kick = (c) => removeItem(`api/v1/clients/${enc(c.clientid)}`, c.clientid, `kicked ${c.clientid}`, list, detail);
  const inspect = async (c) => {
    detail.open(c.clientid);
    try {
      const one = await api('GET', `api/v1/clients/${enc(c.clientid)}`);
      fill(detail.el,
        detail.head(`Client ${one.clientid}`, confirmButton('Kick', 'Confirm kick', 'kick', () => kick(one))),
        detailList([
          ['client id', one.clientid], ['username', one.username ?? '(none)'], ['node', one.node],
          ['shard', one.shard], ['address', one.address], ['listener', one.listener],
          ['protocol', one.protocol], ['keep alive', `${one.keepalive} s`],
          ['connected', fmtTime(one.connected_at)], ['clean start', yesNo(one.clean_start)],
          ['session expiry', `${one.expiry_secs} s`], ['inflight', one.inflight], ['queued', one.queued],
        ]),
        h('h3', { text: 'Subscriptions' }),
        table(subscriptionColumns.filter((col) => col.label !== 'client id' && col.label !== 'node'),
          one.subscriptions_list ?? [], { empty: 'no subscriptions' }),
      );
    } catch (e) {
      fill(detail.el, h('p', { class: 'error', text: `${c.clientid}: ${e.message}` }));
    }
  };
  list = new PagedList('api/v1/clients', [
    { label: 'client id', value: (c) => h('code', { text: c.clientid }) },
    { label: 'username', value: (c) => c.username ?? '' },
    { label: 'node', value: (c) => c.node },
    { label: 'shard', value: (c) => c.shard },
    { label: 'address', value: (c) => c.address },
    { label: 'listener', value: (c) => c.listener },
    { label: 'protocol', value: (c) => c.protocol },
    { label: 'keep alive', class: 'num', value: (c) => `${c.keepalive} s` },
    { label: 'connected', value: (c) => fmtTime(c.connected_at) },
    { label: 'subs', class: 'num', value: (c) => c.subscriptions },
    { label: 'inflight', class: 'num', value: (c) => c.inflight },
    { label: 'queued', class: 'num', value: (c) => c.queued },
    {
      label: '',
      value: (c) => h('div', { class: 'row actions' },
        h('button', { type: 'button', class: 'secondary inspect', text: 'Inspect', onclick: () => inspect(c) }),
        confirmButton('Kick', 'Confirm kick', 'kick', () => kick(c))),
    },
  ], { rowAttrs: (c) => ({ 'data-clientid': c.clientid }), empty: 'no client matches' });

  const field = h('select', { 'aria-label': 'search by' },
    ['clientid', 'username', 'address'].map((f) => h('option', { value: f, text: f === 'clientid' ? 'client id' : f })));
  const search = h('input', { type: 'search', id: 'client-search', placeholder: 'part of a client id', 'aria-label': 'search' });
  field.addEventListener('change', () => (search.placeholder = field.value === 'username' ? 'a username' : `part of a ${field.value === 'clientid' ? 'client id' : 'client address'}`));
  const form = h('form', { class: 'filters' }, field, search, h('button', { type: 'submit', text: 'Search' }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    list.setFilters({ [field.value]: search.value.trim() });
  });
  const el = h('div', { class: 'page clients' }, section('Connected clients', form, list.el), detail.el);
  return { el, enter: () => list.load(), leave() {} };
}

const subscriptionColumns = [
  { label: 'client id', value: (s) => h('code', { text: s.clientid }) },
  { label: 'node', value: (s) => s.node },
  { label: 'filter', value: (s) => h('code', { text: s.filter }) },
  { label: 'QoS', class: 'num', value: (s) => s.qos },
  { label: 'no local', value: (s) => yesNo(s.no_local) },
  { label: 'retain as published', value: (s) => yesNo(s.retain_as_published) },
  { label: 'retain handling', class: 'num', value: (s) => s.retain_handling },
  { label: 'identifier', class: 'num', value: (s) => s.identifier },
];

/** #/subscriptions: pages, filters clientid / filter / match. */
function subscriptionsPage() {
  const list = new PagedList('api/v1/subscriptions', subscriptionColumns,
    { rowAttrs: (s) => ({ 'data-filter': s.filter }), empty: 'no subscription matches' });
  const form = filterForm([
    { name: 'clientid', label: 'client id', placeholder: 'exact client id' },
    { name: 'filter', label: 'filter', placeholder: 'exact filter, e.g. a/+' },
    { name: 'match', label: 'matching topic', placeholder: 'a topic, e.g. a/b' },
  ], (f) => list.setFilters(f), 'Filter');
  const el = h('div', { class: 'page subscriptions' }, section('Subscriptions', form, list.el));
  return { el, enter: () => list.load(), leave() {} };
}

/** #/retained: pages under a topic filter, view a payload, delete. */
function retainedPage() {
  const detail = new DetailPanel();
  let list;
  const remove = (m) => removeItem(`api/v1/retained/${enc(m.topic)}`, m.topic, `deleted the retained message of ${m.topic}`, list, detail);
  const view = async (m) => {
    detail.open(m.topic);
    try {
      const one = await api('GET', `api/v1/retained/${enc(m.topic)}`);
      let asText = one.payload !== null && one.payload !== undefined;
      const pre = h('pre', { class: 'payload' });
      const toggle = h('button', { type: 'button', class: 'secondary', onclick: () => { asText = !asText; show(); } });
      const show = () => {
        pre.textContent = asText ? one.payload : one.payload_base64 ?? '';
        toggle.textContent = asText ? 'show base64' : 'show text';
        toggle.disabled = one.payload === null || one.payload === undefined;
      };
      show();
      fill(detail.el,
        detail.head(['Retained ', h('code', { text: one.topic })], confirmButton('Delete', 'Confirm delete', 'delete', () => remove(one))),
        detailList([['QoS', one.qos], ['size', fmtBytes(one.payload_bytes)], ['node', one.node],
          ['encoding', one.payload === null || one.payload === undefined ? 'not UTF-8 (base64 shown)' : 'UTF-8']]),
        h('div', { class: 'row' }, toggle),
        pre,
      );
    } catch (e) {
      fill(detail.el, h('p', { class: 'error', text: `${m.topic}: ${e.message}` }));
    }
  };
  list = new PagedList('api/v1/retained', [
    { label: 'topic', value: (m) => h('code', { text: m.topic }) },
    { label: 'QoS', class: 'num', value: (m) => m.qos },
    { label: 'size', class: 'num', value: (m) => fmtBytes(m.payload_bytes) },
    { label: 'node', value: (m) => m.node },
    {
      label: '',
      value: (m) => h('div', { class: 'row actions' },
        h('button', { type: 'button', class: 'secondary view', text: 'View', onclick: () => view(m) }),
        confirmButton('Delete', 'Confirm delete', 'delete', () => remove(m))),
    },
  ], { rowAttrs: (m) => ({ 'data-topic': m.topic }), empty: 'no retained message under this filter' });
  const form = filterForm([{ name: 'topic', label: 'topic filter', placeholder: '# (an MQTT filter)' }],
    (f) => list.setFilters(f), 'Filter');
  const el = h('div', { class: 'page retained' }, section('Retained messages', form, list.el), detail.el);
  return { el, enter: () => list.load(), leave() {} };
}

// ---- #/pubsub ---------------------------------------------------------------------------------

/** The Pub/Sub tab's MQTT client outlives the tab (it keeps receiving while another page is
 *  shown); the page only draws it. */
const mqttState = {
  client: null,
  state: 'disconnected',
  detail: '',
  url: '',
  subscriptions: new Map(), // filter -> granted qos
  messages: [],
  onChange: null,
};

let mqttLoaded = null;
function loadMqtt() {
  if (window.mqtt) return Promise.resolve(window.mqtt);
  mqttLoaded ??= new Promise((resolve, reject) => {
    const s = h('script', { src: 'dashboard/vendor/mqtt.min.js' });
    s.addEventListener('load', () => (window.mqtt ? resolve(window.mqtt) : reject(new Error('MQTT.js did not load'))));
    s.addEventListener('error', () => {
      mqttLoaded = null;
      s.remove();
      reject(new Error('could not load dashboard/vendor/mqtt.min.js'));
    });
    document.head.append(s);
  });
  return mqttLoaded;
}

/** Redraws the Pub/Sub page at most every MQTT_REDRAW_MS, however fast messages come. */
let mqttRedraw = null;
function mqttChanged() {
  if (mqttRedraw) return;
  mqttRedraw = setTimeout(() => {
    mqttRedraw = null;
    mqttState.onChange?.();
  }, MQTT_REDRAW_MS);
}

/** The WebSocket listener to use from this page: wss for an https page, else ws (either as
 *  a fall-back), as {url, kind} or null. */
function wsListener(ov) {
  const listeners = ov?.node?.listeners ?? [];
  const want = location.protocol === 'https:' ? ['wss', 'ws'] : ['ws', 'wss'];
  for (const kind of want) {
    const l = listeners.find((x) => x.kind === kind);
    if (!l) continue;
    const port = String(l.addr ?? '').match(/:(\d+)$/)?.[1];
    if (!port) continue;
    let path = l.path || '/mqtt';
    if (!path.startsWith('/')) path = `/${path}`;
    return { kind, url: `${kind}://${location.hostname}:${port}${path}` };
  }
  return null;
}

function decodePayload(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return `base64:${btoa(bin)}`;
  }
}

async function mqttConnect(url, opts) {
  mqttDisconnect();
  mqttState.state = 'connecting';
  mqttState.detail = '';
  mqttState.url = url;
  mqttChanged();
  let mqtt;
  try {
    mqtt = await loadMqtt();
  } catch (e) {
    mqttState.state = 'error';
    mqttState.detail = e.message;
    mqttChanged();
    return;
  }
  const client = mqtt.connect(url, {
    clientId: opts.clientId,
    username: opts.username || undefined,
    password: opts.password || undefined,
    protocolVersion: opts.protocolVersion,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    // Plain timers: MQTT.js's default runs them in a Worker made from a blob: URL, which the
    // page's Content-Security-Policy refuses.
    timerVariant: 'native',
  });
  mqttState.client = client;
  mqttState.subscriptions.clear();
  client.on('connect', () => {
    if (mqttState.client !== client) return;
    mqttState.state = 'connected';
    mqttState.detail = `as ${opts.clientId}`;
    mqttChanged();
  });
  client.on('error', (e) => {
    if (mqttState.client !== client) return;
    mqttState.state = 'error';
    mqttState.detail = e.message;
    mqttChanged();
  });
  client.on('close', () => {
    if (mqttState.client !== client) return;
    if (mqttState.state !== 'error') {
      mqttState.state = 'disconnected';
      mqttState.detail = '';
    }
    mqttState.subscriptions.clear();
    mqttChanged();
  });
  client.on('message', (topic, payload, packet) => {
    if (mqttState.client !== client) return;
    mqttState.messages.unshift({ at: new Date(), topic, qos: packet.qos, retain: packet.retain, text: decodePayload(payload), bytes: payload.length });
    mqttState.messages.length = Math.min(mqttState.messages.length, MESSAGES_MAX);
    mqttChanged();
  });
}

function mqttDisconnect() {
  const c = mqttState.client;
  mqttState.client = null;
  mqttState.subscriptions.clear();
  if (c) c.end(true);
  mqttState.state = 'disconnected';
  mqttState.detail = '';
  mqttChanged();
}

function pubsubPage() {
  const el = h('div', { class: 'page pubsub' });
  const wsCard = h('section', { class: 'card' });
  const apiCard = h('section', { class: 'card' });
  el.append(wsCard, apiCard);
  let drawn = null; // the URL the WebSocket card was drawn for

  const num = (name, label, values, selected = 0) =>
    h('label', null, h('span', { text: label }),
      h('select', { name }, values.map((v) => h('option', { value: v, selected: v === selected, text: String(v) }))));
  const field = (name, label, attrs = {}) =>
    h('label', null, h('span', { text: label }), h('input', { name, type: 'text', ...attrs }));
  const check = (name, label) => h('label', { class: 'check' }, h('input', { name, type: 'checkbox' }), h('span', { text: label }));
  const formValues = (form) => Object.fromEntries([...form.elements].filter((e) => e.name).map((e) => [e.name, e.type === 'checkbox' ? e.checked : e.value]));

  // Publishing through POST /api/v1/publish: always there.
  const apiForm = h('form', { class: 'stack', id: 'api-publish' },
    h('div', { class: 'row wrap' },
      field('topic', 'topic', { required: true, placeholder: 'a/b' }),
      num('qos', 'QoS', [0, 1, 2]),
      h('label', null, h('span', { text: 'encoding' }),
        h('select', { name: 'encoding' }, h('option', { value: 'plain', text: 'plain' }), h('option', { value: 'base64', text: 'base64' }))),
      check('retain', 'retain')),
    h('label', null, h('span', { text: 'payload' }), h('textarea', { name: 'payload', rows: 3 })),
    h('div', null, h('button', { type: 'submit', text: 'Publish through the API' })));
  apiForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = formValues(apiForm);
    try {
      await api('POST', 'api/v1/publish', { topic: v.topic, payload: v.payload, encoding: v.encoding, qos: Number(v.qos), retain: v.retain });
      notify(`published to ${v.topic} through the API`);
    } catch (err) {
      notify(`publish: ${err.message}`, 'error');
    }
  });
  apiCard.append(h('h2', { text: 'Publish as the broker (POST /api/v1/publish)' }), apiForm);

  function drawWs() {
    if (!lastOverview) {
      fill(wsCard, h('h2', { text: 'MQTT over WebSocket' }),
        h('p', { class: 'muted', text: pollError ? `no overview: ${pollError.message}` : 'waiting for the node\u2019s listeners…' }));
      drawn = null;
      return;
    }
    const ws = wsListener(lastOverview);
    const key = ws?.url ?? 'none';
    if (drawn === key) return;
    drawn = key;
    if (!ws) {
      fill(wsCard, h('h2', { text: 'MQTT over WebSocket' }),
        h('p', { class: 'warning', id: 'no-ws', text: 'This node has no WebSocket listener ([listener.ws] bind is empty), so this page cannot subscribe. Publish through the API below, or give the node a [listener.ws].' }));
      return;
    }
    const stateEl = h('span', { id: 'ws-state', class: 'badge meh' });
    const connForm = h('form', { class: 'row wrap', id: 'ws-connect' },
      field('clientId', 'client id', { value: `dashboard-${Math.random().toString(16).slice(2, 10)}`, required: true }),
      field('username', 'username', { autocomplete: 'off' }),
      field('password', 'password', { type: 'password', autocomplete: 'off' }),
      h('label', null, h('span', { text: 'MQTT' }),
        h('select', { name: 'protocolVersion' }, h('option', { value: 5, text: '5.0' }), h('option', { value: 4, text: '3.1.1' }))),
      h('button', { type: 'submit', name: 'go', text: 'Connect' }),
      h('button', { type: 'button', class: 'secondary', name: 'stop', text: 'Disconnect', onclick: () => mqttDisconnect() }));
    connForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = formValues(connForm);
      mqttConnect(ws.url, { clientId: v.clientId, username: v.username, password: v.password, protocolVersion: Number(v.protocolVersion) });
    });
    const subForm = h('form', { class: 'row wrap', id: 'ws-subscribe' },
      field('filter', 'filter', { required: true, placeholder: 'a/#' }), num('qos', 'QoS', [0, 1, 2]),
      h('button', { type: 'submit', text: 'Subscribe' }));
    subForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = formValues(subForm);
      const c = mqttState.client;
      if (!c || mqttState.state !== 'connected') return notify('connect first', 'error');
      c.subscribe(v.filter, { qos: Number(v.qos) }, (err, granted) => {
        if (err) return notify(`subscribe ${v.filter}: ${err.message}`, 'error');
        const g = granted?.[0];
        if (g && g.qos >= 0x80) return notify(`subscribe ${v.filter}: refused (0x${g.qos.toString(16)})`, 'error');
        mqttState.subscriptions.set(v.filter, g?.qos ?? Number(v.qos));
        mqttChanged();
      });
    });
    const pubForm = h('form', { class: 'stack', id: 'ws-publish' },
      h('div', { class: 'row wrap' }, field('topic', 'topic', { required: true, placeholder: 'a/b' }), num('qos', 'QoS', [0, 1, 2]), check('retain', 'retain')),
      h('label', null, h('span', { text: 'payload' }), h('textarea', { name: 'payload', rows: 3 })),
      h('div', null, h('button', { type: 'submit', text: 'Publish' })));
    pubForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = formValues(pubForm);
      const c = mqttState.client;
      if (!c || mqttState.state !== 'connected') return notify('connect first', 'error');
      c.publish(v.topic, v.payload, { qos: Number(v.qos), retain: v.retain }, (err) => {
        if (err) notify(`publish ${v.topic}: ${err.message}`, 'error');
        else notify(`published to ${v.topic}`);
      });
    });
    const subsEl = h('div', { id: 'ws-subscriptions' });
    const msgsEl = h('div', { id: 'ws-messages' });
    fill(wsCard,
      h('div', { class: 'card-head' }, h('h2', { text: 'MQTT over WebSocket' }), stateEl),
      h('p', { class: 'muted' }, 'listener ', h('code', { text: ws.url })),
      connForm, h('h3', { text: 'Subscribe' }), subForm, subsEl,
      h('h3', { text: 'Publish' }), pubForm, h('h3', { text: 'Messages received' }), msgsEl);

    mqttState.onChange = () => {
      stateEl.textContent = mqttState.detail ? `${mqttState.state} ${mqttState.detail}` : mqttState.state;
      stateEl.className = `badge ${mqttState.state === 'connected' ? 'ok' : mqttState.state === 'error' ? 'bad' : 'meh'}`;
      stateEl.dataset.state = mqttState.state;
      fill(subsEl, mqttState.subscriptions.size
        ? h('ul', { class: 'chips' }, [...mqttState.subscriptions].map(([f, q]) => h('li', null, h('code', { text: f }), ` QoS ${q} `,
          h('button', { type: 'button', class: 'small secondary', text: 'unsubscribe', onclick: () => {
            mqttState.client?.unsubscribe(f);
            mqttState.subscriptions.delete(f);
            mqttChanged();
          } }))))
        : h('p', { class: 'muted', text: 'no subscriptions' }));
      fill(msgsEl, table([
        { label: 'time', value: (m) => m.at.toLocaleTimeString() },
        { label: 'topic', value: (m) => h('code', { text: m.topic }) },
        { label: 'QoS', class: 'num', value: (m) => m.qos },
        { label: 'retain', value: (m) => yesNo(m.retain) },
        { label: 'size', class: 'num', value: (m) => fmtBytes(m.bytes) },
        { label: 'payload', value: (m) => h('code', { class: 'payload-cell', text: m.text.length > PAYLOAD_SHOWN_MAX ? `${m.text.slice(0, PAYLOAD_SHOWN_MAX)}…` : m.text }) },
      ], mqttState.messages, { rowAttrs: (m) => ({ 'data-topic': m.topic }), empty: 'none yet' }));
      const connected = mqttState.state === 'connected' || mqttState.state === 'connecting';
      connForm.elements.go.disabled = connected;
      connForm.elements.stop.disabled = !connected;
    };
    mqttChanged();
  }

  return {
    el,
    enter() {
      overviewListeners.add(drawWs);
      drawWs();
    },
    leave() {
      overviewListeners.delete(drawWs);
      mqttState.onChange = null;
    },
  };
}

// ---- routing ----------------------------------------------------------------------------------

const PAGES = {
  overview: overviewPage,
  cluster: clusterPage,
  clients: clientsPage,
  subscriptions: subscriptionsPage,
  retained: retainedPage,
  pubsub: pubsubPage,
};

let current = null;

function route() {
  let page = location.hash.replace(/^#\/?/, '').split(/[/?]/)[0];
  if (!PAGES[page]) {
    page = 'overview';
    window.history.replaceState(null, '', '#/overview'); // no hashchange
  }
  current?.leave();
  $('#notice').hidden = true;
  current = PAGES[page]();
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.route === page);
  fill($('#view'), current.el);
  document.body.dataset.page = page;
  current.enter();
}

window.addEventListener('hashchange', route);
window.addEventListener('beforeunload', () => mqttState.client?.end(true));
window.addEventListener('unhandledrejection', (e) => {
  e.preventDefault();
  notify(String(e.reason?.message ?? e.reason), 'error');
});
route();
poll();
