//! The terminal client over TLS: a relay behind a TLS-terminating proxy (as docs/DEPLOY.md
//! sets it up), reached at `https://localhost:PORT` with a certificate the client trusts
//! through `SSL_CERT_FILE`, and refused when the certificate is not trusted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
// Relay processes are killed and reaped in `Drop`.
#![allow(clippy::zombie_processes)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Terminates TLS on `proxy_port` and forwards the bytes to the relay on `relay_port`.
fn start_tls_proxy(proxy_port: u16, relay_port: u16, cert_der: Vec<u8>, key_der: Vec<u8>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert_der.into()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind(("127.0.0.1", proxy_port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else { return };
                    let Ok(mut relay) =
                        tokio::net::TcpStream::connect(("127.0.0.1", relay_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut relay).await;
                });
            }
        });
    });
}

fn sotto(server: &str, home: &Path, ca_file: &Path, args: &[&str]) -> Output {
    Command::new(SOTTO)
        .args(["--server", server, "--home"])
        .arg(home)
        .args(args)
        .env("SSL_CERT_FILE", ca_file)
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_terminal_client_chats_over_tls_and_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (relay_port, proxy_port) = (free_port(), free_port());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    start_tls_proxy(
        proxy_port,
        relay_port,
        certified.cert.der().to_vec(),
        certified.key_pair.serialize_der(),
    );
    let database = format!("sqlite:{}", dir.path().join("relay.db").display());
    let public_host = format!("localhost:{proxy_port}");
    let _relay = Relay(
        Command::new(SOTTO)
            .args(["serve", "--listen", &format!("127.0.0.1:{relay_port}")])
            .args(["--database", &database, "--public-host", &public_host])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", relay_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let server = format!("https://localhost:{proxy_port}");
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    for (home, user) in [(&alice, "alice"), (&bob, "bob")] {
        let output = sotto(&server, home, &ca_file, &["register", user]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let output = sotto(&server, &alice, &ca_file, &["send", "bob", "over TLS"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = sotto(&server, &bob, &ca_file, &["recv"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "alice\tover TLS\n");

    // A certificate the client does not trust is refused before anything is sent.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let output = sotto(&server, &alice, &other_ca, &["send", "bob", "not sent"]);
    assert!(!output.status.success());
    let output = sotto(&server, &bob, &ca_file, &["recv"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
}
