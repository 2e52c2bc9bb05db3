//! The registration decision: given an attested device, its enrollment as it is now, its previous
//! registration, the linked hubs and (for custom allocation) the webhook's answer, what happens.
//!
//! Pure: no store, no clock, no randomness. The server runs [`decide`] inside the store's write
//! transaction over the rows as they are at commit, then carries out the [`Outcome`] in that same
//! transaction, so two registrations of one device cannot interleave.
//!
//! Semantics (`service-api.md` §7): the policy is the enrollment's `allocationPolicy`, else the
//! instance default. The candidates are the enrollment's `iotHubs`, else every linked hub (those
//! with `applyAllocationPolicy` on). `hashed` is weighted rendezvous hashing; `static` takes the one
//! hub named, or with none named allocates among all linked hubs as `hashed` does; `geoLatency`
//! prefers candidates in the device's own location (from the instance's network map), ties broken
//! by weight, else falls back to `hashed`; `custom` asks the webhook. Re-registration follows the
//! reprovision policy (§7.4).

use serde_json::Value;

use crate::allocation::{self, Candidate};
use crate::error_code::ErrorCode;
use crate::model::Substatus;
use crate::service::{AllocationPolicy, ReprovisionPolicy};

/// A hub linked to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHub {
    pub hostname: String,
    /// An Azure-style region name (`westeurope`), for `geoLatency`.
    pub location: Option<String>,
    /// 1 to 1000.
    pub weight: u32,
    /// Whether the hub takes part in allocation when the enrollment names no hubs.
    pub apply_allocation_policy: bool,
}

/// What the enrollment says about allocation, as it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentView {
    pub enabled: bool,
    /// The individual enrollment's `deviceId`; a group's devices use their registration ID.
    pub device_id: Option<String>,
    pub allocation_policy: Option<AllocationPolicy>,
    /// The hubs the enrollment names (`iotHubs`, or the legacy `iotHubHostName`).
    pub iot_hubs: Vec<String>,
    pub reprovision_policy: Option<ReprovisionPolicy>,
    pub initial_twin: Option<Value>,
}

/// The device's previous registration, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub assigned: Option<Assignment>,
    /// The hub the device was first assigned to (`reprovisionedToInitialAssignment`).
    pub initial_hub: Option<String>,
}

/// Where a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub hub: String,
    pub device_id: String,
    pub substatus: Substatus,
}

/// What a custom allocation webhook answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Webhook {
    /// 200 with a body: the hub it chose (if any), an initial twin and a payload for the device.
    Answered {
        hub: Option<String>,
        initial_twin: Option<Value>,
        payload: Option<Value>,
    },
    /// 401.
    Unauthorized,
    /// Any other failure, after retries: status, or the transport error.
    Failed(String),
}

/// Everything the decision looks at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// As the device spelled it (hashing lower-cases it).
    pub registration_id: &'a str,
    pub enrollment: &'a EnrollmentView,
    pub previous: Option<&'a Previous>,
    pub hubs: &'a [LinkedHub],
    /// The instance default policy (never `custom`).
    pub default_policy: AllocationPolicy,
    /// The device's location by the instance's network map, for `geoLatency`.
    pub device_location: Option<&'a str>,
    /// The webhook's answer, once it has been called (custom allocation only).
    pub webhook: Option<&'a Webhook>,
}

/// What the device's hub identity starts with.
#[derive(Debug, Clone, PartialEq)]
pub enum Twin {
    /// The enrollment's (or the webhook's) initial twin: at first assignment and on reset.
    Initial(Option<Value>),
    /// The twin of the identity it had on another hub (`deviceDataMigrated`).
    MigrateFrom { hub: String, device_id: String },
    /// The identity it has on this hub, as it is (re-registration without a reset).
    Keep,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // Made once per registration and consumed at once.
pub enum Outcome {
    /// The enrollment is disabled: nothing is created; the previous record stays as it was.
    Disabled,
    /// Custom allocation: the webhook must be called, with these hubs, before deciding.
    CallWebhook {
        linked_hubs: Vec<String>,
    },
    Assigned {
        assignment: Assignment,
        twin: Twin,
        /// An identity to remove (the device left that hub, or moved to another device ID).
        remove: Option<(String, String)>,
        /// The webhook's payload, for the device.
        payload: Option<Value>,
        /// The hub it was first assigned to, kept on the record.
        initial_hub: String,
    },
    Failed {
        code: ErrorCode,
        message: String,
    },
}

fn failed(code: ErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        code,
        message: message.into(),
    }
}

/// Decides a registration.
pub fn decide(i: &Inputs<'_>) -> Outcome {
    let e = i.enrollment;
    if !e.enabled {
        return Outcome::Disabled;
    }
    let device_id = e
        .device_id
        .clone()
        .unwrap_or_else(|| i.registration_id.to_owned());
    let current = i.previous.and_then(|p| p.assigned.as_ref());
    let reprovision = e.reprovision_policy.unwrap_or_default();
    let find = |host: &str| {
        i.hubs
            .iter()
            .find(|h| h.hostname.eq_ignore_ascii_case(host))
    };

    // "Never re-provision": an assigned device stays where it is while that hub is linked.
    if !reprovision.update_hub_assignment
        && let Some(cur) = current
        && let Some(hub) = find(&cur.hub)
    {
        return assigned(i, hub.hostname.clone(), device_id, reprovision, None, None);
    }

    let policy = e.allocation_policy.unwrap_or(i.default_policy);
    let named: Vec<&LinkedHub> = e.iot_hubs.iter().filter_map(|n| find(n)).collect();
    if named.len() < e.iot_hubs.len() {
        let missing = e
            .iot_hubs
            .iter()
            .find(|n| find(n).is_none())
            .cloned()
            .unwrap_or_default();
        return failed(
            ErrorCode::LinkedHubNotFound,
            format!("the hub {missing:?} the enrollment names is not linked"),
        );
    }
    // Named hubs take part whatever their applyAllocationPolicy; unnamed, only those with it on.
    let pool: Vec<&LinkedHub> = if named.is_empty() {
        i.hubs
            .iter()
            .filter(|h| h.apply_allocation_policy)
            .collect()
    } else {
        named
    };
    let chosen = match policy {
        AllocationPolicy::Custom => {
            let Some(webhook) = i.webhook else {
                return Outcome::CallWebhook {
                    linked_hubs: pool.iter().map(|h| h.hostname.clone()).collect(),
                };
            };
            return custom(i, webhook, &pool, device_id, reprovision);
        }
        AllocationPolicy::Static => match pool.as_slice() {
            [one] if !e.iot_hubs.is_empty() => Some(*one),
            // No hub named: the linked hubs, as the instance default allocates (DPS accepts a
            // static enrollment without hubs).
            _ => match i.default_policy {
                AllocationPolicy::GeoLatency => geo(i, &pool),
                _ => hashed(i.registration_id, &pool),
            },
        },
        AllocationPolicy::Hashed => hashed(i.registration_id, &pool),
        AllocationPolicy::GeoLatency => geo(i, &pool),
    };
    match chosen {
        Some(hub) => assigned(i, hub.hostname.clone(), device_id, reprovision, None, None),
        None => failed(
            ErrorCode::LinkedHubNotFound,
            "no linked hub is available for allocation",
        ),
    }
}

fn hashed<'h>(registration_id: &str, pool: &[&'h LinkedHub]) -> Option<&'h LinkedHub> {
    let candidates: Vec<Candidate<'_>> = pool
        .iter()
        .map(|h| Candidate {
            hostname: &h.hostname,
            weight: h.weight,
        })
        .collect();
    let host = allocation::hashed(registration_id, &candidates)?;
    pool.iter().copied().find(|h| h.hostname == host)
}

/// `geoLatency` without latency data: the candidates in the device's own location (by the
/// instance's network map), weighted; if none, all candidates, weighted.
fn geo<'h>(i: &Inputs<'_>, pool: &[&'h LinkedHub]) -> Option<&'h LinkedHub> {
    if let Some(location) = i.device_location {
        let near: Vec<&LinkedHub> = pool
            .iter()
            .copied()
            .filter(|h| {
                h.location
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(location))
            })
            .collect();
        if !near.is_empty() {
            return hashed(i.registration_id, &near);
        }
    }
    hashed(i.registration_id, pool)
}

fn custom(
    i: &Inputs<'_>,
    webhook: &Webhook,
    pool: &[&LinkedHub],
    device_id: String,
    reprovision: ReprovisionPolicy,
) -> Outcome {
    match webhook {
        Webhook::Unauthorized => failed(
            ErrorCode::CustomAllocationUnauthorizedAccess,
            "Custom allocation failed with status code: 401",
        ),
        Webhook::Failed(why) => failed(
            ErrorCode::CustomAllocationFailed,
            format!("Custom allocation failed: {why}"),
        ),
        Webhook::Answered {
            hub,
            initial_twin,
            payload,
        } => {
            let Some(host) = hub.as_deref().filter(|h| !h.trim().is_empty()) else {
                return failed(
                    ErrorCode::CustomAllocationIotHubNotSpecified,
                    "Custom allocation did not name an IoT hub (iotHubHostName is empty)",
                );
            };
            let Some(hub) = pool.iter().find(|h| h.hostname.eq_ignore_ascii_case(host)) else {
                return failed(
                    ErrorCode::CustomAllocationFailed,
                    format!(
                        "Custom allocation chose {host:?}, which is not one of the linked hubs offered"
                    ),
                );
            };
            assigned(
                i,
                hub.hostname.clone(),
                device_id,
                reprovision,
                // A twin from the webhook overrides the enrollment's and any migration.
                initial_twin.clone().map(Some),
                payload.clone(),
            )
        }
    }
}

/// The assignment to `hub`, with the substatus, twin and removal re-registration calls for.
fn assigned(
    i: &Inputs<'_>,
    hub: String,
    device_id: String,
    reprovision: ReprovisionPolicy,
    webhook_twin: Option<Option<Value>>,
    payload: Option<Value>,
) -> Outcome {
    let previous = i.previous.and_then(|p| p.assigned.as_ref());
    let initial_hub = i
        .previous
        .and_then(|p| p.initial_hub.clone())
        .unwrap_or_else(|| hub.clone());
    let initial_twin = || Twin::Initial(i.enrollment.initial_twin.clone());
    let (substatus, twin, remove) = match previous {
        None => (Substatus::InitialAssignment, initial_twin(), None),
        Some(cur) => {
            let same_hub = cur.hub.eq_ignore_ascii_case(&hub);
            let same_identity = same_hub && cur.device_id == device_id;
            let remove = (!same_identity).then(|| (cur.hub.clone(), cur.device_id.clone()));
            if !reprovision.update_hub_assignment {
                // Never re-provision (the hub was unlinked: assigned afresh): keep the data if
                // the identity is the same one.
                if same_identity {
                    (cur.substatus, Twin::Keep, None)
                } else {
                    (Substatus::InitialAssignment, initial_twin(), remove)
                }
            } else if same_identity {
                if reprovision.migrate_device_data {
                    (cur.substatus, Twin::Keep, None)
                } else {
                    (Substatus::DeviceDataReset, initial_twin(), None)
                }
            } else {
                let twin = if reprovision.migrate_device_data {
                    Twin::MigrateFrom {
                        hub: cur.hub.clone(),
                        device_id: cur.device_id.clone(),
                    }
                } else {
                    initial_twin()
                };
                let substatus = if !same_hub && hub.eq_ignore_ascii_case(&initial_hub) {
                    Substatus::ReprovisionedToInitialAssignment
                } else if reprovision.migrate_device_data {
                    Substatus::DeviceDataMigrated
                } else {
                    Substatus::DeviceDataReset
                };
                (substatus, twin, remove)
            }
        }
    };
    let twin = match webhook_twin {
        Some(t) => Twin::Initial(t),
        None => twin,
    };
    Outcome::Assigned {
        assignment: Assignment {
            hub,
            device_id,
            substatus,
        },
        twin,
        remove,
        payload,
        initial_hub,
    }
}

#[cfg(test)]
mod tests;
