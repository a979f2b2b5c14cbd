//! One virtual sensor: its own rumqttc connection, a reading per interval on
//! `sensors/{device}/{metric}`, and the publish-to-ack latency of every reading the gateway
//! acknowledged (PUBACK for QoS 1, PUBREC for QoS 2; QoS 0 has no ack).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::stats::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Cbor,
}

/// What every sensor is told to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub topic_root: String,
    pub qos: QoS,
    pub format: Format,
    pub interval: Duration,
    pub metrics: Vec<String>,
    pub stop_at: Instant,
}

/// A reading the gateway acknowledged, as the verify step looks for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acked {
    pub device: String,
    pub metric: String,
    pub ts_ms: i64,
}

#[derive(Serialize)]
struct Payload<'a> {
    value: f64,
    ts: i64,
    seq: i64,
    unit: &'a str,
}

pub fn encode(format: Format, value: f64, ts: i64, seq: i64) -> Vec<u8> {
    let payload = Payload {
        value,
        ts,
        seq,
        unit: "Cel",
    };
    match format {
        Format::Json => serde_json::to_vec(&payload).unwrap_or_default(),
        Format::Cbor => {
            let mut out = Vec::with_capacity(48);
            // Writing a small struct into a Vec cannot fail.
            let _ = ciborium::into_writer(&payload, &mut out);
            out
        }
    }
}

pub async fn run(index: usize, plan: Arc<Plan>, stats: Arc<Stats>, acked: Arc<Mutex<Vec<Acked>>>) {
    let device = format!("{}-{index}", plan.prefix);
    let mut options = MqttOptions::new(device.clone(), plan.host.clone(), plan.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        // A persistent session: after a reconnect, unacknowledged publishes are resent.
        .set_clean_session(false)
        .set_inflight(100)
        .set_max_packet_size(1 << 16, 1 << 16);
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Readings published but not yet seen on the wire, in publish order.
    let mut queued: VecDeque<Out> = VecDeque::new();
    // On the wire, by packet id, awaiting their ack.
    let mut on_wire: HashMap<u16, (Out, Instant)> = HashMap::new();
    let mut mine = Vec::new();
    let mut seq = 0i64;
    let mut last_ts = 0i64;
    let mut connected = false;
    let mut draining = false;
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
                for metric in &plan.metrics {
                    seq += 1;
                    let ts = chrono::Utc::now().timestamp_millis().max(last_ts + 1);
                    last_ts = ts;
                    let value = 20.0 + (seq % 100) as f64 / 10.0;
                    let out = Out {
                        reading: Acked { device: device.clone(), metric: metric.clone(), ts_ms: ts },
                        topic: format!("{}/{device}/{metric}", plan.topic_root),
                        payload: encode(plan.format, value, ts, seq),
                    };
                    match client.try_publish(&out.topic, plan.qos, false, out.payload.clone()) {
                        Ok(()) => queued.push_back(out),
                        // The gateway is holding acks (backpressure): this reading is skipped.
                        Err(_) => stats.skipped.inc(),
                    }
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
                        let again: Vec<Out> = lost.into_iter().map(|(o, _)| o).chain(queued.drain(..)).collect();
                        for out in again {
                            stats.resent.inc();
                            match client.try_publish(&out.topic, plan.qos, false, out.payload.clone()) {
                                Ok(()) => queued.push_back(out),
                                Err(_) => stats.skipped.inc(),
                            }
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    stats.sent.inc();
                    if pkid == 0 {
                        queued.pop_front();
                    } else if let Entry::Vacant(slot) = on_wire.entry(pkid) {
                        // A resend keeps its first send time; a new packet id is the next reading.
                        if let Some(reading) = queued.pop_front() {
                            slot.insert((reading, Instant::now()));
                        }
                    } else {
                        stats.resent.inc();
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    ack_received(&mut on_wire, ack.pkid, &stats, &mut mine);
                }
                Ok(Event::Incoming(Packet::PubRec(rec))) => {
                    ack_received(&mut on_wire, rec.pkid, &stats, &mut mine);
                }
                Ok(_) => {}
                Err(e) => {
                    stats.error(&e.to_string());
                    if connected {
                        stats.connected.dec();
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
    stats.unacked.add(on_wire.len() as u64);
    acked.lock().await.extend(mine);
}

/// A reading on its way: what verify will look for, and what to send again if needed.
struct Out {
    reading: Acked,
    topic: String,
    payload: Vec<u8>,
}

fn ack_received(
    on_wire: &mut HashMap<u16, (Out, Instant)>,
    pkid: u16,
    stats: &Stats,
    mine: &mut Vec<Acked>,
) {
    if let Some((out, sent)) = on_wire.remove(&pkid) {
        stats.acked.inc();
        stats.record_latency(sent.elapsed());
        mine.push(out.reading);
    }
}
