"""Interop scenarios driven by Eclipse Paho (paho-mqtt 2.x, Python), MQTT 3.1.1 and 5.0, against a
shardmq this script starts itself.

Plain asserts, no test framework. Prints one line per scenario,
`@@ PASS|FAIL paho <version>/<scenario> [:: detail]`, and exits non-zero if a scenario failed
that tests/interop/xfail does not expect to fail.
  INTEROP_BROKER  the broker binary (default target/debug/shardmq)
  INTEROP_XFAIL   expected failures (default: the names listed in tests/interop/xfail)
  INTEROP_ONLY    run only scenarios whose name contains this string
"""

import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CLIENT = "paho"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

WAIT_S = 5.0  # how long a message that should come may take
QUIET_S = 0.4  # how long to watch for a message that must not come
START_S = 10.0  # bound on the broker's start-up

assert paho.mqtt.__version__.startswith("2."), f"paho-mqtt 2.x needed, found {paho.mqtt.__version__}"


def xfail_names():
    if "INTEROP_XFAIL" in os.environ:
        return os.environ["INTEROP_XFAIL"].split()
    names = []
    for line in (HERE / "xfail").read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if line:
            names.append(line[0])
    return names


def expected_to_fail(full):
    name = full.split("/", 1)[1]
    return any(e in (name, full, f"{CLIENT}:{name}", f"{CLIENT}:{full}") for e in xfail_names())


# ---- the broker -------------------------------------------------------------------------------


class Broker:
    def __init__(self):
        binary = os.environ.get("INTEROP_BROKER", str(ROOT / "target/debug/shardmq"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="shardmq-interop-paho-", suffix=".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDMQ_")}
        env.update(
            SHARDMQ_LISTENER__BIND=f"127.0.0.1:{self.port}",
            SHARDMQ_NODE__CPUS="0-1",
            # No management API: brokers of the suites run in parallel, and its default port
            # is one per host.
            SHARDMQ_API__LISTEN="",
            # Its own storage directory, for the same reason.
            SHARDMQ_STORAGE__DIR=tempfile.mkdtemp(prefix="shardmq-interop-paho-data-"),
            RUST_LOG="warn,shardmq::node=info",
            NO_COLOR="1",
        )
        self.proc = subprocess.Popen(
            [binary], env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shardmq exited during start-up:\n{self.log_text()}")
            if "shardmq ready" in self.log_text():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"shardmq not ready within {START_S} s:\n{self.log_text()}")
            time.sleep(0.02)

    def log_text(self):
        return Path(self.log.name).read_text(errors="replace")

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


# ---- a synchronous wrapper around paho's threaded client --------------------------------------


class Client:
    """A connected paho client whose network loop runs in paho's thread; every wait is bounded."""

    def __init__(self, port, ver, client_id="", clean=True, session_expiry=None, will=None):
        self.ver = ver
        v5 = ver == "v5"
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else clean,
            reconnect_on_failure=False,
        )
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.subacks = {}
        self.suback_event = threading.Condition()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = self._on_subscribe
        if will:
            topic, payload, qos = will
            self.c.will_set(topic, payload, qos=qos)
        props = None
        if v5 and session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        kwargs = {"clean_start": clean, "properties": props} if v5 else {}
        self.c.connect("127.0.0.1", port, keepalive=30, **kwargs)
        self.c.loop_start()
        try:
            flags, rc, _ = self.connack.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"{client_id}: no CONNACK within {WAIT_S} s") from None
        assert not rc.is_failure, f"{client_id}: CONNACK refused: {rc}"
        self.session_present = flags.session_present

    def _on_subscribe(self, c, u, mid, reason_codes, props):
        with self.suback_event:
            self.subacks[mid] = reason_codes
            self.suback_event.notify_all()

    def subscribe(self, topic, qos):
        """Subscribes; returns the SUBACK's reason code (granted QoS, or >= 0x80)."""
        _, mid = self.c.subscribe(topic, qos)
        with self.suback_event:
            ok = self.suback_event.wait_for(lambda: mid in self.subacks, timeout=WAIT_S)
        assert ok, f"no SUBACK for {topic} within {WAIT_S} s"
        (code,) = self.subacks[mid]
        return code.value

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and, for QoS 1/2, waits until the broker acknowledged (PUBACK / PUBCOMP)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic!r}: {mqtt.error_string(info.rc)}"
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"publish to {topic!r} (QoS {qos}) not acknowledged within {WAIT_S} s"

    def expect(self, within=WAIT_S):
        try:
            return self.messages.get(timeout=within)
        except queue.Empty:
            raise AssertionError(f"no message within {within} s") from None

    def expect_none(self, during=QUIET_S):
        try:
            msg = self.messages.get(timeout=during)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()


def abrupt_client(port, ver, client_id, will):
    """A client connected without paho's network thread, so that its socket can be closed with
    no DISCONNECT."""
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if ver == "v5" else mqtt.MQTTv311,
    )
    topic, payload, qos = will
    c.will_set(topic, payload, qos=qos)
    connected = []
    c.on_connect = lambda c, u, flags, rc, props: connected.append(rc)
    c.connect("127.0.0.1", port, keepalive=30)
    deadline = time.monotonic() + WAIT_S
    while not connected and time.monotonic() < deadline:
        c.loop(timeout=0.05)
    assert connected and not connected[0].is_failure, f"{client_id}: no CONNACK: {connected}"
    return c


def publish_props(**kw):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# ---- scenarios ----------------------------------------------------------------------------------


class Scenario:
    """Tracks the clients a scenario opens and closes them at its end, however it ends."""

    def __init__(self, port, ver):
        self.port, self.ver, self.clients = port, ver, []

    def client(self, client_id="", **kw):
        c = Client(self.port, self.ver, client_id, **kw)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            try:
                c.disconnect()
            except Exception:
                pass


def scenario_connect(s):
    c = s.client(f"paho-{s.ver}-connect")
    assert not c.session_present, "clean connect reported a session present"


def scenario_qos(s):
    a = s.client(f"paho-{s.ver}-qos-a")
    b = s.client(f"paho-{s.ver}-qos-b")
    assert a.subscribe(f"qos/{s.ver}/to-a/#", 2) == 2
    assert b.subscribe(f"qos/{s.ver}/to-b/#", 2) == 2
    for qos in (0, 1, 2):
        payload = bytes(range(256))[::-1] + bytes([qos])
        for sender, receiver, to in ((b, a, "to-a"), (a, b, "to-b")):
            topic = f"qos/{s.ver}/{to}/{qos}"
            sender.publish(topic, payload, qos=qos)
            m = receiver.expect()
            assert m.topic == topic, f"topic {m.topic!r}, want {topic!r}"
            assert m.qos == qos, f"QoS {m.qos} on {topic}, want {qos}"
            assert m.payload == payload, f"payload bytes differ on {topic}"
    a.expect_none()
    b.expect_none()


def scenario_retained(s):
    t = f"retained/{s.ver}/t"
    p = s.client(f"paho-{s.ver}-ret-pub")
    p.publish(t, b"kept", qos=1, retain=True)
    r1 = s.client(f"paho-{s.ver}-ret-sub1")
    r1.subscribe(t, 1)
    m = r1.expect()
    assert (m.topic, m.payload, m.retain) == (t, b"kept", True), f"retained: {m.topic} {m.payload!r} retain={m.retain}"
    p.publish(t, b"", qos=1, retain=True)
    r2 = s.client(f"paho-{s.ver}-ret-sub2")
    r2.subscribe(t, 1)
    r2.expect_none()


def scenario_will(s):
    t = f"will/{s.ver}/t"
    sub = s.client(f"paho-{s.ver}-will-sub")
    sub.subscribe(t, 1)
    w = abrupt_client(s.port, s.ver, f"paho-{s.ver}-willer", (t, b"gone", 1))
    w.socket().close()  # no DISCONNECT: the broker must publish the will
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == (t, b"gone", 1), f"will: {m.topic} {m.payload!r} QoS {m.qos}"


def scenario_persistent_session(s):
    t, cid = f"session/{s.ver}/t", f"paho-{s.ver}-persist"
    c = s.client(cid, clean=False, session_expiry=60)
    c.subscribe(t, 1)
    c.disconnect()
    p = s.client(f"paho-{s.ver}-persist-pub")
    p.publish(t, b"while-offline", qos=1)
    c = s.client(cid, clean=False, session_expiry=60)
    assert c.session_present, "reconnect did not find the session (session present = 0)"
    m = c.expect()
    assert (m.topic, m.payload, m.qos) == (t, b"while-offline", 1), f"offline message: {m.topic} {m.payload!r} QoS {m.qos}"


def scenario_shared_subscription(s):
    f, t, n = f"$share/g/shared/{s.ver}/t", f"shared/{s.ver}/t", 10
    members = [s.client(f"paho-{s.ver}-shared-{i}") for i in (1, 2)]
    for m in members:
        code = m.subscribe(f, 1)
        assert code == 1, f"SUBACK for {f}: reason code {code:#04x}, want granted QoS 1"
    p = s.client(f"paho-{s.ver}-shared-pub")
    for i in range(n):
        p.publish(t, f"m{i}".encode(), qos=1)
    got = [[], []]
    deadline = time.monotonic() + WAIT_S
    while sum(map(len, got)) < n and time.monotonic() < deadline:
        for i, m in enumerate(members):
            try:
                got[i].append(m.messages.get(timeout=0.02).payload.decode())
            except queue.Empty:
                pass
    time.sleep(QUIET_S)  # duplicates, if any, arrive now
    for i, m in enumerate(members):
        while not m.messages.empty():
            got[i].append(m.messages.get().payload.decode())
    assert sorted(got[0] + got[1]) == sorted(f"m{i}" for i in range(n)), (
        f"each message to exactly one member: member 1 got {got[0]}, member 2 got {got[1]}"
    )


def scenario_topic_alias(s):
    t = f"alias/{s.ver}/t"
    sub = s.client(f"paho-{s.ver}-alias-sub")
    sub.subscribe(t, 1)
    p = s.client(f"paho-{s.ver}-alias-pub")
    p.publish(t, b"first", qos=1, properties=publish_props(TopicAlias=1))
    p.publish("", b"by-alias", qos=1, properties=publish_props(TopicAlias=1))
    for want in (b"first", b"by-alias"):
        m = sub.expect()
        assert (m.topic, m.payload) == (t, want), f"got {m.topic!r} {m.payload!r}, want {t!r} {want!r}"


def scenario_message_expiry(s):
    t, cid = f"expiry/{s.ver}/t", f"paho-{s.ver}-expiry"
    c = s.client(cid, clean=False, session_expiry=60)
    c.subscribe(t, 1)
    c.disconnect()
    p = s.client(f"paho-{s.ver}-expiry-pub")
    p.publish(t, b"short", qos=1, properties=publish_props(MessageExpiryInterval=1))
    p.publish(t, b"long", qos=1, properties=publish_props(MessageExpiryInterval=60))
    time.sleep(2.5)
    c = s.client(cid, clean=False, session_expiry=60)
    m = c.expect()
    assert m.payload == b"long", f"first message after reconnect is {m.payload!r}: the 1 s message should have expired"
    remaining = getattr(m.properties, "MessageExpiryInterval", None)
    assert remaining is not None and 50 <= remaining <= 58, (
        f"remaining Message Expiry Interval {remaining} after 2.5 s waiting; expected 57 or 58"
    )
    c.expect_none()


def scenario_request_response(s):
    req, resp, corr = f"rr/{s.ver}/request", f"rr/{s.ver}/response/paho", b"\x00corr\xff4711"
    responder = s.client(f"paho-{s.ver}-responder")
    responder.subscribe(req, 1)
    requester = s.client(f"paho-{s.ver}-requester")
    requester.subscribe(resp, 1)
    requester.publish(req, b"question", qos=1, properties=publish_props(ResponseTopic=resp, CorrelationData=corr))
    m = responder.expect()
    got_resp = getattr(m.properties, "ResponseTopic", None)
    got_corr = getattr(m.properties, "CorrelationData", None)
    assert (got_resp, got_corr) == (resp, corr), f"request properties: response topic {got_resp!r}, correlation data {got_corr!r}"
    responder.publish(got_resp, b"answer", qos=1, properties=publish_props(CorrelationData=got_corr))
    m = requester.expect()
    assert (m.topic, m.payload) == (resp, b"answer")
    assert getattr(m.properties, "CorrelationData", None) == corr, "correlation data of the response"


# ---- runner -------------------------------------------------------------------------------------

SCENARIOS = [
    (v, name)
    for v in ("v311", "v5")
    for name in ("connect", "qos", "retained", "will", "persistent_session")
] + [
    ("v5", name)
    for name in ("shared_subscription", "topic_alias", "message_expiry", "request_response")
]


def main():
    broker = Broker()
    failed = 0
    only = os.environ.get("INTEROP_ONLY", "")
    try:
        for ver, name in SCENARIOS:
            full = f"{ver}/{name}"
            if only not in full:
                continue
            s = Scenario(broker.port, ver)
            try:
                globals()[f"scenario_{name}"](s)
                print(f"@@ PASS {CLIENT} {full}", flush=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
                detail = f"{type(e).__name__}: {e}".replace("\n", " ")
                print(f"@@ FAIL {CLIENT} {full} :: {detail}", flush=True)
                print("".join("    | " + l + "\n" for l in traceback.format_exc().splitlines()), end="")
                failed += 0 if expected_to_fail(full) else 1
            finally:
                s.close()
    finally:
        broker.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
