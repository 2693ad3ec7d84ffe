"""Security interop scenarios driven by Eclipse Paho (paho-mqtt 2.x, Python): TLS with
tls_set(ca_certs=...), transport="websockets" over ws:// and wss://, username/password, and JWTs
made by PyJWT in the password field. Run by tests/interop/security.sh, which starts the broker
and passes its ports and files in the environment:
  SECURITY_CERTS       the directory of tests/interop/certs.sh's files
  SECURITY_TLS_PORT, SECURITY_WS_PORT, SECURITY_WSS_PORT   the main broker's listeners
  SECURITY_JWT_SECRET  its [auth] jwt_secret
Prints `@@ PASS|FAIL security paho/<scenario> [:: detail]` per scenario.
"""

import os
import queue
import sys
import threading
import time
import traceback

import jwt
import paho.mqtt.client as mqtt

CLIENT = "security"
WAIT_S = 5.0  # how long a message that should come may take
QUIET_S = 0.4  # how long to watch for a message that must not come

CERTS = os.environ["SECURITY_CERTS"]
PORTS = {
    "tls": int(os.environ["SECURITY_TLS_PORT"]),
    "ws": int(os.environ["SECURITY_WS_PORT"]),
    "wss": int(os.environ["SECURITY_WSS_PORT"]),
}
JWT_SECRET = os.environ["SECURITY_JWT_SECRET"]


def expected_to_fail(full):
    name = full.split("/", 1)[1]
    names = os.environ.get("INTEROP_XFAIL", "").split()
    return any(e in (name, full, f"{CLIENT}:{name}", f"{CLIENT}:{full}") for e in names)


class Refused(Exception):
    """The broker answered CONNECT with a failure code."""

    def __init__(self, code):
        super().__init__(f"CONNACK refused: {code} (0x{code.value:02X})")
        self.code = code


class Client:
    """A paho client on listener `kind` (tls, ws, wss) whose network loop runs in paho's thread;
    every wait is bounded. Raises Refused if the CONNACK refuses."""

    def __init__(self, kind, ver, username, password, client_id="", host="127.0.0.1", ws_path="/mqtt"):
        v5 = ver == "v5"
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            transport="websockets" if kind in ("ws", "wss") else "tcp",
            reconnect_on_failure=False,
        )
        if kind in ("ws", "wss"):
            self.c.ws_set_options(path=ws_path)
        if kind in ("tls", "wss"):
            # Verifies the server's chain against the test CA and its name (127.0.0.1 is an IP
            # SAN of the server certificate).
            self.c.tls_set(ca_certs=f"{CERTS}/ca.pem")
        self.c.username_pw_set(username, password)
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.subacks = {}
        self.pubacks = {}
        self.cond = threading.Condition()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.connect(host, PORTS[kind], keepalive=30)
        self.c.loop_start()
        try:
            rc = self.connack.get(timeout=WAIT_S)
        except queue.Empty:
            self.c.loop_stop()
            raise AssertionError(f"{kind}: no CONNACK within {WAIT_S} s") from None
        if rc.is_failure:
            self.c.loop_stop()
            raise Refused(rc)

    def _on_subscribe(self, c, u, mid, reason_codes, props):
        with self.cond:
            self.subacks[mid] = reason_codes
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, reason_code, props):
        with self.cond:
            self.pubacks[mid] = reason_code
            self.cond.notify_all()

    def subscribe(self, topic, qos=1):
        """Subscribes; returns the SUBACK's reason code (granted QoS, or >= 0x80)."""
        _, mid = self.c.subscribe(topic, qos)
        with self.cond:
            ok = self.cond.wait_for(lambda: mid in self.subacks, timeout=WAIT_S)
        assert ok, f"no SUBACK for {topic} within {WAIT_S} s"
        (code,) = self.subacks[mid]
        return code.value

    def publish(self, topic, payload, qos=1):
        """Publishes at QoS 1; returns the PUBACK's reason code (0 for 3.1.1)."""
        info = self.c.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic!r}: {mqtt.error_string(info.rc)}"
        with self.cond:
            ok = self.cond.wait_for(lambda: info.mid in self.pubacks, timeout=WAIT_S)
        assert ok, f"publish to {topic!r} not acknowledged within {WAIT_S} s"
        return self.pubacks[info.mid].value

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


class Scenario:
    """Tracks the clients a scenario opens and closes them at its end, however it ends."""

    def __init__(self):
        self.clients = []

    def client(self, *a, **kw):
        c = Client(*a, **kw)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            try:
                c.disconnect()
            except Exception:
                pass


def roundtrip(s, kind, ver, user, password, topic):
    sub = s.client(kind, ver, user, password)
    pub = s.client(kind, ver, user, password)
    assert sub.subscribe(topic, 1) == 1, f"{kind} {ver}: SUBACK for {topic} does not grant QoS 1"
    body = f"{kind}-{ver}-{time.monotonic_ns()}".encode()
    code = pub.publish(topic, body)
    assert code == 0, f"{kind} {ver}: PUBACK 0x{code:02X} for {topic}"
    m = sub.expect()
    assert (m.topic, m.payload) == (topic, body), f"{kind} {ver}: got {m.topic} {m.payload!r}"


def refused(kind, ver, user, password, codes):
    """Connecting must be refused with one of `codes`; returns the code. paho 2.x reports a
    3.1.1 CONNACK return code as the 5.0 reason code of the same meaning (4 "bad user name or
    password" as 0x86, 5 "not authorised" as 0x87), so `codes` are 5.0 codes for both."""
    try:
        c = Client(kind, ver, user, password)
    except Refused as e:
        assert e.code.value in codes, f"{kind} {ver}: refused with 0x{e.code.value:02X}, want one of {[hex(c) for c in codes]}"
        return e.code.value
    c.disconnect()
    raise AssertionError(f"{kind} {ver}: user {user!r} was accepted")


def token(claims, secret=JWT_SECRET):
    return jwt.encode(claims, secret, algorithm="HS256")


# ---- scenarios ----------------------------------------------------------------------------------


def scenario_tls_cafile(s):
    for ver in ("v311", "v5"):
        roundtrip(s, "tls", ver, "alice", "alice-pw", f"alice/paho/tls/{ver}")


def scenario_ws(s):
    for ver in ("v311", "v5"):
        roundtrip(s, "ws", ver, "alice", "alice-pw", f"alice/paho/ws/{ver}")


def scenario_wss(s):
    for ver in ("v311", "v5"):
        roundtrip(s, "wss", ver, "alice", "alice-pw", f"alice/paho/wss/{ver}")
    # ACL over wss as well: alice may not write bob/x (v5 PUBACK 0x87).
    c = s.client("wss", "v5", "alice", "alice-pw")
    code = c.publish("bob/x", b"denied")
    assert code == 0x87, f"alice's publish to bob/x over wss: PUBACK 0x{code:02X}, want 0x87"


def scenario_ws_bad_password(s):
    refused("ws", "v311", "alice", "wrong", [0x86])
    refused("ws", "v5", "alice", "wrong", [0x86])
    refused("wss", "v5", "bob", "alice-pw", [0x86])


def scenario_jwt_hs256(s):
    now = int(time.time())
    t = token({"sub": "jwtuser", "iat": now, "exp": now + 300})
    for ver in ("v311", "v5"):
        roundtrip(s, "tls", ver, "jwtuser", t, f"jwt/paho/{ver}")
    # The acl_file still applies to a JWT user: no rule for alice/x.
    c = s.client("tls", "v5", "jwtuser", t)
    code = c.publish("alice/x", b"denied")
    assert code == 0x87, f"jwtuser's publish to alice/x: PUBACK 0x{code:02X}, want 0x87"


def scenario_jwt_expired(s):
    now = int(time.time())
    t = token({"sub": "jwtuser", "iat": now - 600, "exp": now - 300})
    refused("tls", "v5", "jwtuser", t, [0x86, 0x87])
    refused("ws", "v311", "jwtuser", t, [0x86, 0x87])


def scenario_jwt_wrong_secret(s):
    now = int(time.time())
    t = token({"sub": "jwtuser", "exp": now + 300}, secret="not-the-broker-secret-0123456789")
    refused("tls", "v5", "jwtuser", t, [0x86, 0x87])
    refused("tls", "v311", "jwtuser", t, [0x86, 0x87])


SCENARIOS = ["tls_cafile", "ws", "wss", "ws_bad_password", "jwt_hs256", "jwt_expired", "jwt_wrong_secret"]


def main():
    failed = 0
    only = os.environ.get("INTEROP_ONLY", "")
    for name in SCENARIOS:
        full = f"paho/{name}"
        if only not in full:
            continue
        s = Scenario()
        try:
            globals()[f"scenario_{name}"](s)
            print(f"@@ PASS {CLIENT} {full}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
            detail = f"{type(e).__name__}: {e}".replace("\n", " ")
            print(f"@@ FAIL {CLIENT} {full} :: {detail}", flush=True)
            print("".join("    | " + l + "\n" for l in traceback.format_exc().splitlines()), end="", flush=True)
            failed += 0 if expected_to_fail(full) else 1
        finally:
            s.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
