//! `amqps://` for real: a TLS endpoint in front of the test broker, with a certificate from a
//! private CA that farine trusts through `amqp_ca_file`.

mod support;

use farine::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tokio_rustls::rustls;

/// A CA and a certificate for `localhost` signed by it, made with the openssl command.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl command (Debian: openssl) makes the test certificates");
        assert!(status.success(), "openssl {args:?}");
    };
    std::fs::write(
        dir.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.csr",
        "-subj",
        "/CN=farine test CA",
    ]);
    run(&[
        "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem", "-days", "2",
        "-extfile", "ca.ext",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Accepts TLS on a local port and forwards the plain bytes to the broker on 5672.
async fn tls_front(cert: &Path, key: &Path) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    port
}

#[derive(Default)]
struct Secure;

#[farine::service(name = "t_tls")]
impl Secure {
    #[rpc::method]
    async fn echo(&self, value: serde_json::Value) -> serde_json::Value {
        value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca() {
    support::require_rabbitmq();
    let dir = std::env::temp_dir().join(format!("farine-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let port = tls_front(&cert, &key).await;
    // The test broker's virtual host, reached through the TLS front.
    let vhost = support::amqp_uri()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let text = format!(
        "[DEFAULT]\namqp_uri = amqps://guest:guest@localhost:{port}/{vhost}\namqp_ca_file = {}\n",
        ca.display()
    );
    let config = farine::Config::from_str(&text, "tls.ini").unwrap();

    let running = farine::Runtime::new(config.clone())
        .only(["t_tls"])
        .start()
        .await
        .expect("the service connects over TLS");
    let client = farine::Client::connect(&config)
        .await
        .expect("the client connects over TLS");
    assert_eq!(
        client
            .call("t_tls", "echo", json!(["over tls"]))
            .await
            .unwrap(),
        json!("over tls")
    );

    // Without the CA, the server's certificate is not trusted: a clear connection error.
    let untrusted =
        farine::config::AmqpUri::new(format!("amqps://guest:guest@localhost:{port}/{vhost}"));
    let err = farine::broker::Broker::connect(&untrusted, 30)
        .await
        .expect_err("unknown CA");
    let message = err.to_string();
    assert!(message.contains("amqps://guest:***@localhost"), "{message}");

    running.shutdown().await.unwrap();
    let raw = support::Raw::connect().await;
    raw.delete_queues(&["t_tls__echo", "t_tls__echo.dlq"]).await;
    raw.delete_exchanges(&["t_tls"]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
