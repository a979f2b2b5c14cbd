//! Admission: what one device publish becomes. The topic mapping and the decoder turn it
//! into a Kafka record of readings, a dead letter or nothing; with that come what the
//! device is told and whether rumqttd's subscribers see the publish.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use metrics::counter;

use crate::ack::{Delivered, Waiter};
use crate::budget::Reservation;
use crate::decode::{check_name, decode, Context, DecodeError, Format, Limits};
use crate::mapping::{AckPolicy, Mappings};
use crate::produce::{DeadLetter, Outgoing, Producer, Ticket};
use crate::record::Record;
use crate::settings::UnmappedPolicy;
use crate::wire::{Publish, Reason};

/// What a publish goes to Kafka as.
pub enum Destination {
    /// Its readings, to a readings topic. `origin` is dead-lettered should Kafka refuse
    /// the record for good.
    Readings {
        topic: String,
        key: String,
        json: Vec<u8>,
        headers: Vec<(String, String)>,
        origin: DeadLetter,
        /// How many readings the record holds.
        readings: usize,
    },
    /// Its bytes and why, to the dead-letter topic.
    DeadLetter(DeadLetter),
    /// Nothing (an unmapped topic that is only routed, or refused).
    Nothing,
}

impl Destination {
    /// Hands the record to the producer with its share of the budgets and the waiter that
    /// hears Kafka's answer (at once for `Nothing`). `wait`: see `Producer::send`.
    pub async fn send(
        self,
        producer: &Producer,
        reservation: Reservation,
        waiter: Waiter,
        wait: bool,
    ) {
        match self {
            Destination::Readings {
                topic,
                key,
                json,
                headers,
                origin,
                readings,
            } => {
                // Readings in, for the status page and Prometheus.
                counter!("sluice_readings_accepted_total").increment(readings as u64);
                let out = Outgoing {
                    topic: &topic,
                    key: &key,
                    payload: &json,
                    headers: crate::produce::headers(&headers),
                };
                let ticket = Ticket {
                    reservation,
                    waiter,
                    origin: Some(origin),
                };
                producer.send(out, ticket, wait).await;
            }
            Destination::DeadLetter(letter) => {
                let ticket = Ticket {
                    reservation,
                    waiter,
                    origin: None,
                };
                producer.dead_letter(letter, ticket, wait).await;
            }
            Destination::Nothing => waiter.resolve(Ok(Delivered::Stored)),
        }
    }
}

/// A publish, decided.
pub struct Admission {
    pub destination: Destination,
    /// What an MQTT 5 device is told once the destination has it.
    pub reason: Reason,
    pub detail: Option<String>,
    pub policy: AckPolicy,
    /// Whether rumqttd routes it to subscribers: refused publishes are not.
    pub relay: bool,
}

impl Admission {
    /// Neither sent to Kafka nor routed; the device is told `reason` (MQTT 5).
    pub fn refused(reason: Reason, detail: String) -> Admission {
        Admission {
            destination: Destination::Nothing,
            reason,
            detail: Some(detail),
            policy: AckPolicy::Kafka,
            relay: false,
        }
    }

    /// Bytes it will hold in the producer, for the in-flight budgets.
    pub fn bytes(&self) -> usize {
        match &self.destination {
            Destination::Readings {
                json, key, headers, ..
            } => json.len() + key.len() + headers_len(headers),
            Destination::DeadLetter(l) => l.payload.len() + l.detail.len() + 256,
            Destination::Nothing => 0,
        }
    }
}

fn headers_len(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// What admission needs from the gateway's configuration.
pub struct Rules<'a> {
    pub mappings: &'a Mappings,
    pub limits: &'a Limits,
    pub unmapped: UnmappedPolicy,
}

/// Decides one publish. `properties` are its MQTT 5 properties as Kafka headers.
pub fn admit(
    rules: &Rules<'_>,
    publish: Publish,
    client_id: &Arc<str>,
    properties: Vec<(String, String)>,
    received_at: DateTime<Utc>,
) -> Admission {
    let letter = |reason: &'static str, detail: String, publish: Publish, properties| DeadLetter {
        payload: publish.payload,
        mqtt_topic: publish.topic,
        client_id: client_id.clone(),
        reason,
        detail,
        received_at,
        properties,
    };
    let Some(route) = rules.mappings.route(&publish.topic) else {
        let detail = "no mapping matches the topic".to_owned();
        let (destination, reason, relay) = match rules.unmapped {
            UnmappedPolicy::Route => (Destination::Nothing, Reason::Success, true),
            UnmappedPolicy::DeadLetter => {
                counter!("sluice_rejected_total", "reason" => "unmapped").increment(1);
                let l = letter("unmapped", detail.clone(), publish, properties);
                (Destination::DeadLetter(l), Reason::Success, true)
            }
            UnmappedPolicy::Reject => {
                counter!("sluice_rejected_total", "reason" => "unmapped").increment(1);
                (Destination::Nothing, Reason::TopicNameInvalid, false)
            }
        };
        return Admission {
            destination,
            detail: (reason != Reason::Success).then_some(detail),
            reason,
            policy: AckPolicy::Kafka,
            relay,
        };
    };
    // A retained publish with no payload clears the topic's retained message: it is not
    // a reading, and subscribers must see it cleared.
    if publish.retain && publish.payload.is_empty() {
        counter!("sluice_retained_cleared_total").increment(1);
        return Admission {
            destination: Destination::Nothing,
            detail: None,
            reason: Reason::Success,
            policy: route.ack,
            relay: true,
        };
    }
    let policy = route.ack;
    let readings = check_name(&route.device_id, rules.limits).and_then(|()| {
        if publish.utf8 && std::str::from_utf8(&publish.payload).is_err() {
            return Err(DecodeError::NotUtf8);
        }
        let format = publish
            .content_type
            .as_deref()
            .and_then(Format::from_content_type)
            .unwrap_or(route.format);
        let cx = Context {
            format,
            metric: route.metric.as_deref(),
            received_at,
            limits: rules.limits,
        };
        decode(&publish.payload, &cx)
    });
    let count = readings.as_ref().map_or(0, Vec::len);
    let record = readings.map(|readings| Record {
        device_id: route.device_id,
        mqtt_topic: publish.topic.clone(),
        qos: publish.qos as u8,
        client_id: client_id.to_string(),
        received_at,
        readings,
    });
    // The decoder bounds what readings expand to; the whole record is checked too.
    let json = record.map(|r| r.to_json()).and_then(|json| {
        if json.len() > rules.limits.max_record_bytes {
            return Err(DecodeError::RecordTooLarge(rules.limits.max_record_bytes));
        }
        Ok(json)
    });
    match json {
        Ok(json) => Admission {
            destination: Destination::Readings {
                topic: route.kafka_topic.to_owned(),
                key: route.key,
                json,
                headers: properties.clone(),
                origin: letter("kafka_refused", String::new(), publish, properties),
                readings: count,
            },
            reason: Reason::Success,
            detail: None,
            policy,
            relay: true,
        },
        Err(e) => {
            counter!("sluice_rejected_total", "reason" => e.reason()).increment(1);
            tracing::debug!(topic = %publish.topic, client_id = %client_id, reason = e.reason(), detail = %e, "publish rejected");
            Admission {
                destination: Destination::DeadLetter(letter(
                    e.reason(),
                    e.to_string(),
                    publish,
                    properties,
                )),
                reason: Reason::PayloadFormatInvalid,
                detail: Some(e.to_string()),
                policy,
                relay: false,
            }
        }
    }
}

/// MQTT 5 publish properties a Kafka consumer may need, as record headers: content type,
/// payload format, message expiry, and the user properties under their own names.
pub fn property_headers(publish: &Publish) -> Vec<(String, String)> {
    let mut h = Vec::new();
    if let Some(ct) = &publish.content_type {
        h.push(("mqtt.content_type".to_owned(), ct.clone()));
    }
    if publish.utf8 {
        h.push(("mqtt.payload_format".to_owned(), "utf-8".to_owned()));
    }
    if let Some(expiry) = publish.message_expiry {
        h.push(("mqtt.message_expiry_s".to_owned(), expiry.to_string()));
    }
    h.extend(publish.user_properties.iter().cloned());
    h
}
