//! The App JWT (SPEC §7.2): RS256, `iat` backdated 60 s, `exp` 9 minutes ahead, `iss` the app id,
//! signed at most once every 8 minutes and shared by every call made as the App.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::time::Instant;

use super::TokenError;

/// GitHub rejects an `iat` in the future; clocks drift, so it is backdated (GitHub's docs:
/// "set this 60 seconds in the past to protect against clock drift").
const BACKDATE: Duration = Duration::from_secs(60);
/// GitHub refuses JWTs valid for more than 10 minutes; 9 leaves room for drift.
const LIFETIME: Duration = Duration::from_secs(9 * 60);
/// Re-sign before the cached JWT gets near its `exp` (8 min + 60 s backdate < 9 min exp).
pub const RESIGN_AFTER: Duration = Duration::from_secs(8 * 60);

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    /// GitHub accepts the app id as a string or a number; a string matches octocrab and the docs' Ruby sample.
    iss: String,
}

struct Signed {
    /// `Bearer <jwt>`, marked sensitive.
    header: HeaderValue,
    /// Tokio time of signing, for the re-sign decision (testable with paused time).
    at: Instant,
    /// Wall-clock time of signing: a suspended machine's monotonic clock can lag the wall clock
    /// GitHub checks `exp` against.
    wall: SystemTime,
}

/// Signs and caches the JWT of one App. `Debug` never shows the key or the JWT.
pub struct AppJwt {
    app_id: u64,
    key: EncodingKey,
    cached: Mutex<Option<Signed>>,
    signatures: AtomicU64,
}

impl fmt::Debug for AppJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppJwt")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl AppJwt {
    /// Parses the PEM private key once (startup).
    pub fn new(app_id: u64, private_key: &SecretString) -> Result<Self, TokenError> {
        let key =
            EncodingKey::from_rsa_pem(private_key.expose_secret().as_bytes()).map_err(|err| {
                TokenError::Key {
                    app_id,
                    message: err.to_string(),
                }
            })?;
        Ok(AppJwt {
            app_id,
            key,
            cached: Mutex::new(None),
            signatures: AtomicU64::new(0),
        })
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// How many times a JWT was signed (tests check that it is not per request).
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }

    /// The `Authorization` value to call GitHub as the App: the cached JWT while it is younger
    /// than 8 minutes, else a freshly signed one.
    pub fn authorization(&self) -> Result<HeaderValue, TokenError> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signed) = cached.as_ref() {
            let wall_age = wall.duration_since(signed.wall).unwrap_or(Duration::ZERO);
            if now.duration_since(signed.at) < RESIGN_AFTER && wall_age < RESIGN_AFTER {
                return Ok(signed.header.clone());
            }
        }
        let header = self.sign(wall)?;
        *cached = Some(Signed {
            header: header.clone(),
            at: now,
            wall,
        });
        Ok(header)
    }

    fn sign(&self, wall: SystemTime) -> Result<HeaderValue, TokenError> {
        let unix = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let claims = Claims {
            iat: unix.saturating_sub(BACKDATE).as_secs(),
            exp: (unix + LIFETIME).as_secs(),
            iss: self.app_id.to_string(),
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|err| TokenError::Key {
                app_id: self.app_id,
                message: format!("cannot sign the App JWT: {err}"),
            })?;
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let mut header =
            HeaderValue::from_str(&format!("Bearer {jwt}")).map_err(|_| TokenError::Key {
                app_id: self.app_id,
                message: "signed JWT is not a valid header value".to_string(),
            })?;
        header.set_sensitive(true);
        Ok(header)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../tests/fixtures/app1.key.pem");
    const PUB: &str = include_str!("../../tests/fixtures/app1.pub.pem");

    fn jwt_of(header: &HeaderValue) -> String {
        header
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn jwt_is_resigned_at_most_every_eight_minutes() {
        let app = AppJwt::new(12345, &SecretString::from(KEY)).unwrap();
        let first = app.authorization().unwrap();
        assert_eq!(app.signatures(), 1);
        // Every 30 s for 7.5 minutes: the same JWT.
        for _ in 0..15 {
            tokio::time::advance(Duration::from_secs(30)).await;
            assert_eq!(app.authorization().unwrap(), first);
        }
        assert_eq!(app.signatures(), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        let _ = app.authorization().unwrap();
        assert_eq!(app.signatures(), 2);
        // A day of requests every minute: one signature per 8 minutes.
        for _ in 0..(24 * 60) {
            tokio::time::advance(Duration::from_secs(60)).await;
            let _ = app.authorization().unwrap();
        }
        assert_eq!(app.signatures(), 2 + 24 * 60 / 8);
    }

    #[tokio::test]
    async fn jwt_verifies_with_backdated_iat_and_nine_minute_exp() {
        let app = AppJwt::new(12345, &SecretString::from(KEY)).unwrap();
        let jwt = jwt_of(&app.authorization().unwrap());
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_issuer(&["12345"]);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUB.as_bytes()).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation).unwrap();
        let iat = data.claims["iat"].as_u64().unwrap();
        let exp = data.claims["exp"].as_u64().unwrap();
        assert_eq!(exp - iat, 600);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(iat <= now - 59, "iat is backdated");
    }

    #[test]
    fn bad_key_is_an_error_and_debug_hides_the_key() {
        let err = AppJwt::new(7, &SecretString::from("not a pem")).unwrap_err();
        assert!(err.to_string().contains("7"), "{err}");
        let app = AppJwt::new(12345, &SecretString::from(KEY)).unwrap();
        let shown = format!("{app:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(app.authorization().unwrap().is_sensitive());
    }
}
