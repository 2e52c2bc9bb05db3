"""Helpers for the management-API tests: the official Python service clients, pinned in
requirements.txt, against the running `usher serve` (started by tests/sdk/run).

* azure-iot-deviceprovisioning's DeviceProvisioningClient.from_connection_string(cs,
  connection_verify=<the server's CA file>): the management API (DPS service API 2021-10-01).
* azure-iot-hub's IoTHubRegistryManager.from_connection_string(hub cs): the built-in hub's
  registry API (2021-04-12). It talks HTTPS through msrest/requests, which trusts the CA given in
  REQUESTS_CA_BUNDLE (test_hub.py sets it for its tests).
"""

import base64
import re
import secrets

from usher_sdk import DATA_DIR, built_in_hub, instance, usher, usher_json


def service_connection_string():
    """The instance owner's connection string (policy provisioningserviceowner, all rights)."""
    cs = instance().get("serviceConnectionString")
    assert cs, f"usher instance show has no serviceConnectionString: {instance()}"
    return cs


def hub_connection_string():
    """The built-in hub's connection string (policy iothubowner)."""
    cs = built_in_hub().get("connectionString")
    assert cs, f"the built-in hub has no connectionString: {built_in_hub()}"
    return cs


def host_name_of(connection_string):
    m = re.search(r"(?:^|;)HostName=([^;]+)", connection_string, re.IGNORECASE)
    assert m, f"no HostName in {connection_string}"
    return m.group(1)


def ca_file():
    """Path of the server's CA certificate (PEM)."""
    return instance()["caCertificate"]


def dps_client(connection_string=None):
    """DeviceProvisioningClient.from_connection_string, trusting the server's CA."""
    from azure.iot.deviceprovisioning import DeviceProvisioningClient

    return DeviceProvisioningClient.from_connection_string(
        connection_string or service_connection_string(), connection_verify=ca_file()
    )


def registry_manager(connection_string=None):
    """IoTHubRegistryManager.from_connection_string on the built-in hub (needs REQUESTS_CA_BUNDLE)."""
    from azure.iot.hub import IoTHubRegistryManager

    return IoTHubRegistryManager.from_connection_string(connection_string or hub_connection_string())


def random_key():
    """A random symmetric key (32 bytes, base64), as a user would supply one."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def create_policy(name, rights):
    """`usher policy create`: {keyName, primaryKey, secondaryKey, rights}."""
    return usher_json("policy", "create", "--data-dir", DATA_DIR, "--name", name, "--rights", rights)


def rotate_policy_key(name, which):
    """`usher policy rotate-key NAME --key WHICH`: the policy with its new keys."""
    return usher_json("policy", "rotate-key", name, "--data-dir", DATA_DIR, "--key", which)


def delete_policy(name):
    """`usher policy delete NAME`."""
    return usher("policy", "delete", name, "--data-dir", DATA_DIR)


def policy_connection_string(policy, key=None):
    return (
        f"HostName={host_name_of(service_connection_string())};"
        f"SharedAccessKeyName={policy['keyName']};SharedAccessKey={key or policy['primaryKey']}"
    )


def pages_of(item_paged):
    """All pages of an azure-core ItemPaged as [(items, continuation token after the page)]."""
    pager = item_paged.by_page()
    pages = []
    for page in pager:
        pages.append((list(page), pager.continuation_token))
        assert len(pages) <= 10_000, f"query still has more results after 10000 pages: {pages[-3:]}"
    return pages
