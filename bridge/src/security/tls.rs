//! TLS for the device port: loads `[ingress.tls]`'s PEM files into a rustls server config
//! whose client-certificate check uses the operator's CA bundle (and CRLs), and reads a
//! device's identity out of its certificate. Re-run on SIGHUP; `still_trusted` re-checks
//! already connected devices against what was reloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use x509_parser::extensions::GeneralName;

/// `[ingress.tls]` in broker.toml. The names follow mosquitto's listener options so
/// operators moving a fleet over recognise them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Where the TLS listener accepts devices (beside the plain `ingress.listen`).
    pub listen: std::net::SocketAddr,
    /// The server's certificate chain, PEM, end entity first.
    pub certfile: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub keyfile: PathBuf,
    /// Client CA bundle, PEM: every certificate in it is trusted to issue device
    /// certificates. Without it no client certificate is asked for.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Certificate revocation lists, PEM, from the CA(s) in `cafile`.
    #[serde(default)]
    pub crlfile: Option<PathBuf>,
    /// true: a device without a valid certificate fails the handshake. false: a
    /// certificate is checked when sent, but devices may also come without one.
    #[serde(default)]
    pub require_certificate: bool,
    /// true: the certificate's identity is the device's identity and no password is
    /// needed. false: the username/password is still checked as well.
    #[serde(default = "default_true")]
    pub use_identity_as_username: bool,
    /// Which part of the certificate is the identity.
    #[serde(default)]
    pub identity: IdentityField,
    /// Whether a device with neither certificate nor password may connect on this port.
    #[serde(default)]
    pub allow_anonymous: bool,
}

fn default_true() -> bool {
    true
}

/// Which name in a device certificate identifies the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum IdentityField {
    /// The subject's commonName.
    #[default]
    #[serde(rename = "cn")]
    CommonName,
    /// The first dNSName subjectAltName.
    #[serde(rename = "san:dns")]
    SanDns,
    /// The first rfc822Name (e-mail) subjectAltName.
    #[serde(rename = "san:email")]
    SanEmail,
    /// The first uniformResourceIdentifier subjectAltName.
    #[serde(rename = "san:uri")]
    SanUri,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings contradict each other.
    #[error("[ingress.tls]: {0}")]
    Settings(&'static str),
    /// A file could not be read or does not hold what its setting says.
    #[error("ingress.tls.{setting} {}: {reason}", path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// rustls refused the provider/protocol versions: a build problem, not the files.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What one load of the TLS files gives: the acceptor's config and the trust used to
/// re-check connected clients after a reload.
#[derive(Debug, Clone)]
pub struct TlsContext {
    pub config: Arc<rustls::ServerConfig>,
    /// The same for HTTPS, which offers HTTP/2 and HTTP/1.1 by ALPN (MQTT clients may name
    /// no protocol or "mqtt", which a list without it would refuse).
    pub https: Arc<rustls::ServerConfig>,
    /// The client-certificate verifier `config` uses; None when there is no `cafile`.
    pub trust: Option<Arc<dyn ClientCertVerifier>>,
}

impl TlsContext {
    /// Reads every file named in `s` and builds the server config.
    pub fn load(s: &TlsSettings) -> Result<TlsContext, TlsError> {
        // Contradictions first: they are the operator's to fix whatever the files hold.
        if s.require_certificate && s.cafile.is_none() {
            return Err(TlsError::Settings(
                "require_certificate = true needs cafile, the CA bundle client certificates \
                 are checked against",
            ));
        }
        if s.crlfile.is_some() && s.cafile.is_none() {
            return Err(TlsError::Settings(
                "crlfile is set but cafile is not: CRLs only apply to client certificates, \
                 which are only checked against a cafile",
            ));
        }

        // Explicit provider: the process may hold another (or no) default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs("certfile", &s.certfile)?;
        let key = PrivateKeyDer::from_pem_file(&s.keyfile).map_err(|e| {
            pem_error(
                "keyfile",
                &s.keyfile,
                "private key (PKCS#8, PKCS#1 or SEC1 PEM; encrypted keys are not supported)",
                e,
            )
        })?;

        let trust = match &s.cafile {
            None => None,
            Some(cafile) => Some(client_verifier(s, cafile, provider.clone())?),
        };
        let verifier = trust
            .clone()
            .unwrap_or_else(WebPkiClientVerifier::no_client_auth);

        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::File {
                setting: "keyfile",
                path: s.keyfile.clone(),
                reason: format!("not usable with certfile {}: {e}", s.certfile.display()),
            })?;
        let mut https = config.clone();
        https.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsContext {
            config: Arc::new(config),
            https: Arc::new(https),
            trust,
        })
    }

    /// Whether a client's chain (as presented in its handshake: end entity first) is still
    /// trusted under this context (new CA bundle, new CRL, and the certificate's validity
    /// period at this moment); true when there is no cafile. An empty chain (a client that
    /// sent no certificate) is trusted unless certificates are now required.
    pub fn still_trusted(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some(trust) = &self.trust else {
            return true;
        };
        match chain.split_first() {
            None => !trust.client_auth_mandatory(),
            Some((end_entity, intermediates)) => trust
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .is_ok(),
        }
    }
}

/// The WebPKI client verifier over every certificate in `cafile` (+ `crlfile`).
fn client_verifier(
    s: &TlsSettings,
    cafile: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs("cafile", cafile)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::File {
            setting: "cafile",
            path: cafile.to_path_buf(),
            reason: format!(
                "certificate #{} is not usable as a trust anchor: {e}",
                i + 1
            ),
        })?;
    }

    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crlfile) = &s.crlfile {
        let crls = CertificateRevocationListDer::pem_file_iter(crlfile)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error("crlfile", crlfile, "X509 CRL", e))?;
        if crls.is_empty() {
            return Err(pem_error(
                "crlfile",
                crlfile,
                "X509 CRL",
                pem::Error::NoItemsFound,
            ));
        }
        // A CRL from the device CA is all operators usually have: check only the device
        // certificate's status and accept certificates no CRL speaks about.
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    if !s.require_certificate {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| match (e, &s.crlfile) {
        (VerifierBuilderError::InvalidCrl(e), Some(crlfile)) => TlsError::File {
            setting: "crlfile",
            path: crlfile.clone(),
            reason: format!("not a valid CRL: {e:?}"),
        },
        (e, _) => TlsError::File {
            setting: "cafile",
            path: cafile.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// All certificates in a PEM file; at least one.
fn read_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(setting, path, "CERTIFICATE", e))?;
    if certs.is_empty() {
        return Err(pem_error(
            setting,
            path,
            "CERTIFICATE",
            pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

fn pem_error(setting: &'static str, path: &Path, what: &str, e: pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::Io(e) => format!("cannot read: {e}"),
        pem::Error::NoItemsFound => format!("no {what} in it"),
        e => format!("not valid PEM: {e}"),
    };
    TlsError::File {
        setting,
        path: path.to_path_buf(),
        reason,
    }
}

/// The identity in a client's end-entity certificate: the subject CN, or the first SAN of
/// the kind configured; None when absent or not valid UTF-8 or containing '/', '+', '#' or
/// NUL (it becomes a topic level), or empty.
pub fn identity(cert: &CertificateDer<'_>, field: IdentityField) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = match field {
        IdentityField::CommonName => cert.subject().iter_common_name().next()?.as_str().ok()?,
        _ => {
            // Context tags of GeneralName: rfc822Name [1], dNSName [2], URI [6].
            let tag = match field {
                IdentityField::SanEmail => 1,
                IdentityField::SanDns => 2,
                _ => 6,
            };
            let san = cert.subject_alternative_name().ok()??;
            // The first of the kind counts even when it is unusable: skipping to a later
            // one would make the identity depend on which names happen to parse.
            let first = san.value.general_names.iter().find(|n| match n {
                GeneralName::RFC822Name(_) => tag == 1,
                GeneralName::DNSName(_) => tag == 2,
                GeneralName::URI(_) => tag == 6,
                GeneralName::Invalid(t, _) => t.0 == tag,
                _ => false,
            })?;
            match first {
                GeneralName::RFC822Name(s) | GeneralName::DNSName(s) | GeneralName::URI(s) => *s,
                _ => return None,
            }
        }
    };
    let usable = !name.is_empty() && !name.contains(['/', '+', '#', '\0']);
    usable.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const OPENSSL: &str = "/usr/bin/openssl";

    /// A fresh test PKI from scripts/certs.sh with device `dev1`.
    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/certs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir.path())
            .arg("dev1")
            .output()
            .expect("run scripts/certs.sh");
        assert!(
            out.status.success(),
            "certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            certfile: dir.join("server.pem"),
            keyfile: dir.join("server.key"),
            cafile: Some(dir.join("ca.pem")),
            crlfile: None,
            require_certificate: true,
            use_identity_as_username: true,
            identity: IdentityField::CommonName,
            allow_anonymous: false,
        }
    }

    fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("pem")
    }

    /// A self-signed certificate with the given subject (openssl -subj syntax) and SANs.
    fn self_signed(dir: &Path, name: &str, subj: &str, san: &str) -> CertificateDer<'static> {
        let cnf = dir.join("min.cnf");
        std::fs::write(&cnf, "[req]\ndistinguished_name = dn\n[dn]\n").expect("cnf");
        let pem = dir.join(format!("{name}.pem"));
        let out = Command::new(OPENSSL)
            .args(["req", "-x509", "-new", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
            ])
            .arg("-config")
            .arg(&cnf)
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(&pem)
            .args(["-subj", subj, "-addext", &format!("subjectAltName={san}")])
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        chain(&pem).remove(0)
    }

    #[test]
    fn settings_parse_with_mosquitto_names_and_defaults() {
        let s: TlsSettings = toml::from_str(
            r#"listen = "0.0.0.0:8883"
               certfile = "/etc/sluice/server.pem"
               keyfile = "/etc/sluice/server.key""#,
        )
        .expect("minimal");
        assert!(s.use_identity_as_username && !s.require_certificate && !s.allow_anonymous);
        assert_eq!(s.identity, IdentityField::CommonName);
        assert!(s.cafile.is_none() && s.crlfile.is_none());

        let s: TlsSettings = toml::from_str(
            r#"listen = "0.0.0.0:8883"
               certfile = "a"
               keyfile = "b"
               identity = "san:email""#,
        )
        .expect("identity");
        assert_eq!(s.identity, IdentityField::SanEmail);
        let typo = toml::from_str::<TlsSettings>(
            r#"listen = "0.0.0.0:8883"
               certfile = "a"
               keyfile = "b"
               require_certificates = true"#,
        );
        assert!(typo.is_err());
    }

    #[test]
    fn loads_and_rejects_bad_settings_and_files() {
        let dir = pki();
        let d = dir.path();
        let ctx = TlsContext::load(&settings(d)).expect("load");
        assert!(ctx.trust.is_some());
        let plain = TlsContext::load(&TlsSettings {
            cafile: None,
            require_certificate: false,
            ..settings(d)
        })
        .expect("load without cafile");
        assert!(plain.trust.is_none());

        let err = TlsContext::load(&TlsSettings {
            cafile: None,
            ..settings(d)
        })
        .expect_err("require_certificate without cafile");
        assert!(err.to_string().contains("cafile"), "{err}");

        let err = TlsContext::load(&TlsSettings {
            certfile: d.join("missing.pem"),
            ..settings(d)
        })
        .expect_err("missing certfile");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let garbled = d.join("garbled.pem");
        std::fs::write(&garbled, "this is not PEM\n").expect("write");
        for s in [
            TlsSettings {
                keyfile: garbled.clone(),
                ..settings(d)
            },
            TlsSettings {
                cafile: Some(garbled.clone()),
                ..settings(d)
            },
            TlsSettings {
                crlfile: Some(garbled.clone()),
                ..settings(d)
            },
        ] {
            let err = TlsContext::load(&s).expect_err("garbled file");
            assert!(err.to_string().contains("garbled.pem"), "{err}");
        }

        let bad_base64 = d.join("bad64.pem");
        std::fs::write(
            &bad_base64,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = TlsContext::load(&TlsSettings {
            cafile: Some(bad_base64),
            ..settings(d)
        })
        .expect_err("bad base64");
        assert!(err.to_string().contains("bad64.pem"), "{err}");

        let err = TlsContext::load(&TlsSettings {
            keyfile: d.join("dev1.key"),
            ..settings(d)
        })
        .expect_err("key of another certificate");
        assert!(err.to_string().contains("dev1.key"), "{err}");
    }

    #[test]
    fn identity_follows_the_configured_field_and_refuses_topic_wildcards() {
        let dir = pki();
        let d = dir.path();
        let dev = chain(&d.join("dev1.pem")).remove(0);
        assert_eq!(
            identity(&dev, IdentityField::CommonName).as_deref(),
            Some("dev1")
        );
        assert_eq!(
            identity(&dev, IdentityField::SanDns).as_deref(),
            Some("dev1")
        );
        assert_eq!(
            identity(&dev, IdentityField::SanEmail).as_deref(),
            Some("dev1@devices.example")
        );
        assert_eq!(identity(&dev, IdentityField::SanUri), None);

        let uri = self_signed(d, "uri", "/CN=plain", "URI:urn:sluice:dev-7,DNS:a.example");
        assert_eq!(
            identity(&uri, IdentityField::SanUri).as_deref(),
            Some("urn:sluice:dev-7")
        );
        assert_eq!(
            identity(&uri, IdentityField::SanDns).as_deref(),
            Some("a.example")
        );
        assert_eq!(identity(&uri, IdentityField::SanEmail), None);

        // openssl -subj needs '/' and '+' escaped, and -addext '#' (else a comment).
        let bad = self_signed(
            d,
            "bad",
            r"/CN=a\/b",
            r"DNS:a+b,DNS:fine.example,email:x\#y@devices.example,URI:urn:a/b",
        );
        assert_eq!(identity(&bad, IdentityField::CommonName), None);
        // The first dNSName is unusable: no falling back to a later one.
        assert_eq!(identity(&bad, IdentityField::SanDns), None);
        assert_eq!(identity(&bad, IdentityField::SanEmail), None);
        assert_eq!(identity(&bad, IdentityField::SanUri), None);
        let plus = self_signed(d, "plus", r"/CN=a\+b", "DNS:x");
        assert_eq!(identity(&plus, IdentityField::CommonName), None);
        let hash = self_signed(d, "hash", "/CN=a#b", "DNS:x");
        assert_eq!(identity(&hash, IdentityField::CommonName), None);

        assert_eq!(
            identity(
                &CertificateDer::from(vec![1, 2, 3]),
                IdentityField::CommonName
            ),
            None
        );
    }

    #[test]
    fn still_trusted_follows_ca_crl_and_validity() {
        let dir = pki();
        let d = dir.path();
        let dev = chain(&d.join("dev1.pem"));
        let intruder = chain(&d.join("intruder.pem"));
        let revoked = chain(&d.join("revoked.pem"));
        let expired = chain(&d.join("expired.pem"));

        let ctx = TlsContext::load(&settings(d)).expect("load");
        assert!(ctx.still_trusted(&dev));
        assert!(!ctx.still_trusted(&intruder));
        assert!(!ctx.still_trusted(&expired));
        assert!(ctx.still_trusted(&revoked), "no CRL loaded yet");
        assert!(!ctx.still_trusted(&[]), "certificate required");

        let with_crl = TlsContext::load(&TlsSettings {
            crlfile: Some(d.join("crl.pem")),
            require_certificate: false,
            ..settings(d)
        })
        .expect("load with CRL");
        assert!(with_crl.still_trusted(&dev));
        assert!(!with_crl.still_trusted(&revoked));
        assert!(!with_crl.still_trusted(&intruder));
        assert!(with_crl.still_trusted(&[]), "certificate optional");

        // The other CA's certificate in the bundle: its devices are trusted too.
        let both = d.join("both.pem");
        let bundle = [
            std::fs::read(d.join("ca.pem")).expect("ca"),
            std::fs::read(d.join("other-ca.pem")).expect("other ca"),
        ]
        .concat();
        std::fs::write(&both, bundle).expect("write");
        let ctx = TlsContext::load(&TlsSettings {
            cafile: Some(both),
            ..settings(d)
        })
        .expect("load bundle");
        assert!(ctx.still_trusted(&dev) && ctx.still_trusted(&intruder));

        let plain = TlsContext::load(&TlsSettings {
            cafile: None,
            require_certificate: false,
            ..settings(d)
        })
        .expect("load without cafile");
        assert!(plain.still_trusted(&intruder));
    }

    /// Connects to `addr` with `cert` (if any) and says whether the server's "ok" came back.
    async fn client(
        dir: &Path,
        addr: std::net::SocketAddr,
        cert: Option<&str>,
    ) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        for ca in chain(&dir.join("ca.pem")) {
            roots.add(ca).map_err(|e| e.to_string())?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let config = match cert {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key")))
                    .map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain(&dir.join(format!("{name}.pem"))), key)
                    .map_err(|e| e.to_string())?
            }
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        // With TLS 1.3 the client finishes before the server has judged its certificate:
        // only reading the server's reply shows the verdict.
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        if reply == b"ok" {
            Ok(())
        } else {
            Err(format!("reply {reply:?}"))
        }
    }

    /// Serves one handshake; gives the client's identity (None: no certificate) or the error.
    async fn serve_one(
        listener: &tokio::net::TcpListener,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> Result<Option<String>, String> {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| identity(c, IdentityField::CommonName));
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(id)
    }

    async fn handshake(
        dir: &Path,
        ctx: &TlsContext,
        cert: Option<&str>,
    ) -> (Result<Option<String>, String>, Result<(), String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(ctx.config.clone());
        let both = async { tokio::join!(serve_one(&listener, &acceptor), client(dir, addr, cert)) };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("handshake timed out")
    }

    #[tokio::test]
    async fn handshake_accepts_devices_of_the_ca_only() {
        let dir = pki();
        let d = dir.path();
        let required = TlsContext::load(&settings(d)).expect("load");

        let (server, client) = handshake(d, &required, Some("dev1")).await;
        assert_eq!(server, Ok(Some("dev1".to_owned())));
        assert_eq!(client, Ok(()));

        // The client learns why from the server's alert.
        for (cert, alert) in [
            (Some("intruder"), "UnknownCA"),
            (Some("expired"), "CertificateExpired"),
            (None, "CertificateRequired"),
        ] {
            let (server, client) = handshake(d, &required, cert).await;
            assert!(server.is_err(), "{cert:?} accepted by the server");
            assert!(
                client.as_ref().is_err_and(|e| e.contains(alert)),
                "{cert:?}: {client:?}"
            );
        }

        // Certificates optional: no certificate is fine, a bad one still is not.
        let optional = TlsContext::load(&TlsSettings {
            require_certificate: false,
            crlfile: Some(d.join("crl.pem")),
            ..settings(d)
        })
        .expect("load");
        let (server, client) = handshake(d, &optional, None).await;
        assert_eq!(server, Ok(None));
        assert_eq!(client, Ok(()));
        for (cert, alert) in [("intruder", "UnknownCA"), ("revoked", "CertificateRevoked")] {
            let (server, client) = handshake(d, &optional, Some(cert)).await;
            assert!(server.is_err(), "{cert} accepted by the server");
            assert!(
                client.as_ref().is_err_and(|e| e.contains(alert)),
                "{cert}: {client:?}"
            );
        }
    }
}
