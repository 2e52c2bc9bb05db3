//! The `api-version` values each API accepts.
//!
//! DPS requires `api-version` on every device and service request and answers an unknown one with
//! `400` / `400004` "Unsupported API version {v}." (seen from the real service in Azure/iotedge
//! #4112); IoT Hub answers with `ErrorCode:InvalidProtocolVersion`. Usher does the same, so a typo
//! fails locally as it would on Azure. Every version below is accepted and served with the one
//! schema Usher implements; the lists differ per API because the APIs are versioned apart.
//!
//! Sources: the versions the public REST specification tree defines
//! (`Azure/azure-rest-api-specs`, `specification/deviceprovisioningservices/data-plane/`:
//! `DeviceProvisioningServices/{stable,preview}/…` and the older `Microsoft.Devices/…` folder;
//! `specification/iothub/data-plane/`), and the versions the official clients still send
//! (`device-protocol.md` §4.2, `service-api.md` §1.1).

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The DPS device (runtime registration) API: HTTPS paths and the MQTT user name.
    Device,
    /// The DPS service (management) API, and Usher's own `/usher/…` routes beside it.
    Service,
    /// The IoT Hub registry API of a built-in hub.
    HubRegistry,
}

/// Device API versions: the spec tree's (`2021-10-01`, `2021-11-01-preview`, `2025-07-01-preview`,
/// `2026-04-01`, `2026-11-01`, `2026-11-02-preview`, `2026-11-15-preview`) and those SDKs and IoT
/// Edge releases send (Python, Node and embedded C `2019-03-31`; C `2021-06-01`; IoT Edge 1.0.x
/// `2019-04-15`; old C releases `2017-08-31-preview`, `2017-11-15`, `2018-04-01`,
/// `2018-09-01-preview`, `2018-11-01`, `2019-01-15`).
pub const DEVICE: &[&str] = &[
    "2017-08-31-preview",
    "2017-11-15",
    "2018-04-01",
    "2018-09-01-preview",
    "2018-11-01",
    "2019-01-15",
    "2019-03-31",
    "2019-04-15",
    "2021-06-01",
    "2021-10-01",
    "2021-11-01-preview",
    "2025-07-01-preview",
    "2026-04-01",
    "2026-11-01",
    "2026-11-02-preview",
    "2026-11-15-preview",
];

/// Service API versions: the spec tree's (`2021-10-01`, `2021-11-01`, `2021-11-01-preview`,
/// `2025-07-01-preview`, `2026-04-01`, `2026-07-01-preview`) and those clients send (Node, Python,
/// Azure CLI `2021-10-01`; C# v1 `2019-02-15-preview`; `azure-iothub-provisioningserviceclient`
/// 1.2.0, used by Microsoft's Python e2e suite, `2018-09-01-preview`; older `2017-11-15`,
/// `2018-04-01`, `2019-03-31`).
pub const SERVICE: &[&str] = &[
    "2017-08-31-preview",
    "2017-11-15",
    "2018-04-01",
    "2018-09-01-preview",
    "2019-02-15-preview",
    "2019-03-31",
    "2021-06-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-01-preview",
    "2025-07-01-preview",
    "2026-04-01",
    "2026-07-01-preview",
];

/// IoT Hub registry versions: the spec tree's and those the hub clients send (Python `azure-iot-hub`
/// and Node `azure-iothub` `2021-04-12`; Microsoft's Python e2e suite `2018-06-30`).
pub const HUB_REGISTRY: &[&str] = &[
    "2016-11-14",
    "2017-06-30",
    "2017-11-08-preview",
    "2018-01-26",
    "2018-04-01",
    "2018-06-30",
    "2018-08-30-preview",
    "2019-03-30",
    "2019-07-01-preview",
    "2019-10-01",
    "2020-03-13",
    "2020-05-31-preview",
    "2020-06-30-preview",
    "2020-09-30",
    "2021-04-12",
];

/// Why a request's `api-version` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiVersionError {
    #[error("The api-version query parameter is required.")]
    Missing,
    /// DPS's own wording.
    #[error("Unsupported API version {0}.")]
    Unsupported(String),
}

impl Api {
    /// The versions this API accepts.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Self::Device => DEVICE,
            Self::Service => SERVICE,
            Self::HubRegistry => HUB_REGISTRY,
        }
    }

    /// Checks a request's `api-version` (as given, percent-decoded). Versions compare exactly, as
    /// Azure compares them (`2021-10-01` is not `2021-10-1`), but case-insensitively.
    pub fn check(self, version: Option<&str>) -> Result<(), ApiVersionError> {
        let version = version.ok_or(ApiVersionError::Missing)?;
        if self
            .versions()
            .iter()
            .any(|v| v.eq_ignore_ascii_case(version))
        {
            Ok(())
        } else {
            Err(ApiVersionError::Unsupported(version.to_owned()))
        }
    }
}

/// The `api-version` parameter of a URL query string, percent-decoded (`None` if absent).
pub fn from_query(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_the_official_clients_send_is_accepted() {
        for (api, v) in [
            (Api::Device, "2019-03-31"),
            (Api::Device, "2021-06-01"),
            (Api::Device, "2021-11-01-preview"),
            (Api::Device, "2025-07-01-preview"),
            (Api::Service, "2021-10-01"),
            (Api::Service, "2018-09-01-preview"),
            (Api::HubRegistry, "2021-04-12"),
            (Api::HubRegistry, "2018-06-30"),
        ] {
            assert_eq!(api.check(Some(v)), Ok(()), "{api:?} {v}");
        }
    }

    #[test]
    fn a_typo_or_another_apis_version_is_refused() {
        assert_eq!(
            Api::Device.check(Some("2019-03-30")),
            Err(ApiVersionError::Unsupported("2019-03-30".into()))
        );
        assert!(Api::Service.check(Some("2021-04-12")).is_err());
        assert!(Api::HubRegistry.check(Some("2021-10-01")).is_err());
        assert_eq!(Api::Service.check(None), Err(ApiVersionError::Missing));
        assert_eq!(
            ApiVersionError::Unsupported("2019-04-16".into()).to_string(),
            "Unsupported API version 2019-04-16."
        );
    }

    #[test]
    fn the_query_parameter_is_found_and_decoded() {
        assert_eq!(
            from_query(Some("a=1&api-version=2021-10-01")).as_deref(),
            Some("2021-10-01")
        );
        assert_eq!(
            from_query(Some("api-version=2025-07-01%2Dpreview")).as_deref(),
            Some("2025-07-01-preview")
        );
        assert_eq!(from_query(Some("apiversion=1")), None);
        assert_eq!(from_query(None), None);
    }
}
