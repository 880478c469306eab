//! `vipam controller` as a process, against the fake API over HTTP: readiness waits for the
//! certificate and the caches, a certificate swapped through a symlink (as kubelet does with
//! Secret volumes) is served without a restart, and admission works over TLS.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::FakeApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free now and never handed out before in this process: the kernel may give a port
/// just released to the next bind(0), so two calls (in one test or in two at once) could
/// otherwise return the same port for two servers.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A self-signed certificate for 127.0.0.1 / localhost: (cert PEM, key PEM, cert DER).
fn certificate(name: &str) -> (String, String, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// Writes a pair the way kubelet does: `dir/..data -> ..VERSION/`, `tls.crt -> ..data/tls.crt`.
fn publish(dir: &Path, version: &str, cert: &str, key: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), cert).unwrap();
    std::fs::write(versioned.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

/// A TLS client trusting `roots`, offering `alpn` (empty: none).
fn tls_client_with(roots: &[&[u8]], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for der in roots {
        store.add(der.to_vec().into()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

fn tls_client(roots: &[&[u8]]) -> TlsConnector {
    tls_client_with(roots, &[])
}

/// The certificate the server presents, or None while it does not answer.
async fn served_certificate(connector: &TlsConnector, addr: SocketAddr) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let (_, connection) = tls.get_ref();
    Some(connection.peer_certificates()?.first()?.to_vec())
}

/// POSTs an AdmissionReview over TLS (HTTP/1.1) and returns the parsed answer.
async fn admit_over_tls(connector: &TlsConnector, addr: SocketAddr, review: &Value) -> Value {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let body = serde_json::to_vec(review).unwrap();
    let head = format!(
        "POST /mutate/service HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let (_, json_body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    serde_json::from_str(json_body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_certificate_rotation_and_admission_over_tls() {
    let fake = FakeApi::new();
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "lan"},
        "spec": {"blocks": [{"start": "192.0.2.10", "stop": "192.0.2.20"}]}
    }));
    let server = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    // The API answers nothing at first: the caches cannot sync.
    fake.outage(support::Outage::Hang);
    let work: PathBuf = std::env::temp_dir().join(format!("vipam-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let tls_dir = work.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let kubeconfig = work.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vipam"))
        .args(["controller", "--tls-reload-interval", "100ms"])
        .arg("--tls-dir")
        .arg(&tls_dir)
        .args([
            "--webhook-addr",
            &webhook.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vipam controller starts");
    let _guard = Killed(child);

    // Up, but not ready: no certificate yet.
    let (status, body) = wait_for("the admin port", Duration::from_secs(20), || {
        http_get(admin, "/readyz")
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not ready: waiting for certificate, caches"),
        "{body}"
    );
    assert_eq!(http_get(admin, "/livez").await.unwrap().0, 200);

    let (cert_a, key_a, der_a) = certificate("vipam-a");
    let (cert_b, key_b, der_b) = certificate("vipam-b");
    publish(&tls_dir, "v1", &cert_a, &key_a);
    // The certificate alone is not enough.
    wait_for("the certificate", Duration::from_secs(20), || async {
        let (status, body) = http_get(admin, "/readyz").await?;
        (status == 503 && body.contains("not ready: waiting for caches")).then_some(())
    })
    .await;
    fake.resume();
    wait_for("ready", Duration::from_secs(20), || async {
        (http_get(admin, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let connector = tls_client(&[&der_a, &der_b]);
    let served = wait_for("TLS", Duration::from_secs(10), || {
        served_certificate(&connector, webhook)
    })
    .await;
    assert_eq!(served, der_a);
    // HTTP/2 is offered (the API server prefers it), HTTP/1.1 too.
    for (offer, expected) in [(&b"h2"[..], &b"h2"[..]), (b"http/1.1", b"http/1.1")] {
        let tcp = tokio::net::TcpStream::connect(webhook).await.unwrap();
        let tls = tls_client_with(&[&der_a], &[offer])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(expected));
    }

    // Admission over TLS records the allocation in the (fake) API.
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/data/admission/service-create.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let answer = admit_over_tls(&connector, webhook, &review).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["patch"].is_string());
    assert!(fake.get("ipallocations", None, "v4-192-0-2-10").is_some());

    // kubelet swaps the Secret: the new certificate is served, no restart.
    publish(&tls_dir, "v2", &cert_b, &key_b);
    wait_for(
        "the rotated certificate",
        Duration::from_secs(10),
        || async { (served_certificate(&connector, webhook).await? == der_b).then_some(()) },
    )
    .await;
    // A broken pair is refused and the good one kept.
    publish(&tls_dir, "v3", "not a certificate", "not a key");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_certificate(&connector, webhook).await, Some(der_b));

    let (_, metrics) = http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains(
            "vipam_admissions_total{webhook=\"service\",result=\"allowed\",reason=\"assigned\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("vipam_admission_duration_seconds"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&work).unwrap();
}

fn spawn_controller(
    kubeconfig: &Path,
    extra: &[&str],
    webhook: SocketAddr,
    admin: SocketAddr,
) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_vipam"))
        .arg("controller")
        .args(extra)
        .args([
            "--webhook-addr",
            &webhook.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vipam controller starts");
    Killed(child)
}

fn webhook_configuration(kind: &str, webhooks: &[&str]) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "vipam", "labels": {"app.kubernetes.io/name": "vipam"}},
        "webhooks": webhooks.iter().map(|name| json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {"service": {"name": "vipam-webhook", "namespace": "vipam-system", "path": "/x", "port": 443}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["services"]}]
        })).collect::<Vec<_>>()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_replicas_share_one_secret_and_inject_the_ca() {
    let fake = FakeApi::new();
    let mutating = fake.seed(webhook_configuration(
        "MutatingWebhookConfiguration",
        &["services.vipam.io"],
    ));
    let validating = fake.seed(webhook_configuration(
        "ValidatingWebhookConfiguration",
        &["ippools.vipam.io", "l2announcements.vipam.io"],
    ));
    let server = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let work: PathBuf =
        std::env::temp_dir().join(format!("vipam-selfsigned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let kubeconfig = work.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let flags = [
        "--self-signed",
        "--namespace",
        "vipam-system",
        "--self-signed-check-interval",
        "200ms",
    ];
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        replicas.push((
            spawn_controller(&kubeconfig, &flags, webhook, admin),
            webhook,
            admin,
        ));
    }
    for (_, _, admin) in &replicas {
        let admin = *admin;
        wait_for("ready", Duration::from_secs(30), || async {
            (http_get(admin, "/readyz").await?.0 == 200).then_some(())
        })
        .await;
    }
    // One Secret, whatever the race; both replicas serve its certificate, which chains to its CA
    // and names the webhook Service.
    let secrets = fake.list("secrets", Some("vipam-system"));
    assert_eq!(secrets.len(), 1);
    let secret = &secrets[0];
    assert_eq!(secret["metadata"]["name"], "vipam-webhook-tls");
    let decode = |key: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().unwrap())
            .unwrap()
    };
    let ca_der = pem_der(&decode("ca.crt"));
    let connector = tls_client(&[&ca_der]);
    for (_, webhook, _) in &replicas {
        let tcp = tokio::net::TcpStream::connect(webhook).await.unwrap();
        let tls = connector
            .connect(
                ServerName::try_from("vipam-webhook.vipam-system.svc").unwrap(),
                tcp,
            )
            .await
            .expect("the served certificate verifies against the Secret's CA for the Service name");
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            pem_der(&decode("tls.crt"))
        );
    }
    // The caBundle is in every webhook; nothing else changed.
    let ca_b64 = secret["data"]["ca.crt"].as_str().unwrap().to_string();
    wait_for("caBundles", Duration::from_secs(10), || async {
        let m = fake.get("mutatingwebhookconfigurations", None, "vipam")?;
        let v = fake.get("validatingwebhookconfigurations", None, "vipam")?;
        let all = m["webhooks"]
            .as_array()?
            .iter()
            .chain(v["webhooks"].as_array()?.iter())
            .all(|w| w["clientConfig"]["caBundle"].as_str() == Some(ca_b64.as_str()));
        all.then_some(())
    })
    .await;
    for (kind, before) in [
        ("mutatingwebhookconfigurations", &mutating),
        ("validatingwebhookconfigurations", &validating),
    ] {
        let mut after = fake.get(kind, None, "vipam").unwrap();
        for w in after["webhooks"].as_array_mut().unwrap() {
            w["clientConfig"]
                .as_object_mut()
                .unwrap()
                .remove("caBundle");
        }
        assert_eq!(
            after["webhooks"], before["webhooks"],
            "{kind}: only caBundle changed"
        );
        assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    }
    let writes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.resource.ends_with("webhookconfigurations") && r.verb.is_write())
        .collect();
    assert!(!writes.is_empty());
    assert!(
        writes.iter().all(|r| r.uri.contains("fieldManager=vipam")),
        "{writes:?}"
    );
    // Argo CD removes the caBundle in a replace sync: vipam puts it back.
    let mut wiped = fake
        .get("mutatingwebhookconfigurations", None, "vipam")
        .unwrap();
    wiped["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    fake.seed(wiped);
    wait_for("the caBundle repaired", Duration::from_secs(10), || async {
        let m = fake.get("mutatingwebhookconfigurations", None, "vipam")?;
        (m["webhooks"][0]["clientConfig"]["caBundle"].as_str() == Some(ca_b64.as_str()))
            .then_some(())
    })
    .await;
    drop(replicas);
    std::fs::remove_dir_all(&work).unwrap();
}

/// The DER of the first certificate in a PEM text.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}
