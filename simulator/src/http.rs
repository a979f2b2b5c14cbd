//! One virtual sensor over HTTP (`--transport http`): its own keep-alive HTTP/1.1
//! connection, a `POST /v1/readings/{device}/{metric}` per metric and interval (a SenML pack
//! to `/v1/readings/{device}`), the same payloads as over MQTT, and the time from a
//! reading's first POST to its `202`. A `429` or `503` keeps the reading and sends it again
//! after the `Retry-After`, as a device with a buffer would; verify then checks every 202.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Mutex};

use crate::sensor::{spread, Acked, Format, Made, Plan, Source};
use crate::stats::Stats;

/// Readings a sensor keeps while the gateway asks it to wait; past it new ones are skipped.
const BACKLOG: usize = 100;

/// A POST to make, and when it was first tried.
struct Post {
    path: String,
    content_type: &'static str,
    payload: Bytes,
    readings: Vec<Acked>,
    first_sent: Option<Instant>,
}

pub async fn run(
    index: usize,
    plan: Arc<Plan>,
    stats: Arc<Stats>,
    acked: Arc<Mutex<Vec<Acked>>>,
    mut storms: watch::Receiver<u64>,
) {
    let mut source = Source::new(index, &plan);
    let device = source.device.clone();
    let (host, port) = source.gateway.clone();
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    let mut backlog: VecDeque<Post> = VecDeque::new();
    let mut hold_until = Instant::now();
    let mut mine = Vec::new();
    loop {
        let now = Instant::now();
        let draining = now >= plan.stop_at;
        if draining && (backlog.is_empty() || now >= plan.stop_at + Duration::from_secs(30)) {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if !draining => {
                for (m, metric) in plan.metrics.iter().enumerate() {
                    let Some(Made { payload, readings, duplicate }) = source.next(m, metric, &plan) else {
                        continue;
                    };
                    let (path, content_type) = match source.format {
                        Format::Senml => (format!("/v1/readings/{device}"), "application/senml+json"),
                        Format::Cbor => (format!("/v1/readings/{device}/{metric}"), "application/cbor"),
                        Format::Json => (format!("/v1/readings/{device}/{metric}"), "application/json"),
                    };
                    let post = || Post {
                        path: path.clone(),
                        content_type,
                        payload: payload.clone().into(),
                        readings: readings.clone(),
                        first_sent: None,
                    };
                    for _ in 0..1 + usize::from(duplicate) {
                        if backlog.len() >= BACKLOG {
                            stats.skipped.inc();
                        } else {
                            backlog.push_back(post());
                        }
                    }
                    if duplicate {
                        stats.duplicates_sent.inc();
                    }
                }
            }
            Ok(()) = storms.changed(), if !draining => {
                let storm = *storms.borrow_and_update();
                if connection.is_some() && (spread(index, storm) + 1.0) / 2.0 < plan.reconnect_fraction {
                    stats.reconnects.inc();
                    stats.connected.dec();
                    connection = None;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if draining || !backlog.is_empty() => {}
        }
        while Instant::now() >= hold_until {
            let Some(post) = backlog.front_mut() else {
                break;
            };
            let sender = match &mut connection {
                Some(sender) => sender,
                None => match connect(&host, port).await {
                    Ok(sender) => {
                        stats.connected.inc();
                        connection.insert(sender)
                    }
                    Err(e) => {
                        stats.error(&format!("connect: {e}"));
                        hold_until = Instant::now() + Duration::from_millis(500);
                        break;
                    }
                },
            };
            if post.first_sent.is_some() {
                stats.resent.inc();
            }
            let first = *post.first_sent.get_or_insert_with(Instant::now);
            stats.sent.inc();
            match send(sender, &host, plan.token.as_deref(), post).await {
                Ok((StatusCode::ACCEPTED, _, _)) => {
                    let Some(done) = backlog.pop_front() else {
                        break;
                    };
                    stats.acked.inc();
                    stats.acked_readings.add(done.readings.len() as u64);
                    stats.record_latency(first.elapsed());
                    mine.extend(done.readings);
                }
                Ok((
                    status @ (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE),
                    wait,
                    error,
                )) => {
                    stats.error(&format!("{status} ({error}); sent again after Retry-After"));
                    hold_until = Instant::now() + wait;
                }
                Ok((status, _, error)) => {
                    stats.error(&format!("{status} ({error}); dropped"));
                    backlog.pop_front();
                }
                Err(e) => {
                    stats.error(&format!("request: {e}"));
                    stats.connected.dec();
                    connection = None;
                    hold_until = Instant::now() + Duration::from_millis(500);
                }
            }
        }
    }
    if connection.is_some() {
        stats.connected.dec();
    }
    stats.unacked.add(backlog.len() as u64);
    acked.lock().await.extend(mine);
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn connect(host: &str, port: u16) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One POST: the status, the `Retry-After` (1 s when absent) and the body's `error`.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &str,
    token: Option<&str>,
    post: &Post,
) -> Result<(StatusCode, Duration, String), Failure> {
    let mut request = Request::post(post.path.as_str())
        .header(HOST, host)
        .header(CONTENT_TYPE, post.content_type);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    sender.ready().await?;
    let response = sender
        .send_request(request.body(Full::new(post.payload.clone()))?)
        .await?;
    let status = response.status();
    let wait = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs);
    let body = response.into_body().collect().await?.to_bytes();
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok((status, wait, error))
}
