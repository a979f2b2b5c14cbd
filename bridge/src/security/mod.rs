//! Device identity on the port: who a connection is (its TLS client certificate or a
//! password from a `mosquitto_passwd` file; over HTTP also a bearer token), and what it may
//! publish and subscribe to (`acl`). The files are read at start and again on SIGHUP; a file that does not parse
//! leaves the rules in force unchanged.

pub mod acl;
pub mod passwords;
mod throttle;
pub mod tls;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;

use metrics::{counter, gauge};
use rustls_pki_types::CertificateDer;
use tokio::sync::{watch, Semaphore};

use crate::settings::AuthSettings;
use acl::{Acl, AclError};
use passwords::{PasswordFileError, Passwords};
use tls::{TlsContext, TlsError, TlsSettings};
use tokens::{TokenFileError, Tokens};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("auth.password_file: {0}")]
    Passwords(#[from] PasswordFileError),
    #[error("auth.acl_file: {0}")]
    Acl(#[from] AclError),
    #[error("ingress.tls: {0}")]
    Tls(#[from] TlsError),
    #[error("auth.token_file: {0}")]
    Tokens(#[from] TokenFileError),
}

/// The rules in force: one consistent load of every file.
pub struct Rules {
    pub passwords: Option<Passwords>,
    pub acl: Acl,
    pub tls: Option<TlsContext>,
    pub tokens: Option<Tokens>,
}

pub struct Security {
    auth: AuthSettings,
    tls: Option<TlsSettings>,
    /// Sluice's default ACL patterns (from the mappings), granted to every identity.
    defaults: Vec<String>,
    current: watch::Sender<Arc<Rules>>,
    /// Password checks at a time: hashing is CPU and (argon2) memory heavy.
    verifying: Arc<Semaphore>,
    throttle: throttle::LoginThrottle,
}

/// How a listener admits clients.
#[derive(Debug, Clone, Copy)]
pub struct Door {
    pub allow_anonymous: bool,
    /// TLS with `use_identity_as_username`: a client certificate's identity is enough.
    pub certificate_is_identity: bool,
    pub identity_field: tls::IdentityField,
}

/// What a client presented: its CONNECT's credentials and its certificate chain (TLS).
pub struct Presented<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub certificates: Option<&'a [CertificateDer<'static>]>,
}

/// Who a connection is, and the proof, re-checked when the rules change.
#[derive(Clone)]
pub struct Identity {
    /// `None` for an anonymous client.
    pub name: Option<Arc<str>>,
    password_entry: Option<String>,
    certificates: Option<Vec<CertificateDer<'static>>>,
}

/// Why a CONNECT is refused: a metric label and the MQTT 5 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user or wrong password: 0x86 (3.1.1: return code 4).
    BadCredentials,
    /// No identity where one is needed: 0x87 (3.1.1: return code 5).
    NotAuthorized,
    /// A client certificate without a usable name in the configured field (it must be
    /// one topic level): 0x87 (3.1.1: return code 5).
    NoCertificateIdentity,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            name: None,
            password_entry: None,
            certificates: None,
        }
    }

    /// Whether what proved this identity still does under `rules`: the user's password
    /// entry is unchanged, the certificate still trusted (CA bundle, CRL).
    pub fn still_valid(&self, rules: &Rules) -> bool {
        let password_ok = match (&self.password_entry, &self.name) {
            (Some(entry), Some(name)) => rules
                .passwords
                .as_ref()
                .and_then(|p| p.entry(name))
                .is_some_and(|now| now == entry),
            _ => true,
        };
        let certificate_ok = match &self.certificates {
            Some(chain) => rules.tls.as_ref().is_some_and(|t| t.still_trusted(chain)),
            None => true,
        };
        password_ok && certificate_ok
    }
}

impl Security {
    /// Reads every file once; start-up fails on any that does not parse.
    pub fn load(
        auth: AuthSettings,
        tls: Option<TlsSettings>,
        defaults: Vec<String>,
    ) -> Result<Security, SecurityError> {
        let security = Security {
            current: watch::channel(Arc::new(Rules {
                passwords: None,
                acl: Acl::open(&defaults)?,
                tls: None,
                tokens: None,
            }))
            .0,
            auth,
            tls,
            defaults,
            verifying: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            throttle: throttle::LoginThrottle::default(),
        };
        let rules = security.read()?;
        security.current.send_replace(Arc::new(rules));
        gauge!("sluice_security_files_ok").set(1.0);
        Ok(security)
    }

    fn read(&self) -> Result<Rules, SecurityError> {
        let passwords = match &self.auth.password_file {
            Some(path) => Some(Passwords::load(path)?),
            None => None,
        };
        let acl = match &self.auth.acl_file {
            Some(path) => Acl::load(path, &self.defaults)?,
            None => Acl::open(&self.defaults)?,
        };
        let tls = match &self.tls {
            Some(settings) => Some(TlsContext::load(settings)?),
            None => None,
        };
        let tokens = match &self.auth.token_file {
            Some(path) => Some(Tokens::load(path)?),
            None => None,
        };
        Ok(Rules {
            passwords,
            acl,
            tls,
            tokens,
        })
    }

    /// Re-reads the files (SIGHUP). One that does not parse keeps the rules in force
    /// unchanged, and says why in the log and `sluice_security_files_ok` 0; connections
    /// re-check themselves against new rules.
    pub fn reload(&self) {
        match self.read() {
            Ok(rules) => {
                self.current.send_replace(Arc::new(rules));
                counter!("sluice_security_reloads_total", "result" => "ok").increment(1);
                gauge!("sluice_security_files_ok").set(1.0);
                tracing::info!("credentials, ACL and certificates reloaded");
            }
            Err(e) => {
                counter!("sluice_security_reloads_total", "result" => "error").increment(1);
                gauge!("sluice_security_files_ok").set(0.0);
                tracing::error!(error = %e, "reload refused; the previous rules stay in force");
            }
        }
    }

    pub fn current(&self) -> Arc<Rules> {
        self.current.borrow().clone()
    }

    /// The rules, told of every reload.
    pub fn watch(&self) -> watch::Receiver<Arc<Rules>> {
        self.current.subscribe()
    }

    /// Who an HTTP bearer token stands for under `rules`; `None` for a token no file lists.
    pub fn bearer(rules: &Rules, token: &str) -> Option<Identity> {
        let name = rules.tokens.as_ref()?.identify(token)?;
        Some(Identity {
            name: Some(name),
            ..Identity::anonymous()
        })
    }

    /// Decides who a CONNECT is under `rules`, or refuses it. A certificate's identity is
    /// enough where the listener says so; otherwise a user name must come with the right
    /// password; with neither, the client is anonymous, where the listener allows that
    /// (where there is no password file, a user name is then only a name).
    pub async fn authenticate(
        &self,
        rules: &Arc<Rules>,
        door: Door,
        presented: Presented<'_>,
        address: IpAddr,
    ) -> Result<Identity, Refusal> {
        let certificates = presented
            .certificates
            .filter(|chain| !chain.is_empty())
            .map(<[_]>::to_vec);
        let mut identity = Identity {
            certificates,
            ..Identity::anonymous()
        };
        if let (Some(chain), true) = (&identity.certificates, door.certificate_is_identity) {
            let name = tls::identity(&chain[0], door.identity_field);
            identity.name = Some(name.ok_or(Refusal::NoCertificateIdentity)?.into());
            return Ok(identity);
        }
        let username = match presented.username {
            Some(name) if rules.passwords.is_some() || !door.allow_anonymous => name,
            _ if door.allow_anonymous => return Ok(identity),
            _ => return Err(Refusal::NotAuthorized),
        };
        let penalty = self.throttle.attempt(address);
        if !penalty.is_zero() {
            counter!("sluice_login_delayed_total").increment(1);
            tokio::time::sleep(penalty).await;
        }
        let rules = rules.clone();
        let password = presented.password.unwrap_or_default().to_owned();
        let user = username.to_owned();
        let entry = {
            // The slot goes with the hash: a caller that gives up waiting (an HTTP client
            // resetting its stream) does not free it while the hash still runs.
            let slot = self.verifying.clone().acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let passwords = rules.passwords.as_ref()?;
                passwords
                    .verify(&user, password.as_bytes())
                    .then(|| passwords.entry(&user).map(str::to_owned))
                    .flatten()
            })
            .await
            .ok()
            .flatten()
        };
        let entry = entry.ok_or(Refusal::BadCredentials)?;
        self.throttle.succeeded(address);
        identity.name = Some(username.into());
        identity.password_entry = Some(entry);
        Ok(identity)
    }
}
