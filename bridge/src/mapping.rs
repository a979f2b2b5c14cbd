//! Topic mapping: an MQTT topic is matched against the configured filters (first match
//! wins); the match names the device, the metric, the Kafka topic and key, and the ack
//! policy. Pure functions over strings; the ingress calls it once per publish.

use serde::Deserialize;

use crate::decode::Format;
use crate::settings::MappingSettings;

/// When a device's QoS 1/2 publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// PUBACK/PUBREC only after Kafka's delivery report (acks=all).
    #[default]
    Kafka,
    /// PUBACK/PUBREC on receipt: lowest latency, lost if Sluice dies before Kafka has it.
    Receipt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: one level, captured.
    Named(String),
    /// `+`: one level, not captured.
    Any,
    /// `#`: the rest, last segment only.
    Rest,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("`#` may only be the last segment")]
    RestNotLast,
    #[error("the filter must name a {{device_id}} segment")]
    NoDevice,
    #[error("segment `{0}` mixes a {{name}} with other text")]
    BadSegment(String),
    #[error("the key uses {{{0}}}, which the filter does not name")]
    UnknownKeyName(String),
}

/// A parsed filter such as `sensors/{device_id}/{metric}` plus its key template.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    segments: Vec<Segment>,
    key: Vec<KeyPart>,
}

#[derive(Debug, Clone)]
enum KeyPart {
    Text(String),
    Name(String),
}

/// What a topic matched: named segments in filter order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captures(Vec<(String, String)>);

impl Captures {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl TopicTemplate {
    pub fn parse(filter: &str, key: &str) -> Result<TopicTemplate, TemplateError> {
        let parts: Vec<&str> = filter.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "+" => Segment::Any,
                "#" if i + 1 == parts.len() => Segment::Rest,
                "#" => return Err(TemplateError::RestNotLast),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if name.contains(['{', '}']) {
                        return Err(TemplateError::BadSegment(p.into()));
                    }
                    Segment::Named(name.into())
                }
                p if p.contains(['{', '}', '+', '#']) => {
                    return Err(TemplateError::BadSegment(p.into()))
                }
                p => Segment::Literal(p.into()),
            });
        }
        let named = |n: &str| segments.contains(&Segment::Named(n.into()));
        if !named("device_id") {
            return Err(TemplateError::NoDevice);
        }
        let key = parse_key(key)?;
        for part in &key {
            if let KeyPart::Name(n) = part {
                if !named(n) {
                    return Err(TemplateError::UnknownKeyName(n.clone()));
                }
            }
        }
        Ok(TopicTemplate { segments, key })
    }

    /// Matches a concrete topic; a named segment never matches an empty level, since an
    /// empty device id or metric is never what a device meant. As in MQTT (4.7.2), a topic
    /// starting with `$` is matched only by a filter that starts with that literal level.
    pub fn captures(&self, topic: &str) -> Option<Captures> {
        if topic.starts_with('$') && !matches!(self.segments.first(), Some(Segment::Literal(_))) {
            return None;
        }
        let mut levels = topic.split('/');
        let mut out = Vec::new();
        for seg in &self.segments {
            match seg {
                Segment::Rest => return Some(Captures(out)),
                _ => {
                    let level = levels.next()?;
                    match seg {
                        Segment::Literal(l) if l != level => return None,
                        Segment::Named(_) | Segment::Any if level.is_empty() => return None,
                        Segment::Named(n) => out.push((n.clone(), level.to_owned())),
                        _ => {}
                    }
                }
            }
        }
        levels.next().is_none().then_some(Captures(out))
    }

    pub fn render_key(&self, captures: &Captures) -> String {
        self.key
            .iter()
            .map(|p| match p {
                KeyPart::Text(t) => t.as_str(),
                KeyPart::Name(n) => captures.get(n).unwrap_or_default(),
            })
            .collect()
    }
}

fn parse_key(key: &str) -> Result<Vec<KeyPart>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = key;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(KeyPart::Text(rest[..open].into()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| TemplateError::BadSegment(key.into()))?;
        parts.push(KeyPart::Name(rest[open + 1..open + close].into()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(KeyPart::Text(rest.into()));
    }
    Ok(parts)
}

/// One configured mapping, ready to match.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub template: TopicTemplate,
    pub kafka_topic: String,
    pub ack: AckPolicy,
    pub format: Format,
}

/// Where one publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub device_id: String,
    pub metric: Option<String>,
    pub kafka_topic: &'a str,
    pub key: String,
    pub ack: AckPolicy,
    pub format: Format,
}

/// The ordered mapping list; the first filter that matches wins.
#[derive(Debug, Clone)]
pub struct Mappings(Vec<Mapping>);

impl Mappings {
    pub fn new(settings: &[MappingSettings]) -> Result<Mappings, TemplateError> {
        settings
            .iter()
            .map(|m| {
                Ok(Mapping {
                    template: TopicTemplate::parse(&m.filter, &m.key)?,
                    kafka_topic: m.kafka_topic.clone(),
                    ack: m.ack,
                    format: m.format,
                })
            })
            .collect::<Result<_, _>>()
            .map(Mappings)
    }

    pub fn route(&self, topic: &str) -> Option<Route<'_>> {
        self.0.iter().find_map(|m| {
            let captures = m.template.captures(topic)?;
            Some(Route {
                device_id: captures.get("device_id")?.to_owned(),
                metric: captures.get("metric").map(str::to_owned),
                kafka_topic: &m.kafka_topic,
                key: m.template.render_key(&captures),
                ack: m.ack,
                format: m.format,
            })
        })
    }

    /// Each mapping's filter as an ACL pattern for the device it names: `{device_id}` as
    /// `%u` (the client's identity), other segments as `+`. What a device may subscribe
    /// to by default.
    pub fn identity_patterns(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|m| {
                let levels: Vec<&str> = m
                    .template
                    .segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(text) => text.as_str(),
                        Segment::Named(name) if name == "device_id" => "%u",
                        Segment::Named(_) | Segment::Any => "+",
                        Segment::Rest => "#",
                    })
                    .collect();
                levels.join("/")
            })
            .collect()
    }

    /// Every Kafka topic a mapping can produce to, once each.
    pub fn kafka_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self.0.iter().map(|m| m.kafka_topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mappings(list: &[(&str, &str, AckPolicy)]) -> Mappings {
        let settings: Vec<MappingSettings> = list
            .iter()
            .map(|(filter, topic, ack)| MappingSettings {
                filter: filter.to_string(),
                kafka_topic: topic.to_string(),
                key: "{device_id}".into(),
                ack: *ack,
                format: Format::Auto,
            })
            .collect();
        Mappings::new(&settings).expect("valid mappings")
    }

    #[test]
    fn first_match_wins_and_names_device_and_metric() {
        let m = mappings(&[
            ("sensors/{device_id}/{metric}", "a", AckPolicy::Kafka),
            ("sensors/{device_id}/#", "b", AckPolicy::Receipt),
        ]);
        let r = m.route("sensors/dev-1/temp").expect("matches");
        assert_eq!(r.device_id, "dev-1");
        assert_eq!(r.metric.as_deref(), Some("temp"));
        assert_eq!(r.kafka_topic, "a");
        assert_eq!(r.key, "dev-1");
        assert_eq!(r.ack, AckPolicy::Kafka);
        // One level too many for the first filter: the second one takes it.
        let r = m.route("sensors/dev-1/temp/extra").expect("matches");
        assert_eq!(
            (r.kafka_topic, r.metric, r.ack),
            ("b", None, AckPolicy::Receipt)
        );
    }

    #[test]
    fn named_segments_never_match_empty_levels() {
        let m = mappings(&[("sensors/{device_id}/{metric}", "a", AckPolicy::Kafka)]);
        assert_eq!(m.route("sensors//temp"), None);
        assert_eq!(m.route("sensors/d/"), None);
        assert_eq!(m.route("sensors/d"), None);
        assert_eq!(m.route("other/d/t"), None);
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        let m = mappings(&[
            ("{device_id}/#", "a", AckPolicy::Kafka),
            ("+/{device_id}", "b", AckPolicy::Kafka),
        ]);
        assert_eq!(m.route("$SYS/broker"), None);
        assert_eq!(m.route("$share/x"), None);
        assert_eq!(m.route("dev/x").map(|r| r.kafka_topic), Some("a"));
        let m = mappings(&[("$devices/{device_id}", "c", AckPolicy::Kafka)]);
        assert_eq!(
            m.route("$devices/d1").map(|r| r.device_id),
            Some("d1".into())
        );
    }

    #[test]
    fn rest_and_any_segments() {
        let t = TopicTemplate::parse("site/{site}/+/{device_id}/#", "{site}:{device_id}")
            .expect("valid");
        let c = t.captures("site/s1/x/d9/a/b").expect("matches");
        assert_eq!(t.render_key(&c), "s1:d9");
        assert!(
            t.captures("site/s1/x/d9").is_some(),
            "# matches zero levels"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        assert_eq!(
            TopicTemplate::parse("a/#/b/{device_id}", "{device_id}").unwrap_err(),
            TemplateError::RestNotLast
        );
        assert_eq!(
            TopicTemplate::parse("a/{metric}", "x").unwrap_err(),
            TemplateError::NoDevice
        );
        assert_eq!(
            TopicTemplate::parse("a/x{device_id}", "k").unwrap_err(),
            TemplateError::BadSegment("x{device_id}".into())
        );
        assert_eq!(
            TopicTemplate::parse("a/{device_id}", "{site}").unwrap_err(),
            TemplateError::UnknownKeyName("site".into())
        );
    }
}
