//! The service end to end: the order of methods, the immediate paths, the queue-full path,
//! throttling, reload, JWT claim ACLs and the HTTP hook against a tiny server in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shardmq_auth::{
    AuthOutcome, AuthRequest, AuthService, AuthSettings, Submitted, ThrottleSettings,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn req(user: Option<&str>, pass: Option<&[u8]>) -> AuthRequest {
    AuthRequest {
        client_id: "cid".into(),
        username: user.map(Into::into),
        password: pass.map(Bytes::copy_from_slice),
        peer: "192.0.2.1".parse().unwrap(),
        cert_name: None,
        protocol_version: 5,
    }
}

/// Submits and waits for the outcome however it comes.
fn run(svc: &AuthService, r: AuthRequest) -> AuthOutcome {
    let (tx, rx) = crossbeam_channel::bounded(1);
    match svc.check(r, Box::new(move |o| tx.send(o).unwrap())) {
        Submitted::Done(o) => o,
        Submitted::Queued => rx.recv_timeout(Duration::from_secs(20)).expect("reply"),
        Submitted::Busy => panic!("busy"),
    }
}

fn queued(svc: &AuthService, r: AuthRequest, tx: &Sender<(AuthOutcome, Instant)>) -> Submitted {
    let tx = tx.clone();
    svc.check(r, Box::new(move |o| tx.send((o, Instant::now())).unwrap()))
}

fn settings() -> AuthSettings {
    AuthSettings {
        password_file: Some(fixtures().join("passwd_mosquitto")),
        throttle: ThrottleSettings {
            table_max: 0,
            ..ThrottleSettings::default()
        },
        ..AuthSettings::default()
    }
}

fn allowed(o: &AuthOutcome) -> Option<&str> {
    match o {
        AuthOutcome::Allowed { username, .. } => Some(username.as_deref().unwrap_or("<anon>")),
        _ => None,
    }
}

#[test]
fn immediate_paths_need_no_worker() {
    let none = AuthService::new(&AuthSettings::default()).unwrap();
    let done = |svc: &AuthService, r| match svc.check(r, Box::new(|_| panic!("called"))) {
        Submitted::Done(o) => o,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        done(&none, req(Some("x"), Some(b"y"))),
        AuthOutcome::NotAuthorized
    ));
    let open = AuthService::new(&AuthSettings {
        allow_anonymous: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        allowed(&done(&open, req(Some("x"), Some(b"y")))),
        Some("x"),
        "no method: username kept"
    );
    let pw = AuthService::new(&settings()).unwrap();
    assert!(matches!(
        done(&pw, req(None, None)),
        AuthOutcome::NotAuthorized
    ));
    let anon = AuthService::new(&AuthSettings {
        allow_anonymous: true,
        ..settings()
    })
    .unwrap();
    assert_eq!(allowed(&done(&anon, req(None, None))), Some("<anon>"));
}

#[test]
fn password_file_order_and_outcomes() {
    let svc = AuthService::new(&settings()).unwrap();
    assert_eq!(
        allowed(&run(&svc, req(Some("alice"), Some(b"secret7")))),
        Some("alice")
    );
    assert_eq!(
        allowed(&run(&svc, req(Some("bob"), Some(b"secret6")))),
        Some("bob")
    );
    assert!(matches!(
        run(&svc, req(Some("alice"), Some(b"nope"))),
        AuthOutcome::BadCredentials
    ));
    assert!(matches!(
        run(&svc, req(Some("alice"), None)),
        AuthOutcome::BadCredentials
    ));
    assert!(matches!(
        run(&svc, req(Some("zed"), Some(b"x"))),
        AuthOutcome::BadCredentials
    ));
    // a password without a username and no anonymous access
    assert!(matches!(
        run(&svc, req(None, Some(b"x"))),
        AuthOutcome::BadCredentials
    ));
    let anon = AuthService::new(&AuthSettings {
        allow_anonymous: true,
        ..settings()
    })
    .unwrap();
    assert_eq!(
        allowed(&run(&anon, req(None, Some(b"x")))),
        Some("<anon>"),
        "password ignored"
    );
    assert!(matches!(
        run(&anon, req(Some("zed"), Some(b"x"))),
        AuthOutcome::BadCredentials
    ));
    // hostile input
    let big = vec![0u8; 64 * 1024];
    assert!(matches!(
        run(&svc, req(Some("alice"), Some(&big))),
        AuthOutcome::BadCredentials
    ));
    assert!(matches!(
        run(&svc, req(Some("\u{0}\u{202e}é"), Some(&big))),
        AuthOutcome::BadCredentials
    ));
}

#[test]
fn acl_file_gives_the_authorizer_and_reload_keeps_old_state_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic write a/#\npattern read c/%c/#\n").unwrap();
    let svc = AuthService::new(&AuthSettings {
        acl_file: Some(acl.clone()),
        ..settings()
    })
    .unwrap();
    let AuthOutcome::Allowed {
        authorizer: Some(a),
        ..
    } = run(&svc, req(Some("alice"), Some(b"secret7")))
    else {
        panic!()
    };
    assert!(a.may_publish("a/b") && !a.may_publish("b") && a.may_receive("c/cid/x"));
    std::fs::write(&acl, "topic bogus bogus x\n").unwrap();
    assert!(svc.reload().is_err());
    let AuthOutcome::Allowed {
        authorizer: Some(a),
        ..
    } = run(&svc, req(Some("alice"), Some(b"secret7")))
    else {
        panic!()
    };
    assert!(a.may_publish("a/b"), "old ACL kept");
    std::fs::write(&acl, "user alice\ntopic write b\n").unwrap();
    svc.reload().unwrap();
    let AuthOutcome::Allowed {
        authorizer: Some(b),
        ..
    } = run(&svc, req(Some("alice"), Some(b"secret7")))
    else {
        panic!()
    };
    assert!(b.may_publish("b") && !b.may_publish("a/b"));
    assert!(
        a.may_publish("a/b"),
        "a connected client keeps its authorizer"
    );
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn jwt_after_password_file_with_claim_acl() {
    let svc = AuthService::new(&AuthSettings {
        jwt_secret: Some("k".into()),
        jwt_public_key_file: Some(fixtures().join("ec_public.pem")),
        ..settings()
    })
    .unwrap();
    let hs = EncodingKey::from_secret(b"k");
    let es = EncodingKey::from_ec_pem(&std::fs::read(fixtures().join("ec_private.pem")).unwrap())
        .unwrap();
    let claims = json!({"exp": now_s() + 60, "username": "dev1",
        "acl": [{"permission": "allow", "action": "publish", "topic": "d/${username}/#"}]});
    for (alg, key) in [(Algorithm::HS256, &hs), (Algorithm::ES256, &es)] {
        let t = jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap();
        let o = run(&svc, req(None, Some(t.as_bytes())));
        let AuthOutcome::Allowed {
            username: Some(u),
            authorizer: Some(a),
        } = o
        else {
            panic!("{o:?}")
        };
        assert_eq!(u, "dev1");
        assert!(a.may_publish("d/dev1/x") && !a.may_publish("d/dev2/x"));
        assert!(!a.may_subscribe("d/#"), "no rule and no acl_file: denied");
        assert!(matches!(
            run(&svc, req(Some("dev2"), Some(t.as_bytes()))),
            AuthOutcome::BadCredentials
        ));
    }
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now_s() - 60}),
        &hs,
    )
    .unwrap();
    assert!(matches!(
        run(&svc, req(None, Some(expired.as_bytes()))),
        AuthOutcome::BadCredentials
    ));
    // the password file comes first: alice with a token is alice with a wrong password
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now_s() + 60}),
        &hs,
    )
    .unwrap();
    assert!(matches!(
        run(&svc, req(Some("alice"), Some(t.as_bytes()))),
        AuthOutcome::BadCredentials
    ));
    assert_eq!(
        allowed(&run(&svc, req(Some("other"), Some(t.as_bytes())))),
        Some("other")
    );
}

/// A one-thread HTTP/1.1 server: answers each POST with `answer(body)`, after `delay`.
struct Hook {
    url: String,
    hits: Arc<AtomicUsize>,
}

fn hook(delay: Duration, answer: fn(&serde_json::Value) -> (u16, String)) -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
                let (status, text) = answer(&serde_json::from_slice(&body).unwrap());
                let mut s = stream;
                let _ = write!(s, "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len());
            });
        }
    });
    Hook { url, hits }
}

fn by_username(body: &serde_json::Value) -> (u16, String) {
    assert_eq!(body["clientid"], "cid");
    assert_eq!(body["peerhost"], "192.0.2.1");
    assert_eq!(body["protocol"], 5);
    let a = match (body["username"].as_str(), body["password"].as_str()) {
        (Some("root"), Some("pw")) => json!({"result": "allow", "is_superuser": true}),
        (Some("limited"), Some("pw")) => json!({"result": "allow",
            "acl": [{"permission": "allow", "action": "all", "topic": "l/#"}]}),
        (Some("skip"), _) => json!({"result": "ignore"}),
        (Some("broken"), _) => return (500, "{}".into()),
        (Some("garbage"), _) => return (200, "not json".into()),
        _ => json!({"result": "deny"}),
    };
    (200, a.to_string())
}

fn hook_settings(url: &str) -> AuthSettings {
    AuthSettings {
        http_url: Some(url.into()),
        http_timeout_ms: 300,
        ..settings()
    }
}

#[test]
fn http_hook_allow_deny_ignore_failure_and_cache() {
    let h = hook(Duration::ZERO, by_username);
    let svc = AuthService::new(&hook_settings(&h.url)).unwrap();
    let root = run(&svc, req(Some("root"), Some(b"pw")));
    assert!(
        matches!(
            root,
            AuthOutcome::Allowed {
                authorizer: None,
                ..
            }
        ),
        "superuser: no ACL"
    );
    let AuthOutcome::Allowed {
        authorizer: Some(a),
        ..
    } = run(&svc, req(Some("limited"), Some(b"pw")))
    else {
        panic!()
    };
    assert!(a.may_publish("l/x") && !a.may_publish("m"));
    assert!(matches!(
        run(&svc, req(Some("root"), Some(b"wrong"))),
        AuthOutcome::BadCredentials
    ));
    assert!(
        matches!(
            run(&svc, req(Some("skip"), Some(b"x"))),
            AuthOutcome::BadCredentials
        ),
        "ignore → nobody accepted"
    );
    assert!(matches!(
        run(&svc, req(Some("broken"), Some(b"x"))),
        AuthOutcome::NotAuthorized
    ));
    assert!(matches!(
        run(&svc, req(Some("garbage"), Some(b"x"))),
        AuthOutcome::NotAuthorized
    ));
    // the password file still comes first, without asking the hook
    let before = h.hits.load(Ordering::SeqCst);
    assert_eq!(
        allowed(&run(&svc, req(Some("alice"), Some(b"secret7")))),
        Some("alice")
    );
    assert_eq!(h.hits.load(Ordering::SeqCst), before);
    // cache: the same credentials are not asked twice, a changed password is
    assert!(run(&svc, req(Some("root"), Some(b"pw"))).is_allowed());
    assert_eq!(h.hits.load(Ordering::SeqCst), before);
    assert!(!run(&svc, req(Some("root"), Some(b"pw2"))).is_allowed());
    assert_eq!(h.hits.load(Ordering::SeqCst), before + 1);
    // a non-UTF-8 password is not sent
    assert!(!run(&svc, req(Some("root"), Some(b"\xff"))).is_allowed());
    assert_eq!(h.hits.load(Ordering::SeqCst), before + 1);
    svc.reload().unwrap();
    assert!(run(&svc, req(Some("root"), Some(b"pw"))).is_allowed());
    assert_eq!(
        h.hits.load(Ordering::SeqCst),
        before + 2,
        "reload clears the cache"
    );
}

#[test]
fn http_hook_timeout_is_not_authorized() {
    let h = hook(Duration::from_millis(1500), by_username);
    let svc = AuthService::new(&hook_settings(&h.url)).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        run(&svc, req(Some("root"), Some(b"pw"))),
        AuthOutcome::NotAuthorized
    ));
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn full_queue_is_busy_and_every_queued_reply_comes() {
    let h = hook(Duration::from_millis(400), by_username);
    let svc = AuthService::new(&AuthSettings {
        workers: 1,
        queue_max: 2,
        http_cache_max: 0,
        http_timeout_ms: 3000,
        ..hook_settings(&h.url)
    })
    .unwrap();
    let (tx, rx): (_, Receiver<(AuthOutcome, Instant)>) = crossbeam_channel::unbounded();
    assert!(matches!(
        queued(&svc, req(Some("root"), Some(b"pw")), &tx),
        Submitted::Queued
    ));
    let t0 = Instant::now();
    while svc.queued() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(2));
    }
    // the worker is busy with the first; two fit in the queue, the next is refused
    assert!(matches!(
        queued(&svc, req(Some("root"), Some(b"pw")), &tx),
        Submitted::Queued
    ));
    assert!(matches!(
        queued(&svc, req(Some("root"), Some(b"pw")), &tx),
        Submitted::Queued
    ));
    assert!(matches!(
        queued(&svc, req(Some("root"), Some(b"pw")), &tx),
        Submitted::Busy
    ));
    for _ in 0..3 {
        assert!(rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .0
            .is_allowed());
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "the refused one never replies"
    );
}

#[test]
fn failures_are_throttled_per_source_without_blocking_workers() {
    let svc = AuthService::new(&AuthSettings {
        workers: 1,
        throttle: ThrottleSettings {
            free_failures: 1,
            base_delay_ms: 60,
            max_delay_ms: 120,
            ..ThrottleSettings::default()
        },
        ..settings()
    })
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let timed = |r: AuthRequest| {
        let t0 = Instant::now();
        assert!(matches!(queued(&svc, r, &tx), Submitted::Queued));
        let (o, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        (o, at - t0)
    };
    let bad = || req(Some("bob"), Some(b"wrong"));
    let (_, d1) = timed(bad());
    let (_, d2) = timed(bad());
    let (o3, d3) = timed(bad());
    assert!(matches!(o3, AuthOutcome::BadCredentials));
    assert!(d1 < Duration::from_millis(50), "{d1:?}");
    assert!(d2 >= Duration::from_millis(60), "{d2:?}");
    assert!(d3 >= Duration::from_millis(120), "{d3:?}");
    // another source is not slowed, and the held-back reply did not hold the only worker
    let mut other = bad();
    other.peer = IpAddr::from([198, 51, 100, 7]);
    let t0 = Instant::now();
    assert!(matches!(queued(&svc, bad(), &tx), Submitted::Queued));
    assert!(matches!(queued(&svc, other, &tx), Submitted::Queued));
    let (first, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(first, AuthOutcome::BadCredentials));
    assert!(
        at - t0 < Duration::from_millis(60),
        "the other source's reply came first"
    );
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // success resets
    assert!(timed(req(Some("bob"), Some(b"secret6"))).0.is_allowed());
    let (_, d) = timed(bad());
    assert!(d < Duration::from_millis(50), "{d:?}");
}

#[test]
fn a_panicking_reply_does_not_take_the_worker_down() {
    let svc = AuthService::new(&AuthSettings {
        workers: 1,
        ..settings()
    })
    .unwrap();
    let boom = svc.check(
        req(Some("bob"), Some(b"secret6")),
        Box::new(|_| panic!("reply bug")),
    );
    assert!(matches!(boom, Submitted::Queued));
    assert!(run(&svc, req(Some("bob"), Some(b"secret6"))).is_allowed());
}

#[test]
fn a_password_verified_a_moment_ago_needs_no_worker_until_a_reload() {
    let svc = AuthService::new(&settings()).unwrap();
    let ask = |pw: &[u8]| svc.check(req(Some("alice"), Some(pw)), Box::new(|_| {}));
    // First time: hashed on a worker.
    assert!(matches!(ask(b"secret7"), Submitted::Queued));
    assert_eq!(
        allowed(&run(&svc, req(Some("alice"), Some(b"secret7")))),
        Some("alice")
    );
    // Again: decided at once from the verified cache.
    match ask(b"secret7") {
        Submitted::Done(o) => assert_eq!(allowed(&o), Some("alice")),
        other => panic!("expected a cached verdict, got {other:?}"),
    }
    // Another password is never served from it.
    assert!(matches!(ask(b"nope"), Submitted::Queued));
    // A reload forgets every verified password (the file may have changed).
    svc.reload().unwrap();
    assert!(matches!(ask(b"secret7"), Submitted::Queued));
}
