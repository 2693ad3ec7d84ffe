// Interop scenarios driven by MQTT.js (npm `mqtt` 5.x, installed in tests/interop/js), MQTT 3.1.1
// and 5.0, against a shardmq this file starts itself. Run with node's built-in test runner:
//   node --test --test-reporter=./tests/interop/js/reporter.mjs tests/interop/mqttjs_test.mjs
//   INTEROP_BROKER  the broker binary (default target/debug/shardmq)
//   INTEROP_XFAIL   expected failures (default: the names listed in tests/interop/xfail); these
//                   run as `todo` tests, so their failure does not fail the run
//   INTEROP_ONLY    run only scenarios whose name contains this string
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFileSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

const require = createRequire(new URL('./js/package.json', import.meta.url));
const mqtt = require('mqtt');

const CLIENT = 'mqttjs';
const WAIT_MS = 5000; // how long a message that should come may take
const QUIET_MS = 400; // how long to watch for a message that must not come
const START_MS = 10000; // bound on the broker's start-up
const TEST_MS = 20000; // bound on one scenario

const here = new URL('.', import.meta.url).pathname;

function xfailNames() {
  if (process.env.INTEROP_XFAIL !== undefined) return process.env.INTEROP_XFAIL.split(/\s+/).filter(Boolean);
  return readFileSync(join(here, 'xfail'), 'utf8')
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim().split(/\s+/)[0])
    .filter(Boolean);
}

function expectedToFail(full) {
  const name = full.split('/')[1];
  return xfailNames().some((e) => [name, full, `${CLIENT}:${name}`, `${CLIENT}:${full}`].includes(e));
}

// ---- the broker --------------------------------------------------------------------------------

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function startBroker() {
  const bin = process.env.INTEROP_BROKER ?? join(here, '../../target/debug/shardmq');
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'shardmq-interop-mqttjs-'));
  const logPath = join(dir, 'broker.log');
  const log = openSync(logPath, 'w');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SHARDMQ_')));
  Object.assign(env, {
    SHARDMQ_LISTENER__BIND: `127.0.0.1:${port}`,
    SHARDMQ_NODE__CPUS: '0-1',
    // No management API: brokers of the suites run in parallel, and its port is one per host.
    SHARDMQ_API__LISTEN: '',
    // Its own storage directory, for the same reason.
    SHARDMQ_STORAGE__DIR: join(dir, 'data'),
    RUST_LOG: 'warn,shardmq::node=info',
    NO_COLOR: '1',
  });
  const child = spawn(bin, [], { env, stdio: ['ignore', log, log] });
  let exited = null;
  child.on('exit', (code, signal) => (exited = signal ?? code));
  const stop = () => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', () => child.kill('SIGKILL'));
  const deadline = Date.now() + START_MS;
  for (;;) {
    const text = readFileSync(logPath, 'utf8');
    if (exited !== null) throw new Error(`shardmq exited during start-up (${exited}):\n${text}`);
    if (text.includes('shardmq ready') && (await accepts(port))) return { port, stop };
    if (Date.now() > deadline) {
      stop();
      throw new Error(`shardmq not ready within ${START_MS} ms:\n${text}`);
    }
    await sleep(20);
  }
}

function accepts(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

const broker = await startBroker();
after(() => broker.stop());

// ---- clients -----------------------------------------------------------------------------------

/** A connected MQTT.js client (no automatic reconnect) with an inbox of received messages. */
class Client {
  static async connect(ver, clientId, { clean = true, sessionExpiry, will, properties } = {}) {
    const options = {
      host: '127.0.0.1',
      port: broker.port,
      protocolVersion: ver === 'v5' ? 5 : 4,
      clientId,
      clean,
      keepalive: 30,
      reconnectPeriod: 0,
      connectTimeout: WAIT_MS,
      will,
    };
    if (ver === 'v5') {
      options.properties = { ...properties };
      if (sessionExpiry !== undefined) options.properties.sessionExpiryInterval = sessionExpiry;
    }
    const c = new Client(mqtt.connect(options));
    c.connack = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${clientId}: no CONNACK within ${WAIT_MS} ms`)), WAIT_MS);
      c.client.once('connect', (ack) => (clearTimeout(timer), resolve(ack)));
      c.client.once('error', (e) => (clearTimeout(timer), reject(e)));
    });
    return c;
  }

  constructor(client) {
    this.client = client;
    this.inbox = [];
    this.waiters = [];
    client.on('message', (topic, payload, packet) => {
      this.inbox.push({ topic, payload, packet });
      this.waiters.splice(0).forEach((w) => w());
    });
  }

  /** The next message, within `ms`. */
  async next(ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    while (this.inbox.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.client.options.clientId}: no message within ${ms} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
    return this.inbox.shift();
  }

  /** Asserts that no message arrives for `ms`. */
  async none(ms = QUIET_MS) {
    await sleep(ms);
    assert.equal(this.inbox.length, 0, `unexpected messages: ${this.inbox.map((m) => `${m.topic} ${m.payload}`)}`);
  }

  /** Subscribes; returns the SUBACK's code (granted QoS, or >= 0x80). */
  async subscribe(filter, qos) {
    const granted = await bounded(this.client.subscribeAsync(filter, { qos }), `SUBACK for ${filter}`);
    assert.equal(granted.length, 1);
    return granted[0].qos;
  }

  /** Publishes; for QoS 1/2 resolves once the broker acknowledged. */
  async publish(topic, payload, opts = {}) {
    await bounded(this.client.publishAsync(topic, payload, opts), `acknowledgement of a publish to ${topic}`);
  }

  async end() {
    await bounded(this.client.endAsync(), 'DISCONNECT');
  }
}

function bounded(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---- scenarios ---------------------------------------------------------------------------------

/** Registers <ver>/<name>; the clients it opens are closed when it ends, however it ends. */
function scenario(ver, name, body) {
  const full = `${ver}/${name}`;
  const only = process.env.INTEROP_ONLY ?? '';
  if (!full.includes(only)) return;
  const todo = expectedToFail(full) ? 'expected to fail: tests/interop/xfail' : undefined;
  test(full, { todo, timeout: TEST_MS }, async () => {
    const opened = [];
    const open = async (id, opts) => {
      const c = await Client.connect(ver, id, opts);
      opened.push(c);
      return c;
    };
    try {
      await body({ ver, open, id: (s) => `mqttjs-${ver}-${s}` });
    } finally {
      for (const c of opened) c.client.end(true);
    }
  });
}

for (const ver of ['v311', 'v5']) {
  scenario(ver, 'connect', async ({ open, id }) => {
    const c = await open(id('connect'));
    assert.equal(c.connack.sessionPresent, false);
    assert.equal(c.connack.returnCode ?? c.connack.reasonCode ?? 0, 0);
  });

  scenario(ver, 'qos', async ({ open, id }) => {
    const a = await open(id('qos-a'));
    const b = await open(id('qos-b'));
    assert.equal(await a.subscribe(`qos/${ver}/to-a/#`, 2), 2);
    assert.equal(await b.subscribe(`qos/${ver}/to-b/#`, 2), 2);
    for (const qos of [0, 1, 2]) {
      const payload = Buffer.from([...Array(256).keys()].reverse().concat([qos]));
      for (const [sender, receiver, to] of [[b, a, 'to-a'], [a, b, 'to-b']]) {
        const topic = `qos/${ver}/${to}/${qos}`;
        await sender.publish(topic, payload, { qos });
        const m = await receiver.next();
        assert.equal(m.topic, topic);
        assert.equal(m.packet.qos, qos, `QoS on ${topic}`);
        assert.deepEqual(m.payload, payload, `payload bytes on ${topic}`);
      }
    }
    await a.none();
    await b.none();
  });

  scenario(ver, 'retained', async ({ open, id }) => {
    const t = `retained/${ver}/t`;
    const p = await open(id('ret-pub'));
    await p.publish(t, 'kept', { qos: 1, retain: true });
    const r1 = await open(id('ret-sub1'));
    await r1.subscribe(t, 1);
    const m = await r1.next();
    assert.equal(m.topic, t);
    assert.equal(m.payload.toString(), 'kept');
    assert.equal(m.packet.retain, true, 'retain flag on the stored message');
    await p.publish(t, '', { qos: 1, retain: true });
    const r2 = await open(id('ret-sub2'));
    await r2.subscribe(t, 1);
    await r2.none();
  });

  scenario(ver, 'will', async ({ open, id }) => {
    const t = `will/${ver}/t`;
    const sub = await open(id('will-sub'));
    await sub.subscribe(t, 1);
    const w = await open(id('willer'), { will: { topic: t, payload: Buffer.from('gone'), qos: 1, retain: false } });
    w.client.stream.destroy(); // the socket closes with no DISCONNECT: the broker must publish the will
    const m = await sub.next();
    assert.equal(m.topic, t);
    assert.equal(m.payload.toString(), 'gone');
    assert.equal(m.packet.qos, 1);
  });

  scenario(ver, 'persistent_session', async ({ open, id }) => {
    const t = `session/${ver}/t`;
    const opts = { clean: false, sessionExpiry: 60 };
    const c = await open(id('persist'), opts);
    await c.subscribe(t, 1);
    await c.end();
    const p = await open(id('persist-pub'));
    await p.publish(t, 'while-offline', { qos: 1 });
    const c2 = await open(id('persist'), opts);
    assert.equal(c2.connack.sessionPresent, true, 'session present on reconnect');
    const m = await c2.next();
    assert.equal(m.topic, t);
    assert.equal(m.payload.toString(), 'while-offline');
    assert.equal(m.packet.qos, 1);
  });
}

scenario('v5', 'shared_subscription', async ({ open, id }) => {
  const f = '$share/g/shared/v5/t';
  const n = 10;
  const members = [await open(id('shared-1')), await open(id('shared-2'))];
  for (const m of members) {
    const code = await m.subscribe(f, 1);
    assert.equal(code, 1, `SUBACK for ${f}: reason code 0x${code.toString(16)}, want granted QoS 1`);
  }
  const p = await open(id('shared-pub'));
  for (let i = 0; i < n; i++) await p.publish('shared/v5/t', `m${i}`, { qos: 1 });
  const deadline = Date.now() + WAIT_MS;
  while (members[0].inbox.length + members[1].inbox.length < n && Date.now() < deadline) await sleep(20);
  await sleep(QUIET_MS); // duplicates, if any, arrive now
  const got = members.map((m) => m.inbox.map((x) => x.payload.toString()));
  const want = [...Array(n).keys()].map((i) => `m${i}`);
  assert.deepEqual(
    [...got[0], ...got[1]].sort(),
    want.sort(),
    `each message to exactly one member: member 1 got [${got[0]}], member 2 got [${got[1]}]`,
  );
});

scenario('v5', 'topic_alias', async ({ open, id }) => {
  // Client to broker: the publisher sets alias 1 with the topic, then sends the alias alone.
  // Broker to client: the subscriber allows 10 aliases; MQTT.js resolves those the broker uses.
  const t = 'alias/v5/a/rather/long/topic/name';
  const sub = await open(id('alias-sub'), { properties: { topicAliasMaximum: 10 } });
  await sub.subscribe(t, 1);
  const p = await open(id('alias-pub'));
  const max = p.connack.properties?.topicAliasMaximum ?? 0;
  assert.ok(max >= 1, `CONNACK Topic Alias Maximum is ${max}: MQTT.js may not send aliases`);
  await p.publish(t, 'first', { qos: 1, properties: { topicAlias: 1 } });
  await p.publish('', 'by-alias', { qos: 1, properties: { topicAlias: 1 } });
  await p.publish(t, 'by-topic', { qos: 1 });
  let aliasOnly = 0;
  for (const want of ['first', 'by-alias', 'by-topic']) {
    const m = await sub.next();
    assert.equal(m.topic, t);
    assert.equal(m.payload.toString(), want);
    const alias = m.packet.properties?.topicAlias;
    if (alias !== undefined) assert.ok(alias >= 1 && alias <= 10, `broker used alias ${alias}, allowed 1..10`);
    if (m.packet.topic.length === 0) aliasOnly++;
  }
  assert.ok(aliasOnly >= 1, 'the broker sent no alias-only PUBLISH to a subscriber allowing 10 aliases');
});

scenario('v5', 'message_expiry', async ({ open, id }) => {
  const t = 'expiry/v5/t';
  const opts = { clean: false, sessionExpiry: 60 };
  const c = await open(id('expiry'), opts);
  await c.subscribe(t, 1);
  await c.end();
  const p = await open(id('expiry-pub'));
  await p.publish(t, 'short', { qos: 1, properties: { messageExpiryInterval: 1 } });
  await p.publish(t, 'long', { qos: 1, properties: { messageExpiryInterval: 60 } });
  await sleep(2500);
  const c2 = await open(id('expiry'), opts);
  const m = await c2.next();
  assert.equal(m.payload.toString(), 'long', 'the 1 s message should have expired');
  const remaining = m.packet.properties?.messageExpiryInterval;
  assert.ok(
    remaining >= 50 && remaining <= 58,
    `remaining Message Expiry Interval ${remaining} after 2.5 s waiting; expected 57 or 58`,
  );
  await c2.none();
});

scenario('v5', 'request_response', async ({ open, id }) => {
  const req = 'rr/v5/request';
  const resp = 'rr/v5/response/mqttjs';
  const corr = Buffer.from([0, 0x63, 0x6f, 0x72, 0x72, 0xff, 0x47, 0x11]);
  const responder = await open(id('responder'));
  await responder.subscribe(req, 1);
  const requester = await open(id('requester'));
  await requester.subscribe(resp, 1);
  await requester.publish(req, 'question', { qos: 1, properties: { responseTopic: resp, correlationData: corr } });
  const m = await responder.next();
  assert.equal(m.packet.properties?.responseTopic, resp, 'response topic passed through');
  assert.deepEqual(m.packet.properties?.correlationData, corr, 'correlation data passed through');
  await responder.publish(m.packet.properties.responseTopic, 'answer', {
    qos: 1,
    properties: { correlationData: m.packet.properties.correlationData },
  });
  const r = await requester.next();
  assert.equal(r.topic, resp);
  assert.equal(r.payload.toString(), 'answer');
  assert.deepEqual(r.packet.properties?.correlationData, corr, 'correlation data of the response');
});
