//! Operational metrics in the Prometheus text format (`prometheus-client`: an explicit registry per
//! [`Metrics`], no global state, so servers in one process, as in the tests, count separately).
//!
//! Recording is a few atomic operations; a labelled family takes the crate's read lock to find the
//! series. Every label set that can be known at start-up is created then, so rates start from 0.
//! The domain modules (registration, store) and the transports record; this module imports no
//! transport.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::throttle::ThrottledBy;

/// The transport a request arrived on, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Https,
    Mqtt,
    MqttWs,
    Amqp,
    AmqpWs,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Mqtt => "mqtt",
            Self::MqttWs => "mqtt-ws",
            Self::Amqp => "amqp",
            Self::AmqpWs => "amqp-ws",
        }
    }
}

/// The `Content-Type` of a scrape (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every device protocol, for the label sets created at start-up.
const PROTOCOLS: [Protocol; 5] = [
    Protocol::Https,
    Protocol::Mqtt,
    Protocol::MqttWs,
    Protocol::Amqp,
    Protocol::AmqpWs,
];

/// A device or management operation, the `operation` label of request latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `PUT …/register` and its MQTT and AMQP equivalents.
    Register,
    /// `GET …/operations/{id}`.
    OperationStatus,
    /// `POST /{scope}/registrations/{id}`: the device's own record.
    StatusLookup,
    /// The management (service) API.
    Management,
    /// The built-in hubs' registry API.
    HubRegistry,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::OperationStatus => "operation_status",
            Self::StatusLookup => "status_lookup",
            Self::Management => "management",
            Self::HubRegistry => "hub_registry",
        }
    }
}

/// A listener, the `listener` label of open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The HTTPS port (device API, management API, hub registry, MQTT over WebSockets).
    Https,
    /// MQTT over TLS.
    Mqtt,
    /// AMQP over TLS.
    Amqp,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Mqtt => "mqtt",
            Self::Amqp => "amqp",
        }
    }
}

/// The outcome of a registration that passed attestation, the `status` label of
/// `usher_registration_attempts_total`: the registration status DPS reports to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistrationOutcome {
    Assigned,
    Failed,
    Disabled,
}

impl RegistrationOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttestationLabels {
    status: &'static str,
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistrationLabels {
    hub: String,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HubLabels {
    hub: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The `reason` label of a throttled request.
fn throttle_reason(by: ThrottledBy) -> &'static str {
    match by {
        ThrottledBy::Address => "address",
        ThrottledBy::RegistrationId => "registration_id",
    }
}

/// Request latency: 0.5 ms to 16 s in powers of two.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// The handle every part of the server records through. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    attestation_attempts: Family<AttestationLabels, Counter>,
    registration_attempts: Family<RegistrationLabels, Counter>,
    device_assignments: Family<HubLabels, Counter>,
    request_duration: HistogramFamily<RequestLabels>,
    open_connections: Family<ListenerLabels, Gauge>,
    mqtt_sessions: Family<ProtocolLabels, Gauge>,
    amqp_connections: Family<ProtocolLabels, Gauge>,
    throttled_requests: Family<ReasonLabels, Counter>,
    store_commit_duration: Histogram,
    store_commit_batch_size: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every Usher metric in it, named `usher_…`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("usher");
        let attestation_attempts = Family::<AttestationLabels, Counter>::default();
        registry.register(
            "attestation_attempts",
            "Device attestations attempted (every device request is attested), by outcome and protocol",
            attestation_attempts.clone(),
        );
        let registration_attempts = Family::<RegistrationLabels, Counter>::default();
        registry.register(
            "registration_attempts",
            "Registrations of attested devices, by hub host name (empty when none was chosen) and resulting status",
            registration_attempts.clone(),
        );
        let device_assignments = Family::<HubLabels, Counter>::default();
        registry.register(
            "device_assignments",
            "Devices assigned to a hub, by hub host name",
            device_assignments.clone(),
        );
        let request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time to answer a request, by transport protocol and operation",
            Unit::Seconds,
            request_duration.clone(),
        );
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Connections open per TLS listener (TCP accepted, TLS handshake included)",
            open_connections.clone(),
        );
        let mqtt_sessions = Family::<ProtocolLabels, Gauge>::default();
        registry.register(
            "mqtt_sessions",
            "MQTT sessions open, over TLS (mqtt) and over WebSockets (mqtt-ws)",
            mqtt_sessions.clone(),
        );
        let amqp_connections = Family::<ProtocolLabels, Gauge>::default();
        registry.register(
            "amqp_connections",
            "AMQP connections open, over TLS (amqp) and over WebSockets (amqp-ws)",
            amqp_connections.clone(),
        );
        let throttled_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "throttled_requests",
            "Device requests refused by protective throttling, by the budget spent (address, registration_id)",
            throttled_requests.clone(),
        );
        let store_commit_duration = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register_with_unit(
            "store_commit_duration",
            "Time the store's writer takes for one transaction (begin to durable commit)",
            Unit::Seconds,
            store_commit_duration.clone(),
        );
        let store_commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "store_commit_batch_size",
            "Writes committed together in one transaction (group commit)",
            store_commit_batch_size.clone(),
        );
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "The Usher version serving", build);

        for protocol in PROTOCOLS {
            for status in ["success", "failure"] {
                let _ = attestation_attempts.get_or_create(&AttestationLabels {
                    status,
                    protocol: protocol.as_str(),
                });
            }
        }
        for listener in [Listener::Https, Listener::Mqtt, Listener::Amqp] {
            let _ = open_connections.get_or_create(&ListenerLabels {
                listener: listener.as_str(),
            });
        }
        for by in [ThrottledBy::Address, ThrottledBy::RegistrationId] {
            let _ = throttled_requests.get_or_create(&ReasonLabels {
                reason: throttle_reason(by),
            });
        }
        for protocol in [Protocol::Mqtt, Protocol::MqttWs] {
            let _ = mqtt_sessions.get_or_create(&ProtocolLabels {
                protocol: protocol.as_str(),
            });
        }
        for protocol in [Protocol::Amqp, Protocol::AmqpWs] {
            let _ = amqp_connections.get_or_create(&ProtocolLabels {
                protocol: protocol.as_str(),
            });
        }
        Self(Arc::new(Inner {
            registry,
            attestation_attempts,
            registration_attempts,
            device_assignments,
            request_duration,
            open_connections,
            mqtt_sessions,
            amqp_connections,
            throttled_requests,
            store_commit_duration,
            store_commit_batch_size,
        }))
    }

    /// One attestation decided (`registration::attest`): the token verified or not.
    pub fn attestation(&self, protocol: Protocol, success: bool) {
        let status = if success { "success" } else { "failure" };
        self.0
            .attestation_attempts
            .get_or_create(&AttestationLabels {
                status,
                protocol: protocol.as_str(),
            })
            .inc();
    }

    /// One registration of an attested device, durable, with the hub it was assigned to (host
    /// name) if any. An assignment also counts in `usher_device_assignments_total`.
    pub fn registration(&self, hub: Option<&str>, outcome: RegistrationOutcome) {
        let hub = hub.unwrap_or_default().to_owned();
        if outcome == RegistrationOutcome::Assigned {
            self.0
                .device_assignments
                .get_or_create(&HubLabels { hub: hub.clone() })
                .inc();
        }
        self.0
            .registration_attempts
            .get_or_create(&RegistrationLabels {
                hub,
                status: outcome.as_str(),
            })
            .inc();
    }

    /// How long one request took to answer.
    pub fn request(&self, protocol: Protocol, operation: Operation, elapsed: Duration) {
        self.0
            .request_duration
            .get_or_create(&RequestLabels {
                protocol: protocol.as_str(),
                operation: operation.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a connection on `listener` as open until the guard is dropped.
    pub fn connection(&self, listener: Listener) -> GaugeGuard {
        GaugeGuard::new(
            self.0
                .open_connections
                .get_or_create_owned(&ListenerLabels {
                    listener: listener.as_str(),
                }),
        )
    }

    /// Counts an MQTT session as open until the guard is dropped.
    pub fn mqtt_session(&self, protocol: Protocol) -> GaugeGuard {
        GaugeGuard::new(self.0.mqtt_sessions.get_or_create_owned(&ProtocolLabels {
            protocol: protocol.as_str(),
        }))
    }

    /// Counts an AMQP connection (past the connection cap) as open until the guard is dropped.
    pub fn amqp_connection(&self, protocol: Protocol) -> GaugeGuard {
        GaugeGuard::new(
            self.0
                .amqp_connections
                .get_or_create_owned(&ProtocolLabels {
                    protocol: protocol.as_str(),
                }),
        )
    }

    /// One request refused by protective throttling, by the budget that was spent.
    pub fn throttled(&self, by: ThrottledBy) {
        self.0
            .throttled_requests
            .get_or_create(&ReasonLabels {
                reason: throttle_reason(by),
            })
            .inc();
    }

    /// One store transaction: how long it took (begin to durable commit) and how many writes it
    /// carried.
    pub fn store_commit(&self, elapsed: Duration, batch_size: usize) {
        self.0.store_commit_duration.observe(elapsed.as_secs_f64());
        self.0.store_commit_batch_size.observe(batch_size as f64);
    }

    /// The scrape: every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.0.registry);
        out
    }
}

/// Decrements its gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
