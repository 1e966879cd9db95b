//! TLS termination end to end: ALPN h2 and http/1.1 over real sockets, mTLS, certificate
//! reload. Certificates are generated in the test.

use std::time::{Duration, Instant};

use crate::support::edge::{EdgeGateway, EdgeUpstream, Pki, Speak, config, get, send, tls_connect};
use http::Version;

fn tls_config(pki: &Pki, up: &EdgeUpstream, tls_extra: &str) -> String {
    let (cert, key) = pki.write_server("gateway-1");
    config(
        &[up.addr.to_string()],
        "",
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}",
            cert.display(),
            key.display()
        ),
    )
}

#[tokio::test]
async fn https_serves_h2_and_http1_by_alpn_and_forwards_as_http1_with_proto_https() {
    let pki = Pki::new();
    let up = EdgeUpstream::start(Speak::H1).await;
    let gw = EdgeGateway::start(&tls_config(&pki, &up, ""), pki.dir.path()).await;

    for (alpn, h2) in [(&b"h2"[..], true), (&b"http/1.1"[..], false)] {
        let stream = tls_connect(gw.addr, pki.roots(), &[alpn], None)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let answer = send(stream, h2, get("/health")).await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, "upstream ok");
        assert_eq!(
            answer.version,
            if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            }
        );
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.version, Version::HTTP_11, "upstream is HTTP/1.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.path, "/health");
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn tls_1_2_is_accepted() {
    let pki = Pki::new();
    let up = EdgeUpstream::start(Speak::H1).await;
    let gw = EdgeGateway::start(&tls_config(&pki, &up, ""), pki.dir.path()).await;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(pki.roots())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        send(stream, false, get("/health")).await.unwrap().status,
        200
    );
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let up = EdgeUpstream::start(Speak::H1).await;
    let ca = pki.ca_path();
    let text = tls_config(
        &pki,
        &up,
        &format!(
            "client_ca = \"{}\"\nclient_auth = \"required\"\n",
            ca.display()
        ),
    );
    let gw = EdgeGateway::start(&text, pki.dir.path()).await;

    // TLS 1.3: the client may finish its side before the server rejects, so the refusal can
    // surface at connect or at the first request; either way nothing is served.
    let refused = match tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], None).await {
        Err(_) => true,
        Ok(stream) => send(stream, false, get("/health")).await.is_err(),
    };
    assert!(refused, "a client without a certificate must not be served");
    assert_eq!(up.count(), 0);

    let identity = pki.client_identity("alice");
    let stream = tls_connect(gw.addr, pki.roots(), &[b"h2"], Some(identity))
        .await
        .unwrap();
    let answer = send(stream, true, get("/health")).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(up.count(), 1);

    // A certificate from another CA is refused too.
    let other = Pki::new().client_identity("mallory");
    let refused = match tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], Some(other)).await {
        Err(_) => true,
        Ok(stream) => send(stream, false, get("/health")).await.is_err(),
    };
    assert!(refused);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn mtls_optional_serves_clients_with_and_without_a_certificate() {
    let pki = Pki::new();
    let up = EdgeUpstream::start(Speak::H1).await;
    let text = tls_config(
        &pki,
        &up,
        &format!(
            "client_ca = \"{}\"\nclient_auth = \"optional\"\n",
            pki.ca_path().display()
        ),
    );
    let gw = EdgeGateway::start(&text, pki.dir.path()).await;
    let stream = tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!(
        send(stream, false, get("/health")).await.unwrap().status,
        200
    );
    let identity = pki.client_identity("bob");
    let stream = tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], Some(identity))
        .await
        .unwrap();
    assert_eq!(
        send(stream, false, get("/health")).await.unwrap().status,
        200
    );
}

fn leaf_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let pki = Pki::new();
    let up = EdgeUpstream::start(Speak::H1).await;
    let text = tls_config(&pki, &up, "watch_interval = \"50ms\"\n");
    let gw = EdgeGateway::start(&text, pki.dir.path()).await;

    let first = tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], None)
        .await
        .unwrap();
    let old = leaf_cn(&first);
    // Renewal: both files replaced on disk.
    pki.write_server("gateway-2");
    let new = std::fs::read(pki.dir.path().join("server.pem")).unwrap();
    let new_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&new)
            .unwrap()
            .to_vec()
    };
    assert_ne!(old, new_der);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stream = tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], None)
            .await
            .unwrap();
        if leaf_cn(&stream) == new_der {
            assert_eq!(
                send(stream, false, get("/health")).await.unwrap().status,
                200
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection made before the renewal still works.
    assert_eq!(
        send(first, false, get("/health")).await.unwrap().status,
        200
    );
}

/// The client CA file is watched like the certificate: after a rotation, clients of the new
/// CA are served and clients of the old one refused, without a restart.
#[tokio::test]
async fn a_rotated_client_ca_takes_effect_for_new_connections() {
    let pki = Pki::new();
    let up = EdgeUpstream::start(Speak::H1).await;
    let ca = pki.dir.path().join("clients-ca.pem");
    let old_ca = Pki::new();
    let new_ca = Pki::new();
    std::fs::copy(old_ca.ca_path(), &ca).unwrap();
    let text = tls_config(
        &pki,
        &up,
        &format!(
            "client_ca = \"{}\"\nclient_auth = \"required\"\nwatch_interval = \"50ms\"\n",
            ca.display()
        ),
    );
    let gw = EdgeGateway::start(&text, pki.dir.path()).await;
    let served = |identity| async {
        match tls_connect(gw.addr, pki.roots(), &[b"http/1.1"], Some(identity)).await {
            Err(_) => false,
            Ok(stream) => send(stream, false, get("/health"))
                .await
                .is_ok_and(|a| a.status == 200),
        }
    };
    assert!(served(old_ca.client_identity("alice")).await);
    assert!(!served(new_ca.client_identity("bob")).await);

    std::fs::copy(new_ca.ca_path(), &ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served(new_ca.client_identity("bob")).await {
        assert!(
            Instant::now() < deadline,
            "the new client CA never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!served(old_ca.client_identity("alice")).await);
}
