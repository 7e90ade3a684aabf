//! Secret canary: every form in which a credential could leak (the raw token, its `Basic
//! x-access-token:` encoding, each body line of a PEM key) and a search of everything the proxy
//! wrote for any of them. Reused by any test that wants "no secret anywhere".

use base64::Engine as _;

/// What to look for, with a label for the failure message (never the secret itself).
#[derive(Default)]
pub struct Secrets {
    needles: Vec<(String, String)>,
}

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token or key: the raw value and its git smart HTTP `Basic` encoding.
    pub fn token(&mut self, label: &str, secret: &str) -> &mut Self {
        self.needles.push((label.to_string(), secret.to_string()));
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{secret}"));
        self.needles.push((format!("{label} (basic)"), basic));
        self
    }

    /// Every body line of a PEM private key (the `-----BEGIN` lines are not secret).
    pub fn pem(&mut self, label: &str, pem: &str) -> &mut Self {
        for (i, line) in pem.lines().map(str::trim).enumerate() {
            if !line.is_empty() && !line.starts_with("-----") {
                self.needles
                    .push((format!("{label} line {i}"), line.to_string()));
            }
        }
        self
    }

    pub fn len(&self) -> usize {
        self.needles.len()
    }

    /// The labels of the secrets found in `haystack` (named `what` in the result).
    pub fn find_in(&self, what: &str, haystack: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(haystack);
        self.needles
            .iter()
            .filter(|(_, needle)| text.contains(needle.as_str()))
            .map(|(label, _)| format!("{label} in {what}"))
            .collect()
    }

    /// Panics naming each secret found in any of `(name, bytes)`.
    pub fn assert_absent<'a>(&self, places: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        let mut found = Vec::new();
        let mut searched = 0;
        for (what, bytes) in places {
            searched += 1;
            found.extend(self.find_in(what, bytes));
        }
        assert!(searched > 0, "nothing was searched");
        assert!(found.is_empty(), "secrets leaked: {found:?}");
    }
}

/// base64(SHA-256(token)): GitHub's audit-log `hashed_token`.
pub fn hashed_token(token: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(token.as_bytes()))
}
