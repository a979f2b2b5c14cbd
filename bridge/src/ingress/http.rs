//! HTTP ingest: `POST /v1/readings/{device_id}[/{metric}]` and `POST /v1/readings` (a batch
//! for many devices), for senders that do not speak MQTT. A request is routed as the MQTT
//! topic `[ingress.http]` names and goes through the same identities, ACL, rate limits,
//! admission, in-flight budgets and Kafka path as a publish; `202` only once Kafka has the
//! record (at once where the mapping says `ack = "receipt"`).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics::{counter, gauge};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use super::admit::{admit, Destination, Rules};
use super::rate::{Over, RateKey};
use super::sources::{Connections, Open, Sources};
use super::{Ingress, Listener};
use crate::ack::{Delivered, Outcome, Waiter};
use crate::api::Api;
use crate::budget::{Budget, Reservation};
use crate::decode::{check_name, Format};
use crate::mapping::AckPolicy;
use crate::security::acl::Who;
use crate::security::{Door, Identity, Presented, Refusal, Security};
use crate::settings::HttpIngestSettings;
use crate::wire::{self, Qos};

/// How long a sender that met a full pipeline or a down Kafka is asked to wait.
const RETRY_AFTER_BUSY: Duration = Duration::from_secs(1);
const RETRY_AFTER_KAFKA: Duration = Duration::from_secs(5);

/// What every HTTP connection shares.
pub struct Front {
    ingress: Arc<Ingress>,
    settings: HttpIngestSettings,
    /// Requests being served.
    requests: Arc<Semaphore>,
    /// Requests per source address.
    requests_by_source: Arc<Sources>,
    /// HTTP's records and bytes on their way to Kafka: at most half of the process's, so
    /// MQTT devices always have room.
    budget: Arc<Budget>,
    connections: Arc<Connections>,
    /// The read API, served to readers on the same listener.
    api: Option<Arc<Api>>,
}

/// Who is on the other end of one connection.
#[derive(Clone)]
struct Peer {
    address: IpAddr,
    door: Door,
    certificates: Option<Arc<[CertificateDer<'static>]>>,
}

/// An answer: a status, a small JSON body and the headers that go with it.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
}

impl Answer {
    fn refused(status: StatusCode, error: &str, detail: impl Into<String>) -> Answer {
        Answer {
            status,
            body: json!({"error": error, "detail": detail.into()}),
            retry_after: None,
        }
    }

    fn retry(
        status: StatusCode,
        error: &str,
        detail: impl Into<String>,
        after: Duration,
    ) -> Answer {
        Answer {
            retry_after: Some(after),
            ..Answer::refused(status, error, detail)
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        counter!("sluice_http_requests_total", "status" => self.status.as_str().to_owned())
            .increment(1);
        let mut response = (self.status, axum::Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // Basic too, so that a browser opening the dashboard asks for a password.
            for challenge in ["Bearer realm=\"sluice\"", "Basic realm=\"sluice\""] {
                let challenge = HeaderValue::from_static(challenge);
                headers.append(header::WWW_AUTHENTICATE, challenge);
            }
        }
        response
    }
}

impl Front {
    pub fn new(
        ingress: Arc<Ingress>,
        settings: HttpIngestSettings,
        api: Option<Arc<Api>>,
    ) -> Arc<Front> {
        let i = &ingress.settings;
        Arc::new(Front {
            requests: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            requests_by_source: Arc::default(),
            budget: Budget::new(
                (i.max_inflight_total / 2).max(1),
                (i.max_inflight_bytes_total / 2).max(1),
            ),
            connections: Arc::default(),
            settings,
            ingress,
            api,
        })
    }

    fn router(self: &Arc<Front>) -> Router {
        let reads = match &self.api {
            Some(api) => api
                .routes()
                .merge(crate::dashboard::routes())
                .route_layer(axum::middleware::from_fn_with_state(self.clone(), reader)),
            None => Router::new(),
        };
        let ingest = Router::new()
            .route("/v1/readings", post(batch))
            .route("/v1/readings/{device_id}", post(single))
            .route("/v1/readings/{device_id}/{metric}", post(single_metric))
            .with_state(self.clone());
        ingest.merge(reads).fallback(|| async {
            Answer::refused(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/readings/{device_id}[/{metric}], POST /v1/readings, or the read API in /v1/openapi.json",
            )
        })
    }

    /// Serves `listeners` until `stop` resolves, then stops accepting and lets every
    /// connection finish its requests (up to `ingress.drain_timeout_ms`).
    pub async fn serve(
        self: Arc<Front>,
        listeners: Vec<Listener>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let graceful = GracefulShutdown::new();
        let router = self.router();
        let accepting = listeners
            .into_iter()
            .map(|l| self.clone().accept(l, router.clone(), &graceful));
        tokio::select! {
            _ = futures::future::join_all(accepting) => {}
            _ = stop => {}
        }
        tracing::info!("HTTP ingest stopped accepting; finishing the requests in progress");
        let wait = Duration::from_millis(self.ingress.settings.drain_timeout_ms + 1_000);
        if tokio::time::timeout(wait, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open after the drain timeout");
        }
    }

    async fn accept(
        self: Arc<Front>,
        listener: Listener,
        router: Router,
        graceful: &GracefulShutdown,
    ) {
        let builders = Arc::new(Builders::new(Duration::from_millis(
            self.ingress.settings.connect_timeout_ms,
        )));
        let connects = super::rate::ConnectRate::new(self.ingress.settings.max_connects_per_second);
        loop {
            let (socket, peer) = listener.next().await;
            let Some(slot) = self.admit_connection(peer.ip(), &connects) else {
                continue;
            };
            let front = self.clone();
            let (router, builders) = (router.clone(), builders.clone());
            let watcher = graceful.watcher();
            let (door, tls) = (listener.door, listener.tls);
            tokio::spawn(async move {
                gauge!("sluice_http_connections").increment(1.0);
                let served = front
                    .connection(socket, peer, door, tls, router, &builders, watcher)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                gauge!("sluice_http_connections").decrement(1.0);
                drop(slot);
            });
        }
    }

    /// A place for a new connection, or `None` (it is closed at once) past
    /// `max_connections`, `max_connections_per_address` or the listener's connect rate.
    fn admit_connection(
        &self,
        address: IpAddr,
        connects: &super::rate::ConnectRate,
    ) -> Option<Open> {
        let s = &self.settings;
        let admitted = match connects.allows() {
            true => {
                (self.connections).admit(address, s.max_connections, s.max_connections_per_address)
            }
            false => Err("connect_rate"),
        };
        admitted
            .inspect_err(|reason| {
                counter!("sluice_http_connections_refused_total", "reason" => *reason).increment(1)
            })
            .ok()
    }

    #[allow(clippy::too_many_arguments)]
    async fn connection(
        &self,
        socket: tokio::net::TcpStream,
        peer: SocketAddr,
        door: Door,
        tls: bool,
        router: Router,
        builders: &Builders,
        watcher: hyper_util::server::graceful::Watcher,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        socket.set_nodelay(true)?;
        let mut who = Peer {
            address: peer.ip(),
            door,
            certificates: None,
        };
        let wait = Duration::from_millis(self.ingress.settings.connect_timeout_ms);
        if !tls {
            let h2 = opens_with_h2_preface(&socket, wait).await?;
            let service = with_peer(router, who);
            let builder = builders.for_version(h2);
            return watcher
                .watch(builder.serve_connection(TokioIo::new(socket), service))
                .await;
        }
        let rules = self.ingress.security.current();
        let config = rules.tls.as_ref().map(|t| t.https.clone());
        let config = config.ok_or("no TLS set up")?;
        let accepting = tokio_rustls::TlsAcceptor::from(config).accept(socket);
        let stream = tokio::time::timeout(wait, accepting)
            .await?
            .inspect_err(|_| counter!("sluice_tls_handshake_failures_total").increment(1))?;
        let session = stream.get_ref().1;
        who.certificates = session
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
        // HTTP/2 only when ALPN chose it, so nothing waits to tell the two apart.
        let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let service = with_peer(router, who);
        watcher
            .watch(
                builders
                    .for_version(h2)
                    .serve_connection(TokioIo::new(stream), service),
            )
            .await
    }

    /// Who a request is: its bearer token's identity, its Basic credentials (checked as an
    /// MQTT password), its client certificate's (HTTPS), or anonymous where allowed.
    async fn identify(
        &self,
        rules: &Arc<crate::security::Rules>,
        peer: &Peer,
        headers: &HeaderMap,
    ) -> Result<Identity, Answer> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default());
        let unauthorized = |detail: &str| {
            counter!("sluice_auth_failures_total", "reason" => "http").increment(1);
            Answer::refused(StatusCode::UNAUTHORIZED, "unauthorized", detail)
        };
        let (scheme, credentials) = match authorization {
            Some(value) => value.split_once(' ').unwrap_or((value, "")),
            None => ("", ""),
        };
        let basic = if scheme.eq_ignore_ascii_case("bearer") {
            return Security::bearer(rules, credentials.trim())
                .ok_or_else(|| unauthorized("unknown bearer token"));
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let decoded = decoded.ok_or_else(|| unauthorized("malformed Basic credentials"))?;
            Some(decoded)
        } else if authorization.is_some() {
            return Err(unauthorized("use Authorization: Bearer <token> or Basic"));
        } else {
            None
        };
        let (username, password) = match &basic {
            Some(text) => match text.split_once(':') {
                Some((u, p)) => (Some(u), Some(p)),
                None => (Some(text.as_str()), None),
            },
            None => (None, None),
        };
        let presented = Presented {
            username,
            password,
            certificates: peer.certificates.as_deref(),
        };
        let security = &self.ingress.security;
        let source = super::source(peer.address);
        match security
            .authenticate(rules, peer.door, presented, source)
            .await
        {
            // A certificate revoked by a reload is refused on a connection made before it.
            Ok(identity) if !identity.still_valid(rules) => {
                Err(unauthorized("the client certificate is no longer trusted"))
            }
            Ok(identity) => Ok(identity),
            Err(Refusal::BadCredentials) => Err(unauthorized("wrong user name or password")),
            Err(Refusal::NoCertificateIdentity) => Err(unauthorized(
                "the client certificate names no usable identity",
            )),
            Err(Refusal::NotAuthorized) => Err(unauthorized(
                "send Authorization: Bearer <token> (or Basic, or a client certificate over HTTPS)",
            )),
        }
    }

    /// Who a request is, under the request deadline, with one of its source's places held
    /// meanwhile (ingest and reads alike).
    async fn sender(
        &self,
        rules: &Arc<crate::security::Rules>,
        peer: &Peer,
        headers: &HeaderMap,
        deadline: Instant,
    ) -> Result<Identity, Answer> {
        match tokio::time::timeout_at(deadline, self.identify(rules, peer, headers)).await {
            Ok(result) => result,
            Err(_) => {
                let detail = "the credentials could not be checked in time";
                let status = StatusCode::SERVICE_UNAVAILABLE;
                Err(Answer::retry(status, "busy", detail, RETRY_AFTER_BUSY))
            }
        }
    }

    /// Serves one request of `items`, all or nothing up to admission: each is authorised,
    /// rate checked and given room in the budgets before any goes to Kafka.
    async fn ingest(
        &self,
        peer: Peer,
        headers: HeaderMap,
        body: Body,
        items: impl FnOnce(Bytes) -> Result<Vec<Item>, Answer>,
        batch: bool,
    ) -> Answer {
        let received_at = Utc::now();
        let deadline = Instant::now() + Duration::from_millis(self.settings.request_timeout_ms);
        // One source's requests first, so that it cannot hold every place below (a wrong
        // password waits out its penalty, a slow body its timeout, in one of its own).
        let max_each = self.settings.max_requests_per_address;
        let Some(_source) = self.requests_by_source.take(peer.address, max_each) else {
            counter!("sluice_http_refused_total", "reason" => "per_address").increment(1);
            let detail = "too many requests in progress from this address";
            let status = StatusCode::TOO_MANY_REQUESTS;
            return Answer::retry(status, "too_many_requests", detail, RETRY_AFTER_BUSY);
        };
        if *self.ingress.shutdown.borrow() {
            let detail = "sluice is shutting down";
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return Answer::retry(status, "shutting_down", detail, RETRY_AFTER_BUSY);
        }
        // One load of the rules decides who the sender is and what it may post.
        let rules = self.ingress.security.current();
        let identity = match self.sender(&rules, &peer, &headers, deadline).await {
            Ok(identity) => identity,
            Err(answer) => return answer,
        };
        let Ok(slot) = self.requests.clone().try_acquire_owned() else {
            counter!("sluice_http_refused_total", "reason" => "concurrency").increment(1);
            let detail = "too many requests in progress";
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return Answer::retry(status, "busy", detail, RETRY_AFTER_BUSY);
        };
        let _in_progress = InProgress::new(slot);
        let limit = if batch {
            self.settings.max_body_bytes
        } else {
            self.ingress.limits.max_payload_bytes
        };
        let body = match tokio::time::timeout_at(deadline, read_body(&headers, body, limit)).await {
            Ok(Ok(body)) => body,
            Ok(Err(answer)) => return answer,
            Err(_) => {
                let detail = "the request body did not arrive in time";
                return Answer::refused(StatusCode::REQUEST_TIMEOUT, "timeout", detail);
            }
        };
        let (body, gzip) = body;
        let items = match items(body) {
            Ok(items) => items,
            Err(answer) => return answer,
        };
        let source = super::source(peer.address);
        let client_id: Arc<str> = match &identity.name {
            Some(name) => name.clone(),
            None => format!("http:{source}").into(),
        };
        let who = Who {
            identity: identity.name.as_deref(),
            client_id: &client_id,
        };
        for (index, item) in items.iter().enumerate() {
            if let Err(answer) = self.authorise(&rules, who, item) {
                return at(answer, batch.then_some(index));
            }
        }
        let rate_key = match &identity.name {
            Some(name) => RateKey::Identity(name.clone()),
            None => RateKey::Address(source),
        };
        let bytes = items.iter().map(|item| item.payload.len()).sum();
        match self.ingress.rates.check_all(&rate_key, items.len(), bytes) {
            Ok(()) => {}
            Err(Over::Wait(wait)) => {
                counter!("sluice_http_refused_total", "reason" => "rate").increment(1);
                let detail = "over the sender's rate ([ingress] max_messages_per_second, max_bytes_per_second)";
                return Answer::retry(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail, wait);
            }
            Err(Over::Never) => {
                let detail = format!("{} entries at once are more than [ingress] burst_messages or burst_bytes allow; send smaller batches", items.len());
                return Answer::refused(StatusCode::PAYLOAD_TOO_LARGE, "over_burst", detail);
            }
        }
        if self.ingress.producer.kafka_down() {
            counter!("sluice_http_refused_total", "reason" => "kafka_down").increment(1);
            let detail = "kafka is unreachable; nothing was accepted";
            return Answer::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka_unavailable",
                detail,
                RETRY_AFTER_KAFKA,
            );
        }
        let sent = match self.send(items, gzip, &client_id, received_at).await {
            Ok(sent) => sent,
            Err(answer) => return answer,
        };
        let mut results = Vec::with_capacity(sent.len());
        for item in sent {
            results.push(item.result(deadline).await);
        }
        answer(results, batch)
    }

    /// A request names devices its sender may post for, through a mapping.
    fn authorise(
        &self,
        rules: &crate::security::Rules,
        who: Who<'_>,
        item: &Item,
    ) -> Result<(), Answer> {
        for (what, name) in [
            ("device id", Some(&item.device_id)),
            ("metric", item.metric.as_ref()),
        ] {
            let Some(name) = name else { continue };
            let level = !name.is_empty() && !name.contains(['/', '+', '#', '{', '}', '\0']);
            if !level || check_name(name, &self.ingress.limits).is_err() {
                let detail = format!("{what} {name:?} must be one topic level of at most {} bytes, without / + # {{ }}", self.ingress.limits.max_name_bytes);
                return Err(Answer::refused(
                    StatusCode::BAD_REQUEST,
                    "invalid_name",
                    detail,
                ));
            }
        }
        if self.ingress.mappings.route(&item.topic).is_none() {
            let detail = format!("no mapping matches {:?}", item.topic);
            return Err(Answer::refused(StatusCode::NOT_FOUND, "unmapped", detail));
        }
        if !self.ingress.may_publish(rules, who, &item.topic) {
            counter!("sluice_denied_total", "action" => "http").increment(1);
            let detail = format!(
                "not authorised to post readings of device {:?}",
                item.device_id
            );
            return Err(Answer::refused(StatusCode::FORBIDDEN, "forbidden", detail));
        }
        Ok(())
    }

    /// Admits every item, reserves room for all of them (or refuses the request with
    /// `503`), then hands them to the producer.
    async fn send(
        &self,
        items: Vec<Item>,
        gzip: bool,
        client_id: &Arc<str>,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Sent>, Answer> {
        let rules = Rules {
            mappings: &self.ingress.mappings,
            limits: &self.ingress.limits,
            unmapped: self.ingress.settings.unmapped,
        };
        let mut admitted = Vec::with_capacity(items.len());
        for item in items {
            let content_type = item.content_type.to_owned();
            let mut properties = vec![("http.content_type".to_owned(), content_type.clone())];
            if gzip {
                properties.push(("http.content_encoding".to_owned(), "gzip".to_owned()));
            }
            let publish = wire::Publish {
                topic: item.topic,
                qos: Qos::AtLeastOnce,
                dup: false,
                retain: false,
                pkid: 0,
                payload: item.payload,
                content_type: Some(content_type),
                utf8: false,
                topic_alias: None,
                message_expiry: None,
                user_properties: Vec::new(),
            };
            let admission = admit(&rules, publish, client_id, properties, received_at);
            let bytes = admission.bytes();
            let reservation = Reservation::try_reserve(&self.budget, &self.ingress.global, bytes);
            let Some(reservation) = reservation else {
                counter!("sluice_http_refused_total", "reason" => "inflight").increment(1);
                let detail = "too many readings on their way to kafka; nothing was accepted";
                return Err(Answer::retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    detail,
                    RETRY_AFTER_BUSY,
                ));
            };
            admitted.push((admission, reservation));
        }
        let producer = &self.ingress.producer;
        let mut sent = Vec::with_capacity(admitted.len());
        for (admission, reservation) in admitted {
            let receipt = admission.policy == AckPolicy::Receipt;
            let (waiter, heard) = match receipt {
                true => (Waiter::unheard("receipt"), None),
                false => {
                    let (waiter, rx) = Waiter::request("http");
                    (waiter, Some(rx))
                }
            };
            let kind = match &admission.destination {
                Destination::Readings { readings, .. } => Kind::Readings(*readings),
                Destination::DeadLetter(l) => Kind::Refused(l.reason, l.detail.clone()),
                Destination::Nothing => Kind::Readings(0),
            };
            // Never waits on librdkafka's queue: a full one is a 503, not a stalled request.
            let destination = admission.destination;
            destination.send(producer, reservation, waiter, false).await;
            sent.push(Sent { kind, heard });
        }
        Ok(sent)
    }
}

/// A request being served: its place among `max_concurrent_requests`, shown in
/// `sluice_http_requests_in_progress`.
struct InProgress {
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl InProgress {
    fn new(slot: tokio::sync::OwnedSemaphorePermit) -> InProgress {
        gauge!("sluice_http_requests_in_progress").increment(1.0);
        InProgress { _slot: slot }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        gauge!("sluice_http_requests_in_progress").decrement(1.0);
    }
}

/// How connections are served once their HTTP version is known: HTTP/1.1 with a deadline
/// for each request's headers, HTTP/2 with at most 100 streams and pings that find dead
/// peers.
struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(header_timeout: Duration) -> Builders {
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(100)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders { h1, h2 }
    }

    fn for_version(&self, h2: bool) -> &auto::Builder<TokioExecutor> {
        if h2 {
            &self.h2
        } else {
            &self.h1
        }
    }
}

/// Whether a plain connection opens with HTTP/2's preface (prior knowledge), peeked
/// within `wait`: a client that sends nothing, or only part of the preface, is closed.
async fn opens_with_h2_preface(
    socket: &tokio::net::TcpStream,
    wait: Duration,
) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(5);
    let peeking = async {
        loop {
            let n = socket.peek(&mut first).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if first[..n] != PREFACE[..n] {
                return Ok(false);
            }
            if n == PREFACE.len() {
                return Ok(true);
            }
            // Part of the preface: peek returns at once until more arrives, so wait a
            // little longer each time.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    };
    tokio::time::timeout(wait, peeking)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))?
}

/// One device's readings in a request.
struct Item {
    device_id: String,
    metric: Option<String>,
    /// The MQTT topic it is routed as.
    topic: String,
    payload: Bytes,
    content_type: &'static str,
}

/// What an item became.
enum Kind {
    Readings(usize),
    /// Refused (and dead-lettered): the reason label and why.
    Refused(&'static str, String),
}

/// An item handed to the producer, with what will say how it went (none: on receipt).
struct Sent {
    kind: Kind,
    heard: Option<oneshot::Receiver<Outcome>>,
}

/// What became of one item once Kafka answered (or did not in time).
enum ItemResult {
    Accepted(usize),
    Refused(&'static str, String),
    Unavailable(String),
}

impl Sent {
    async fn result(self, deadline: Instant) -> ItemResult {
        let outcome = match self.heard {
            None => Ok(Delivered::Stored),
            Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(crate::produce::ProduceError::Abandoned),
                Err(_) => {
                    return ItemResult::Unavailable(
                        "kafka did not confirm in time; the readings may still be stored".into(),
                    )
                }
            },
        };
        match (outcome, self.kind) {
            (Ok(Delivered::Stored), Kind::Readings(n)) => ItemResult::Accepted(n),
            (Ok(Delivered::Stored), Kind::Refused(reason, detail)) => {
                ItemResult::Refused(reason, detail)
            }
            (Ok(Delivered::DeadLettered(why)), _) => ItemResult::Refused("kafka_refused", why),
            (Err(e), _) => ItemResult::Unavailable(e.to_string()),
        }
    }
}

/// The request's answer from its items' results: `202` with the readings accepted (and, in
/// a batch, the items refused), `400` when nothing was accepted for a bad payload, `503`
/// when Kafka did not take something.
fn answer(results: Vec<ItemResult>, batch: bool) -> Answer {
    let mut accepted = 0;
    let mut refused = Vec::new();
    let mut unavailable = None;
    for (index, result) in results.into_iter().enumerate() {
        match result {
            ItemResult::Accepted(n) => accepted += n,
            ItemResult::Refused(reason, detail) => {
                refused.push(json!({"index": index, "error": reason, "detail": detail}));
            }
            ItemResult::Unavailable(why) => unavailable = Some(why),
        }
    }
    if let Some(why) = unavailable {
        counter!("sluice_http_refused_total", "reason" => "kafka").increment(1);
        return Answer::retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            why,
            RETRY_AFTER_KAFKA,
        );
    }
    if !batch {
        if let Some(first) = refused.pop() {
            return Answer {
                status: StatusCode::BAD_REQUEST,
                body: json!({"error": first["error"], "detail": first["detail"]}),
                retry_after: None,
            };
        }
        return Answer {
            status: StatusCode::ACCEPTED,
            body: json!({"accepted": accepted}),
            retry_after: None,
        };
    }
    let status = if accepted == 0 && !refused.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Answer {
        status,
        body: json!({"accepted": accepted, "rejected": refused}),
        retry_after: None,
    }
}

/// A batch's refusal says which item.
fn at(mut answer: Answer, index: Option<usize>) -> Answer {
    if let (Some(index), Some(body)) = (index, answer.body.as_object_mut()) {
        body.insert("index".into(), index.into());
    }
    answer
}

/// The read API's gate: the sender is identified as for ingest, and must be a reader.
async fn reader(
    State(front): State<Arc<Front>>,
    Extension(peer): Extension<Peer>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let max_each = front.settings.max_requests_per_address;
    let Some(_source) = front.requests_by_source.take(peer.address, max_each) else {
        counter!("sluice_http_refused_total", "reason" => "per_address").increment(1);
        let detail = "too many requests in progress from this address";
        let status = StatusCode::TOO_MANY_REQUESTS;
        return Answer::retry(status, "too_many_requests", detail, RETRY_AFTER_BUSY)
            .into_response();
    };
    let deadline = Instant::now() + Duration::from_millis(front.settings.request_timeout_ms);
    let rules = front.ingress.security.current();
    let identity = match front
        .sender(&rules, &peer, request.headers(), deadline)
        .await
    {
        Ok(identity) => identity,
        Err(answer) => return answer.into_response(),
    };
    let (name, address) = (identity.name.as_deref(), peer.address);
    let may_read = front
        .api
        .as_ref()
        .is_some_and(|api| api.may_read(name, address));
    if !may_read {
        counter!("sluice_denied_total", "action" => "read").increment(1);
        // Anonymous clients are asked for credentials (a browser then prompts).
        let (status, error, detail) = match name {
            Some(_) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this identity may not read; list it in [api] readers",
            ),
            None => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "anonymous clients may not read here ([api] allow_anonymous); send credentials",
            ),
        };
        return Answer::refused(status, error, detail).into_response();
    }
    request
        .extensions_mut()
        .insert(crate::api::Reader { address });
    next.run(request).await
}

/// The router with the connection's peer in every request.
fn with_peer(
    router: Router,
    peer: Peer,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    hyper_util::service::TowerToHyperService::new(router.map_request(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request
        },
    ))
}

/// The body, decompressed (`Content-Encoding: gzip`), of at most `limit` bytes either way,
/// and whether it came gzipped.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<(Bytes, bool), Answer> {
    let too_large = || {
        let detail = format!("the body is larger than {limit} bytes");
        Answer::refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
    };
    let gzip = match encoding(headers) {
        Ok(gzip) => gzip,
        Err(answer) => return Err(answer),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let collected = http_body_util::Limited::new(body, limit).collect().await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            let detail = format!("the request body could not be read: {e}");
            return Err(Answer::refused(StatusCode::BAD_REQUEST, "bad_body", detail));
        }
    };
    if !gzip {
        return Ok((bytes, false));
    }
    let mut out = Vec::new();
    let read = flate2::read::MultiGzDecoder::new(&bytes[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Ok(n) if n > limit => Err(too_large()),
        Ok(_) => Ok((out.into(), true)),
        Err(e) => Err(Answer::refused(
            StatusCode::BAD_REQUEST,
            "bad_gzip",
            format!("Content-Encoding gzip, but the body does not inflate: {e}"),
        )),
    }
}

/// Whether the body is gzip; `415` for an encoding Sluice does not take.
fn encoding(headers: &HeaderMap) -> Result<bool, Answer> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().map(str::trim))
    {
        None => Ok(false),
        Some(Ok(e)) if e.eq_ignore_ascii_case("identity") => Ok(false),
        Some(Ok(e)) if e.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(_) => Err(Answer::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            "Content-Encoding must be gzip or none",
        )),
    }
}

/// The content type of the payload format the `Content-Type` names, as Sluice spells it
/// (not as sent: a header's parameters go nowhere); `415` for any other.
fn content_type(headers: &HeaderMap, accepted: &[Format]) -> Result<&'static str, Answer> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let format = Format::from_content_type(value).filter(|f| accepted.contains(f));
    match format.and_then(Format::content_type) {
        Some(named) => Ok(named),
        None => {
            let value: String = value.chars().take(100).collect();
            let names = accepted
                .iter()
                .filter_map(|f| f.content_type())
                .collect::<Vec<_>>()
                .join(", ");
            Err(Answer::refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                format!("Content-Type {value:?}: send one of {names}"),
            ))
        }
    }
}

const SINGLE_FORMATS: [Format; 4] = [
    Format::Json,
    Format::Cbor,
    Format::SenmlJson,
    Format::SenmlCbor,
];

async fn single(
    State(front): State<Arc<Front>>,
    Extension(peer): Extension<Peer>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    one(front, peer, device_id, None, headers, body).await
}

async fn single_metric(
    State(front): State<Arc<Front>>,
    Extension(peer): Extension<Peer>,
    Path((device_id, metric)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    one(front, peer, device_id, Some(metric), headers, body).await
}

/// One device's readings, in the format the `Content-Type` names.
async fn one(
    front: Arc<Front>,
    peer: Peer,
    device_id: String,
    metric: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let content_type = match content_type(&headers, &SINGLE_FORMATS) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let topic = front.settings.topic_for(&device_id, metric.as_deref());
    let items = |payload| {
        Ok(vec![Item {
            device_id,
            metric,
            topic,
            payload,
            content_type,
        }])
    };
    front.ingest(peer, headers, body, items, false).await
}

/// One entry of a batch: a device (and metric) and its payload, a JSON reading object or a
/// SenML JSON pack.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchEntry {
    device_id: String,
    #[serde(default)]
    metric: Option<String>,
    payload: Box<RawValue>,
}

/// Many devices' readings in one JSON array of `{device_id, metric?, payload}`.
async fn batch(
    State(front): State<Arc<Front>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    if let Err(answer) = content_type(&headers, &[Format::Json]) {
        return answer;
    }
    let settings = front.settings.clone();
    let max_payload = front.ingress.limits.max_payload_bytes;
    let items = move |body: Bytes| {
        let entries: Vec<BatchEntry> = serde_json::from_slice(&body).map_err(|e| {
            let detail = format!(
                "a batch is a JSON array of {{\"device_id\", \"metric\"?, \"payload\"}}: {e}"
            );
            Answer::refused(StatusCode::BAD_REQUEST, "invalid_batch", detail)
        })?;
        if entries.len() > settings.max_batch_entries {
            let (n, max) = (entries.len(), settings.max_batch_entries);
            let detail = format!("{n} entries; a batch holds at most {max}");
            return Err(Answer::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_entries",
                detail,
            ));
        }
        let mut items = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let payload = entry.payload.get();
            if payload.len() > max_payload {
                let detail = format!("the payload is larger than {max_payload} bytes");
                let answer =
                    Answer::refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail);
                return Err(at(answer, Some(index)));
            }
            // A JSON object is one reading, an array a SenML pack.
            let content_type = match payload.starts_with('[') {
                true => "application/senml+json",
                false => "application/json",
            };
            items.push(Item {
                topic: settings.topic_for(&entry.device_id, entry.metric.as_deref()),
                device_id: entry.device_id,
                metric: entry.metric,
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                content_type,
            });
        }
        Ok(items)
    };
    front.ingest(peer, headers, body, items, true).await
}
