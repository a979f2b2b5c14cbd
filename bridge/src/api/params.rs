//! A read request's query string, checked: only the keys an endpoint knows, times in
//! RFC 3339, ranges that make sense, limits within bounds, and the opaque paging cursor.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};

use super::ApiError;

/// Most devices one series request may name.
pub const MAX_DEVICES: usize = 20;

pub struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses keys other than `known`, so a typo is an error, not an ignored filter.
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((key, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown parameter {key:?}; this endpoint takes {}",
                known.join(", ")
            )));
        }
        Ok(Params(pairs))
    }

    /// A parameter given at most once.
    pub fn one(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.all(key)[..] {
            [] => Ok(None),
            [value] => Ok(Some(value).filter(|v| !v.is_empty())),
            _ => Err(bad(format!("{key} given more than once"))),
        }
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `device` values (repeated), at most `MAX_DEVICES`.
    pub fn devices(&self) -> Result<Vec<String>, ApiError> {
        let devices: Vec<String> = self.all("device").into_iter().map(str::to_owned).collect();
        if devices.len() > MAX_DEVICES {
            return Err(bad(format!("at most {MAX_DEVICES} devices at once")));
        }
        Ok(devices)
    }

    pub fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.one(key)?
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| bad(format!("{key}={text:?} is not an RFC 3339 time ({e}), e.g. 2026-11-30T12:00:00Z")))
            })
            .transpose()
    }

    /// `from` and `to`: by default the `default` before now (or before `to`); `from`
    /// must come before `to`, and the range may not be longer than `longest`.
    pub fn range(
        &self,
        default: chrono::Duration,
        longest: chrono::Duration,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let to = self.time("to")?.unwrap_or_else(Utc::now);
        let from = self.time("from")?.unwrap_or(to - default);
        if from >= to {
            return Err(bad(format!("from ({from}) must be before to ({to})")));
        }
        if to - from > longest {
            return Err(bad(format!(
                "the range is longer than {} days; ask for less",
                longest.num_days()
            )));
        }
        Ok((from, to))
    }

    /// `limit`: `default` when absent, 1 to `max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.one("limit")? {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(format!("limit={text:?} must be 1 to {max}"))),
            },
        }
    }

    /// The `after` cursor of a previous page: the sort key of its last item.
    pub fn after(&self, parts: usize) -> Result<Option<Vec<String>>, ApiError> {
        let Some(text) = self.one("after")? else {
            return Ok(None);
        };
        let key = URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<String>>(&bytes).ok())
            .filter(|key| key.len() == parts);
        key.map(Some)
            .ok_or_else(|| bad("after must be the `next` of a previous page".into()))
    }
}

/// The cursor for the page after the one ending with `key`.
pub fn cursor(key: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

pub fn bad(detail: String) -> ApiError {
    ApiError::BadRequest(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_repeats_and_bad_times_are_refused() {
        assert!(Params::parse(Some("limit=5&lmit=3"), &["limit"]).is_err());
        let p = Params::parse(Some("limit=5&limit=6"), &["limit"]).unwrap();
        assert!(p.limit(10, 100).is_err());
        let p = Params::parse(Some("from=yesterday"), &["from", "to"]).unwrap();
        assert!(p
            .range(chrono::Duration::hours(1), chrono::Duration::days(1))
            .is_err());
        let p = Params::parse(
            Some("from=2026-11-30T12:00:00Z&to=2026-11-30T11:00:00Z"),
            &["from", "to"],
        )
        .unwrap();
        assert!(p
            .range(chrono::Duration::hours(1), chrono::Duration::days(1))
            .is_err());
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let next = cursor(&["dev/1", "temp"]);
        let p = Params::parse(Some(&format!("after={next}")), &["after"]).unwrap();
        assert_eq!(p.after(2).unwrap().unwrap(), ["dev/1", "temp"]);
        assert!(p.after(1).is_err());
        let p = Params::parse(Some("after=nonsense"), &["after"]).unwrap();
        assert!(p.after(2).is_err());
    }

    #[test]
    fn the_default_range_ends_now_and_limits_are_bounded() {
        let p = Params::parse(None, &["from", "to", "limit"]).unwrap();
        let (from, to) = p
            .range(chrono::Duration::hours(1), chrono::Duration::days(1))
            .unwrap();
        assert_eq!(to - from, chrono::Duration::hours(1));
        assert!((Utc::now() - to).num_seconds() < 5);
        assert_eq!(p.limit(100, 1000).unwrap(), 100);
        let p = Params::parse(Some("limit=0"), &["limit"]).unwrap();
        assert!(p.limit(100, 1000).is_err());
    }
}
