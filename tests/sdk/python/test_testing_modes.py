"""Usher's firmware-testing modes seen through the official Python clients.

Each enrollment carries its own `usherTesting` field, written with azure-iot-deviceprovisioning's
enrollment.create_or_update (which sends the dict as given and reads it back), so these tests do not
disturb the others sharing the server. azure-iot-device's ProvisioningDeviceClient (MQTT) polls
while `assigning` (2 s before its first poll, then Retry-After) and retries every 429 and 5xx after
Retry-After (device-protocol.md §5.3), so each mode ends in an assignment.
"""

import time

import pytest

from usher_sdk import assert_assigned, register, unique_id
from usher_service import dps_client, random_key

TRANSPORTS = [pytest.param(False, id="mqtt"), pytest.param(True, id="websockets")]


def enroll_with(tag, usher_testing):
    registration_id = unique_id(f"pymodes-{tag}")
    key = random_key()
    client = dps_client()
    created = client.enrollment.create_or_update(
        id=registration_id,
        enrollment={
            "registrationId": registration_id,
            "attestation": {"type": "symmetricKey",
                            "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
            "usherTesting": usher_testing,
        },
    )
    assert created["usherTesting"] == usher_testing, "the extension field round-trips"
    assert client.enrollment.get(id=registration_id)["usherTesting"] == usher_testing
    return registration_id, key


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_polls_through_dps_like_asynchrony(websockets):
    registration_id, key = enroll_with(f"async-{int(websockets)}", {"pollsAssigning": 2, "retryAfter": 1})
    started = time.monotonic()
    attempt = register(registration_id, key, websockets)
    assert_assigned(attempt, registration_id)
    # The SDK waits 2 s before its first poll, then Retry-After (1 s) between polls.
    assert time.monotonic() - started >= 3.0


@pytest.mark.parametrize("status", [429, 500, 503])
def test_injected_failures_are_retried_then_assigned(status):
    registration_id, key = enroll_with(f"fault{status}",
                                       {"fault": {"status": status, "firstAttempts": 2, "retryAfter": 1}})
    attempt = register(registration_id, key, False)
    assert_assigned(attempt, registration_id)


def test_dps_polling_quota_is_waited_out():
    registration_id, key = enroll_with("quota", {"pollsAssigning": 12, "retryAfter": 1, "quotas": True})
    attempt = register(registration_id, key, False)
    assert_assigned(attempt, registration_id)
