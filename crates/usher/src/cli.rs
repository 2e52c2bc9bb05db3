//! The command-line grammar, modelled on `az iot dps`.

use clap::{Args, Parser, Subcommand};

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
pub(crate) enum Command {
    /// Generate and derive symmetric keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Build SAS tokens for devices and service clients.
    #[command(subcommand, name = "sas-token")]
    SasToken(SasTokenCommand),
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
