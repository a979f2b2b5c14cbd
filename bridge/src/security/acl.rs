//! Authorisation on the device port: a mosquitto-format ACL file plus Sluice's default
//! patterns (one per topic mapping), answering "may this client publish to this topic /
//! subscribe to this filter". Rules are split into levels once, so a check allocates nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish,
    Subscribe,
}

/// The client asking: `identity` is its authenticated username or certificate name
/// (`None` for an anonymous client), `client_id` its MQTT client id.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub identity: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACL file line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("default ACL pattern {filter:?}: {reason}")]
    Default { filter: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Acl {
    /// `None`: no ACL file, so anonymous clients are unrestricted.
    file: Option<AclFile>,
    /// Read (subscribe) patterns granted to every client with an identity; where it may
    /// publish by default is the gateway's to say (the mapping's `{device_id}`).
    defaults: Vec<Rule>,
}

#[derive(Debug, Clone, Default)]
struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone)]
enum Level {
    Lit(Box<str>),
    Plus,
    Hash,
    /// `%u` in a pattern.
    Identity,
    /// `%c` in a pattern.
    ClientId,
}

#[derive(Debug, Clone)]
struct Rule {
    access: RuleAccess,
    levels: Box<[Level]>,
    uses_identity: bool,
    uses_client: bool,
}

impl Acl {
    /// No ACL file: anonymous clients unrestricted; identities get the defaults.
    pub fn open(defaults: &[String]) -> Result<Acl, AclError> {
        Ok(Acl {
            file: None,
            defaults: parse_defaults(defaults)?,
        })
    }

    pub fn parse(text: &str, defaults: &[String]) -> Result<Acl, AclError> {
        let mut file = AclFile::default();
        // The user section being read; `None` is the anonymous section.
        let mut section: Option<(String, Vec<Rule>)> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| AclError::Parse {
                line: n + 1,
                reason,
            };
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a username".into()));
                    }
                    if let Some((name, rules)) = section.replace((rest.to_owned(), Vec::new())) {
                        file.users.entry(name).or_default().extend(rules);
                    }
                }
                "topic" => {
                    let rule = parse_rule(rest, false).map_err(err)?;
                    match &mut section {
                        Some((_, rules)) => rules.push(rule),
                        None => file.anonymous.push(rule),
                    }
                }
                // Patterns apply to everyone wherever they appear, as in mosquitto.
                "pattern" => file.patterns.push(parse_rule(rest, true).map_err(err)?),
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )))
                }
            }
        }
        if let Some((name, rules)) = section {
            file.users.entry(name).or_default().extend(rules);
        }
        Ok(Acl {
            file: Some(file),
            defaults: parse_defaults(defaults)?,
        })
    }

    pub fn load(path: &Path, defaults: &[String]) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_owned(),
            source,
        })?;
        Acl::parse(&text, defaults)
    }

    pub fn allows(&self, who: Who<'_>, access: Access, topic_or_filter: &str) -> bool {
        self.decide(who, access, topic_or_filter) == Some(true)
    }

    /// `Some(true)`: a rule grants it; `Some(false)`: a deny rule (or an invalid topic or
    /// filter) refuses it; `None`: no rule speaks, and the caller's default decides.
    pub fn decide(&self, who: Who<'_>, access: Access, topic_or_filter: &str) -> Option<bool> {
        let target = match access {
            Access::Publish if valid_topic(topic_or_filter) => topic_or_filter,
            Access::Subscribe => match strip_share(topic_or_filter) {
                Some(filter) if valid_filter(filter) => filter,
                _ => return Some(false),
            },
            Access::Publish => return Some(false),
        };
        if self.file.is_none() && who.identity.is_none() {
            return Some(true);
        }
        let subst = Subst::new(who);
        let rules = self.rules_for(who);
        let denied = rules.clone().any(|rule| {
            rule.access == RuleAccess::Deny
                && match access {
                    Access::Publish => matches(&rule.levels, &subst, target),
                    // A subscription is refused if it could deliver any denied topic.
                    Access::Subscribe => overlaps(&rule.levels, &subst, target),
                }
        });
        if denied {
            return Some(false);
        }
        let granted = rules.into_iter().any(|rule| {
            rule.grants(access)
                && rule.substitutable(&subst)
                && match access {
                    Access::Publish => matches(&rule.levels, &subst, target),
                    // Every topic the subscription can deliver must be readable.
                    Access::Subscribe => covers(&rule.levels, &subst, target),
                }
        });
        granted.then_some(true)
    }

    /// The anonymous or user section, the file's patterns (those with `%u` only for an
    /// identity), and the defaults (only for an identity).
    fn rules_for<'s>(&'s self, who: Who<'_>) -> impl Iterator<Item = &'s Rule> + Clone {
        let anonymous = who.identity.is_none();
        let (section, patterns): (&[Rule], &[Rule]) = match (&self.file, who.identity) {
            (None, _) => (&[], &[]),
            (Some(file), None) => (&file.anonymous, &file.patterns),
            (Some(file), Some(id)) => (
                file.users.get(id).map_or(&[][..], Vec::as_slice),
                &file.patterns,
            ),
        };
        let defaults: &[Rule] = if anonymous { &[] } else { &self.defaults };
        section
            .iter()
            .chain(
                patterns
                    .iter()
                    .filter(move |r| !(anonymous && r.uses_identity)),
            )
            .chain(defaults)
    }
}

impl Rule {
    fn new(access: RuleAccess, levels: Box<[Level]>) -> Rule {
        let has = |want: fn(&Level) -> bool| levels.iter().any(want);
        Rule {
            access,
            uses_identity: has(|l| matches!(l, Level::Identity)),
            uses_client: has(|l| matches!(l, Level::ClientId)),
            levels,
        }
    }

    fn grants(&self, access: Access) -> bool {
        matches!(
            (self.access, access),
            (RuleAccess::ReadWrite, _)
                | (RuleAccess::Read, Access::Subscribe)
                | (RuleAccess::Write, Access::Publish)
        )
    }

    /// A grant whose placeholder cannot be substituted safely never applies.
    fn substitutable(&self, subst: &Subst<'_>) -> bool {
        (!self.uses_identity || subst.identity.is_some())
            && (!self.uses_client || subst.client.is_some())
    }
}

fn parse_defaults(defaults: &[String]) -> Result<Vec<Rule>, AclError> {
    defaults
        .iter()
        .map(|filter| {
            parse_filter(filter, true)
                .map(|levels| Rule::new(RuleAccess::Read, levels))
                .map_err(|reason| AclError::Default {
                    filter: filter.clone(),
                    reason,
                })
        })
        .collect()
}

/// First word and the trimmed rest of a line.
fn split_word(s: &str) -> (&str, &str) {
    s.split_once(char::is_whitespace)
        .map_or((s, ""), |(word, rest)| (word, rest.trim_start()))
}

/// `[read|write|readwrite|deny] <filter>` of a topic or pattern line.
fn parse_rule(rest: &str, pattern: bool) -> Result<Rule, String> {
    let (word, after) = split_word(rest);
    let (access, filter) = match word {
        "read" => (RuleAccess::Read, after),
        "write" => (RuleAccess::Write, after),
        "readwrite" => (RuleAccess::ReadWrite, after),
        "deny" => (RuleAccess::Deny, after),
        // A plain word followed by more text is a mistyped access word (`topic raed a/#`),
        // not a filter with a space: granting "raed a/#" readwrite would hide the mistake.
        // A filter with spaces that starts with a plain word needs its access written out.
        _ if !after.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()) => {
            return Err(format!(
                "unknown access {word:?} (expected read, write, readwrite or deny)"
            ))
        }
        _ => (RuleAccess::ReadWrite, rest),
    };
    Ok(Rule::new(access, parse_filter(filter, pattern)?))
}

/// Splits a rule's filter into levels; `%u`/`%c` are placeholders only in patterns
/// (in `topic` lines they are literal, as in mosquitto).
fn parse_filter(filter: &str, placeholders: bool) -> Result<Box<[Level]>, String> {
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    let count = filter.split('/').count();
    filter
        .split('/')
        .enumerate()
        .map(|(i, level)| match level {
            "#" if i + 1 == count => Ok(Level::Hash),
            "#" => Err(format!("'#' must be the last level of {filter:?}")),
            "+" => Ok(Level::Plus),
            "%u" if placeholders => Ok(Level::Identity),
            "%c" if placeholders => Ok(Level::ClientId),
            _ if level.contains(['+', '#']) => {
                Err(format!("wildcard in {level:?} must be a whole topic level"))
            }
            // Placeholders are substituted by comparing whole levels, without building strings.
            _ if placeholders && (level.contains("%u") || level.contains("%c")) => Err(format!(
                "placeholder in {level:?} must be a whole topic level, as in sensors/%u/#"
            )),
            _ => Ok(Level::Lit(level.into())),
        })
        .collect()
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

fn valid_filter(filter: &str) -> bool {
    let count = filter.split('/').count();
    !filter.is_empty()
        && filter.split('/').enumerate().all(|(i, level)| match level {
            "#" => i + 1 == count,
            "+" => true,
            _ => !level.contains(['+', '#']),
        })
}

/// Whether a subscription filter (a shared one included) matches a topic.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let none = Subst {
        identity: None,
        client: None,
    };
    strip_share(filter)
        .and_then(|f| parse_filter(f, false).ok())
        .is_some_and(|levels| matches(&levels, &none, topic))
}

/// Whether a SUBSCRIBE's filter is well formed (a shared one included).
pub fn valid_subscription(filter: &str) -> bool {
    strip_share(filter).is_some_and(valid_filter)
}

/// `$share/<group>/<filter>` -> `<filter>`; `None` if the share is malformed.
fn strip_share(filter: &str) -> Option<&str> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Some(filter);
    };
    let (group, filter) = rest.split_once('/')?;
    (!group.is_empty() && !group.contains(['+', '#'])).then_some(filter)
}

/// Placeholder values, `None` where substituting would widen a rule: an empty value or one
/// containing a wildcard or level separator.
struct Subst<'a> {
    identity: Option<&'a str>,
    client: Option<&'a str>,
}

impl<'a> Subst<'a> {
    fn new(who: Who<'a>) -> Subst<'a> {
        let safe = |s: &'a str| (!s.is_empty() && !s.contains(['+', '#', '/'])).then_some(s);
        Subst {
            identity: who.identity.and_then(safe),
            client: safe(who.client_id),
        }
    }
}

#[derive(Clone, Copy)]
enum Resolved<'a> {
    Lit(&'a str),
    Plus,
    Hash,
    /// An unsafe placeholder in a deny rule: treated as any level, so that refusing to
    /// substitute never lifts a deny (grants with one are skipped before matching).
    Any,
}

fn resolve<'a>(level: &'a Level, subst: &Subst<'a>) -> Resolved<'a> {
    match level {
        Level::Lit(s) => Resolved::Lit(s),
        Level::Plus => Resolved::Plus,
        Level::Hash => Resolved::Hash,
        Level::Identity => subst.identity.map_or(Resolved::Any, Resolved::Lit),
        Level::ClientId => subst.client.map_or(Resolved::Any, Resolved::Lit),
    }
}

/// Does the rule match the concrete topic (MQTT filter semantics)?
fn matches(rule: &[Level], subst: &Subst<'_>, topic: &str) -> bool {
    let dollar = topic.starts_with('$');
    let mut levels = topic.split('/');
    for (i, level) in rule.iter().enumerate() {
        // Wildcards in the first level do not match `$` topics.
        let wild_ok = i > 0 || !dollar;
        let ok = match resolve(level, subst) {
            // `#` also matches the parent level, so the topic may end here.
            Resolved::Hash => return wild_ok,
            r => match (r, levels.next()) {
                (_, None) => false,
                (Resolved::Lit(s), Some(t)) => s == t,
                (Resolved::Plus, Some(_)) => wild_ok,
                (_, Some(_)) => true,
            },
        };
        if !ok {
            return false;
        }
    }
    levels.next().is_none()
}

/// Does the rule match every topic the (valid) subscription filter can match?
fn covers(rule: &[Level], subst: &Subst<'_>, filter: &str) -> bool {
    let dollar = filter.starts_with('$');
    let mut levels = filter.split('/');
    for (i, level) in rule.iter().enumerate() {
        // A filter's first level starting with `$` is a literal `$` level, which rule
        // wildcards there do not match; the filter's own `+`/`#` never reach `$` topics.
        let wild_ok = i > 0 || !dollar;
        let ok = match resolve(level, subst) {
            Resolved::Hash => return wild_ok,
            r => match (r, levels.next()) {
                (_, None) => false,
                // The filter's `#` reaches any depth, which only a rule `#` covers, or a
                // rule `+/#` when the parent level that `#` also matches would be the empty
                // topic (filters `#` and `/#`), which cannot exist.
                (r, Some("#")) => {
                    return (i == 0 || (i == 1 && filter.starts_with('/')))
                        && matches!(r, Resolved::Plus | Resolved::Any)
                        && rule.len() == i + 2
                        && matches!(rule[i + 1], Level::Hash)
                }
                (Resolved::Lit(s), Some(f)) => s == f,
                (Resolved::Plus, Some(_)) => wild_ok,
                (_, Some(_)) => true,
            },
        };
        if !ok {
            return false;
        }
    }
    levels.next().is_none()
}

/// Is there a topic that both the rule and the (valid) subscription filter match?
fn overlaps(rule: &[Level], subst: &Subst<'_>, filter: &str) -> bool {
    let mut levels = filter.split('/');
    for (i, level) in rule.iter().enumerate() {
        let first = i == 0;
        let r = resolve(level, subst);
        let ok = match (r, levels.next()) {
            // `#` matches the parent level too.
            (Resolved::Hash, None) => return true,
            // Either side's `#` takes the rest; the other side's remaining levels can
            // always be filled, except a first-level `$` literal against a first-level `#`.
            (Resolved::Hash, Some(f)) => return !(first && f.starts_with('$')),
            (_, None) => false,
            (Resolved::Lit(s), Some("#")) => return !(first && s.starts_with('$')),
            (_, Some("#")) => return true,
            (Resolved::Lit(s), Some("+")) => !(first && s.starts_with('$')),
            (Resolved::Lit(s), Some(f)) => s == f,
            (Resolved::Plus, Some(f)) => !(first && f.starts_with('$')),
            (Resolved::Any, Some(_)) => true,
        };
        if !ok {
            return false;
        }
    }
    matches!(levels.next(), None | Some("#"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Publish, Subscribe};

    fn anon(client_id: &str) -> Who<'_> {
        Who {
            identity: None,
            client_id,
        }
    }

    fn user<'a>(identity: &'a str, client_id: &'a str) -> Who<'a> {
        Who {
            identity: Some(identity),
            client_id,
        }
    }

    fn defaults() -> Vec<String> {
        vec!["sensors/%u/+".into(), "devices/%u/senml".into()]
    }

    fn parsed(text: &str) -> Acl {
        Acl::parse(text, &defaults()).unwrap()
    }

    fn parse_error(text: &str) -> (usize, String) {
        match Acl::parse(text, &[]) {
            Err(AclError::Parse { line, reason }) => (line, reason),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn no_file_leaves_anonymous_unrestricted() {
        let acl = Acl::open(&defaults()).unwrap();
        let a = anon("c1");
        assert!(acl.allows(a, Publish, "anything/at/all"));
        assert!(acl.allows(a, Publish, "$SYS/x"));
        assert!(acl.allows(a, Subscribe, "#"));
        // Still only well-formed requests.
        assert!(!acl.allows(a, Publish, "a/+"));
        assert!(!acl.allows(a, Subscribe, "a/#/b"));
    }

    #[test]
    fn no_file_gives_identities_the_defaults_only() {
        let acl = Acl::open(&defaults()).unwrap();
        let alice = user("alice", "c1");
        assert_eq!(
            acl.decide(alice, Publish, "sensors/alice/temp"),
            None,
            "publishing is left to the gateway's own-device rule"
        );
        assert!(acl.allows(alice, Subscribe, "devices/alice/senml"));
        assert!(acl.allows(alice, Subscribe, "sensors/alice/+"));
        assert!(!acl.allows(alice, Publish, "sensors/bob/temp"));
        assert!(!acl.allows(alice, Publish, "sensors/alice/temp/deep"));
        assert!(!acl.allows(alice, Publish, "devices/alice/json"));
        assert!(!acl.allows(alice, Subscribe, "sensors/alice/#"));
        assert!(!acl.allows(alice, Subscribe, "sensors/+/temp"));
    }

    #[test]
    fn file_gives_anonymous_its_section_and_identity_free_patterns() {
        let acl = parsed(
            "# comment\n\
             \n\
             topic read public/#\n\
             topic write inbox\n\
             pattern write clients/%c/status\n\
             pattern readwrite users/%u/#\n\
             user alice\n\
             topic alice/#\n",
        );
        let a = anon("c1");
        assert!(acl.allows(a, Subscribe, "public/news"));
        assert!(acl.allows(a, Subscribe, "public/#"));
        assert!(!acl.allows(a, Publish, "public/news"));
        assert!(acl.allows(a, Publish, "inbox"));
        assert!(!acl.allows(a, Subscribe, "inbox"));
        assert!(acl.allows(a, Publish, "clients/c1/status"));
        assert!(!acl.allows(a, Publish, "clients/c2/status"));
        // No %u patterns, no defaults, no user sections.
        assert!(!acl.allows(a, Publish, "users/%u/x"));
        assert!(!acl.allows(a, Publish, "sensors/c1/temp"));
        assert!(!acl.allows(a, Publish, "alice/x"));
    }

    #[test]
    fn identities_get_their_section_patterns_and_defaults() {
        let acl = parsed(
            "topic read public/#\n\
             user alice\n\
             topic alice/#\n\
             pattern write clients/%c/status\n\
             user bob smith\n\
             topic read bob/#\n\
             user alice\n\
             topic write shared/alice\n",
        );
        let alice = user("alice", "c1");
        assert!(acl.allows(alice, Publish, "alice/x"));
        assert!(acl.allows(alice, Subscribe, "alice/#"));
        assert!(
            acl.allows(alice, Publish, "shared/alice"),
            "repeated section"
        );
        assert!(acl.allows(alice, Publish, "clients/c1/status"));
        assert!(
            acl.allows(alice, Subscribe, "sensors/alice/temp"),
            "defaults"
        );
        assert!(
            !acl.allows(alice, Subscribe, "public/x"),
            "anonymous section"
        );
        assert!(!acl.allows(alice, Subscribe, "bob/x"));

        let bob = user("bob smith", "c2");
        assert!(acl.allows(bob, Subscribe, "bob/x"));
        assert!(!acl.allows(bob, Publish, "bob/x"));
        assert!(acl.allows(bob, Publish, "clients/c2/status"));
        // No section at all: patterns and defaults still apply.
        let carol = user("carol", "c3");
        assert!(acl.allows(carol, Publish, "clients/c3/status"));
        assert!(acl.allows(carol, Subscribe, "devices/carol/senml"));
        // Deny first, then a grant, then nothing said.
        let acl = parsed("user carol\ntopic deny sensors/carol/secret\ntopic write out/#\n");
        assert_eq!(
            acl.decide(carol, Publish, "sensors/carol/secret"),
            Some(false)
        );
        assert_eq!(acl.decide(carol, Publish, "out/x"), Some(true));
        assert_eq!(acl.decide(carol, Publish, "sensors/carol/temp"), None);
        assert_eq!(acl.decide(carol, Publish, "bad/+"), Some(false));
        assert!(!acl.allows(carol, Publish, "alice/x"));
    }

    #[test]
    fn topic_lines_take_placeholders_literally() {
        let acl = parsed("user alice\ntopic x/%u\n");
        assert!(acl.allows(user("alice", "c"), Publish, "x/%u"));
        assert!(!acl.allows(user("alice", "c"), Publish, "x/alice"));
    }

    #[test]
    fn patterns_substitute_identity_and_client_id() {
        let acl = parsed("pattern read in/%u/%c/#\npattern deny in/%u/%c/secret\n");
        let w = user("alice", "dev1");
        assert!(acl.allows(w, Subscribe, "in/alice/dev1/data/#"));
        assert!(acl.allows(w, Subscribe, "in/alice/dev1"));
        assert!(acl.allows(w, Subscribe, "in/alice/dev1/a/+"));
        // These could deliver the denied topic.
        assert!(!acl.allows(w, Subscribe, "in/alice/dev1/#"));
        assert!(!acl.allows(w, Subscribe, "in/alice/dev1/+"));
        assert!(!acl.allows(w, Subscribe, "in/alice/dev2/#"));
        assert!(!acl.allows(w, Subscribe, "in/bob/dev1/#"));
        assert!(!acl.allows(w, Subscribe, "in/alice/+/#"));
        assert!(!acl.allows(w, Subscribe, "in/alice/dev1/secret"));
    }

    #[test]
    fn placeholders_never_widen_a_grant() {
        let acl = Acl::parse("pattern x/%u/%c\n", &defaults()).unwrap();
        for bad in ["+", "#", "a/b", "", "a+", "b#"] {
            let w = user(bad, "c");
            assert!(!acl.allows(w, Publish, "sensors/x/t"), "{bad:?}");
            assert!(!acl.allows(w, Subscribe, "sensors/+/+"), "{bad:?}");
            assert!(!acl.allows(w, Subscribe, "sensors/#"), "{bad:?}");
            assert!(!acl.allows(w, Publish, "x/a/b/c"), "{bad:?}");
            assert!(!acl.allows(w, Publish, "x//c"), "{bad:?}");
            assert!(!acl.allows(w, Subscribe, "x/+/c"), "{bad:?}");
            let w = user("alice", bad);
            assert!(!acl.allows(w, Publish, "x/alice/"), "{bad:?}");
            assert!(!acl.allows(w, Subscribe, "x/alice/+"), "{bad:?}");
            assert!(!acl.allows(w, Subscribe, "x/alice/#"), "{bad:?}");
        }
        // An identity of "+" asking for the literal filter level "+".
        let acl = Acl::open(&defaults()).unwrap();
        assert!(!acl.allows(user("+", "c"), Subscribe, "sensors/+/t"));
    }

    #[test]
    fn placeholders_never_lift_a_deny() {
        let acl = parsed("pattern deny sensors/%c/secret\npattern read sensors/#\n");
        assert!(acl.allows(user("alice", "c"), Subscribe, "sensors/x/secret"));
        assert!(!acl.allows(user("alice", "c"), Subscribe, "sensors/c/secret"));
        assert!(!acl.allows(user("alice", "a/b"), Subscribe, "sensors/x/secret"));
        assert!(!acl.allows(user("alice", ""), Publish, "sensors/alice/secret"));
        // Not denied: the gateway's own-device rule decides.
        assert_eq!(
            acl.decide(user("alice", ""), Publish, "sensors/alice/temp"),
            None
        );
    }

    #[test]
    fn identity_patterns_never_apply_to_anonymous_clients() {
        let acl = parsed("pattern deny %u/#\npattern x/%u\ntopic #\n");
        // The deny on %u/# does not touch anonymous clients, nor does the grant.
        assert!(acl.allows(anon("c"), Publish, "anything"));
        assert!(acl.allows(anon("c"), Publish, "x/%u"));
    }

    #[test]
    fn deny_wins_over_any_grant() {
        let acl = parsed(
            "user alice\n\
             topic readwrite sensors/#\n\
             topic deny sensors/+/secret\n\
             topic write sensors/alice/secret\n",
        );
        let w = user("alice", "c");
        assert!(acl.allows(w, Publish, "sensors/alice/temp"));
        assert!(!acl.allows(w, Publish, "sensors/alice/secret"));
        assert!(!acl.allows(w, Subscribe, "sensors/alice/secret"));
        // Subscriptions that could deliver a denied topic are refused.
        assert!(!acl.allows(w, Subscribe, "sensors/#"));
        assert!(!acl.allows(w, Subscribe, "sensors/alice/+"));
        assert!(!acl.allows(w, Subscribe, "sensors/+/+/#"));
        assert!(acl.allows(w, Subscribe, "sensors/+/temp"));
        assert!(acl.allows(w, Subscribe, "sensors/+/secret/x"));
        // Defaults are grants too, and lose to the deny.
        assert!(!acl.allows(w, Publish, "sensors/alice/secret"));
    }

    #[test]
    fn dollar_topics_need_explicit_rules() {
        let acl = parsed("topic #\ntopic +/x\ntopic read $SYS/broker/#\n");
        let a = anon("c");
        assert!(acl.allows(a, Publish, "a/b"));
        assert!(!acl.allows(a, Publish, "$SYS/x"));
        assert!(!acl.allows(a, Publish, "$a/x"));
        assert!(acl.allows(a, Subscribe, "#"));
        assert!(acl.allows(a, Subscribe, "+/x"));
        assert!(!acl.allows(a, Subscribe, "$SYS/#"));
        assert!(!acl.allows(a, Subscribe, "$a/x"));
        assert!(acl.allows(a, Subscribe, "$SYS/broker/load"));
        assert!(acl.allows(a, Subscribe, "$SYS/broker/#"));
        // `$` only matters in the first level.
        assert!(acl.allows(a, Publish, "a/$b"));

        let acl = parsed("topic deny #\ntopic $SYS/#\n");
        assert!(acl.allows(a, Subscribe, "$SYS/x"));
        assert!(!acl.allows(a, Subscribe, "+/x"));
        let acl = parsed("topic deny $SYS/#\ntopic #\ntopic $SYS/#\n");
        assert!(
            acl.allows(a, Subscribe, "#"),
            "# cannot deliver $SYS topics"
        );
        assert!(acl.allows(a, Subscribe, "+/x"));
        assert!(!acl.allows(a, Subscribe, "$SYS/x"));
    }

    #[test]
    fn shared_subscriptions_are_checked_by_their_filter() {
        let acl = parsed("topic read sensors/#\n");
        let a = anon("c");
        assert!(acl.allows(a, Subscribe, "$share/g/sensors/#"));
        assert!(acl.allows(a, Subscribe, "$share/g/sensors/+/temp"));
        assert!(!acl.allows(a, Subscribe, "$share/g/#"));
        assert!(!acl.allows(a, Subscribe, "$share/sensors/#"), "group only");
        assert!(!acl.allows(a, Subscribe, "$share//sensors/#"));
        assert!(!acl.allows(a, Subscribe, "$share/+/sensors/#"));
        assert!(!acl.allows(a, Subscribe, "$share/g/"));
    }

    #[test]
    fn subscribe_needs_a_covering_rule_publish_a_matching_one() {
        let acl = parsed("topic read sensors/#\ntopic sensors/+/cmd\n");
        let a = anon("c");
        assert!(acl.allows(a, Subscribe, "sensors/#"));
        assert!(acl.allows(a, Subscribe, "sensors"));
        assert!(acl.allows(a, Subscribe, "sensors/+/temp"));
        assert!(!acl.allows(a, Subscribe, "#"));
        assert!(!acl.allows(a, Subscribe, "+/x"));
        assert!(
            !acl.allows(a, Publish, "sensors/a/temp"),
            "read is not write"
        );
        assert!(acl.allows(a, Publish, "sensors/a/cmd"));
        assert!(!acl.allows(a, Publish, "sensors/a/cmd/x"));
        // A rule `+` covers literal and `+` levels, not `#`.
        let acl = parsed("topic read a/+/b\n");
        assert!(acl.allows(a, Subscribe, "a/+/b"));
        assert!(acl.allows(a, Subscribe, "a/x/b"));
        assert!(!acl.allows(a, Subscribe, "a/#"));
        assert!(!acl.allows(a, Subscribe, "a/+/#"));
        assert!(!acl.allows(a, Subscribe, "a/+"));
        // `+/#` is `#` but for the empty topic, which cannot exist.
        let acl = parsed("topic read +/#\n");
        assert!(acl.allows(a, Subscribe, "#"));
        let acl = parsed("topic read /+/#\ntopic read x//+/#\n");
        assert!(acl.allows(a, Subscribe, "/#"));
        assert!(!acl.allows(a, Subscribe, "x//#"), "x/ is a topic");
        assert!(acl.allows(a, Subscribe, "x//+"));
        // Wildcards in a publish topic are malformed, not matched.
        assert!(!acl.allows(a, Publish, "a/+/b"));
        assert!(!acl.allows(a, Publish, ""));
    }

    #[test]
    fn access_words_and_spaces() {
        let acl = parsed(
            "topic sensors/my topic/with spaces\n\
             topic write my topic\n\
             topic readings\n\
             topic read\tread/only\n",
        );
        let a = anon("c");
        assert!(acl.allows(a, Publish, "sensors/my topic/with spaces"));
        assert!(acl.allows(a, Subscribe, "sensors/my topic/with spaces"));
        assert!(acl.allows(a, Publish, "my topic"));
        assert!(acl.allows(a, Publish, "readings"));
        assert!(acl.allows(a, Subscribe, "read/only"));
        assert!(!acl.allows(a, Publish, "read/only"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let (line, reason) = parse_error("# c\n\ntopic a\nfrobnicate x\n");
        assert_eq!(line, 4);
        assert!(reason.contains("frobnicate"), "{reason}");
        let (line, reason) = parse_error("topic a\ntopic raed a/#\n");
        assert_eq!(line, 2);
        assert!(reason.contains("raed"), "{reason}");
        let (line, reason) = parse_error("pattern read a%ub\n");
        assert_eq!(line, 1);
        assert!(reason.contains("whole topic level"), "{reason}");
        let (line, _) = parse_error("user\n");
        assert_eq!(line, 1);
        let (line, _) = parse_error("user a\ntopic read\n");
        assert_eq!(line, 2);
        let (line, _) = parse_error("topic a/#/b\n");
        assert_eq!(line, 1);
        let (line, _) = parse_error("topic a/b+\n");
        assert_eq!(line, 1);
        assert!(Acl::parse("pattern x/%c/%u/+/#\n", &[]).is_ok());
        let err = parse_error("\n\ntopic deny\n");
        assert_eq!(err.0, 3);
        let msg = Acl::parse("x\n", &[]).unwrap_err().to_string();
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn bad_defaults_are_reported() {
        for acl in [
            Acl::open(&["a%ub".to_string()]),
            Acl::parse("", &["a/#/b".to_string()]),
        ] {
            assert!(matches!(acl, Err(AclError::Default { .. })), "{acl:?}");
        }
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "user alice\ntopic read x/#\n").unwrap();
        let acl = Acl::load(&path, &defaults()).unwrap();
        assert!(acl.allows(user("alice", "c"), Subscribe, "x/y"));
        assert!(!acl.allows(anon("c"), Subscribe, "x/y"));
        let missing = dir.path().join("missing");
        match Acl::load(&missing, &[]) {
            Err(AclError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        const SUBST: Subst<'static> = Subst {
            identity: Some("a"),
            client: None,
        };

        /// A filter over a tiny alphabet, `#` only last.
        fn filter(placeholder: bool) -> impl Strategy<Value = String> {
            let mut words = vec!["a", "b", "$a", "", "+"];
            if placeholder {
                words.push("%u");
            }
            (
                prop::collection::vec(prop::sample::select(words), 0..=3),
                any::<bool>(),
            )
                .prop_filter_map("empty", |(mut levels, hash)| {
                    if hash {
                        levels.push("#");
                    }
                    let filter = levels.join("/");
                    (!filter.is_empty()).then_some(filter)
                })
        }

        /// Every topic of 1 to 4 levels over the alphabet plus a word no filter names.
        fn topics() -> Vec<String> {
            let words = ["a", "b", "$a", "", "c"];
            let mut last: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            let mut all = last.clone();
            for _ in 1..4 {
                last = last
                    .iter()
                    .flat_map(|t| words.iter().map(move |w| format!("{t}/{w}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }

        fn matches_filter(filter: &str, topic: &str) -> bool {
            matches(&parse_filter(filter, false).unwrap(), &SUBST, topic)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]
            #[test]
            fn covers_and_overlaps_agree_with_matching(rule in filter(true), sub in filter(false)) {
                let levels = parse_filter(&rule, true).unwrap();
                let covered = covers(&levels, &SUBST, &sub);
                let overlapping = overlaps(&levels, &SUBST, &sub);
                let (mut escapes, mut shared) = (None, None);
                for topic in topics() {
                    let by_rule = matches(&levels, &SUBST, &topic);
                    let by_sub = matches_filter(&sub, &topic);
                    // A topic cannot be empty, so "" never escapes; `overlaps` may count it
                    // as shared (`/#` and `+`), which only makes a deny more cautious.
                    if by_sub && !by_rule && !topic.is_empty() {
                        escapes.get_or_insert(topic.clone());
                    }
                    if by_sub && by_rule {
                        shared.get_or_insert(topic);
                    }
                }
                // Soundness: what `covers` allows, the rule matches in full.
                prop_assert!(!covered || escapes.is_none(), "{rule} covers {sub} but not {escapes:?}");
                // And exactness, over this alphabet and depth.
                prop_assert!(covered || escapes.is_some(), "{rule} should cover {sub}");
                prop_assert_eq!(overlapping, shared.is_some(), "{} / {}: {:?}", rule, sub, shared);
            }
        }
    }
}
