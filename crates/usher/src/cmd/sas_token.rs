use anyhow::Context as _;
use usher_proto::ttl::parse_ttl;
use usher_proto::{RegistrationId, SymmetricKey, sas};

use crate::cli::SasTokenCommand;

pub(super) fn run(cmd: SasTokenCommand) -> anyhow::Result<()> {
    match cmd {
        SasTokenCommand::Device(args) => {
            let id = RegistrationId::parse(&args.registration_id)
                .context("invalid --registration-id")?;
            if args.id_scope.is_empty() || args.id_scope.contains('/') {
                anyhow::bail!(
                    "invalid --id-scope {:?}: it must be non-empty and contain no '/'",
                    args.id_scope
                );
            }
            let key = SymmetricKey::from_base64(&args.key).context("invalid --key")?;
            let expiry = super::unix_now()? + parse_ttl(&args.ttl).context("invalid --ttl")?;
            println!(
                "{}",
                sas::device_token(&args.id_scope, id.as_str(), &key, expiry)
            );
        }
        SasTokenCommand::Service(args) => {
            if args.host.is_empty() {
                anyhow::bail!("invalid --host: it must not be empty");
            }
            if args.policy.is_empty() {
                anyhow::bail!("invalid --policy: it must not be empty");
            }
            let key = SymmetricKey::from_base64(&args.key).context("invalid --key")?;
            let expiry = super::unix_now()? + parse_ttl(&args.ttl).context("invalid --ttl")?;
            println!(
                "{}",
                sas::service_token(&args.host, &args.policy, &key, expiry)
            );
        }
    }
    Ok(())
}
