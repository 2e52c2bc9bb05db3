//! Console sessions, kept on the server.
//!
//! The cookie holds only a random 256-bit session ID; the map holds, under the ID's SHA-256, the
//! policy's name, a digest of the key the user signed in with, the CSRF token and the expiry. The
//! policy's key never leaves the server. Each request re-reads the policy, so a session ends as
//! soon as its key is rotated or its policy deleted. Sessions live in memory: a restart signs
//! everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

/// The session cookie. `__Host-` makes the browser insist on Secure, Path=/ and no Domain, so no
/// other host (not even a subdomain) can set or overwrite it.
pub(crate) const SESSION_COOKIE: &str = "__Host-usher-session";
/// The cookie that carries the sign-in form's CSRF token (double submit: the form must echo it).
pub(crate) const SIGNIN_COOKIE: &str = "__Host-usher-signin";
/// How long a sign-in form stays valid.
pub(crate) const SIGNIN_TTL: Duration = Duration::from_secs(3600);
/// Most sessions held at once; past it, the one closest to expiry makes room.
const MAX_SESSIONS: usize = 10_000;

/// What the server remembers about one signed-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) policy: String,
    /// SHA-256 of the decoded key the user signed in with; the session is valid only while the
    /// policy still has that key.
    pub(crate) key_digest: [u8; 32],
    /// Every POST must carry this token.
    pub(crate) csrf: String,
    pub(crate) expires: Instant,
    /// A one-time message for the next page (what the last form did).
    pub(crate) flash: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Why a cookie does not open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// No cookie, or one the server does not know (signed out, or the server restarted).
    Unknown,
    /// The session's lifetime is over.
    Expired,
}

/// The session table.
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// How long a new session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session; returns the cookie value.
    pub(crate) fn create(&self, policy: &str, key_digest: [u8; 32]) -> Option<String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let session = Session {
            policy: policy.to_owned(),
            key_digest,
            csrf,
            expires: now + self.ttl,
            flash: None,
        };
        let mut map = self.map.lock().ok()?;
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&id), session);
        Some(id)
    }

    /// The live session a cookie names. An expired one is removed.
    pub(crate) fn get(&self, cookie: Option<&str>) -> Result<Session, Lookup> {
        let key = digest(cookie.ok_or(Lookup::Unknown)?);
        let mut map = self.map.lock().map_err(|_| Lookup::Unknown)?;
        let session = map.get(&key).ok_or(Lookup::Unknown)?;
        if session.expires <= Instant::now() {
            map.remove(&key);
            return Err(Lookup::Expired);
        }
        Ok(session.clone())
    }

    /// Ends a session.
    pub(crate) fn remove(&self, cookie: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&digest(cookie));
        }
    }

    /// Leaves a message for the session's next page.
    pub(crate) fn set_flash(&self, cookie: &str, message: String) {
        if let Ok(mut map) = self.map.lock()
            && let Some(s) = map.get_mut(&digest(cookie))
        {
            s.flash = Some(message);
        }
    }

    /// Takes the message left for this page, if any.
    pub(crate) fn take_flash(&self, cookie: &str) -> Option<String> {
        self.map
            .lock()
            .ok()?
            .get_mut(&digest(cookie))
            .and_then(|s| s.flash.take())
    }
}

/// SHA-256 of some text.
pub(crate) fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// SHA-256 of a key's decoded bytes.
pub(crate) fn key_digest(key: &usher_proto::SymmetricKey) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// 32 random bytes as unpadded base64url (a cookie- and form-safe token).
pub(crate) fn random_token() -> Option<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// Compares two tokens in constant time.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A `Set-Cookie` value with the flags every console cookie carries.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// A `Set-Cookie` value that removes a cookie.
pub(crate) fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The value of one cookie in a request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests;
