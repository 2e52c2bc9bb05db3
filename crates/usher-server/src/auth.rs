//! Who is asking and what they may do: the one authorization model of the management API and the
//! console.
//!
//! A caller proves it holds a shared access policy (a service SAS token on the management API, the
//! policy's key at console sign-in) and becomes a [`Principal`]: the policy's name and its rights,
//! read from the store on every request so a changed or deleted policy takes effect at once. Every
//! management operation is guarded by [`authorize`], the one place a right is checked.

use usher_proto::SymmetricKey;
use usher_proto::sas::{Now, SasToken};

use crate::app::App;
use crate::error::{ApiError, AuthError};
use crate::store::Policy;
pub use crate::store::Right;

/// An authenticated caller: the policy it proved it holds, and that policy's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    policy: String,
    rights: Vec<Right>,
}

impl Principal {
    /// The principal a policy makes.
    pub fn of_policy(policy: &Policy) -> Self {
        Self {
            policy: policy.name.clone(),
            rights: policy.rights.clone(),
        }
    }

    /// The policy's name.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Whether the principal holds `right`. Pages use it to decide what to show; to decide
    /// what to do, call [`authorize`].
    pub fn has(&self, right: Right) -> bool {
        self.rights.contains(&right)
    }
}

/// The one rights check: `Ok` if `principal` holds `right`, else `MissingRight` (401003 on the
/// management API, 403 in the console).
pub fn authorize(principal: &Principal, right: Right) -> Result<(), ApiError> {
    if principal.has(right) {
        Ok(())
    } else {
        Err(ApiError::MissingRight {
            policy: principal.policy.clone(),
            right: right.name(),
        })
    }
}

/// Authenticates a management-API request by its `Authorization` header: a service SAS token for
/// one of this instance's host names, unexpired, naming a known policy and signed with one of its
/// keys.
pub async fn authenticate_token(
    app: &App,
    authorization: Option<&str>,
) -> Result<Principal, ApiError> {
    let text = authorization.ok_or(AuthError::MissingAuthorization)?;
    let token = SasToken::parse(text).map_err(AuthError::from)?;
    let now = Now {
        unix_secs: unix_now(),
        skew_secs: app.settings.clock_skew_secs,
    };
    let mut last = None;
    let mut policy_name = None;
    for host in &app.hostnames {
        match token.check_service_claims(host, now) {
            Ok(p) => {
                policy_name = Some(p.to_owned());
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let policy_name = match (policy_name, last) {
        (Some(p), _) => p,
        (None, Some(e)) => return Err(AuthError::Token(e).into()),
        (None, None) => return Err(AuthError::UnknownPolicy(String::new()).into()),
    };
    let policy = app
        .store
        .policy(&policy_name)
        .await?
        .ok_or_else(|| AuthError::UnknownPolicy(policy_name.clone()))?;
    policy.check_signature(&token).map_err(AuthError::from)?;
    Ok(Principal::of_policy(&policy))
}

/// Which of a policy's two keys a caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Primary,
    Secondary,
}

/// Authenticates by a policy's name and one of its keys (console sign-in). The key is compared in
/// constant time after decoding, so `abc=` and its canonical spelling are the same key.
pub async fn authenticate_key(
    app: &App,
    policy_name: &str,
    key: &str,
) -> Result<(Principal, KeySlot), ApiError> {
    let policy = app
        .store
        .policy(policy_name)
        .await?
        .ok_or_else(|| AuthError::UnknownPolicy(policy_name.to_owned()))?;
    let slot = key_slot(&policy, key).ok_or(AuthError::WrongPolicyKey)?;
    Ok((Principal::of_policy(&policy), slot))
}

/// Which of the policy's keys `key` is, if either.
pub fn key_slot(policy: &Policy, key: &str) -> Option<KeySlot> {
    let given = SymmetricKey::from_base64(key.trim()).ok()?;
    let same = |stored: &SymmetricKey| -> bool {
        use subtle::ConstantTimeEq as _;
        stored.as_bytes().ct_eq(given.as_bytes()).into()
    };
    if same(&policy.primary_key) {
        Some(KeySlot::Primary)
    } else if same(&policy.secondary_key) {
        Some(KeySlot::Secondary)
    } else {
        None
    }
}

/// Re-checks a console session: the principal of the policy named `policy_name`, if it still
/// exists and one of its keys is still the key the session was opened with (`opened_with` says
/// which key that was); `None` once the key was rotated or the policy deleted.
pub async fn principal_still_holding(
    app: &App,
    policy_name: &str,
    opened_with: impl Fn(&SymmetricKey) -> bool,
) -> Result<Option<Principal>, ApiError> {
    let Some(policy) = app.store.policy(policy_name).await? else {
        return Ok(None);
    };
    let holds = [&policy.primary_key, &policy.secondary_key]
        .iter()
        .any(|k| opened_with(k));
    Ok(holds.then(|| Principal::of_policy(&policy)))
}

fn unix_now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}
