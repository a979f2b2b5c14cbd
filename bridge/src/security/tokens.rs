//! HTTP bearer tokens: a file of `identity:sha256` lines, the SHA-256 of each token in hex,
//! so the file names who may post without holding anything a reader could post with.
//! A token is long and random, so one unsalted hash is enough and each request costs
//! one SHA-256, not a password hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file line {line}: {reason}")]
    Parse { line: usize, reason: String },
}

/// Identities by the SHA-256 of their tokens.
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<str>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.by_hash.len())
            .finish()
    }
}

impl Tokens {
    pub fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        let mut by_hash = HashMap::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |reason: &str| TokenFileError::Parse {
                line,
                reason: reason.to_owned(),
            };
            let (identity, hex) = trimmed
                .rsplit_once(':')
                .ok_or_else(|| err("expected `identity:sha256-of-token-in-hex`"))?;
            let identity = identity.trim();
            if identity.is_empty() || identity.contains(['/', '+', '#']) {
                return Err(err("the identity must be one non-empty topic level"));
            }
            let hash = decode_hex(hex.trim())
                .ok_or_else(|| err("the hash must be 64 hex digits (sha256sum of the token)"))?;
            if by_hash.insert(hash, Arc::from(identity)).is_some() {
                return Err(err("the same token is listed twice"));
            }
        }
        Ok(Tokens { by_hash })
    }

    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The identity a token stands for.
    pub fn identify(&self, token: &str) -> Option<Arc<str>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).cloned()
    }
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf %s secret-1 | sha256sum`, as the README has operators write the file.
    const SECRET_1: &str = "f7e7c36e458e80e6b6a2c67d0a9ec09bd718dadd7bfa8d6bf6e7ad526e46c2f7";

    #[test]
    fn tokens_name_their_identity_and_bad_lines_are_refused() {
        let tokens =
            Tokens::parse(&format!("# comment\n\n gateway-a : {SECRET_1}\r\n")).expect("parses");
        assert_eq!(tokens.identify("secret-1").as_deref(), Some("gateway-a"));
        assert_eq!(tokens.identify("secret-2"), None);
        assert_eq!(tokens.identify(""), None);
        for bad in ["no-colon", "a:123", "a/b:{h}", ":{h}", "a:{h}\nb:{h}"] {
            let text = bad.replace("{h}", &hex(&Sha256::digest(b"x")));
            assert!(Tokens::parse(&text).is_err(), "{bad}");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
