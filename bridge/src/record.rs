//! The typed values that cross stages: a `Reading` decoded from a device payload, and the
//! `Record` that carries one MQTT publish's readings through Kafka to the writer. The
//! record's JSON form is the documented Kafka message format (README, "Kafka records").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One measurement of one metric of one device. Exactly the columns of `readings`: a
/// numeric `value`, or a SenML boolean, string or data value, and/or a SenML sum.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reading {
    pub metric: String,
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_bool: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_text: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub value_data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

impl Reading {
    /// An upper bound on this reading's size in a record's JSON, without encoding it.
    pub fn json_len(&self) -> usize {
        // Keys, punctuation, the time and up to three numbers.
        const FIXED: usize = 200;
        let texts = [&self.unit, &self.value_text].into_iter().flatten();
        FIXED
            + escaped_len(&self.metric)
            + texts.map(|t| escaped_len(t)).sum::<usize>()
            + self
                .value_data
                .as_ref()
                .map_or(0, |d| d.len().div_ceil(3) * 4)
    }
}

/// Length of `text` as a JSON string body: control characters become `\u00XX`.
pub fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Data values travel as base64 text in the record's JSON.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The value of a Kafka record on a readings topic: one MQTT publish, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub device_id: String,
    pub mqtt_topic: String,
    pub qos: u8,
    pub client_id: String,
    pub received_at: DateTime<Utc>,
    pub readings: Vec<Reading>,
}

impl Record {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and timestamps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_bounds_the_encoded_size() {
        let nasty: String = (0u8..64).map(char::from).collect();
        let r = Reading {
            metric: format!("m\"{nasty}"),
            unit: Some(nasty.clone()),
            value_text: Some("ok\\".into()),
            value_data: Some(vec![1; 10]),
            value: Some(-1.234_567_890_123_4e-300),
            sum: Some(f64::MAX),
            seq: Some(i64::MIN),
            ..Reading::default()
        };
        let encoded = serde_json::to_vec(&r).unwrap().len();
        assert!(encoded <= r.json_len(), "{encoded} > {}", r.json_len());
        assert!(r.json_len() < encoded + 250);
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123Z")
            .expect("valid time")
            .with_timezone(&Utc);
        let record = Record {
            device_id: "d1".into(),
            mqtt_topic: "sensors/d1/temp".into(),
            qos: 1,
            client_id: "c1".into(),
            received_at: t,
            readings: vec![
                Reading {
                    metric: "temp".into(),
                    time: t,
                    value: Some(21.5),
                    unit: Some("Cel".into()),
                    seq: Some(7),
                    ..Reading::default()
                },
                Reading {
                    metric: "blob".into(),
                    time: t,
                    value_data: Some(vec![0, 1, 254, 255]),
                    value_bool: Some(true),
                    value_text: Some("ok".into()),
                    sum: Some(3.5),
                    ..Reading::default()
                },
            ],
        };
        assert_eq!(
            Record::from_json(&record.to_json()).expect("decodes"),
            record
        );
    }
}
