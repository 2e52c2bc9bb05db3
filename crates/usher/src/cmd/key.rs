use anyhow::Context as _;
use usher_proto::keys::{MAX_KEY_BYTES, MIN_KEY_BYTES};
use usher_proto::{RegistrationId, SymmetricKey};

use crate::cli::KeyCommand;

pub(super) fn run(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Derive {
            group_key,
            registration_id,
        } => {
            let id =
                RegistrationId::parse(&registration_id).context("invalid --registration-id")?;
            let group = SymmetricKey::from_base64(&group_key).context("invalid --group-key")?;
            println!("{}", group.derive_device_key(id.as_str()).to_base64());
        }
        KeyCommand::Generate { bytes } => {
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes) {
                anyhow::bail!(
                    "invalid --bytes {bytes}: keys must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
                );
            }
            let key = SymmetricKey::generate(&super::random_bytes(bytes)?)?;
            println!("{}", key.to_base64());
        }
    }
    Ok(())
}
