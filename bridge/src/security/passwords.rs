//! Password files written by mosquitto's `mosquitto_passwd`, so operators keep their tool and
//! files: `username:hash` lines with `$6$` (SHA-512), `$7$` (PBKDF2-HMAC-SHA512) or
//! `$argon2id$` hashes. Parsing is stricter than mosquitto's, which skips bad or duplicate
//! lines with a warning: here they fail the load, so a typo cannot silently lock a device out.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// `$7$` iteration counts above this are refused: a typo or hostile file must not turn every
/// CONNECT into minutes of CPU.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Argon2 memory cost cap, in KiB (1 GiB): each verification allocates this much.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1_048_576;
/// Argon2 pass count cap, for the same reason as the memory cap (libargon2's CLI defaults to 3).
pub const MAX_ARGON2_PASSES: u32 = 1_000;

/// Iterations mosquitto 2.0 writes; the unknown-user dummy check costs the same.
const DUMMY_ITERATIONS: u32 = 101;
/// SHA-512 output: mosquitto's `$6$`/`$7$` hashes are always this long.
const SHA512_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `reason` describes the line's shape only, never the hash or salt.
    #[error("password file line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("password file line {line}: duplicate user {username:?} (first on line {first})")]
    Duplicate {
        line: usize,
        first: usize,
        username: String,
    },
}

enum Hash {
    /// mosquitto < 2.0: SHA-512(password || salt), one round.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// mosquitto 2.0: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// mosquitto 2.1 (libargon2 PHC string).
    Argon2id {
        version: Version,
        params: Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

struct Entry {
    line: usize,
    /// The hash field as written, for `Passwords::entry`.
    encoded: String,
    hash: Hash,
}

pub struct Passwords {
    users: HashMap<String, Entry>,
    /// The user whose hash costs most to check: an unknown user is checked against it,
    /// so timing does not tell which users exist.
    costliest: Option<String>,
}

impl fmt::Debug for Passwords {
    // Hashes are offline-crackable: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Passwords {
    pub fn parse(text: &str) -> Result<Passwords, PasswordFileError> {
        let mut users: HashMap<String, Entry> = HashMap::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            // mosquitto trims blanks around both fields; this also drops a CRLF file's '\r'.
            let trimmed = raw.trim_matches(|c: char| c.is_ascii_whitespace());
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |reason: &str| PasswordFileError::Parse {
                line,
                reason: reason.to_owned(),
            };
            let (username, encoded) = trimmed
                .split_once(':')
                .ok_or_else(|| err("expected `username:hash`"))?;
            let username = username.trim_matches(|c: char| c.is_ascii_whitespace());
            let encoded = encoded.trim_matches(|c: char| c.is_ascii_whitespace());
            if username.is_empty() {
                return Err(err("empty username"));
            }
            let hash =
                decode_hash(encoded).map_err(|reason| PasswordFileError::Parse { line, reason })?;
            if let Some(first) = users.get(username) {
                return Err(PasswordFileError::Duplicate {
                    line,
                    first: first.line,
                    username: username.to_owned(),
                });
            }
            users.insert(
                username.to_owned(),
                Entry {
                    line,
                    encoded: encoded.to_owned(),
                    hash,
                },
            );
        }
        let costliest = users
            .iter()
            .max_by_key(|(_, e)| e.hash.cost())
            .map(|(name, _)| name.clone());
        Ok(Passwords { users, costliest })
    }

    pub fn load(path: &Path) -> Result<Passwords, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Blocking (PBKDF2/argon2): call it off the async I/O threads (spawn_blocking).
    /// Constant-time comparison (subtle); an unknown user costs as much as the costliest
    /// known one, so timing does not tell which users exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let costliest = self.costliest.as_ref().and_then(|u| self.users.get(u));
        match (self.users.get(username), costliest) {
            (Some(entry), _) => entry.hash.verify(password),
            (None, Some(entry)) => {
                std::hint::black_box(entry.hash.verify(password));
                false
            }
            (None, None) => {
                let mut out = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &[0u8; 12], DUMMY_ITERATIONS, &mut out);
                std::hint::black_box(out);
                false
            }
        }
    }

    /// The stored hash line for a user, so a reload can tell that a connected user's entry
    /// changed or was removed. This is the hash field (after `username:`), trimmed.
    pub fn entry(&self, username: &str) -> Option<&str> {
        self.users.get(username).map(|e| e.encoded.as_str())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }
}

impl Hash {
    /// How much work a check takes, to rank entries (argon2 above any PBKDF2).
    fn cost(&self) -> u64 {
        match self {
            Hash::Sha512 { .. } => 0,
            Hash::Pbkdf2 { iterations, .. } => u64::from(*iterations),
            Hash::Argon2id { params, .. } => {
                (1 << 32) + u64::from(params.m_cost()) * u64::from(params.t_cost())
            }
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let (computed, expected) = match self {
            Hash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                (h.finalize().to_vec(), hash)
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (out, hash)
            }
            Hash::Argon2id {
                version,
                params,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                let argon = Argon2::new(Algorithm::Argon2id, *version, params.clone());
                // Params and salt were validated at parse, so this only fails on allocation.
                if argon.hash_password_into(password, salt, &mut out).is_err() {
                    return false;
                }
                (out, hash)
            }
        };
        bool::from(computed.ct_eq(expected))
    }
}

/// Decodes one hash field; the error names what is wrong, never the field's content.
fn decode_hash(encoded: &str) -> Result<Hash, String> {
    if let Some(rest) = encoded.strip_prefix("$6$") {
        let [salt, hash] = fields::<2>(rest).ok_or("`$6$` hash must be `$6$<salt>$<hash>`")?;
        let (salt, hash) = mosquitto_salt_hash(salt, hash, "$6$")?;
        Ok(Hash::Sha512 { salt, hash })
    } else if let Some(rest) = encoded.strip_prefix("$7$") {
        let [iterations, salt, hash] =
            fields::<3>(rest).ok_or("`$7$` hash must be `$7$<iterations>$<salt>$<hash>`")?;
        let iterations = parse_u32(iterations)
            .filter(|&n| n >= 1)
            .ok_or("`$7$` iteration count must be a positive integer")?;
        if iterations > MAX_PBKDF2_ITERATIONS {
            return Err(format!(
                "`$7$` iteration count {iterations} exceeds the limit of {MAX_PBKDF2_ITERATIONS}"
            ));
        }
        let (salt, hash) = mosquitto_salt_hash(salt, hash, "$7$")?;
        Ok(Hash::Pbkdf2 {
            iterations,
            salt,
            hash,
        })
    } else if let Some(rest) = encoded.strip_prefix("$argon2id$") {
        decode_argon2id(rest)
    } else if encoded.starts_with('$') {
        Err("unsupported hash type (expected $6$, $7$ or $argon2id$)".into())
    } else {
        Err("not a hash (plain-text passwords are not supported: run `mosquitto_passwd -U`)".into())
    }
}

/// Splits `a$b$c` into exactly N non-empty fields.
fn fields<const N: usize>(s: &str) -> Option<[&str; N]> {
    let mut it = s.split('$');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = it.next().filter(|f| !f.is_empty())?;
    }
    it.next().is_none().then_some(out)
}

fn parse_u32(s: &str) -> Option<u32> {
    // `u32::from_str` would also take a leading '+'.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// mosquitto's `$6$`/`$7$` fields: padded standard base64; it accepts 12-byte (2.0) and
/// 64-byte (2.1) salts and only 64-byte hashes.
fn mosquitto_salt_hash(salt: &str, hash: &str, kind: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| format!("`{kind}` salt is not valid base64"))?;
    if salt.len() != 12 && salt.len() != 64 {
        return Err(format!("`{kind}` salt must decode to 12 or 64 bytes"));
    }
    let hash = STANDARD
        .decode(hash)
        .map_err(|_| format!("`{kind}` hash is not valid base64"))?;
    if hash.len() != SHA512_LEN {
        return Err(format!("`{kind}` hash must decode to {SHA512_LEN} bytes"));
    }
    Ok((salt, hash))
}

/// The PHC string libargon2 writes: `$argon2id$v=19$m=M,t=T,p=P$<salt>$<hash>` (unpadded
/// base64; `v=` may be absent, meaning version 16). Parsed by hand rather than with
/// `argon2::PasswordHash`, which refuses salts over 48 bytes, and mosquitto 2.1 writes 64.
fn decode_argon2id(rest: &str) -> Result<Hash, String> {
    const SHAPE: &str =
        "`$argon2id$` hash must be `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>`";
    let parts: Vec<&str> = rest.split('$').collect();
    let (version, params, salt, hash) = match parts.as_slice() {
        [v, p, s, h] => (v.strip_prefix("v=").ok_or(SHAPE)?, *p, *s, *h),
        [p, s, h] => ("16", *p, *s, *h),
        _ => return Err(SHAPE.into()),
    };
    let version = parse_u32(version)
        .and_then(|v| Version::try_from(v).ok())
        .ok_or("unsupported `$argon2id$` version (expected v=19 or v=16)")?;
    let mut mtp = params.split(',');
    let mut param = |key: &str| {
        mtp.next()
            .and_then(|kv| kv.strip_prefix(key))
            .and_then(parse_u32)
            .ok_or(SHAPE)
    };
    let (m, t, p) = (param("m=")?, param("t=")?, param("p=")?);
    if mtp.next().is_some() {
        return Err(SHAPE.into());
    }
    if m > MAX_ARGON2_MEMORY_KIB {
        return Err(format!(
            "`$argon2id$` memory cost m={m} KiB exceeds the limit of {MAX_ARGON2_MEMORY_KIB} KiB"
        ));
    }
    if t > MAX_ARGON2_PASSES {
        return Err(format!(
            "`$argon2id$` pass count t={t} exceeds the limit of {MAX_ARGON2_PASSES}"
        ));
    }
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .map_err(|_| "`$argon2id$` salt is not valid unpadded base64")?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(format!(
            "`$argon2id$` salt must be at least {} bytes",
            argon2::MIN_SALT_LEN
        ));
    }
    let hash = STANDARD_NO_PAD
        .decode(hash)
        .map_err(|_| "`$argon2id$` hash is not valid unpadded base64")?;
    let params = Params::new(m, t, p, Some(hash.len()))
        .map_err(|e| format!("invalid `$argon2id$` parameters: {e}"))?;
    Ok(Hash::Argon2id {
        version,
        params,
        salt,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mosquitto_passwd -b -c x.pw alice 's3cret'` (mosquitto 2.0.11).
    const ALICE_7: &str = "alice:$7$101$9Q2n1Dg+kbkaIxS3$O6JCgtwmverRmmRrvctp6wX8fwipwhi6bOCO3CH8CFNznD4OyglDYgsGJxx5Uv1kv0CNFSL7SbmEtyWLsIN2iw==";
    /// `mosquitto_passwd -H sha512 -b -c y.pw bob 'hunter2'` (mosquitto 2.0.11).
    const BOB_6: &str = "bob:$6$iR0xjKeEPNRcdQJ2$ZSNELouTFdlxCIgRuyoftmzotaBn0pa4NlN9uHu1hgE2jX1/KAGXnOEFw02QF/4/SWt5bzp2XrjvSMXq88zWag==";
    /// Python hashlib: sha512(b"pa:ss word" + b"0123456789ab"), 12-byte salt.
    const CAROL_6: &str = "carol:$6$MDEyMzQ1Njc4OWFi$DtLKCqxLeHfvYqRB/LWezk/aHq7I+ZretSREn7LKshM3PhWGSkJmspnUgjolwEv04AxrldF8fBLdMIdycqy7IQ==";
    /// Python hashlib.pbkdf2_hmac("sha512", b"longer salt", <64-byte salt>, 1000, 64): the
    /// 64-byte salt that mosquitto 2.1 writes.
    const ERIN_7: &str = "erin:$7$1000$c2x1aWNlLXNhbHQtMDEyMzQ1Njc4OS1zbHVpY2Utc2FsdC0wMTIzNDU2Nzg5LXNsdWljZS1zYWx0LTAxMjM0NQ==$4wZF7UXaHSw+qWh6KaP9Ew1gXIFrHEA2yGTnQaAOA9debW9d0Ql8LnZUGDCFbvoayKkVZ6nILki07gimaigQ7Q==";
    /// argon2-cffi 25.1 (libargon2): "c0rrect horse", salt b"sluice-test-salt", m=19456,t=2,p=1.
    const FRANK_A2: &str = "frank:$argon2id$v=19$m=19456,t=2,p=1$c2x1aWNlLXRlc3Qtc2FsdA$8moZqvZj/cEy5Cx2YNpexskXxTMQbhdWCEQKcsBUGNc";
    /// argon2-cffi, shaped like mosquitto 2.1 (64-byte salt and hash, t=1,p=1; m lowered from
    /// 47104 to keep debug-build tests fast): "mosq-2.1 pw", salt bytes 0..64.
    const DAVE_A2: &str = "dave:$argon2id$v=19$m=1024,t=1,p=1$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw$qNqqMz+vnE7qV3ET9FiiZetR547OwkF7O4rKISOg7ObjqJNEmPjc9rtQ+y+EDOSrRtMK9k1L5oXv9vDlcdiGeg";

    fn parse_err(text: &str) -> (usize, String) {
        match Passwords::parse(text) {
            Err(PasswordFileError::Parse { line, reason }) => (line, reason),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn random_bytes<const N: usize>() -> [u8; N] {
        use std::io::Read as _;
        let mut buf = [0u8; N];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .expect("read /dev/urandom");
        buf
    }

    #[test]
    fn mosquitto_2_0_pbkdf2_vector() {
        let pw = Passwords::parse(ALICE_7).expect("parse");
        assert_eq!(pw.len(), 1);
        assert!(pw.verify("alice", b"s3cret"));
        assert!(!pw.verify("alice", b"s3cret "));
        assert!(!pw.verify("alice", b""));
        assert!(!pw.verify("Alice", b"s3cret"));
        assert!(!pw.verify("mallory", b"s3cret"));
    }

    #[test]
    fn sha512_and_64_byte_salt_vectors() {
        let text = [BOB_6, CAROL_6, ERIN_7].join("\n");
        let pw = Passwords::parse(&text).expect("parse");
        assert!(pw.verify("bob", b"hunter2"));
        assert!(!pw.verify("bob", b"hunter3"));
        // The password itself may hold ':'; only the first one on a line splits.
        assert!(pw.verify("carol", b"pa:ss word"));
        assert!(!pw.verify("carol", b"pa:ss"));
        assert!(pw.verify("erin", b"longer salt"));
        assert!(!pw.verify("erin", b"longer sal"));
    }

    #[test]
    fn argon2id_fixed_vectors_from_libargon2() {
        let text = [FRANK_A2, DAVE_A2].join("\n");
        let pw = Passwords::parse(&text).expect("parse");
        assert!(pw.verify("frank", b"c0rrect horse"));
        assert!(!pw.verify("frank", b"c0rrect horsE"));
        assert!(pw.verify("dave", b"mosq-2.1 pw"));
        assert!(!pw.verify("dave", b"mosq-2.0 pw"));
    }

    #[test]
    fn argon2id_generated_by_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("salt");
        let params = Params::new(1024, 2, 1, None).expect("params");
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"gen pw", &salt)
            .expect("hash")
            .to_string();
        let pw = Passwords::parse(&format!("gen:{phc}\n")).expect("parse");
        assert!(pw.verify("gen", b"gen pw"));
        assert!(!pw.verify("gen", b"gen pW"));
        assert_eq!(pw.entry("gen"), Some(phc.as_str()));
    }

    #[test]
    fn comments_blanks_crlf_and_entry() {
        let text = format!("# users\r\n\r\n   \n{ALICE_7}\r\n  # indented comment\n{BOB_6}  \r\n");
        let pw = Passwords::parse(&text).expect("parse");
        assert_eq!(pw.len(), 2);
        assert_ne!(pw.len(), 0);
        assert!(pw.verify("alice", b"s3cret"));
        assert!(pw.verify("bob", b"hunter2"));
        assert_eq!(pw.entry("bob"), BOB_6.strip_prefix("bob:"));
        assert_eq!(pw.entry("nobody"), None);
        assert_eq!(Passwords::parse("# nothing\n\n").expect("parse").len(), 0);
    }

    #[test]
    fn malformed_lines_name_line_and_reason_without_secrets() {
        let salt = "9Q2n1Dg+kbkaIxS3";
        let cases: &[(&str, &str)] = &[
            ("alice", "expected `username:hash`"),
            (":$6$x$y", "empty username"),
            ("alice:s3cret", "plain-text"),
            ("alice:$5$abc$def", "unsupported hash type"),
            ("alice:$6$9Q2n1Dg+kbkaIxS3", "`$6$` hash must be"),
            (
                "alice:$7$abc$9Q2n1Dg+kbkaIxS3$AAAA",
                "iteration count must be",
            ),
            (
                "alice:$7$0$9Q2n1Dg+kbkaIxS3$AAAA",
                "iteration count must be",
            ),
            (
                "alice:$7$101$9Q2n1Dg+kbkaIxS3$AAAA",
                "hash must decode to 64 bytes",
            ),
            ("alice:$7$101$!!!!$AAAA", "salt is not valid base64"),
            (
                "alice:$7$101$AAAA$AAAA",
                "salt must decode to 12 or 64 bytes",
            ),
            ("alice:$7$101$9Q2n1Dg+kbkaIxS3$AAAA$", "`$7$` hash must be"),
            (
                "alice:$argon2id$v=19$m=1024,t=1$c2FsdHNhbHQ$AAAAAAAA",
                "`$argon2id$` hash must be",
            ),
            (
                "alice:$argon2id$v=18$m=1024,t=1,p=1$c2FsdHNhbHQ$AAAAAAAA",
                "version",
            ),
            (
                "alice:$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$AAAAAAAA",
                "salt must be at least 8",
            ),
            (
                "alice:$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$AAAAAAAA",
                "invalid `$argon2id$` parameters",
            ),
        ];
        for (bad, why) in cases {
            let text = format!("# header\n{ALICE_7}\n\n{}\n", bad.replace("alice", "zed"));
            let (line, reason) = parse_err(&text);
            assert_eq!(line, 4, "{bad}");
            assert!(reason.contains(why), "{bad}: {reason}");
            assert!(
                !reason.contains(salt),
                "{bad}: reason leaks the salt: {reason}"
            );
            assert!(!reason.contains("s3cret"), "{bad}: {reason}");
        }
        let err = Passwords::parse("x:$7$101$!!!!$AAAA")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "password file line 1: `$7$` salt is not valid base64");
    }

    #[test]
    fn absurd_cost_parameters_are_refused_at_parse() {
        let (_, reason) = parse_err("a:$7$10000001$9Q2n1Dg+kbkaIxS3$AAAA");
        assert!(reason.contains("exceeds the limit"), "{reason}");
        let (_, reason) = parse_err("a:$7$99999999999$9Q2n1Dg+kbkaIxS3$AAAA");
        assert!(reason.contains("positive integer"), "{reason}");
        let (_, reason) = parse_err("a:$argon2id$v=19$m=1048577,t=1,p=1$c2FsdHNhbHQ$AAAAAAAA");
        assert!(reason.contains("memory cost"), "{reason}");
        let (_, reason) =
            parse_err("a:$argon2id$v=19$m=1024,t=4000000000,p=1$c2FsdHNhbHQ$AAAAAAAA");
        assert!(reason.contains("pass count"), "{reason}");
    }

    #[test]
    fn duplicate_user_is_an_error() {
        let text = format!("{ALICE_7}\n{BOB_6}\n{}\n", BOB_6.replace("bob:", "alice:"));
        match Passwords::parse(&text) {
            Err(PasswordFileError::Duplicate {
                line,
                first,
                username,
            }) => assert_eq!((line, first, username.as_str()), (3, 1, "alice")),
            other => panic!("expected a duplicate error, got {other:?}"),
        }
    }

    #[test]
    fn debug_does_not_print_hashes() {
        let pw = Passwords::parse(&format!("{ALICE_7}\n{FRANK_A2}")).expect("parse");
        let dbg = format!("{pw:?}");
        assert!(!dbg.contains('$'), "{dbg}");
        assert!(dbg.contains("users: 2"), "{dbg}");
    }

    #[test]
    fn load_reports_io_errors_with_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.pw");
        match Passwords::load(&path) {
            Err(PasswordFileError::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    /// Files written by the real tool. CI installs it and sets SLUICE_REQUIRE_TOOLS=1, so a
    /// missing tool there is a failure, not a silent skip.
    #[test]
    fn real_mosquitto_passwd_files() {
        let tool = Path::new("/usr/bin/mosquitto_passwd");
        if !tool.exists() {
            assert!(
                std::env::var("SLUICE_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "SLUICE_REQUIRE_TOOLS=1 but {} is missing",
                tool.display()
            );
            eprintln!("note: {} not installed, skipping", tool.display());
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.pw");
        let run = |args: &[&str]| {
            let out = std::process::Command::new(tool)
                .args(args)
                .output()
                .expect("run mosquitto_passwd");
            assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
        };
        let file = path.to_str().expect("utf-8 temp path");
        run(&["-b", "-c", file, "dev-1", "pässword: with spaces"]);
        run(&["-b", file, "dev-2", "other"]);
        run(&["-H", "sha512", "-b", file, "legacy", "old-style"]);
        let pw = Passwords::load(&path).expect("load");
        assert_eq!(pw.len(), 3);
        assert!(pw.entry("dev-1").is_some_and(|e| e.starts_with("$7$")));
        assert!(pw.entry("legacy").is_some_and(|e| e.starts_with("$6$")));
        assert!(pw.verify("dev-1", "pässword: with spaces".as_bytes()));
        assert!(pw.verify("dev-2", b"other"));
        assert!(pw.verify("legacy", b"old-style"));
        assert!(!pw.verify("dev-1", b"other"));
        assert!(!pw.verify("dev-3", b"other"));
        // Re-setting a password changes the entry a reload compares.
        let before = pw.entry("dev-2").map(str::to_owned);
        run(&["-b", file, "dev-2", "rotated"]);
        let pw = Passwords::load(&path).expect("reload");
        assert_ne!(pw.entry("dev-2").map(str::to_owned), before);
        assert!(pw.verify("dev-2", b"rotated"));
        assert!(!pw.verify("dev-2", b"other"));
    }
}
