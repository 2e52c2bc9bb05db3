"""Provisioning with the official Python SDK, azure-iot-device's ProvisioningDeviceClient.

The Python SDK provisions over MQTT only (device-protocol.md §5): MQTT 3.1.1 over TLS 1.2 on
port 8883 with clean session 0, or with websockets=True over wss://localhost:443/$iothub/websocket.
For each of the two: an individual enrollment and a group device provision, a wrong key is refused
with a 401 response, and a disabled enrollment is answered with status "disabled".

Tests run in file order; the hub listing test at the end relies on the devices provisioned before it.
"""

import re

import pytest
from azure.iot.device import exceptions

from usher_sdk import (
    assert_assigned,
    built_in_hub,
    create_enrollment,
    create_group,
    derive_key,
    generate_key,
    hub_devices,
    register,
    symmetric_keys,
    unique_id,
)

TRANSPORTS = [
    pytest.param(False, id="mqtt"),
    pytest.param(True, id="websockets"),
]


def tag(websockets):
    return "pyws" if websockets else "pymqtt"


# Devices provisioned by this file, for the hub listing test.
provisioned = []


def assert_service_error(attempt, pattern):
    """register() raised what the SDK raises for an error the service answered with.

    The provisioning stages complete the operation with azure.iot.device.exceptions.ServiceError;
    ProvisioningDeviceClient.register() re-raises anything that is not a connection or credential
    failure as ClientError("Unexpected failure") from it. (A refusal at CONNACK would be a
    CredentialError instead, which the server must not do: it answers on the response topic.)
    """
    err = attempt.error
    assert err is not None, f"expected register() to fail, but it returned {attempt.result}"
    assert type(err) is exceptions.ClientError, f"expected ClientError, got {attempt.describe()}"
    assert isinstance(err.__cause__, exceptions.ServiceError), (
        f"expected a ServiceError cause, got {attempt.describe()}"
    )
    assert re.search(pattern, str(err.__cause__)), (
        f"expected the ServiceError to match {pattern!r}, got {attempt.describe()}"
    )


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_individual_enrollment_provisions(websockets):
    reg_id = unique_id(f"sdk-{tag(websockets)}-ind")
    enrollment = create_enrollment(reg_id)
    assert enrollment.get("registrationId") == reg_id, f"registrationId in {enrollment}"
    primary_key, _ = symmetric_keys(enrollment)

    attempt = register(reg_id, primary_key, websockets)
    assert_assigned(attempt, reg_id)
    assert attempt.result.registration_state.device_id == reg_id
    provisioned.append(reg_id)


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_group_device_provisions_with_derived_key(websockets):
    primary_key, _ = symmetric_keys(create_group(unique_id(f"sdk-{tag(websockets)}-grp")))
    reg_id = unique_id(f"sdk-{tag(websockets)}-grp-dev")

    attempt = register(reg_id, derive_key(primary_key, reg_id), websockets)
    assert_assigned(attempt, reg_id)
    assert attempt.result.registration_state.device_id == reg_id
    provisioned.append(reg_id)


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_wrong_key_is_refused_with_401(websockets):
    reg_id = unique_id(f"sdk-{tag(websockets)}-badkey")
    create_enrollment(reg_id)

    attempt = register(reg_id, generate_key(), websockets)
    # The server answers the register publish on $dps/registrations/res/401/?$rid=...
    assert_service_error(attempt, r"^register request returned a service error status code 401$")


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_disabled_enrollment_does_not_provision(websockets):
    reg_id = unique_id(f"sdk-{tag(websockets)}-disabled")
    enrollment = create_enrollment(reg_id, provisioning_status="disabled")
    assert enrollment.get("provisioningStatus") == "disabled", f"provisioningStatus in {enrollment}"
    primary_key, _ = symmetric_keys(enrollment)

    attempt = register(reg_id, primary_key, websockets)
    # A 200 with status "disabled" is a status the SDK does not know (it knows assigning,
    # assigned and failed), whether it comes with the register answer or a poll answer.
    assert_service_error(
        attempt,
        r"^Query Status Operation encountered an invalid registration status disabled "
        r"with a status code of 200$",
    )


def test_provisioned_devices_are_listed_in_the_built_in_hub():
    assert len(provisioned) == 2 * len(TRANSPORTS), (
        f"the provisioning tests above must pass first (provisioned: {provisioned})"
    )
    hub = built_in_hub()
    devices = hub_devices(hub["name"])
    assert isinstance(devices, list), f"usher hub devices {hub['name']} --json printed {devices}"
    by_id = {str(d.get("deviceId")).lower(): d for d in devices}
    for reg_id in provisioned:
        device = by_id.get(reg_id.lower())
        assert device is not None, f"device {reg_id} not listed in hub {hub['name']}: {list(by_id)}"
        assert device.get("status") == "enabled", f"status of {device}"
