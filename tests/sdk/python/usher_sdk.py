"""Shared helpers for Usher's Python SDK compatibility tests.

The tests drive a running `usher serve` (started by tests/sdk/run) through the `usher` CLI and
provision devices with the real, published Azure IoT Python SDK (`azure-iot-device`, pinned in
requirements.txt), which tests/sdk/run installs into the git-ignored venv .sdk/python.

Environment (set by tests/sdk/run):
  USHER_BIN                path of the usher binary
  USHER_DATA_DIR           data directory of the running server (the CLI finds the server from it)
  USHER_REGISTER_RESPONSE  how the server answers register: assigned (200) or assigning (202 + poll)
"""

import json
import os
import secrets
import shlex
import subprocess
import threading

from azure.iot.device import ProvisioningDeviceClient
from azure.iot.device.common.evented_callback import EventedCallback


def _required_env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"{name} is not set: run these tests through tests/sdk/run, which starts the server"
        )
    return value


USHER_BIN = _required_env("USHER_BIN")
DATA_DIR = _required_env("USHER_DATA_DIR")

# The host name devices use: the server's default --hostname (a SAN of its certificate).
PROVISIONING_HOST = "localhost"

# One random suffix per test process, so re-runs against the same data dir never collide.
RUN_SUFFIX = secrets.token_hex(4)

# How long one register() may take before the test gives up on it. The SDK has its own 30 s
# response timeout, but none around connecting and subscribing.
REGISTER_DEADLINE_S = 90


def unique_id(prefix):
    """A registration/enrollment ID unique to this run: `<prefix>-<suffix>`."""
    return f"{prefix}-{RUN_SUFFIX}"


def usher(*args):
    """Runs the usher CLI against the test server and returns its trimmed stdout."""
    env = dict(os.environ, USHER_DATA_DIR=DATA_DIR)
    cmd = [USHER_BIN, *args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"command timed out: {shlex.join(['usher', *args])}") from e
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed: {shlex.join(['usher', *args])}\n"
            f"  exit status: {proc.returncode}\n"
            f"  stdout: {proc.stdout.strip()}\n  stderr: {proc.stderr.strip()}"
        )
    return proc.stdout.strip()


def usher_json(*args):
    out = usher(*args)
    try:
        return json.loads(out)
    except ValueError as e:
        raise AssertionError(f"usher {' '.join(args)} did not print JSON ({e}):\n{out}") from e


_instance = None


def instance():
    """`usher instance show --json`: idScope, deviceEndpoint, caCertificate, hubs, ..."""
    global _instance
    if _instance is None:
        _instance = usher_json("instance", "show", "--data-dir", DATA_DIR, "--json", "--show-keys")
    return _instance


def built_in_hub():
    hubs = instance().get("hubs")
    assert hubs, f"usher instance show lists no hubs: {instance()}"
    return hubs[0]


def ca_pem():
    """The server's CA certificate as PEM text, for server_verification_cert."""
    with open(instance()["caCertificate"], encoding="ascii") as f:
        return f.read()


def generate_key():
    return usher("key", "generate")


def derive_key(group_key, registration_id):
    return usher("key", "derive", "--group-key", group_key, "--registration-id", registration_id)


def create_enrollment(enrollment_id, provisioning_status=None):
    args = ["enrollment", "create", "--data-dir", DATA_DIR, "--enrollment-id", enrollment_id,
            "--attestation-type", "symmetrickey"]
    if provisioning_status:
        args += ["--provisioning-status", provisioning_status]
    return usher_json(*args)


def create_group(group_id, provisioning_status=None):
    args = ["enrollment-group", "create", "--data-dir", DATA_DIR, "--group-id", group_id,
            "--attestation-type", "symmetrickey"]
    if provisioning_status:
        args += ["--provisioning-status", provisioning_status]
    return usher_json(*args)


def symmetric_keys(created):
    """(primaryKey, secondaryKey) of a created enrollment or group, checked to be present."""
    sk = (created.get("attestation") or {}).get("symmetricKey") or {}
    assert isinstance(sk.get("primaryKey"), str) and isinstance(sk.get("secondaryKey"), str), (
        f"expected .attestation.symmetricKey.{{primaryKey,secondaryKey}} in {created}"
    )
    return sk["primaryKey"], sk["secondaryKey"]


def hub_devices(hub_name):
    return usher_json("hub", "devices", hub_name, "--data-dir", DATA_DIR, "--json")


def create_client(registration_id, key, websockets):
    """The real SDK client, as the SDK's samples build it, trusting the server's dev CA.

    websockets=False: MQTT over TLS to localhost:8883; True: MQTT over WebSockets to
    wss://localhost:443/$iothub/websocket.
    """
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=PROVISIONING_HOST,
        registration_id=registration_id,
        id_scope=instance()["idScope"],
        symmetric_key=key,
        server_verification_cert=ca_pem(),
        websockets=websockets,
    )


def shutdown(client):
    """Disconnects a client whose register() did not succeed.

    register() shuts its pipeline down only after an `assigned` result; after a failure the SDK
    stays connected, and ProvisioningDeviceClient has no public shutdown. Best effort.
    """
    try:
        done = EventedCallback()
        client._pipeline.shutdown(callback=done)
        done.wait_for_completion()
    except Exception:  # noqa: BLE001 - cleanup only
        pass


class Attempt:
    """The outcome of one register(): `result` (RegistrationResult) or `error` (the exception)."""

    def __init__(self, result=None, error=None):
        self.result = result
        self.error = error

    def describe(self):
        if self.error is None:
            return f"result {self.result}"
        cause = self.error.__cause__
        return (f"{type(self.error).__module__}.{type(self.error).__name__}: {self.error}"
                + (f" (cause {type(cause).__module__}.{type(cause).__name__}: {cause})"
                   if cause is not None else ""))


def register(registration_id, key, websockets):
    """Provisions with the SDK's ProvisioningDeviceClient.register() and returns an Attempt.

    Fails the test if register() neither returns nor raises within REGISTER_DEADLINE_S.
    """
    client = create_client(registration_id, key, websockets)
    outcome = {}

    def run():
        try:
            outcome["result"] = client.register()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"register-{registration_id}", daemon=True)
    thread.start()
    thread.join(REGISTER_DEADLINE_S)
    if thread.is_alive():
        shutdown(client)
        raise AssertionError(
            f"register() of {registration_id} (websockets={websockets}) neither returned nor "
            f"raised within {REGISTER_DEADLINE_S} s"
        )
    attempt = Attempt(outcome.get("result"), outcome.get("error"))
    if attempt.error is not None or attempt.result is None or attempt.result.status != "assigned":
        shutdown(client)
    return attempt


def assert_assigned(attempt, registration_id):
    """register() returned status assigned on the built-in hub, with the device ID expected."""
    assert attempt.error is None, f"register() of {registration_id} failed: {attempt.describe()}"
    result = attempt.result
    assert result is not None, "register() returned None"
    assert result.status == "assigned", f"status of {result}"
    assert result.operation_id, f"operationId of {result}"
    state = result.registration_state
    assert state is not None, f"no registration_state in {result}"
    assert state.assigned_hub == built_in_hub()["hostname"], f"assigned_hub of {result}"
    assert str(state.device_id).lower() == registration_id.lower(), f"device_id of {result}"
