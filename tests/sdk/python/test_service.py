"""The management API with the official Python service client, azure-iot-deviceprovisioning's
DeviceProvisioningClient.from_connection_string(cs, connection_verify=<CA file>).

Individual enrollments and enrollment groups with generated and supplied keys (create, get,
update with the etag as If-Match, a stale etag refused, attestation mechanism, delete), bulk
create and delete of enrollments and groups, queries paged across several pages, device
registration states after a device provisioned (get, group query, delete), and access policies
(a policy without EnrollmentWrite, a rotated-out key).
"""

import re

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)

from usher_sdk import RUN_SUFFIX, assert_assigned, built_in_hub, derive_key, register, unique_id
from usher_service import (
    create_policy,
    delete_policy,
    dps_client,
    pages_of,
    policy_connection_string,
    random_key,
    rotate_policy_key,
)

BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


@pytest.fixture(scope="module")
def client():
    with dps_client() as c:
        yield c


def error_code(err):
    """The DPS errorCode in an azure-core error's response body (None if it has none)."""
    try:
        return err.response.json().get("errorCode")
    except Exception:  # noqa: BLE001 - no JSON body
        return None


def assert_keys(sym, what):
    assert isinstance(sym, dict), f"no symmetricKey in {what}"
    assert BASE64.match(sym.get("primaryKey") or ""), f"primaryKey in {what}"
    assert BASE64.match(sym.get("secondaryKey") or ""), f"secondaryKey in {what}"


def without_registration_state(record):
    return {k: v for k, v in record.items() if k != "registrationState"}


def test_individual_enrollment_generated_keys_lifecycle(client):
    reg_id = unique_id("pysvc-ind-gen")
    # Explicit nulls, as the SDK's own samples and tests send them: keys to be generated.
    created = client.enrollment.create_or_update(
        id=reg_id,
        enrollment={
            "registrationId": reg_id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": None, "secondaryKey": None}},
            "provisioningStatus": None,
            "capabilities": None,
        },
    )
    assert created["registrationId"] == reg_id
    keys = created["attestation"].get("symmetricKey")
    assert_keys(keys, created)
    assert created.get("etag"), created

    got = client.enrollment.get(id=reg_id)
    assert got["etag"] == created["etag"]
    assert got["attestation"] == {"type": "symmetricKey"}, f"keys hidden in GET: {got}"
    assert got["registrationState"]["status"] == "unassigned", got

    # Create again without if_match: a conflict.
    with pytest.raises(ResourceExistsError) as conflict:
        client.enrollment.create_or_update(
            id=reg_id, enrollment={"registrationId": reg_id, "attestation": {"type": "symmetricKey"}}
        )
    assert conflict.value.status_code == 409
    assert error_code(conflict.value) == 409201

    # Update the GET result (keys hidden) with if_match=etag.
    update = dict(
        without_registration_state(got),
        provisioningStatus="disabled",
        initialTwin={"tags": {"stage": "updated"}, "properties": {"desired": {"interval": 30}}},
        optionalDeviceInformation={"additionalProperties": {"hello": "world"}},
    )
    updated = client.enrollment.create_or_update(id=reg_id, enrollment=update, if_match=got["etag"])
    assert updated["provisioningStatus"] == "disabled"
    assert updated["initialTwin"]["tags"] == {"stage": "updated"}
    assert updated["optionalDeviceInformation"] == {"additionalProperties": {"hello": "world"}}
    assert updated["etag"] and updated["etag"] != created["etag"]
    assert updated["attestation"].get("symmetricKey") == keys, "an update without keys keeps them"

    # The first etag is stale now.
    with pytest.raises(HttpResponseError) as stale:
        client.enrollment.create_or_update(
            id=reg_id, enrollment=dict(update, provisioningStatus="enabled"), if_match=created["etag"]
        )
    assert stale.value.status_code == 412
    with pytest.raises(HttpResponseError) as stale_delete:
        client.enrollment.delete(id=reg_id, if_match=created["etag"])
    assert stale_delete.value.status_code == 412
    assert client.enrollment.get(id=reg_id)["provisioningStatus"] == "disabled"

    assert client.enrollment.get_attestation_mechanism(id=reg_id) == {
        "type": "symmetricKey",
        "symmetricKey": keys,
    }

    client.enrollment.delete(id=reg_id, if_match=updated["etag"])
    with pytest.raises(ResourceNotFoundError) as gone:
        client.enrollment.get(id=reg_id)
    assert error_code(gone.value) == 404201


def test_individual_enrollment_supplied_keys_registration_state(client):
    reg_id = unique_id("pysvc-ind-keys")
    keys = {"primaryKey": random_key(), "secondaryKey": random_key()}
    created = client.enrollment.create_or_update(
        id=reg_id,
        enrollment={"registrationId": reg_id, "attestation": {"type": "symmetricKey", "symmetricKey": keys}},
    )
    assert created["attestation"]["symmetricKey"] == keys
    assert client.enrollment.get_attestation_mechanism(id=reg_id)["symmetricKey"] == keys

    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.get(id=reg_id)

    assert_assigned(register(reg_id, keys["primaryKey"], websockets=False), reg_id)

    state = client.device_registration_state.get(id=reg_id)
    assert state["registrationId"] == reg_id, state
    assert state["status"] == "assigned", state
    assert state["assignedHub"] == built_in_hub()["hostname"], state
    assert state["deviceId"] == reg_id, state
    assert state["substatus"] == "initialAssignment", state
    assert state.get("etag"), state
    assert client.enrollment.get(id=reg_id)["registrationState"]["status"] == "assigned"

    client.device_registration_state.delete(id=reg_id, if_match=state["etag"])
    with pytest.raises(ResourceNotFoundError) as gone:
        client.device_registration_state.get(id=reg_id)
    assert error_code(gone.value) == 404202
    assert client.enrollment.get(id=reg_id)["registrationState"]["status"] == "unassigned"

    client.enrollment.delete(id=reg_id)


def test_enrollment_group_generated_keys_lifecycle(client):
    group_id = unique_id("pysvc-grp-gen")
    created = client.enrollment_group.create_or_update(
        id=group_id, enrollment_group={"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}}
    )
    assert created["enrollmentGroupId"] == group_id
    keys = created["attestation"].get("symmetricKey")
    assert_keys(keys, created)

    got = client.enrollment_group.get(id=group_id)
    assert got["etag"] == created["etag"]
    assert got["attestation"] == {"type": "symmetricKey"}, f"keys hidden in GET: {got}"

    with pytest.raises(ResourceExistsError) as conflict:
        client.enrollment_group.create_or_update(
            id=group_id, enrollment_group={"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}}
        )
    assert error_code(conflict.value) == 409202

    updated = client.enrollment_group.create_or_update(
        id=group_id,
        enrollment_group=dict(got, provisioningStatus="disabled", initialTwin={"tags": {"fleet": "a"}}),
        if_match=got["etag"],
    )
    assert updated["provisioningStatus"] == "disabled"
    assert updated["etag"] != created["etag"]
    assert updated["attestation"].get("symmetricKey") == keys

    with pytest.raises(HttpResponseError) as stale:
        client.enrollment_group.create_or_update(
            id=group_id, enrollment_group=dict(got, provisioningStatus="enabled"), if_match=created["etag"]
        )
    assert stale.value.status_code == 412
    with pytest.raises(HttpResponseError) as stale_delete:
        client.enrollment_group.delete(id=group_id, if_match=created["etag"])
    assert stale_delete.value.status_code == 412

    assert client.enrollment_group.get_attestation_mechanism(id=group_id) == {
        "type": "symmetricKey",
        "symmetricKey": keys,
    }

    client.enrollment_group.delete(id=group_id, if_match=updated["etag"])
    with pytest.raises(ResourceNotFoundError) as gone:
        client.enrollment_group.get(id=group_id)
    assert error_code(gone.value) == 404204


def test_enrollment_group_supplied_keys_registration_states(client):
    group_id = unique_id("pysvc-grp-keys")
    keys = {"primaryKey": random_key(), "secondaryKey": random_key()}
    created = client.enrollment_group.create_or_update(
        id=group_id,
        enrollment_group={"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey", "symmetricKey": keys}},
    )
    assert created["attestation"]["symmetricKey"] == keys

    # No registrations yet: one empty page, no continuation.
    assert pages_of(client.device_registration_state.query(id=group_id, top=2)) == [([], None)]

    device_ids = [unique_id(f"pysvc-grp-dev{i}") for i in (1, 2, 3)]
    for i, reg_id in enumerate(device_ids):
        group_key = keys["secondaryKey"] if i == 2 else keys["primaryKey"]
        assert_assigned(register(reg_id, derive_key(group_key, reg_id), websockets=False), reg_id)

    pages = pages_of(client.device_registration_state.query(id=group_id, top=2))
    assert [len(items) for items, _ in pages] == [2, 1], pages
    assert pages[0][1], "a continuation token after the first page"
    assert pages[-1][1] is None, "no continuation after the last page"
    states = [s for items, _ in pages for s in items]
    assert sorted(s["registrationId"] for s in states) == sorted(device_ids)
    assert all(s["status"] == "assigned" and s["assignedHub"] == built_in_hub()["hostname"] for s in states), states

    state = client.device_registration_state.get(id=device_ids[0])
    assert state["status"] == "assigned" and state["deviceId"] == device_ids[0], state

    client.device_registration_state.delete(id=device_ids[0])
    other = client.device_registration_state.get(id=device_ids[2])
    with pytest.raises(HttpResponseError) as wrong:
        client.device_registration_state.delete(id=device_ids[1], if_match=other["etag"])
    assert wrong.value.status_code == 412
    current = client.device_registration_state.get(id=device_ids[1])
    client.device_registration_state.delete(id=device_ids[1], if_match=current["etag"])

    left = [s["registrationId"] for items, _ in pages_of(client.device_registration_state.query(id=group_id)) for s in items]
    assert left == [device_ids[2]]

    client.enrollment_group.delete(id=group_id)


def test_bulk_create_paged_query_bulk_delete_enrollments(client):
    batch = f"pyb{RUN_SUFFIX}"
    ids = [unique_id(f"pysvc-bulk{i}") for i in range(1, 6)]
    given = {"primaryKey": random_key(), "secondaryKey": random_key()}
    enrollments = [
        {
            "registrationId": reg_id,
            "attestation": {"type": "symmetricKey", "symmetricKey": given if i == 0 else None},
            "initialTwin": {"tags": {"batch": batch}},
        }
        for i, reg_id in enumerate(ids)
    ]
    result = client.enrollment.run_bulk_operation(bulk_operation={"enrollments": enrollments, "mode": "create"})
    assert result == {"isSuccessful": True, "errors": []}, result
    assert client.enrollment.get_attestation_mechanism(id=ids[0])["symmetricKey"] == given
    assert_keys(client.enrollment.get_attestation_mechanism(id=ids[1]).get("symmetricKey"), "bulk-created enrollment")

    # "select *" (the SDK's own paging test) over every enrollment, 2 a page.
    pages = pages_of(client.enrollment.query(query_specification={"query": "select *"}, top=2))
    assert len(pages) >= 3, pages
    assert all(len(items) == 2 and token for items, token in pages[:-1]), [len(i) for i, _ in pages]
    assert 1 <= len(pages[-1][0]) <= 2 and pages[-1][1] is None, pages[-1]
    seen = [e["registrationId"] for items, _ in pages for e in items]
    assert len(seen) == len(set(seen)), "no enrollment on two pages"
    assert set(ids) <= set(seen)
    item = next(e for items, _ in pages for e in items if e["registrationId"] == ids[0])
    assert item["attestation"] == {"type": "symmetricKey"} and "registrationState" not in item, item

    # Usher's WHERE extension on the batch tag: exactly 2 + 2 + 1.
    query = {"query": f"SELECT * FROM enrollments WHERE initialTwin.tags.batch = '{batch}'"}
    filtered = pages_of(client.enrollment.query(query_specification=query, top=2))
    assert [len(items) for items, _ in filtered] == [2, 2, 1], filtered
    assert sorted(e["registrationId"] for items, _ in filtered for e in items) == sorted(ids)

    # One existing and one new: the new one is created, the existing one reported.
    extra = unique_id("pysvc-bulk6")
    partial = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "create",
            "enrollments": [
                {"registrationId": ids[2], "attestation": {"type": "symmetricKey"}},
                {"registrationId": extra, "attestation": {"type": "symmetricKey"}},
            ],
        }
    )
    assert partial["isSuccessful"] is False, partial
    assert [(e["registrationId"], e["errorCode"]) for e in partial["errors"]] == [(ids[2], 409201)], partial
    assert client.enrollment.get(id=extra)["registrationId"] == extra

    # Duplicate IDs in one request are a request error (400), not a bulk result.
    with pytest.raises(HttpResponseError) as dup:
        client.enrollment.run_bulk_operation(
            bulk_operation={
                "mode": "create",
                "enrollments": [
                    {"registrationId": unique_id("pysvc-dup"), "attestation": {"type": "symmetricKey"}},
                    {"registrationId": unique_id("pysvc-dup"), "attestation": {"type": "symmetricKey"}},
                ],
            }
        )
    assert dup.value.status_code == 400

    deleted = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "delete",
            "enrollments": [{"registrationId": i, "attestation": {"type": "symmetricKey"}} for i in [*ids, extra]],
        }
    )
    assert deleted == {"isSuccessful": True, "errors": []}, deleted
    for reg_id in [*ids, extra]:
        with pytest.raises(ResourceNotFoundError):
            client.enrollment.get(id=reg_id)
    assert pages_of(client.enrollment.query(query_specification=query, top=2)) == [([], None)]


def test_bulk_create_paged_query_bulk_delete_groups(client):
    batch = f"pyg{RUN_SUFFIX}"
    ids = [unique_id(f"pysvc-gbulk{i}") for i in range(1, 4)]
    groups = [
        {"enrollmentGroupId": g, "attestation": {"type": "symmetricKey"}, "initialTwin": {"tags": {"batch": batch}}}
        for g in ids
    ]
    result = client.enrollment_group.run_bulk_operation(bulk_operation={"enrollmentGroups": groups, "mode": "create"})
    assert result == {"isSuccessful": True, "errors": []}, result

    again = client.enrollment_group.run_bulk_operation(
        bulk_operation={"enrollmentGroups": groups[:1], "mode": "create"}
    )
    assert again["isSuccessful"] is False
    assert [(e["enrollmentGroupId"], e["errorCode"]) for e in again["errors"]] == [(ids[0], 409202)], again

    pages = pages_of(client.enrollment_group.query(query_specification={"query": "SELECT *"}, top=1))
    assert len(pages) >= 3 and all(len(items) == 1 and token for items, token in pages[:-1]), pages
    assert pages[-1][1] is None
    seen = [g["enrollmentGroupId"] for items, _ in pages for g in items]
    assert set(ids) <= set(seen)

    query = {"query": f"SELECT * FROM enrollmentGroups WHERE initialTwin.tags.batch = '{batch}'"}
    assert [len(items) for items, _ in pages_of(client.enrollment_group.query(query_specification=query, top=2))] == [2, 1]

    deleted = client.enrollment_group.run_bulk_operation(bulk_operation={"enrollmentGroups": groups, "mode": "delete"})
    assert deleted == {"isSuccessful": True, "errors": []}, deleted
    for g in ids:
        with pytest.raises(ResourceNotFoundError):
            client.enrollment_group.get(id=g)


def test_policy_without_enrollment_write_cannot_create(client):
    name = unique_id("pyreader")
    policy = create_policy(name, "EnrollmentRead")
    assert policy["keyName"] == name
    reg_id = unique_id("pysvc-policy")
    with dps_client(policy_connection_string(policy)) as reader:
        with pytest.raises(ClientAuthenticationError) as denied:
            reader.enrollment.create_or_update(
                id=reg_id, enrollment={"registrationId": reg_id, "attestation": {"type": "symmetricKey"}}
            )
        assert denied.value.status_code == 401
        assert error_code(denied.value) == 401003, denied.value.response.text()
        with pytest.raises(ResourceNotFoundError):
            client.enrollment.get(id=reg_id)

        client.enrollment.create_or_update(
            id=reg_id, enrollment={"registrationId": reg_id, "attestation": {"type": "symmetricKey"}}
        )
        assert reader.enrollment.get(id=reg_id)["registrationId"] == reg_id
        assert reg_id in [e["registrationId"] for e in reader.enrollment.query(query_specification={"query": "*"})]
        with pytest.raises(ClientAuthenticationError) as denied_delete:
            reader.enrollment.delete(id=reg_id)
        assert error_code(denied_delete.value) == 401003
    client.enrollment.delete(id=reg_id)
    delete_policy(name)


def test_token_signed_with_rotated_out_key_is_refused(client):
    name = unique_id("pyrotated")
    policy = create_policy(name, "EnrollmentRead,EnrollmentWrite")
    reg_id = unique_id("pysvc-rotate")
    with dps_client(policy_connection_string(policy)) as old:
        old.enrollment.create_or_update(
            id=reg_id, enrollment={"registrationId": reg_id, "attestation": {"type": "symmetricKey"}}
        )
        rotated = rotate_policy_key(name, "primary")
        assert rotated["primaryKey"] != policy["primaryKey"], rotated
        assert rotated["secondaryKey"] == policy["secondaryKey"], rotated
        with pytest.raises(ClientAuthenticationError) as refused:
            old.enrollment.get(id=reg_id)
        assert refused.value.status_code == 401
        assert error_code(refused.value) == 401002
    with dps_client(policy_connection_string(rotated)) as new:
        assert new.enrollment.get(id=reg_id)["registrationId"] == reg_id
        new.enrollment.delete(id=reg_id)

        # Deleting the policy revokes its keys.
        delete_policy(name)
        with pytest.raises(ClientAuthenticationError) as revoked:
            new.enrollment.get(id=reg_id)
        assert error_code(revoked.value) == 401002
