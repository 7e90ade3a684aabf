//! Talking to GitHub as the App: JWTs ([`app`]), installation lookups ([`installations`]) and
//! installation tokens ([`tokens`]), all cached, all single-flight.

pub mod app;
pub mod installations;
pub mod tokens;

use std::sync::Arc;

use crate::config::Config;
use crate::upstream::UpstreamClient;

/// Everything the resolver needs from GitHub, with its caches. One per process.
pub struct GitHub {
    _private: (),
}

impl GitHub {
    pub fn new(config: Arc<Config>, client: UpstreamClient) -> Self {
        let _ = (config, client);
        unimplemented!("resolver helper")
    }

    /// Drops the cached token with this hash (the server saw a `401` for it) so the next request
    /// mints a fresh one.
    pub fn evict_token(&self, hashed_token: &str) {
        let _ = hashed_token;
        unimplemented!("resolver helper")
    }
}
