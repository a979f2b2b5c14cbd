//! One virtual sensor: its own rumqttc connection, a publish per metric and interval
//! (a single JSON or CBOR reading on `{topic_root}/{device}/{metric}`, or a SenML pack on
//! `devices/{device}/senml`), and the publish-to-ack latency of every publish the gateway
//! acknowledged (PUBACK for QoS 1, PUBREC for QoS 2; QoS 0 has no ack). It can also send
//! deliberate duplicates, run a skewed clock and drop its connection in a reconnect storm.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::labels::{Injection, Signal};
use crate::stats::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Cbor,
    /// A SenML JSON pack of `pack` records per publish.
    Senml,
}

/// What every sensor is told to do; sensor `i` takes the `i`th entry (cyclically) of each
/// list, so a mix is spread evenly over the fleet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub gateways: Vec<(String, u16)>,
    pub prefix: String,
    pub topic_root: String,
    pub qos: Vec<QoS>,
    pub formats: Vec<Format>,
    pub interval: Duration,
    pub metrics: Vec<String>,
    /// SenML records per publish.
    pub pack: usize,
    /// JSON payloads (single and SenML) are padded with whitespace to at least this size.
    pub payload_bytes: usize,
    /// Sensor clocks are off by up to this much, either way.
    pub clock_skew_ms: i64,
    /// Every nth publish is sent twice (0: never), as a device that missed an ack would.
    pub duplicate_every: u64,
    /// Fraction of sensors that drop their connection at each storm.
    pub reconnect_fraction: f64,
    pub stop_at: Instant,
    /// Connect over TLS with this configuration.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User name and password.
    pub login: Option<(String, String)>,
    /// HTTP bearer token (`--transport http`).
    pub token: Option<String>,
    /// Labelled anomalies to inject (`--anomalies`): each metric is then a noisy signal.
    pub injection: Option<Arc<Injection>>,
}

/// A reading the gateway acknowledged, as the verify step looks for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acked {
    pub device: String,
    pub metric: String,
    pub ts_ms: i64,
}

#[derive(Serialize)]
struct Single<'a> {
    value: f64,
    ts: i64,
    seq: i64,
    unit: &'a str,
}

/// JSON with insignificant whitespace before its closing bracket, up to `size` bytes.
fn pad(mut json: Vec<u8>, size: usize) -> Vec<u8> {
    if let Some(close) = json.pop() {
        json.resize(size.max(json.len() + 1) - 1, b' ');
        json.push(close);
    }
    json
}

/// The payload of one publish and the readings it carries.
fn encode(
    format: Format,
    device: &str,
    metric: &str,
    plan: &Plan,
    ts: i64,
    seq: i64,
    value: f64,
) -> (Vec<u8>, Vec<Acked>) {
    let pack = plan.pack;
    let reading = |metric: String| Acked {
        device: device.to_owned(),
        metric,
        ts_ms: ts,
    };
    let single = Single {
        value,
        ts,
        seq,
        unit: "Cel",
    };
    match format {
        Format::Json => (
            pad(
                serde_json::to_vec(&single).unwrap_or_default(),
                plan.payload_bytes,
            ),
            vec![reading(metric.to_owned())],
        ),
        Format::Cbor => {
            let mut out = Vec::with_capacity(48);
            // Writing a small struct into a Vec cannot fail.
            let _ = ciborium::into_writer(&single, &mut out);
            (out, vec![reading(metric.to_owned())])
        }
        Format::Senml => {
            let records: Vec<serde_json::Value> = (0..pack)
                .map(|k| {
                    let mut r =
                        serde_json::json!({"n": k.to_string(), "u": "Cel", "v": value + k as f64});
                    if k == 0 {
                        r["bn"] = format!("{metric}.").into();
                        r["bt"] = (ts as f64 / 1000.0).into();
                    }
                    r
                })
                .collect();
            let readings = (0..pack)
                .map(|k| reading(format!("{metric}.{k}")))
                .collect();
            (
                pad(
                    serde_json::to_vec(&records).unwrap_or_default(),
                    plan.payload_bytes,
                ),
                readings,
            )
        }
    }
}

/// A deterministic spread in [-1, 1] from a sensor's index and a salt.
pub fn spread(index: usize, salt: u64) -> f64 {
    let mut x = (index as u64 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    (x % 2_000_001) as f64 / 1_000_000.0 - 1.0
}

/// What makes sensor `index` itself, whichever way it sends: its device id, gateway,
/// format and clock, and the readings it makes.
pub struct Source {
    pub device: String,
    pub gateway: (String, u16),
    pub format: Format,
    skew_ms: i64,
    seq: i64,
    last_ts: i64,
    /// One per metric, with `--anomalies`.
    signals: Vec<Signal>,
}

/// One publish's worth of readings.
pub struct Made {
    pub payload: Vec<u8>,
    pub readings: Vec<Acked>,
    /// Sent twice, as a device that missed its ack would.
    pub duplicate: bool,
}

impl Source {
    pub fn new(index: usize, plan: &Plan) -> Source {
        Source {
            device: format!("{}-{index}", plan.prefix),
            gateway: plan.gateways[index % plan.gateways.len()].clone(),
            format: plan.formats[index % plan.formats.len()],
            skew_ms: (spread(index, 1) * plan.clock_skew_ms as f64) as i64,
            seq: 0,
            last_ts: 0,
            signals: match plan.injection {
                Some(_) => (0..plan.metrics.len())
                    .map(|m| Signal::new(index, m))
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    /// The next publish of `metric` (the `m`th), timed by this sensor's clock, later than
    /// the last; None when an injected dropout skips it.
    pub fn next(&mut self, m: usize, metric: &str, plan: &Plan) -> Option<Made> {
        self.seq += 1;
        let ts = (chrono::Utc::now().timestamp_millis() + self.skew_ms).max(self.last_ts + 1);
        self.last_ts = ts;
        let value = match (&plan.injection, self.signals.get_mut(m)) {
            (Some(injection), Some(signal)) => {
                // Labels name the reading's metric as it is stored (SenML: the pack's one record).
                let stored = match self.format {
                    Format::Senml => format!("{metric}.0"),
                    _ => metric.to_owned(),
                };
                signal.next(&self.device, &stored, ts, injection)?
            }
            _ => 20.0 + (self.seq % 100) as f64 / 10.0,
        };
        let (payload, readings) =
            encode(self.format, &self.device, metric, plan, ts, self.seq, value);
        let every = plan.duplicate_every;
        Some(Made {
            payload,
            readings,
            duplicate: every > 0 && (self.seq as u64).is_multiple_of(every),
        })
    }
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
    let qos = plan.qos[index % plan.qos.len()];
    let mut options = MqttOptions::new(device.clone(), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        // A persistent session: after a reconnect, unacknowledged publishes are resent.
        .set_clean_session(false)
        .set_inflight(100)
        .set_max_packet_size(1 << 16, 1 << 16);
    if let Some(tls) = &plan.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    if let Some((user, password)) = &plan.login {
        options.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Publishes handed to rumqttc but not yet seen on the wire, in publish order.
    let mut queued: VecDeque<Out> = VecDeque::new();
    // On the wire, by packet id, awaiting their ack.
    let mut on_wire: HashMap<u16, (Out, Instant)> = HashMap::new();
    // A publish rumqttc parked because its packet id was still taken (it says `AwaitAck`):
    // it goes out under that id once the older one is acknowledged (reported after that
    // acknowledgement), or is reported sent while the id still looks taken here when
    // rumqttc resends the older one after a reconnect. `true` once reported sent.
    let mut parked: Option<(u16, Out, bool)> = None;
    let mut mine = Vec::new();
    let mut connected = false;
    // Set when this sensor drops its own connection in a storm: the error that follows is
    // expected, not counted.
    let mut leaving = false;
    let mut draining = false;
    let publish = |out: Out, queued: &mut VecDeque<Out>| match client.try_publish(
        &out.topic,
        qos,
        false,
        out.payload.clone(),
    ) {
        Ok(()) => queued.push_back(out),
        // The gateway is holding acks (backpressure): this publish is skipped.
        Err(_) => stats.skipped.inc(),
    };
    loop {
        let now = Instant::now();
        if now >= plan.stop_at && !draining {
            draining = true;
        }
        if draining
            && (queued.is_empty() && on_wire.is_empty()
                || now >= plan.stop_at + Duration::from_secs(30))
        {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if !draining && connected => {
                for (m, metric) in plan.metrics.iter().enumerate() {
                    let Some(made) = source.next(m, metric, &plan) else {
                        continue;
                    };
                    let topic = match source.format {
                        Format::Senml => format!("devices/{device}/senml"),
                        _ => format!("{}/{device}/{metric}", plan.topic_root),
                    };
                    let out = Out { readings: made.readings, topic, payload: made.payload };
                    if made.duplicate {
                        stats.duplicates_sent.inc();
                        publish(out.clone(), &mut queued);
                    }
                    publish(out, &mut queued);
                }
            }
            Ok(()) = storms.changed(), if !draining => {
                let storm = *storms.borrow_and_update();
                if connected && (spread(index, storm) + 1.0) / 2.0 < plan.reconnect_fraction {
                    stats.reconnects.inc();
                    leaving = client.try_disconnect().is_ok();
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if draining => {}
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    if !connected {
                        stats.connected.inc();
                    }
                    connected = true;
                    if !connack.session_present {
                        // The gateway lost our session (it restarted) and rumqttc dropped what
                        // it had not had acknowledged; a sensor with a buffer sends it again.
                        let mut lost: Vec<(Out, Instant)> = on_wire.drain().map(|(_, v)| v).collect();
                        lost.sort_by_key(|(_, sent)| *sent);
                        let parked = parked.take().map(|(_, out, _)| out);
                        // rumqttc keeps its parked publish across reconnects: it is sent again here.
                        events.state.collision = None;
                        let again: Vec<Out> = lost.into_iter().map(|(o, _)| o).chain(parked).chain(queued.drain(..)).collect();
                        for out in again {
                            stats.resent.inc();
                            publish(out, &mut queued);
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                    // A second collision replaces rumqttc's parked publish: send that one again.
                    if let Some((_, displaced, _)) = parked.take() {
                        stats.resent.inc();
                        publish(displaced, &mut queued);
                    }
                    if let Some(out) = queued.pop_front() {
                        parked = Some((pkid, out, false));
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    stats.sent.inc();
                    if parked.as_ref().is_some_and(|p| p.0 == pkid) {
                        match on_wire.entry(pkid) {
                            // The older one's acknowledgement is still to come.
                            Entry::Occupied(_) => parked = parked.map(|(p, out, _)| (p, out, true)),
                            Entry::Vacant(slot) => {
                                if let Some((_, out, _)) = parked.take() {
                                    slot.insert((out, Instant::now()));
                                }
                            }
                        }
                    } else if pkid == 0 {
                        queued.pop_front();
                    } else if let Entry::Vacant(slot) = on_wire.entry(pkid) {
                        // A resend keeps its first send time; a new packet id is the next publish.
                        if let Some(out) = queued.pop_front() {
                            slot.insert((out, Instant::now()));
                        }
                    } else {
                        stats.resent.inc();
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    // Our own storm: rumqttc reconnects on the next poll.
                    if connected {
                        stats.connected.dec();
                    }
                    connected = false;
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    ack_received(&mut on_wire, &mut parked, ack.pkid, &stats, &mut mine);
                }
                Ok(Event::Incoming(Packet::PubRec(rec))) => {
                    ack_received(&mut on_wire, &mut parked, rec.pkid, &stats, &mut mine);
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        stats.connected.dec();
                    }
                    if !std::mem::take(&mut leaving) {
                        stats.error(&e.to_string());
                    }
                    connected = false;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    if connected {
        stats.connected.dec();
    }
    stats
        .unacked
        .add((on_wire.len() + usize::from(parked.is_some())) as u64);
    acked.lock().await.extend(mine);
}

/// A publish on its way: what verify will look for, and what to send again if needed.
#[derive(Clone)]
struct Out {
    readings: Vec<Acked>,
    topic: String,
    payload: Vec<u8>,
}

/// An acknowledgement for `pkid`: its publish is done, and a publish parked on that id
/// and already sent takes its place on the wire.
fn ack_received(
    on_wire: &mut HashMap<u16, (Out, Instant)>,
    parked: &mut Option<(u16, Out, bool)>,
    pkid: u16,
    stats: &Stats,
    mine: &mut Vec<Acked>,
) {
    if let Some((out, sent)) = on_wire.remove(&pkid) {
        stats.acked.inc();
        stats.acked_readings.add(out.readings.len() as u64);
        stats.record_latency(sent.elapsed());
        mine.extend(out.readings);
    }
    if parked.as_ref().is_some_and(|p| p.0 == pkid && p.2) {
        if let Some((_, out, _)) = parked.take() {
            on_wire.insert(pkid, (out, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn padding_keeps_json_valid_and_reaches_the_size() {
        let json = br#"{"value":1.5,"ts":7}"#.to_vec();
        let padded = super::pad(json.clone(), 200);
        assert_eq!(padded.len(), 200);
        let back: serde_json::Value = serde_json::from_slice(&padded).expect("valid JSON");
        assert_eq!(back["value"], 1.5);
        assert_eq!(super::pad(json.clone(), 5), json, "never shorter");
    }
}
