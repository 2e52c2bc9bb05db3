//! The command-line grammar, modelled on `az iot dps`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "usher",
    version,
    about = "Usher: a self-hosted Device Provisioning Service, wire-compatible with Azure IoT Hub DPS"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once and consumed at once.
pub(crate) enum Command {
    /// Run the provisioning service (HTTPS device and management APIs).
    Serve(Box<ServeArgs>),
    /// Show a provisioning instance's overview.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Manage the key-encryption key that protects the keys at rest.
    #[command(subcommand)]
    Kek(KekCommand),
    /// Read, export and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage individual enrollments.
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// Manage enrollment groups.
    #[command(subcommand, name = "enrollment-group")]
    EnrollmentGroup(EnrollmentCommand),
    /// Show and delete device registration records.
    #[command(subcommand)]
    Registration(RegistrationCommand),
    /// Manage the IoT hubs devices are assigned to.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Manage shared access policies for the management API.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage verified CA certificates, which X.509 enrollments and groups name (--ca-name).
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// Provision a device over HTTPS, as a device would (the C SDK's prov_dev_client_sample).
    Provision(ProvisionArgs),
    /// Generate and derive symmetric keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Build SAS tokens for devices and service clients.
    #[command(subcommand, name = "sas-token")]
    SasToken(SasTokenCommand),
    /// Measure registrations per second against a running instance, or seed it with enrollments.
    Bench(Box<BenchArgs>),
    /// Copy a whole instance into an empty store: from a data directory (SQLite) to a PostgreSQL
    /// database, or back; then check the copy by comparing both stores' exports. Stop the servers
    /// of the source first.
    Migrate(MigrateArgs),
}

/// `usher migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Where the instance is: a data directory, or a postgres:// URL.
    #[arg(long, value_name = "DIR|URL")]
    pub(crate) from: String,
    /// Where it is to go (empty): a data directory, or a postgres:// URL.
    #[arg(long, value_name = "DIR|URL")]
    pub(crate) to: String,
    /// The KEK (both stores' data keys are wrapped with it; from a data directory, its own KEK
    /// unless given; from PostgreSQL, the one the nodes are given).
    #[command(flatten)]
    pub(crate) kek: KekArgs,
}

/// `usher bench`: the load generator (`usher bench --transport …`) and `usher bench seed`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) command: Option<BenchCommand>,
    /// How the simulated devices talk to the service.
    #[arg(long, value_enum, default_value_t = TransportArg::Https)]
    pub(crate) transport: TransportArg,
    /// `fresh`: a new TLS connection per registration, as real devices do. `keepalive`: one
    /// connection per concurrent worker, kept for the whole run (over MQTT and AMQP, which
    /// authenticate one device per connection, each worker's device registers again and again).
    #[arg(long, value_enum, default_value_t = BenchMode::Fresh)]
    pub(crate) mode: BenchMode,
    /// How many registrations to make at most (devices `bench-RUN-N`; in MQTT and AMQP
    /// keepalive mode one device per worker).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) devices: u64,
    /// How many registrations (and ceiling operations) run at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) concurrency: u64,
    /// Stop each phase after this long even if --devices are not all done (`10s`, `2m`).
    #[arg(long, value_parser = duration_arg)]
    pub(crate) duration: Option<Duration>,
    /// Registrations (and ceiling operations) to make before measuring, not counted.
    #[arg(long, default_value_t = 0)]
    pub(crate) warmup: u64,
    /// Skip the ceiling phase (the same connection pattern against a trivial endpoint).
    #[arg(long)]
    pub(crate) no_ceiling: bool,
    /// The server's process ID, on this machine: report its CPU time per operation and its peak
    /// memory (from /proc).
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    /// Delete the registration records of the run's devices at the end too (their identities in
    /// the built-in hub stay).
    #[arg(long)]
    pub(crate) remove_registrations: bool,
    /// Give the run's enrollment group a registration ID pattern (`usherRegistrationIdPattern`)
    /// that only its devices match.
    #[arg(long)]
    pub(crate) group_pattern: bool,
    /// The ID scope (read from the data directory when no --login is given).
    #[arg(long, env = "USHER_ID_SCOPE")]
    pub(crate) id_scope: Option<String>,
    /// The device endpoint, host[:port] (default: the connection string's host, or the local
    /// instance's listeners; ports default to 443, 8883 for mqtt, 5671 for amqp).
    #[arg(long)]
    pub(crate) device_host: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) login: Login,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchMode {
    /// A new TLS connection per registration.
    Fresh,
    /// Connections kept for the whole run, one per concurrent worker.
    Keepalive,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Create individual enrollments and enrollment groups in bulk, for a measurement at scale.
    Seed(SeedArgs),
}

/// `usher bench seed`.
#[derive(Debug, Args)]
pub(crate) struct SeedArgs {
    /// How many individual enrollments to create (`{prefix}-{n}`, symmetric keys).
    #[arg(long, default_value_t = 0)]
    pub(crate) individual: u64,
    /// How many enrollment groups to create (`{prefix}-group-{n}`, symmetric keys).
    #[arg(long, default_value_t = 0)]
    pub(crate) groups: u64,
    /// The prefix of the created IDs.
    #[arg(long, default_value = "seed")]
    pub(crate) prefix: String,
    /// Create the groups without a registration-ID pattern (by default group n declares
    /// `{prefix}-g{n}-.*`), so every group is a candidate for every new device: the worst case.
    #[arg(long)]
    pub(crate) without_patterns: bool,
    /// Print the figures as JSON on standard output too.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) login: Login,
}

/// `usher serve`'s settings. Every flag here is also a key of the configuration file (its long
/// name, e.g. `https-addr`) and an environment variable (`USHER_` and the name in upper snake
/// case, e.g. `USHER_HTTPS_ADDR`); see `config.rs`. A new flag needs only its `#[arg]` with
/// `env`, a README row, and a sample value in the CLI tests.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file whose keys are these flags' names (`https-addr = "0.0.0.0:443"`).
    /// The environment overrides it and flags override both.
    #[arg(long, env = "USHER_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the settings in force (defaults, file, environment and flags merged), as a
    /// configuration file, and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// The effective configuration `--print-config` prints, rendered while parsing.
    #[arg(skip)]
    pub(crate) effective_config: Option<String>,
    /// Where the database, the development PKI and the runtime file live.
    #[arg(long, env = "USHER_DATA_DIR", default_value = "usher-data")]
    pub(crate) data_dir: PathBuf,
    /// Keep the instance in this PostgreSQL database (`postgres://user@host:5432/db`) instead of
    /// SQLite in the data directory; several nodes given the same database (and the same KEK)
    /// serve one instance. No TLS to the database: use a private network or a Unix socket.
    #[arg(long, env = "USHER_STORE", value_name = "URL", value_parser = postgres_url)]
    pub(crate) store: Option<String>,
    /// Address for HTTPS (device API, management API, MQTT and AMQP over WebSockets).
    #[arg(long, env = "USHER_HTTPS_ADDR", default_value = "0.0.0.0:443")]
    pub(crate) https_addr: SocketAddr,
    /// Address for MQTT over TLS (device API).
    #[arg(long, env = "USHER_MQTT_ADDR", default_value = "0.0.0.0:8883")]
    pub(crate) mqtt_addr: SocketAddr,
    /// Address for AMQP 1.0 over TLS (device API).
    #[arg(long, env = "USHER_AMQP_ADDR", default_value = "0.0.0.0:5671")]
    pub(crate) amqp_addr: SocketAddr,
    /// Address for plain-HTTP metrics (`/metrics`, Prometheus text format) and probes
    /// (`/healthz`, `/readyz`), e.g. 127.0.0.1:9090. Off unless given.
    #[arg(long, env = "USHER_METRICS_ADDR", value_name = "ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Extra host names (or IP addresses) for the server certificate. localhost, 127.0.0.1 and ::1
    /// are always included; the first name given becomes the service host name on first run.
    /// Repeat the flag for more (the environment variable takes a comma-separated list).
    #[arg(
        long = "hostname",
        env = "USHER_HOSTNAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub(crate) hostnames: Vec<String>,
    /// Use this certificate chain (PEM) instead of the development PKI. Needs --tls-key.
    #[arg(long, env = "USHER_TLS_CERT", value_name = "PEM")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, env = "USHER_TLS_KEY", value_name = "PEM")]
    pub(crate) tls_key: Option<PathBuf>,
    /// How long past expiry a SAS token is still accepted (device clocks drift): seconds, or a
    /// number with s, m, h or d.
    #[arg(
        long,
        env = "USHER_CLOCK_SKEW",
        default_value = "5m",
        value_parser = seconds,
        value_name = "DURATION"
    )]
    pub(crate) clock_skew: u64,
    /// How long open connections get to finish after SIGTERM or Ctrl-C before the server closes
    /// them and exits (readiness fails at once).
    #[arg(
        long,
        env = "USHER_SHUTDOWN_TIMEOUT",
        default_value = "10s",
        value_parser = seconds,
        value_name = "DURATION"
    )]
    pub(crate) shutdown_timeout: u64,
    /// How register answers: `assigning` (202 + Retry-After; the device polls the operation, which
    /// answers the final state), as DPS does and IoT Edge requires; or `assigned` (200 with the
    /// final state at once), a fast path for CI that the Python, Node and C SDKs accept but IoT
    /// Edge's identity service does not.
    #[arg(
        long,
        env = "USHER_REGISTER_RESPONSE",
        value_enum,
        default_value_t = RegisterResponseArg::Assigning
    )]
    pub(crate) register_response: RegisterResponseArg,
    /// Retry-After, in seconds (1 to 300), that 202 answers carry.
    #[arg(
        long,
        env = "USHER_RETRY_AFTER",
        default_value_t = usher_server::app::DEFAULT_RETRY_AFTER_SECS,
        value_parser = clap::value_parser!(u32).range(1..=300)
    )]
    pub(crate) retry_after: u32,
    /// Do not serve the web console (https://HOST/console/).
    #[arg(long, env = "USHER_NO_CONSOLE")]
    pub(crate) no_console: bool,
    /// How long a console sign-in lasts (a whole number with an optional unit s, m, h or d).
    #[arg(long, env = "USHER_CONSOLE_SESSION_TTL", default_value = "1h", value_parser = duration_arg)]
    pub(crate) console_session_ttl: Duration,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// Failed attestations a client address may have per minute before it is answered 429 (all may
    /// come at once).
    #[arg(long, env = "USHER_AUTH_FAILURES_PER_ADDRESS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) auth_failures_per_address: u32,
    /// Failed attestations a registration ID may have per minute before it is answered 429.
    #[arg(long, env = "USHER_AUTH_FAILURES_PER_REGISTRATION", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) auth_failures_per_registration: u32,
    /// How long audit entries are kept (older ones are pruned hourly; the hash chain keeps its
    /// anchor).
    #[arg(long, env = "USHER_AUDIT_RETENTION", default_value = "90d", value_parser = duration_arg)]
    pub(crate) audit_retention: Duration,
    /// How long one call to a custom allocation webhook may take (then it is retried, as DPS does).
    #[arg(long, env = "USHER_WEBHOOK_TIMEOUT", default_value = "30s", value_parser = duration_arg)]
    pub(crate) webhook_timeout: Duration,
    /// Extra CA certificates (PEM) to trust for custom allocation webhooks, besides the system's.
    #[arg(long, env = "USHER_WEBHOOK_CA", value_name = "FILE")]
    pub(crate) webhook_ca: Option<PathBuf>,
    /// The CA (PEM: its certificate, then optionally the chain above it) that signs device
    /// certificates requested with a register body's `csr`. Needs --issuing-ca-key.
    #[arg(long, env = "USHER_ISSUING_CA_CERT", value_name = "FILE")]
    pub(crate) issuing_ca_cert: Option<PathBuf>,
    /// The private key (PEM) of --issuing-ca-cert.
    #[arg(long, env = "USHER_ISSUING_CA_KEY", value_name = "FILE")]
    pub(crate) issuing_ca_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) testing: TestingArgs,
    #[command(flatten)]
    pub(crate) kek: KekArgs,
}

/// Firmware-testing modes for every device (off by default; an enrollment's `usherTesting` field
/// replaces them for its devices). See README "Firmware-testing modes".
#[derive(Debug, Clone, Args)]
pub(crate) struct TestingArgs {
    /// Register answers 202 assigning and the first N polls of each operation do too.
    #[arg(long, env = "USHER_TESTING_POLLS_ASSIGNING", default_value_t = 0)]
    pub(crate) testing_polls_assigning: u32,
    /// Retry-After of those answers, in seconds (default: --retry-after).
    #[arg(long, env = "USHER_TESTING_RETRY_AFTER", value_parser = clap::value_parser!(u32).range(1..=300))]
    pub(crate) testing_retry_after: Option<u32>,
    /// Inject this status (429, 500 or 503) with Retry-After...
    #[arg(long, env = "USHER_TESTING_FAULT", value_parser = clap::builder::PossibleValuesParser::new(["429", "500", "503"]))]
    pub(crate) testing_fault: Option<String>,
    /// ...to the first N requests (register or poll) of each device...
    #[arg(long, env = "USHER_TESTING_FAULT_FIRST", default_value_t = 0)]
    pub(crate) testing_fault_first: u32,
    /// ...and to this fraction (0 to 1) of all requests.
    #[arg(long, env = "USHER_TESTING_FAULT_FRACTION", default_value_t = 0.0)]
    pub(crate) testing_fault_fraction: f64,
    /// Retry-After of injected faults, in seconds.
    #[arg(long, env = "USHER_TESTING_FAULT_RETRY_AFTER", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=300))]
    pub(crate) testing_fault_retry_after: u32,
    /// Enforce DPS's quotas: 5 polls per 10 s per device, and --testing-registrations-per-minute.
    #[arg(long, env = "USHER_TESTING_QUOTAS")]
    pub(crate) testing_quotas: bool,
    /// The instance's registrations per minute under --testing-quotas (DPS: 1,000).
    #[arg(long, env = "USHER_TESTING_REGISTRATIONS_PER_MINUTE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) testing_registrations_per_minute: u32,
}

/// Where the key-encryption key (KEK) comes from. Without `--kek-file`: the file named by
/// `USHER_KEK_FILE`, the key in `USHER_KEK` (base64 of 32 bytes), the systemd credential
/// `usher-kek`, else the data directory's `kek` file, generated on first run.
#[derive(Debug, Clone, Args)]
pub(crate) struct KekArgs {
    /// File holding the key-encryption key (base64 of 32 bytes).
    #[arg(long, env = "USHER_KEK_FILE", value_name = "FILE")]
    pub(crate) kek_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KekCommand {
    /// Re-wrap the instance's data key with a new key-encryption key. A KEK kept in the data
    /// directory is replaced there; a KEK from elsewhere needs --new-kek-file, which is created
    /// (with a new random key) if it does not exist. The server may keep running.
    Rotate {
        #[arg(long, env = "USHER_DATA_DIR", default_value = "usher-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        kek: KekArgs,
        /// Where the new KEK is (or is to be written, 0600).
        #[arg(long, value_name = "FILE")]
        new_kek_file: Option<PathBuf>,
    },
}

/// Connection, request and session limits (per listener; see README "Limits").
#[derive(Debug, Clone, Args)]
pub(crate) struct LimitArgs {
    /// Connections one listener serves at once; more wait in the listen backlog.
    #[arg(long, env = "USHER_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,
    /// Connections one client address may hold at once on one listener; more are closed at once.
    #[arg(long, env = "USHER_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections_per_address: u32,
    /// Time a client has to finish the TLS handshake.
    #[arg(long, env = "USHER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub(crate) handshake_timeout: Duration,
    /// Time a client has to send a request's headers, from connecting or from the previous answer
    /// (so also the idle timeout of a kept-alive HTTPS connection).
    #[arg(long, env = "USHER_HEADER_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub(crate) header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in (408 after).
    #[arg(long, env = "USHER_BODY_TIMEOUT", default_value = "30s", value_parser = duration_arg)]
    pub(crate) body_timeout: Duration,
    /// Most bytes of request line and headers buffered per HTTPS connection (8192 or more).
    #[arg(long, env = "USHER_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(8192..=1_048_576))]
    pub(crate) max_header_bytes: u32,
    /// Time an MQTT client has from connecting to a complete CONNECT.
    #[arg(long, env = "USHER_MQTT_CONNECT_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub(crate) mqtt_connect_timeout: Duration,
    /// The longest silence an MQTT session may keep, whatever keep-alive it asks for (keep-alive
    /// is enforced at 1.5x the client's value, up to this; keep-alive 0 gets this).
    #[arg(long, env = "USHER_MQTT_MAX_KEEP_ALIVE", default_value = "20m", value_parser = duration_arg)]
    pub(crate) mqtt_max_keep_alive: Duration,
    /// MQTT sessions open at once, over TLS and WebSockets together (over it: CONNACK 3).
    #[arg(long, env = "USHER_MQTT_MAX_SESSIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) mqtt_max_sessions: u32,
    /// Time an AMQP client has from connecting to an open connection (protocol headers, SASL,
    /// Open).
    #[arg(long, env = "USHER_AMQP_OPEN_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub(crate) amqp_open_timeout: Duration,
    /// The idle time-out AMQP connections announce: one that sends no frame for this long is
    /// closed (the SDKs send empty frames at half of it).
    #[arg(long, env = "USHER_AMQP_IDLE_TIMEOUT", default_value = "4m", value_parser = duration_arg)]
    pub(crate) amqp_idle_timeout: Duration,
    /// AMQP connections open at once, over TLS and WebSockets together (over it: closed at once).
    #[arg(long, env = "USHER_AMQP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) amqp_max_connections: u32,
}

/// A duration flag: a whole number with an optional unit s, m, h or d (at least one second).
fn duration_arg(text: &str) -> Result<Duration, String> {
    match usher_proto::ttl::parse_duration(text) {
        Ok(0) => Err("must be at least 1s".into()),
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration flag: seconds, or a number with s, m, h or d (`90s`, `5m`), as seconds.
fn seconds(text: &str) -> Result<u64, usher_proto::ttl::TtlError> {
    usher_proto::ttl::parse_duration(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RegisterResponseArg {
    Assigned,
    Assigning,
}

/// How management commands find the service.
#[derive(Debug, Clone, Args)]
pub(crate) struct Login {
    /// Service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…).
    #[arg(long, env = "USHER_CONNECTION_STRING", hide_env_values = true)]
    pub(crate) login: Option<String>,
    /// Data directory of a local instance: its connection string, CA and address are read from it
    /// when no --login is given.
    #[arg(long, env = "USHER_DATA_DIR", default_value = "usher-data")]
    pub(crate) data_dir: PathBuf,
    /// CA certificate (PEM) to trust for the service's TLS certificate.
    #[arg(long, env = "USHER_CA_CERT")]
    pub(crate) ca: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) kek: KekArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum InstanceCommand {
    /// Set the instance's default allocation policy and the network map geolatency uses.
    Set {
        /// The policy for enrollments that name none: hashed, geolatency or static.
        #[arg(long, value_enum)]
        allocation_policy: Option<AllocationArg>,
        /// A client network and its location, e.g. 10.1.0.0/16=westeurope; repeat for several
        /// (the first match wins). Replaces the map.
        #[arg(long = "geo", value_name = "CIDR=LOCATION")]
        geo: Option<Vec<String>>,
        #[command(flatten)]
        login: Login,
    },
    /// Print the ID scope, device endpoint, service connection string, CA certificate and hubs.
    Show {
        #[arg(long, env = "USHER_DATA_DIR", default_value = "usher-data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Print the connection strings with their keys (hidden otherwise).
        #[arg(long)]
        show_keys: bool,
        #[command(flatten)]
        kek: KekArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AttestationArg {
    #[value(name = "symmetrickey")]
    SymmetricKey,
    /// X.509 certificates: an individual enrollment's device certificate, or a group's signing
    /// (root or intermediate CA) certificate (--certificate-path).
    #[value(name = "x509")]
    X509,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AllocationArg {
    Static,
    Hashed,
    #[value(name = "geolatency", alias = "geoLatency")]
    GeoLatency,
    Custom,
}

/// What happens when an assigned device registers again (as `az iot dps`'s --reprovision-policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReprovisionArg {
    /// Re-allocate, carrying the twin to a new hub (`deviceDataMigrated`); the default.
    #[value(name = "reprovisionandmigratedata")]
    Migrate,
    /// Re-allocate, starting from the initial twin (`deviceDataReset`).
    #[value(name = "reprovisionandresetdata")]
    Reset,
    /// Stay on the hub assigned first.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    Enabled,
    Disabled,
}

/// Settings enrollments and groups share, on create and on update.
#[derive(Debug, Clone, Args)]
pub(crate) struct SettingOptions {
    /// Primary key (base64, 16 to 64 bytes); generated on create when absent, kept on update.
    #[arg(long)]
    pub(crate) primary_key: Option<String>,
    /// Secondary key (base64, 16 to 64 bytes); generated on create when absent, kept on update.
    #[arg(long)]
    pub(crate) secondary_key: Option<String>,
    /// How a hub is chosen: static (the hub in --iot-hubs, or with none named the linked hubs),
    /// hashed (weighted), geolatency (the device's location, by the instance's network map) or
    /// custom (a webhook: --webhook-url).
    #[arg(long, value_enum)]
    pub(crate) allocation_policy: Option<AllocationArg>,
    /// The custom allocation webhook (https, or http to a loopback address).
    #[arg(long)]
    pub(crate) webhook_url: Option<String>,
    /// The enrollment schema version the webhook receives.
    #[arg(long, default_value = "2021-10-01")]
    pub(crate) webhook_api_version: String,
    /// Re-registration: reprovisionandmigratedata (default), reprovisionandresetdata or never.
    #[arg(long, value_enum)]
    pub(crate) reprovision_policy: Option<ReprovisionArg>,
    /// Initial twin tags (a JSON object), applied at first assignment and on reset.
    #[arg(long, value_name = "JSON")]
    pub(crate) initial_tags: Option<String>,
    /// Initial desired properties (a JSON object).
    #[arg(long, value_name = "JSON")]
    pub(crate) initial_desired: Option<String>,
    /// Mark the devices as IoT Edge devices in their hub.
    #[arg(long)]
    pub(crate) edge_enabled: Option<bool>,
    /// Host names of the hubs devices may be assigned to.
    #[arg(long, num_args = 1..)]
    pub(crate) iot_hubs: Option<Vec<String>>,
    /// Whether devices may register.
    #[arg(long, value_enum)]
    pub(crate) provisioning_status: Option<StatusArg>,
}

/// Options of `create`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EnrollmentOptions {
    /// Attestation mechanism.
    #[arg(long, value_enum, default_value_t = AttestationArg::SymmetricKey)]
    pub(crate) attestation_type: AttestationArg,
    /// X.509: the primary certificate (PEM): the device's own certificate for an individual
    /// enrollment, the signing (root or intermediate CA) certificate for a group.
    #[arg(long, value_name = "PEM")]
    pub(crate) certificate_path: Option<PathBuf>,
    /// X.509: the secondary certificate (PEM).
    #[arg(long, value_name = "PEM", requires = "certificate_path")]
    pub(crate) secondary_certificate_path: Option<PathBuf>,
    /// X.509: the name of a verified CA certificate (`usher certificate add`) the devices'
    /// chains lead to, instead of a certificate of the enrollment's own.
    #[arg(
        long,
        visible_alias = "root-ca-name",
        conflicts_with = "certificate_path"
    )]
    pub(crate) ca_name: Option<String>,
    /// X.509: the name of a second verified CA certificate.
    #[arg(long, visible_alias = "secondary-root-ca-name", requires = "ca_name")]
    pub(crate) secondary_ca_name: Option<String>,
    #[command(flatten)]
    pub(crate) settings: SettingOptions,
}

/// Commands for individual enrollments and, with the same options, for enrollment groups.
#[derive(Debug, Subcommand)]
pub(crate) enum EnrollmentCommand {
    /// Create an enrollment (keys are generated when not given).
    Create {
        /// The registration ID (individual enrollment) or the group ID (enrollment group).
        #[arg(long, visible_alias = "group-id")]
        enrollment_id: String,
        /// The device ID in the hub (individual enrollments only; default: the registration ID).
        #[arg(long)]
        device_id: Option<String>,
        #[command(flatten)]
        options: EnrollmentOptions,
        #[command(flatten)]
        login: Login,
    },
    /// Change an enrollment: options given replace the stored values, the rest stay.
    Update {
        id: String,
        /// The device ID in the hub (individual enrollments only).
        #[arg(long)]
        device_id: Option<String>,
        #[command(flatten)]
        options: UpdateOptions,
        #[command(flatten)]
        login: Login,
    },
    /// Show an enrollment.
    Show {
        id: String,
        /// Include the symmetric keys.
        #[arg(long)]
        show_keys: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// List enrollments.
    List {
        /// A query, e.g. `SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'`; see README.
        #[arg(long)]
        query: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Rotate the symmetric keys: `primary` (a new primary; devices on the secondary keep working
    /// while it goes out), `secondary` (a new secondary), `swap` (exchange them). Prints the keys.
    RotateKey {
        id: String,
        #[arg(long = "key", value_enum)]
        which: RotateArg,
        /// Rotate only if the record still has this etag.
        #[arg(long)]
        etag: Option<String>,
        #[command(flatten)]
        login: Login,
    },
    /// Delete an enrollment (a group's devices keep their registration records).
    Delete {
        id: String,
        /// Delete only if the record still has this etag.
        #[arg(long)]
        etag: Option<String>,
        #[command(flatten)]
        login: Login,
    },
    /// Export enrollments, keys included, as JSON Lines.
    Export {
        /// Write here instead of standard output.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Only records matching this query (see `list --query`).
        #[arg(long)]
        query: Option<String>,
        #[command(flatten)]
        login: Login,
    },
    /// Import enrollments from JSON Lines (one per line, as `export` writes them), streamed to the
    /// server and stored in batches.
    Import {
        /// The JSON Lines file to read.
        #[arg(long)]
        file: PathBuf,
        /// create: new records only; update: create or replace.
        #[arg(long, value_enum, default_value_t = ImportMode::Create)]
        mode: ImportMode,
        #[command(flatten)]
        login: Login,
    },
}

/// Options `update` can change; each one given replaces the stored value.
#[derive(Debug, Clone, Args)]
pub(crate) struct UpdateOptions {
    #[command(flatten)]
    pub(crate) settings: SettingOptions,
    /// Update only if the record still has this etag (default: the etag just read).
    #[arg(long)]
    pub(crate) etag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ImportMode {
    Create,
    Update,
}

/// Which enrollment key `rotate-key` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RotateArg {
    Primary,
    Secondary,
    Swap,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List audit entries, oldest first.
    List {
        /// Start after this entry's position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Write the whole log as JSON Lines: the chain's anchor first, then every entry.
    Export {
        /// Write here instead of standard output.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        login: Login,
    },
    /// Check the hash chain of the whole log (from the server, or from an export with --file);
    /// exits 1 naming the first entry that was changed, removed or inserted.
    Verify {
        /// Verify this export instead of the server's log.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Create a policy with the given rights (ServiceConfig, EnrollmentRead, EnrollmentWrite,
    /// DeviceConnect, RegistrationStatusRead, RegistrationStatusWrite) and print its keys.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated rights.
        #[arg(long, value_delimiter = ',', required = true)]
        rights: Vec<String>,
        #[arg(long)]
        primary_key: Option<String>,
        #[arg(long)]
        secondary_key: Option<String>,
        #[command(flatten)]
        login: Login,
    },
    /// List the policies with their rights (and keys with --json).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Delete a policy; tokens signed with its keys stop working.
    Delete {
        name: String,
        #[command(flatten)]
        login: Login,
    },
    /// Replace a policy's key with a new random one; tokens signed with the old key stop working.
    RotateKey {
        name: String,
        /// primary, secondary, both, or swap (the secondary becomes primary, a new secondary is made).
        #[arg(long, default_value = "primary")]
        key: String,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RegistrationCommand {
    /// List the registration records of an enrollment group's devices.
    List {
        #[arg(long)]
        group: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Show a device's registration record.
    Show {
        registration_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Delete a device's registration record (the hub identity stays).
    Delete {
        registration_id: String,
        #[arg(long)]
        etag: Option<String>,
        #[command(flatten)]
        login: Login,
    },
}

/// Verified CA certificates (DPS's "certificates"): upload a root or intermediate CA, prove you
/// hold its private key, then name it in X.509 enrollments and groups with --ca-name.
#[derive(Debug, Subcommand)]
pub(crate) enum CertificateCommand {
    /// Upload a CA certificate and print a verification code for the proof of possession.
    Add {
        /// The name enrollments refer to it by (letters, digits, '-', '_' and '.').
        #[arg(long)]
        name: String,
        /// The CA certificate (PEM or base64 DER).
        #[arg(long, value_name = "PEM")]
        path: PathBuf,
        /// Mark it verified without a proof of possession (as DPS's --verified does).
        #[arg(long)]
        verified: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// List the CA certificates.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Show one CA certificate.
    Show {
        name: String,
        #[command(flatten)]
        login: Login,
    },
    /// Make a new verification code (the old one stops working).
    VerificationCode {
        name: String,
        #[command(flatten)]
        login: Login,
    },
    /// Prove possession of the CA's key: a certificate whose CN is the verification code,
    /// signed by the CA.
    Verify {
        #[arg(long)]
        name: String,
        /// The proof certificate (PEM or base64 DER).
        #[arg(long, value_name = "PEM")]
        path: PathBuf,
        #[command(flatten)]
        login: Login,
    },
    /// Delete a CA certificate; devices of enrollments naming it are refused until it is back.
    Delete {
        name: String,
        /// Delete only if the certificate's etag is still this.
        #[arg(long)]
        etag: Option<String>,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HubCommand {
    /// List the hubs.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Add a built-in hub.
    Add {
        /// A short name (letters, digits and -).
        #[arg(long)]
        name: String,
        /// The host name devices are told to connect to.
        #[arg(long)]
        hostname: String,
        /// Relative share of devices under hashed allocation (1 to 1000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Region name for geolatency allocation, e.g. westeurope.
        #[arg(long)]
        location: Option<String>,
        /// Whether the hub takes part in allocation when an enrollment names no hubs.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        apply_allocation_policy: bool,
        #[command(flatten)]
        login: Login,
    },
    /// Change a hub's weight, location or participation in allocation.
    Update {
        name: String,
        #[arg(long)]
        weight: Option<u32>,
        /// Region name for geolatency allocation ("" removes it).
        #[arg(long)]
        location: Option<String>,
        #[arg(long)]
        apply_allocation_policy: Option<bool>,
        #[command(flatten)]
        login: Login,
    },
    /// List the device identities of a built-in hub.
    Devices {
        hub: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        login: Login,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ProvisionArgs {
    /// The instance's ID scope.
    #[arg(long)]
    pub(crate) id_scope: String,
    /// The device's registration ID (with --cert: the certificate's common name by default).
    #[arg(long, required_unless_present = "cert")]
    pub(crate) registration_id: Option<String>,
    /// The device's own key (base64).
    #[arg(
        long,
        conflicts_with_all = ["group_key", "cert"],
        required_unless_present_any = ["group_key", "cert"]
    )]
    pub(crate) key: Option<String>,
    /// An enrollment group's key (base64); the device key is derived from it.
    #[arg(long, conflicts_with = "cert")]
    pub(crate) group_key: Option<String>,
    /// X.509: the device's certificate chain (PEM: its own certificate first, then any
    /// intermediates), presented in the TLS handshake. Needs --cert-key.
    #[arg(long, value_name = "PEM", requires = "cert_key")]
    pub(crate) cert: Option<PathBuf>,
    /// X.509: the device certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub(crate) cert_key: Option<PathBuf>,
    /// Ask for a device certificate: a certificate signing request (PEM or DER PKCS#10, its
    /// common name the registration ID), sent as the register body's `csr`. The server needs an
    /// issuing CA (`usher serve --issuing-ca-cert`). Needs --issued-cert-out.
    #[arg(long, value_name = "FILE", requires = "issued_cert_out")]
    pub(crate) csr: Option<PathBuf>,
    /// Where to write the issued certificate chain (PEM: the device's certificate, then the CA's).
    #[arg(long, value_name = "FILE", requires = "csr")]
    pub(crate) issued_cert_out: Option<PathBuf>,
    /// The service host, optionally with :port (default port: 443, 8883 for mqtt, 5671 for amqp).
    #[arg(long, default_value = "localhost")]
    pub(crate) host: String,
    /// How the device talks to the service.
    #[arg(long, value_enum, default_value_t = TransportArg::Https)]
    pub(crate) transport: TransportArg,
    /// A CA certificate (PEM) to trust instead of the system's roots.
    #[arg(long, env = "USHER_CA_CERT")]
    pub(crate) ca: Option<PathBuf>,
    /// Custom allocation payload (JSON).
    #[arg(long)]
    pub(crate) payload: Option<String>,
    /// Print the final registration result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    /// HTTPS REST (port 443).
    Https,
    /// MQTT over TLS (port 8883).
    Mqtt,
    /// MQTT over WebSockets (port 443, /$iothub/websocket).
    MqttWs,
    /// AMQP 1.0 over TLS (port 5671).
    Amqp,
    /// AMQP over WebSockets (port 443, /$iothub/websocket).
    AmqpWs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Print the device key of a group member: base64(HMAC-SHA256(groupKey, registrationId)).
    Derive {
        /// The enrollment group's key (base64).
        #[arg(long)]
        group_key: String,
        /// The device's registration ID, spelled exactly as the device spells it.
        #[arg(long)]
        registration_id: String,
    },
    /// Print a new random key (base64).
    Generate {
        /// Key length in bytes (16 to 64).
        #[arg(long, default_value_t = 32)]
        bytes: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SasTokenCommand {
    /// Print a device SAS token for {idScope}/registrations/{registrationId}.
    Device(DeviceTokenArgs),
    /// Print a service SAS token for the management API.
    Service(ServiceTokenArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DeviceTokenArgs {
    /// The provisioning instance's ID scope.
    #[arg(long)]
    pub(crate) id_scope: String,
    /// The device's registration ID.
    #[arg(long)]
    pub(crate) registration_id: String,
    /// The device's key (base64): its own key, or a key derived from a group key.
    #[arg(long)]
    pub(crate) key: String,
    /// Token lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h")]
    pub(crate) ttl: String,
}

#[derive(Debug, Args)]
pub(crate) struct ServiceTokenArgs {
    /// The service host name the token is for.
    #[arg(long)]
    pub(crate) host: String,
    /// The access policy name (for example provisioningserviceowner).
    #[arg(long)]
    pub(crate) policy: String,
    /// The policy's key (base64).
    #[arg(long)]
    pub(crate) key: String,
    /// Token lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h")]
    pub(crate) ttl: String,
}

/// A `postgres://` (or `postgresql://`) URL.
fn postgres_url(text: &str) -> Result<String, String> {
    if usher_server::store::is_postgres_url(text) {
        Ok(text.to_owned())
    } else {
        Err(
            "expected a postgres:// URL (without --store, SQLite in the data directory is used)"
                .into(),
        )
    }
}
