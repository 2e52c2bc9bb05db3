"""The built-in hub's registry API (api-version 2021-04-12) with the official Python hub service
client, azure-iot-hub's IoTHubRegistryManager.from_connection_string(hub connection string from
`usher instance show`): list, get, create (generated and supplied keys), update (quoted If-Match
with the etag; a stale etag refused) and delete devices, get, update and replace twins, the hub
error format, and a device DPS provisioned showing up enabled with the enrollment's keys.

IoTHubRegistryManager talks HTTPS through msrest/requests, which trusts the CA named in
REQUESTS_CA_BUNDLE; the module fixture below sets it to the server's dev CA. (Constructing the
registry manager also builds a uamqp client for cloud-to-device messages; it connects only when a
message is sent, which these tests do not do.)
"""

import re

import pytest
from azure.iot.hub.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from usher_sdk import (
    assert_assigned,
    create_enrollment,
    create_group,
    derive_key,
    register,
    symmetric_keys,
    unique_id,
)
from usher_service import ca_file, host_name_of, hub_connection_string, random_key, registry_manager

BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


@pytest.fixture(scope="module", autouse=True)
def hub_ca_bundle():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REQUESTS_CA_BUNDLE", ca_file())
        yield


@pytest.fixture(scope="module")
def rm(hub_ca_bundle):
    return registry_manager()


def assert_hub_error(err, status, code):
    """An HttpOperationError with this status, iothub-errorcode header and Message prefix."""
    response = err.response
    assert response is not None and response.status_code == status, f"{err}: {response and response.text}"
    assert response.headers.get("iothub-errorcode") == code, dict(response.headers)
    assert response.json()["Message"].startswith(f"ErrorCode:{code};"), response.text


def test_device_lifecycle_generated_keys(rm):
    device_id = unique_id("pyhub-gen")
    # Empty keys: the hub generates them.
    device = rm.create_device_with_sas(device_id, "", "", "enabled")
    assert device.device_id == device_id
    assert device.status == "enabled"
    assert device.authentication.type == "sas"
    keys = device.authentication.symmetric_key
    assert BASE64.match(keys.primary_key or "") and BASE64.match(keys.secondary_key or ""), device
    assert keys.primary_key != keys.secondary_key
    assert device.etag and device.generation_id

    got = rm.get_device(device_id)
    assert got.device_id == device_id and got.status == "enabled"
    assert got.authentication.symmetric_key.primary_key == keys.primary_key
    assert device_id in [d.device_id for d in rm.get_devices()]
    assert len(rm.get_devices(max_number_of_devices=1)) == 1

    # Update with the device's etag (sent quoted): disable it and give it new keys.
    new_primary, new_secondary = random_key(), random_key()
    updated = rm.update_device_with_sas(device_id, device.etag, new_primary, new_secondary, "disabled")
    assert updated.status == "disabled"
    assert updated.authentication.symmetric_key.primary_key == new_primary
    assert updated.authentication.symmetric_key.secondary_key == new_secondary
    assert updated.etag != device.etag
    assert updated.generation_id == device.generation_id
    assert rm.get_device(device_id).status == "disabled"

    # The first etag is stale now.
    with pytest.raises(HttpOperationError) as stale:
        rm.update_device_with_sas(device_id, device.etag, new_primary, new_secondary, "enabled")
    assert_hub_error(stale.value, 412, "PreconditionFailed")
    with pytest.raises(HttpOperationError) as stale_delete:
        rm.delete_device(device_id, etag=device.etag)
    assert_hub_error(stale_delete.value, 412, "PreconditionFailed")

    rm.delete_device(device_id, etag=updated.etag)
    with pytest.raises(HttpOperationError) as gone:
        rm.get_device(device_id)
    assert_hub_error(gone.value, 404, "DeviceNotFound")
    assert device_id not in [d.device_id for d in rm.get_devices()]
    with pytest.raises(HttpOperationError) as gone_again:
        rm.delete_device(device_id)
    assert_hub_error(gone_again.value, 404, "DeviceNotFound")


def test_device_supplied_keys_and_duplicate_create(rm):
    device_id = unique_id("pyhub-keys")
    primary, secondary = random_key(), random_key()
    device = rm.create_device_with_sas(device_id, primary, secondary, "disabled", iot_edge=True)
    assert device.status == "disabled"
    assert device.authentication.symmetric_key.primary_key == primary
    assert device.authentication.symmetric_key.secondary_key == secondary
    assert device.capabilities.iot_edge is True

    with pytest.raises(HttpOperationError) as again:
        rm.create_device_with_sas(device_id, "", "", "enabled")
    assert_hub_error(again.value, 409, "DeviceAlreadyExists")

    # etag=None: update_device_with_sas sends If-Match "*".
    updated = rm.update_device_with_sas(device_id, None, primary, secondary, "enabled")
    assert updated.status == "enabled"
    rm.delete_device(device_id)


def test_twin_get_update_replace(rm):
    device_id = unique_id("pyhub-twin")
    rm.create_device_with_sas(device_id, "", "", "enabled")

    twin = rm.get_twin(device_id)
    assert twin.device_id == device_id
    assert twin.etag and twin.version is not None
    assert not twin.tags

    patch = Twin(
        tags={"building": "43", "floor": 2},
        properties=TwinProperties(desired={"telemetryInterval": 10, "mode": "eco"}),
    )
    updated = rm.update_twin(device_id, patch, twin.etag)
    assert updated.tags == {"building": "43", "floor": 2}
    assert updated.properties.desired["telemetryInterval"] == 10
    assert updated.properties.desired["mode"] == "eco"
    assert updated.etag != twin.etag

    with pytest.raises(HttpOperationError) as stale:
        rm.update_twin(device_id, Twin(tags={"floor": 3}), twin.etag)
    assert_hub_error(stale.value, 412, "PreconditionFailed")

    # Merge patch: null removes a property.
    merged = rm.update_twin(device_id, Twin(tags={"floor": None}, properties=TwinProperties(desired={"mode": None})), updated.etag)
    assert merged.tags == {"building": "43"}
    assert "mode" not in merged.properties.desired
    assert merged.properties.desired["telemetryInterval"] == 10

    # Replace (PUT): tags and desired properties become exactly what is sent.
    replaced = rm.replace_twin(
        device_id, Twin(tags={"owner": "py"}, properties=TwinProperties(desired={"fresh": True})), merged.etag
    )
    assert replaced.tags == {"owner": "py"}
    assert replaced.properties.desired.get("fresh") is True
    assert "telemetryInterval" not in replaced.properties.desired
    assert rm.get_twin(device_id).tags == {"owner": "py"}

    with pytest.raises(HttpOperationError) as unknown:
        rm.get_twin(unique_id("pyhub-nobody"))
    assert_hub_error(unknown.value, 404, "DeviceNotFound")
    rm.delete_device(device_id)


def test_dps_provisioned_device_in_registry(rm):
    reg_id = unique_id("pyhub-dps")
    primary, secondary = symmetric_keys(create_enrollment(reg_id))
    assert_assigned(register(reg_id, primary, websockets=False), reg_id)

    device = rm.get_device(reg_id)
    assert device.device_id == reg_id
    assert device.status == "enabled"
    assert device.authentication.symmetric_key.primary_key == primary
    assert device.authentication.symmetric_key.secondary_key == secondary

    group_primary, group_secondary = symmetric_keys(create_group(unique_id("pyhub-grp")))
    dev_id = unique_id("pyhub-grp-dev")
    assert_assigned(register(dev_id, derive_key(group_primary, dev_id), websockets=False), dev_id)
    group_device = rm.get_device(dev_id)
    assert group_device.status == "enabled"
    assert group_device.authentication.symmetric_key.primary_key == derive_key(group_primary, dev_id)
    assert group_device.authentication.symmetric_key.secondary_key == derive_key(group_secondary, dev_id)

    listed = [d.device_id for d in rm.get_devices()]
    assert reg_id in listed and dev_id in listed


def test_wrong_hub_key_is_refused(hub_ca_bundle):
    wrong = (
        f"HostName={host_name_of(hub_connection_string())};"
        f"SharedAccessKeyName=iothubowner;SharedAccessKey={random_key()}"
    )
    with pytest.raises(HttpOperationError) as refused:
        registry_manager(wrong).get_devices()
    assert refused.value.response.status_code == 401
