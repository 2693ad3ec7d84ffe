// Security interop scenarios driven by MQTT.js (npm `mqtt` 5.x, tests/interop/js) in Node:
// mqtts:// and wss:// with the test CA (rejectUnauthorized), username/password and an ACL check.
// Run by tests/interop/security.sh, which starts the broker and passes in the environment:
//   SECURITY_CERTS                      the directory of tests/interop/certs.sh's files
//   SECURITY_TLS_PORT SECURITY_WSS_PORT the main broker's listeners
// Prints `@@ PASS|FAIL security mqttjs/<scenario> [:: detail]` per scenario.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(new URL('./js/package.json', import.meta.url));
const mqtt = require('mqtt');

const CLIENT = 'security';
const WAIT_MS = 5000; // how long a message that should come may take
const certs = process.env.SECURITY_CERTS;
const ca = readFileSync(`${certs}/ca.pem`);
const otherCa = readFileSync(`${certs}/other-ca.pem`);
const tlsPort = Number(process.env.SECURITY_TLS_PORT);
const wssPort = Number(process.env.SECURITY_WSS_PORT);

function expectedToFail(full) {
  const name = full.split('/')[1];
  const names = (process.env.INTEROP_XFAIL ?? '').split(/\s+/).filter(Boolean);
  return names.some((e) => [name, full, `${CLIENT}:${name}`, `${CLIENT}:${full}`].includes(e));
}

function bounded(promise, what, ms = WAIT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// A connected client; rejects on a refused CONNACK or a TLS/WebSocket error.
function connect(url, opts) {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: WAIT_MS, ...opts });
  const connected = new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client));
    client.once('error', (e) => {
      client.end(true);
      reject(e);
    });
  });
  return bounded(connected, `connect ${url}`);
}

function nextMessage(client, topic) {
  return bounded(
    new Promise((resolve) => {
      const on = (t, payload) => {
        if (t === topic) {
          client.off('message', on);
          resolve(payload.toString());
        }
      };
      client.on('message', on);
    }),
    `message on ${topic}`,
  );
}

async function roundtrip(url, opts, topic) {
  const sub = await connect(url, opts);
  const pub = await connect(url, opts);
  try {
    const granted = await bounded(sub.subscribeAsync(topic, { qos: 1 }), `SUBACK ${topic}`);
    assert.equal(granted[0].qos, 1, `SUBACK for ${topic}: ${JSON.stringify(granted)}`);
    const body = `mqttjs-${Date.now()}-${Math.random()}`;
    const got = nextMessage(sub, topic);
    await bounded(pub.publishAsync(topic, body, { qos: 1 }), `PUBACK ${topic}`);
    assert.equal(await got, body);
  } finally {
    sub.end(true);
    pub.end(true);
  }
}

const alice = { username: 'alice', password: 'alice-pw' };

const scenarios = {
  async mqtts() {
    for (const protocolVersion of [4, 5]) {
      await roundtrip(
        `mqtts://localhost:${tlsPort}`,
        { ...alice, protocolVersion, ca, rejectUnauthorized: true },
        `alice/mqttjs/mqtts/${protocolVersion}`,
      );
    }
  },
  async wss() {
    for (const protocolVersion of [4, 5]) {
      await roundtrip(
        `wss://localhost:${wssPort}/mqtt`,
        { ...alice, protocolVersion, ca, rejectUnauthorized: true },
        `alice/mqttjs/wss/${protocolVersion}`,
      );
    }
  },
  async wss_untrusted() {
    // A client that trusts another CA must not get through: proves the CA check is real.
    await assert.rejects(
      connect(`wss://localhost:${wssPort}/mqtt`, { ...alice, ca: otherCa, rejectUnauthorized: true }),
      (e) => /certificate|self.signed|verify/i.test(String(e?.message ?? e)),
    );
  },
  async wss_acl() {
    const url = `wss://localhost:${wssPort}/mqtt`;
    const c = await connect(url, { ...alice, protocolVersion: 5, ca, rejectUnauthorized: true });
    try {
      // No rule lets alice subscribe to bob/#: SUBACK 0x87.
      // (MQTT.js rejects the subscribe with the SUBACK packet on the error.)
      await assert.rejects(bounded(c.subscribeAsync('bob/#', { qos: 1 }), 'SUBACK bob/#'), (e) => {
        assert.deepEqual(e.packet?.granted, [0x87], `SUBACK for bob/#: ${e}`);
        return true;
      });
      // Nor write bob/x: PUBACK 0x87 (MQTT.js rejects the publish with the reason code).
      await assert.rejects(bounded(c.publishAsync('bob/x', 'denied', { qos: 1 }), 'PUBACK bob/x'), (e) => {
        assert.equal(e.code, 0x87, `PUBACK for bob/x: ${e}`);
        return true;
      });
    } finally {
      c.end(true);
    }
  },
};

let failed = 0;
const only = process.env.INTEROP_ONLY ?? '';
for (const [name, run] of Object.entries(scenarios)) {
  const full = `mqttjs/${name}`;
  if (!full.includes(only)) continue;
  try {
    await run();
    console.log(`@@ PASS ${CLIENT} ${full}`);
  } catch (e) {
    console.log(`@@ FAIL ${CLIENT} ${full} :: ${String(e?.message ?? e).replace(/\n/g, ' ')}`);
    for (const line of String(e?.stack ?? e).split('\n')) console.log(`    | ${line}`);
    if (!expectedToFail(full)) failed += 1;
  }
}
process.exit(failed ? 1 : 0);
