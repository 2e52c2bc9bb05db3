//! The one catalogue of DPS error codes.
//!
//! A DPS error code has six digits and its first three are the HTTP status (the embedded C SDK
//! derives the status class as `errorCode / 1000`). Every error Usher reports, on any transport,
//! is one of these.

/// A DPS error code. The discriminant is the six-digit code itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The request is malformed in a way no more specific code covers.
    BadRequest = 400_000,
    /// An argument (a query parameter, a header, a field) has an invalid value.
    ArgumentInvalid = 400_004,
    /// The body is not valid JSON or does not have the expected shape.
    InvalidJson = 400_006,
    InvalidEndorsementKey = 400_201,
    InvalidRegistrationId = 400_202,
    InvalidStorageRootKey = 400_203,
    InvalidEnrollmentGroupId = 400_204,
    TooManyEnrollments = 400_205,
    RegistrationIdDefinedMultipleTimes = 400_206,
    CustomAllocationFailed = 400_207,
    CustomAllocationIotHubNotSpecified = 400_208,
    CustomAllocationUnauthorizedAccess = 400_209,
    /// A device credential was refused on MQTT (the code real DPS sends on the response topic).
    Unauthorized = 401_000,
    /// A credential was missing, malformed, expired, for another resource or signed with the wrong key.
    IotHubUnauthorizedAccess = 401_002,
    /// The policy is valid but lacks the right the operation needs.
    InsufficientRights = 401_003,
    DeviceNotFound = 404_001,
    EnrollmentNotFound = 404_201,
    DeviceRegistrationNotFound = 404_202,
    AsyncOperationNotFound = 404_203,
    EnrollmentGroupNotFound = 404_204,
    LinkedHubNotFound = 404_210,
    /// No access policy of that name (Usher's own management routes).
    AccessPolicyNotFound = 404_213,
    /// No CA certificate of that name (Usher's `/usher/certificates`; ARM has its own codes).
    CaCertificateNotFound = 404_230,
    /// No route matches the request path.
    RouteNotFound = 404_000,
    MethodNotAllowed = 405_000,
    /// The request did not arrive in time (a body that stalls).
    RequestTimeout = 408_000,
    DeviceAlreadyExists = 409_001,
    EnrollmentConflict = 409_201,
    EnrollmentGroupConflict = 409_202,
    RegistrationStatusConflict = 409_203,
    LinkedHubConflict = 409_210,
    AccessPolicyConflict = 409_213,
    /// A CA certificate of that name exists (Usher's `/usher/certificates`).
    CaCertificateConflict = 409_230,
    PreconditionFailed = 412_001,
    /// The body is larger than the 96 KB DPS accepts.
    RequestEntityTooLarge = 413_001,
    UnsupportedMediaType = 415_001,
    Throttled = 429_001,
    InternalServerError = 500_001,
    ServiceUnavailable = 503_001,
}

impl ErrorCode {
    /// The six-digit code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The HTTP status: the first three digits of the code.
    pub fn http_status(self) -> u16 {
        // Every code is below 600_000, so the quotient fits.
        (self.code() / 1000) as u16
    }

    /// The short message that goes into the error body.
    pub fn message(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "Bad request.",
            ArgumentInvalid => "An argument is invalid.",
            InvalidJson => "The request body is not valid JSON for this operation.",
            InvalidEndorsementKey => "Invalid endorsement key.",
            InvalidRegistrationId => "Invalid registration ID.",
            InvalidStorageRootKey => "Invalid storage root key.",
            InvalidEnrollmentGroupId => "Invalid enrollment group ID.",
            TooManyEnrollments => "A bulk operation may hold at most 10 enrollments.",
            RegistrationIdDefinedMultipleTimes => {
                "The same ID is defined more than once in the request."
            }
            CustomAllocationFailed => "Custom allocation failed.",
            CustomAllocationIotHubNotSpecified => "Custom allocation did not name an IoT hub.",
            CustomAllocationUnauthorizedAccess => "Custom allocation failed with status code: 401",
            Unauthorized | IotHubUnauthorizedAccess => "Unauthorized",
            InsufficientRights => "The access policy lacks the right this operation needs.",
            DeviceNotFound => "Device not found.",
            EnrollmentNotFound => "Enrollment not found.",
            DeviceRegistrationNotFound => "Device registration not found.",
            AsyncOperationNotFound => "Operation not found.",
            EnrollmentGroupNotFound => "Enrollment group not found.",
            LinkedHubNotFound => "Linked IoT hub not found.",
            AccessPolicyNotFound => "Access policy not found.",
            CaCertificateNotFound => "CA certificate not found.",
            RouteNotFound => "Not found.",
            MethodNotAllowed => "Method not allowed.",
            RequestTimeout => "The request did not arrive in time.",
            DeviceAlreadyExists => "Device already exists.",
            EnrollmentConflict => "Enrollment already exists.",
            EnrollmentGroupConflict => "EnrollmentGroup already exists.",
            RegistrationStatusConflict => "Registration status conflict.",
            LinkedHubConflict => "Linked IoT hub already exists.",
            AccessPolicyConflict => "Access policy already exists.",
            CaCertificateConflict => "CA certificate already exists.",
            PreconditionFailed => "Precondition failed: the etag does not match.",
            RequestEntityTooLarge => "The request body exceeds 96 KB.",
            UnsupportedMediaType => "Unsupported media type.",
            Throttled => "Too many requests.",
            InternalServerError => "Internal server error.",
            ServiceUnavailable => "Service unavailable.",
        }
    }

    /// The name sent in the `x-ms-error-code` header and used in logs.
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// Every code, for tests and documentation.
    pub const ALL: &'static [Self] = &[
        Self::BadRequest,
        Self::ArgumentInvalid,
        Self::InvalidJson,
        Self::InvalidEndorsementKey,
        Self::InvalidRegistrationId,
        Self::InvalidStorageRootKey,
        Self::InvalidEnrollmentGroupId,
        Self::TooManyEnrollments,
        Self::RegistrationIdDefinedMultipleTimes,
        Self::CustomAllocationFailed,
        Self::CustomAllocationIotHubNotSpecified,
        Self::CustomAllocationUnauthorizedAccess,
        Self::Unauthorized,
        Self::IotHubUnauthorizedAccess,
        Self::InsufficientRights,
        Self::DeviceNotFound,
        Self::EnrollmentNotFound,
        Self::DeviceRegistrationNotFound,
        Self::AsyncOperationNotFound,
        Self::EnrollmentGroupNotFound,
        Self::LinkedHubNotFound,
        Self::AccessPolicyNotFound,
        Self::CaCertificateNotFound,
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::DeviceAlreadyExists,
        Self::EnrollmentConflict,
        Self::EnrollmentGroupConflict,
        Self::RegistrationStatusConflict,
        Self::LinkedHubConflict,
        Self::AccessPolicyConflict,
        Self::CaCertificateConflict,
        Self::PreconditionFailed,
        Self::RequestEntityTooLarge,
        Self::UnsupportedMediaType,
        Self::Throttled,
        Self::InternalServerError,
        Self::ServiceUnavailable,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_three_digits_are_the_http_status() {
        for code in ErrorCode::ALL {
            let n = code.code();
            assert!((100_000..600_000).contains(&n), "{code:?}");
            assert_eq!(u32::from(code.http_status()), n / 1000, "{code:?}");
            assert!(!code.message().is_empty());
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "{code:?} repeats a code");
        }
    }

    #[test]
    fn documented_codes() {
        assert_eq!(ErrorCode::IotHubUnauthorizedAccess.code(), 401_002);
        assert_eq!(ErrorCode::EnrollmentNotFound.code(), 404_201);
        assert_eq!(ErrorCode::DeviceRegistrationNotFound.code(), 404_202);
        assert_eq!(ErrorCode::EnrollmentGroupNotFound.code(), 404_204);
        assert_eq!(ErrorCode::EnrollmentConflict.code(), 409_201);
        assert_eq!(
            ErrorCode::CustomAllocationIotHubNotSpecified.http_status(),
            400
        );
        assert_eq!(
            ErrorCode::IotHubUnauthorizedAccess.name(),
            "IotHubUnauthorizedAccess"
        );
    }
}
