//! `[listener.tls]` with a client no one here wrote: rumqttc over rustls (MQTT 3.1.1 and 5.0),
//! TLS 1.2 and 1.3 with ALPN `mqtt`, client certificates (`verify_peer`), the certificate's name
//! as the username (`peer_cert_as_username`) under an ACL, and a certificate reload on SIGHUP
//! that keeps established connections.

mod common;
mod security_common;

use common::*;
use rumqttc::{TlsConfiguration, Transport};
use security_common::*;
use shardmq_codec::Protocol;
use std::sync::Arc;
use std::time::Duration;

fn v4_tls(port: u16, id: &str, tls: Arc<rustls::ClientConfig>) -> rumqttc::MqttOptions {
    let mut o = v4_options(port, id, true);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

fn v5_tls(port: u16, id: &str, tls: Arc<rustls::ClientConfig>) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(1 << 20));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

#[tokio::test]
async fn rumqttc_over_tls_with_the_test_ca_both_protocol_versions() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(&pki, &[]);
    let tls = default_client_config(&pki, None);

    // 3.1.1: a TLS subscriber gets what a plain-TCP publisher sends, and the other way round.
    let (mut tls_sub, _) = V4::connect_opts(v4_tls(ports.tls, "tls-v4-sub", tls.clone())).await;
    assert_eq!(
        tls_sub
            .subscribe("tls/v4/#", rumqttc::QoS::AtLeastOnce)
            .await,
        Some(rumqttc::QoS::AtLeastOnce)
    );
    let (mut plain, _) = V4::connect(broker.port, "plain-v4", true).await;
    plain
        .subscribe("tls/v4/back", rumqttc::QoS::AtLeastOnce)
        .await;
    plain
        .publish("tls/v4/x", rumqttc::QoS::AtLeastOnce, false, "over tcp")
        .await;
    let m = tls_sub.expect_publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..]),
        ("tls/v4/x", &b"over tcp"[..])
    );
    tls_sub
        .publish("tls/v4/back", rumqttc::QoS::AtLeastOnce, false, "over tls")
        .await;
    let m = plain.expect_publish().await;
    assert_eq!(&m.payload[..], b"over tls");

    // 5.0, QoS 2 and a 64 KiB payload (several TLS records).
    let (mut a, _) = V5::connect_opts(v5_tls(ports.tls, "tls-v5-a", tls.clone())).await;
    let (mut b, _) = V5::connect_opts(v5_tls(ports.tls, "tls-v5-b", tls)).await;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    assert_eq!(
        a.subscribe("tls/v5/#", Q5::ExactlyOnce).await,
        Some(Q5::ExactlyOnce)
    );
    let big: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    b.publish("tls/v5/big", Q5::ExactlyOnce, false, big.clone())
        .await;
    let m = a.expect_publish().await;
    assert_eq!(m.qos, Q5::ExactlyOnce);
    assert_eq!(&m.payload[..], &big[..]);
    a.disconnect().await;
    b.disconnect().await;
    tls_sub.disconnect().await;
    assert!(!broker.log_contains("panicked"), "{}", broker.log());
}

#[tokio::test]
async fn tls_1_2_and_1_3_negotiate_alpn_mqtt() {
    let pki = Pki::new();
    let (_broker, ports) = secure_broker(&pki, &[]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut config = client_config(&pki.ca, None, &[version]);
        config.alpn_protocols = vec![b"mqtt".to_vec()];
        let mut tls = tls_connect(ports.tls, Arc::new(config))
            .await
            .unwrap_or_else(|e| panic!("{:?} handshake: {e}", version.version));
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.protocol_version(), Some(version.version));
        assert_eq!(
            conn.alpn_protocol(),
            Some(&b"mqtt"[..]),
            "ALPN over {:?}",
            version.version
        );
        let connect = connect_bytes(Protocol::V5, "alpn", None, None);
        assert_eq!(
            connack_over(&mut tls, Protocol::V5, &connect).await,
            Some(0)
        );
    }
    // A client that offers no ALPN at all is served too (mosquitto_pub offers none).
    let config = Arc::new(client_config(&pki.ca, None, rustls::ALL_VERSIONS));
    let mut tls = tls_connect(ports.tls, config)
        .await
        .expect("handshake without ALPN");
    let connect = connect_bytes(Protocol::V3_1_1, "no-alpn", None, None);
    assert_eq!(
        connack_over(&mut tls, Protocol::V3_1_1, &connect).await,
        Some(0)
    );
}

#[tokio::test]
async fn verify_peer_required_takes_a_client_certificate_and_refuses_none() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(
        &pki,
        &[("SHARDMQ_LISTENER__TLS__VERIFY_PEER", "required".into())],
    );
    // rumqttc with the client certificate, both versions.
    let with_cert = default_client_config(&pki, Some(&pki.client));
    let (mut c4, _) = V4::connect_opts(v4_tls(ports.tls, "mtls-v4", with_cert.clone())).await;
    assert!(c4
        .subscribe("mtls/#", rumqttc::QoS::AtLeastOnce)
        .await
        .is_some());
    let (mut c5, _) = V5::connect_opts(v5_tls(ports.tls, "mtls-v5", with_cert)).await;
    c5.publish(
        "mtls/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "with a certificate",
    )
    .await;
    assert_eq!(
        &c4.expect_publish().await.payload[..],
        b"with a certificate"
    );

    // No certificate: refused in the handshake (TLS 1.3: the alert comes on the first read).
    let mark = log_mark(&broker);
    let without = default_client_config(&pki, None);
    let refused = match tls_connect(ports.tls, without).await {
        Err(_) => true,
        Ok(mut tls) => {
            let connect = connect_bytes(Protocol::V3_1_1, "no-cert", None, None);
            connack_over(&mut tls, Protocol::V3_1_1, &connect)
                .await
                .is_none()
        }
    };
    assert!(refused, "a client without a certificate got a CONNACK");
    expect_warn_since(&broker, mark, "", "client without a certificate").await;
    c4.disconnect().await;
    c5.disconnect().await;
}

/// Rules for the certificate names: the CN (certuser) and the first DNS SAN.
const CERT_ACL: &str = "\
user certuser
topic readwrite certs/#

user sensor-7.example
topic readwrite san/#
";

#[tokio::test]
async fn peer_cert_as_username_cn_is_the_acl_user() {
    let pki = Pki::new();
    let acl = write_file(&pki.dir, "acl", CERT_ACL);
    let (_broker, ports) = secure_broker(
        &pki,
        &[
            ("SHARDMQ_LISTENER__TLS__VERIFY_PEER", "optional".into()),
            ("SHARDMQ_LISTENER__TLS__PEER_CERT_AS_USERNAME", "cn".into()),
            ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "false".into()),
            ("SHARDMQ_AUTH__ACL_FILE", acl),
        ],
    );
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let cert = default_client_config(&pki, Some(&pki.client));
    // The certificate authenticates: no username, anonymous off, and still accepted.
    let (mut c, _) = V5::connect_opts(v5_tls(ports.tls, "cn-user", cert.clone())).await;
    assert_eq!(
        c.subscribe("certs/#", Q5::AtLeastOnce).await,
        Some(Q5::AtLeastOnce)
    );
    assert_eq!(
        c.subscribe("san/#", Q5::AtLeastOnce).await,
        None,
        "SAN rules applied to the CN user"
    );
    c.publish("certs/x", Q5::AtLeastOnce, false, "mine").await;
    assert_eq!(&c.expect_publish().await.payload[..], b"mine");

    // A username in CONNECT does not win over the certificate's CN.
    let mut o = v4_tls(ports.tls, "cn-user-v4", cert);
    o.set_credentials("sensor-7.example", "whatever");
    let (mut c4, _) = V4::connect_opts(o).await;
    assert_eq!(c4.subscribe("san/#", rumqttc::QoS::AtLeastOnce).await, None);
    assert!(c4
        .subscribe("certs/#", rumqttc::QoS::AtLeastOnce)
        .await
        .is_some());

    // Without a certificate (optional) the anonymous client is refused: 3.1.1 code 5.
    let mut tls = tls_connect(ports.tls, default_client_config(&pki, None))
        .await
        .expect("handshake without a client certificate (verify_peer = optional)");
    let connect = connect_bytes(Protocol::V3_1_1, "anon", None, None);
    assert_eq!(
        connack_over(&mut tls, Protocol::V3_1_1, &connect).await,
        Some(5)
    );
    c.disconnect().await;
    c4.disconnect().await;
}

#[tokio::test]
async fn peer_cert_as_username_san_takes_the_first_dns_name() {
    let pki = Pki::new();
    let acl = write_file(&pki.dir, "acl", CERT_ACL);
    let (_broker, ports) = secure_broker(
        &pki,
        &[
            ("SHARDMQ_LISTENER__TLS__VERIFY_PEER", "required".into()),
            ("SHARDMQ_LISTENER__TLS__PEER_CERT_AS_USERNAME", "san".into()),
            ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "false".into()),
            ("SHARDMQ_AUTH__ACL_FILE", acl),
        ],
    );
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let cert = default_client_config(&pki, Some(&pki.client));
    let (mut c, _) = V5::connect_opts(v5_tls(ports.tls, "san-user", cert)).await;
    assert_eq!(
        c.subscribe("san/#", Q5::AtLeastOnce).await,
        Some(Q5::AtLeastOnce)
    );
    assert_eq!(c.subscribe("certs/#", Q5::AtLeastOnce).await, None);
    c.disconnect().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_connections() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(&pki, &[]);
    let old_trust = default_client_config(&pki, None);
    let (mut kept, _) = V4::connect_opts(v4_tls(ports.tls, "kept", old_trust.clone())).await;
    assert!(kept
        .subscribe("reload/#", rumqttc::QoS::AtLeastOnce)
        .await
        .is_some());

    // A new CA and server certificate replace the files; SIGHUP.
    let next = Pki::new();
    std::fs::copy(
        next.dir.join("server-chain.pem"),
        pki.dir.join("server-chain.pem"),
    )
    .unwrap();
    std::fs::copy(next.dir.join("server.key"), pki.dir.join("server.key")).unwrap();
    let mark = log_mark(&broker);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // New handshakes get the new certificate: a client trusting only the new CA gets through
    // (within a bound), one trusting only the old CA no longer does.
    let new_trust = default_client_config(&next, None);
    let reloaded = eventually(WAIT, || {
        let c = new_trust.clone();
        async move { tls_connect(ports.tls, c).await.is_ok() }
    })
    .await;
    assert!(
        reloaded,
        "no handshake with the new certificate after SIGHUP; log since:\n{}",
        broker
            .log()
            .lines()
            .skip(mark)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        tls_connect(ports.tls, old_trust).await.is_err(),
        "the old certificate is still served after SIGHUP"
    );
    // The connection made before the reload still works, both ways.
    let (mut p, _) = V4::connect(broker.port, "reload-pub", true).await;
    p.publish("reload/x", rumqttc::QoS::AtLeastOnce, false, "after reload")
        .await;
    assert_eq!(&kept.expect_publish().await.payload[..], b"after reload");
    kept.publish("reload/y", rumqttc::QoS::AtLeastOnce, false, "still mine")
        .await;
    assert!(broker.pid() > 0 && !broker.log_contains("panicked"));
}

/// `POST /api/v1/reload`: what SIGHUP does, through the API: a broken certificate file is
/// refused with 500 and the served certificate stays; a good one is taken, connections stay.
#[tokio::test]
async fn the_api_reloads_certificates_and_refuses_broken_files() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(&pki, &[]);
    let old_trust = default_client_config(&pki, None);
    let (mut kept, _) = V4::connect_opts(v4_tls(ports.tls, "api-kept", old_trust.clone())).await;
    assert!(kept
        .subscribe("api-reload/#", rumqttc::QoS::AtLeastOnce)
        .await
        .is_some());
    let reload = |api: String| async move {
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut answer = agent
                .post(format!("http://{api}/api/v1/reload"))
                .send_empty()
                .expect("POST /api/v1/reload");
            let status = answer.status().as_u16();
            (
                status,
                answer.body_mut().read_to_string().unwrap_or_default(),
            )
        })
        .await
        .unwrap()
    };

    // A certificate file that is not PEM: 500, and the old certificate is still served.
    std::fs::write(pki.dir.join("server-chain.pem"), "not a certificate").unwrap();
    let (status, body) = reload(broker.api_addr()).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("\"reloaded\":false"), "{body}");
    assert!(tls_connect(ports.tls, old_trust.clone()).await.is_ok());

    // A new CA's certificate: 200, new handshakes get it, the old connection stays.
    let next = Pki::new();
    std::fs::copy(
        next.dir.join("server-chain.pem"),
        pki.dir.join("server-chain.pem"),
    )
    .unwrap();
    std::fs::copy(next.dir.join("server.key"), pki.dir.join("server.key")).unwrap();
    let (status, body) = reload(broker.api_addr()).await;
    assert_eq!(status, 200, "{body}");
    assert!(tls_connect(ports.tls, default_client_config(&next, None))
        .await
        .is_ok());
    assert!(tls_connect(ports.tls, old_trust).await.is_err());
    let (mut p, _) = V4::connect(broker.port, "api-reload-pub", true).await;
    p.publish("api-reload/x", rumqttc::QoS::AtLeastOnce, false, "kept")
        .await;
    assert_eq!(&kept.expect_publish().await.payload[..], b"kept");
}
