"""X.509 attestation with the official Python SDK: ProvisioningDeviceClient.create_from_x509_certificate.

Certificates are made with the openssl command line, as the README's walk-through makes them: a
root, an intermediate signed by it, device certificates signed by the intermediate (the device
presents its certificate and the intermediate), and self-signed device certificates for
individual enrollments. For MQTT and MQTT over WebSockets each: an individual enrollment without
and with a device ID, a device of a group signed by the intermediate and of a group signed by the
root, a device of another CA (401), a device blocked by its disabled individual enrollment
(status disabled), an expired device certificate and a certificate whose CN is not the
registration ID (401), and a device of a group that names a verified CA certificate (uploaded and
proven with `usher certificate add|verify`, the proof made by openssl). Every `info` the server
shows is checked against openssl's own reading.
"""

import re
import subprocess
from pathlib import Path

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient, exceptions

from usher_sdk import (
    DATA_DIR,
    PROVISIONING_HOST,
    assert_assigned,
    ca_pem,
    instance,
    unique_id,
    usher_json,
)
import usher_sdk

TRANSPORTS = [
    pytest.param(False, id="mqtt"),
    pytest.param(True, id="websockets"),
]

CA_EXT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
"""
DEVICE_EXT = """basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""


def openssl(*args, cwd):
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


class Pki:
    """Certificates in one directory: `<name>.pem` and `<name>.key`."""

    def __init__(self, directory):
        self.dir = Path(directory)
        (self.dir / "ca.ext").write_text(CA_EXT)
        (self.dir / "device.ext").write_text(DEVICE_EXT)

    def path(self, name, suffix="pem"):
        return str(self.dir / f"{name}.{suffix}")

    def _key_and_csr(self, name):
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                cwd=self.dir)

    def root(self, name):
        openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30",
                "-subj", f"/CN={name}", cwd=self.dir)
        return name

    def signed(self, name, issuer, ca=False):
        self._key_and_csr(name)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey",
                f"{issuer}.key", "-CAcreateserial", "-days", "30", "-extfile",
                "ca.ext" if ca else "device.ext", "-out", f"{name}.pem", cwd=self.dir)
        return name

    def self_signed_device(self, name):
        openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30",
                "-subj", f"/CN={name}", "-addext", "extendedKeyUsage=clientAuth", cwd=self.dir)
        return name

    def expired(self, name, issuer):
        """A device certificate of `issuer` that expired in 2021: `openssl ca` can date a
        certificate in the past, which `openssl x509 -req` (3.0) cannot."""
        self._key_and_csr(name)
        (self.dir / "index.txt").touch()
        serial = self.dir / "serial"
        if not serial.exists():
            serial.write_text("1000\n")
        (self.dir / "ca.cnf").write_text(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n"
            "serial = serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
            "[p]\ncommonName = supplied\n"
        )
        openssl("ca", "-batch", "-config", "ca.cnf", "-cert", f"{issuer}.pem", "-keyfile",
                f"{issuer}.key", "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext",
                "-startdate", "20200101000000Z", "-enddate", "20210101000000Z", "-extfile",
                "device.ext", cwd=self.dir)
        return name

    def chain(self, name, *rest):
        """`<name>-chain.pem`: the device's certificate, then the others."""
        text = "".join(Path(self.path(n)).read_text() for n in (name, *rest))
        out = self.dir / f"{name}-chain.pem"
        out.write_text(text)
        return str(out)

    def openssl_info(self, name):
        """openssl's reading of a certificate, in the shape of DPS's X509CertificateInfo."""
        pem = self.path(name)
        text = openssl("x509", "-in", pem, "-noout", "-subject", "-issuer", "-serial",
                       "-nameopt", "RFC2253", cwd=self.dir)
        fields = dict(line.split("=", 1) for line in text.strip().splitlines())
        sha1 = openssl("x509", "-in", pem, "-noout", "-fingerprint", "-sha1", cwd=self.dir)
        sha256 = openssl("x509", "-in", pem, "-noout", "-fingerprint", "-sha256", cwd=self.dir)
        return {
            "subjectName": fields["subject"],
            "issuerName": fields["issuer"],
            "serialNumber": fields["serial"].upper(),
            "sha1Thumbprint": sha1.strip().split("=", 1)[1].replace(":", ""),
            "sha256Thumbprint": sha256.strip().split("=", 1)[1].replace(":", ""),
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("x509"))


def enroll(pki, registration_id, cert, device_id=None, status=None):
    args = ["enrollment", "create", "--data-dir", DATA_DIR, "--enrollment-id", registration_id,
            "--attestation-type", "x509", "--certificate-path", pki.path(cert)]
    if device_id:
        args += ["--device-id", device_id]
    if status:
        args += ["--provisioning-status", status]
    created = usher_json(*args)
    assert_info(pki, cert, created["attestation"]["x509"]["clientCertificates"]["primary"])
    return created


def enroll_group(pki, group_id, signing):
    created = usher_json("enrollment-group", "create", "--data-dir", DATA_DIR, "--group-id",
                         group_id, "--attestation-type", "x509", "--certificate-path",
                         pki.path(signing))
    assert_info(pki, signing, created["attestation"]["x509"]["signingCertificates"]["primary"])
    return created


def assert_info(pki, cert, entry):
    """The server answers with the certificate's info (as openssl reads it), never the PEM."""
    assert "certificate" not in entry, f"the certificate was echoed: {entry}"
    info = entry["info"]
    expected = pki.openssl_info(cert)
    for field, value in expected.items():
        assert info[field] == value, f"{field} of {cert}: {info[field]!r} != openssl's {value!r}"
    assert info["version"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["notAfterUtc"]), info


def register(registration_id, cert_file, key_file, websockets):
    """ProvisioningDeviceClient.create_from_x509_certificate(...).register(), as the SDK's X.509
    sample does, trusting the server's CA; the same deadline as the symmetric-key tests."""
    original = usher_sdk.create_client

    def create_client(rid, _key, ws):
        return ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=PROVISIONING_HOST,
            registration_id=rid,
            id_scope=instance()["idScope"],
            x509=X509(cert_file=cert_file, key_file=key_file),
            server_verification_cert=ca_pem(),
            websockets=ws,
        )

    usher_sdk.create_client = create_client
    try:
        return usher_sdk.register(registration_id, None, websockets)
    finally:
        usher_sdk.create_client = original


def tag(websockets):
    return "x5ws" if websockets else "x5mq"


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_individual_enrollment_without_and_with_a_device_id(pki, websockets):
    rid = pki.self_signed_device(unique_id(f"{tag(websockets)}-ind"))
    enroll(pki, rid, rid)
    attempt = register(rid, pki.path(rid), pki.path(rid, "key"), websockets)
    assert_assigned(attempt, rid)

    named = pki.self_signed_device(unique_id(f"{tag(websockets)}-named"))
    device_id = f"{named}-device"
    enroll(pki, named, named, device_id=device_id)
    attempt = register(named, pki.path(named), pki.path(named, "key"), websockets)
    assert attempt.error is None, attempt.describe()
    assert attempt.result.status == "assigned"
    assert attempt.result.registration_state.device_id == device_id


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_groups_signed_by_an_intermediate_or_a_root(pki, websockets):
    root = pki.root(unique_id(f"{tag(websockets)}-root"))
    intermediate = pki.signed(unique_id(f"{tag(websockets)}-intermediate"), root, ca=True)
    enroll_group(pki, unique_id(f"{tag(websockets)}-grp-int"), intermediate)
    device = pki.signed(unique_id(f"{tag(websockets)}-grpdev"), intermediate)
    attempt = register(device, pki.chain(device, intermediate), pki.path(device, "key"),
                       websockets)
    assert_assigned(attempt, device)

    other_root = pki.root(unique_id(f"{tag(websockets)}-root2"))
    other_intermediate = pki.signed(unique_id(f"{tag(websockets)}-int2"), other_root, ca=True)
    enroll_group(pki, unique_id(f"{tag(websockets)}-grp-root"), other_root)
    via_root = pki.signed(unique_id(f"{tag(websockets)}-rootdev"), other_intermediate)
    attempt = register(via_root, pki.chain(via_root, other_intermediate),
                       pki.path(via_root, "key"), websockets)
    assert_assigned(attempt, via_root)


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_another_cas_device_is_refused_and_a_disabled_enrollment_blocks_a_group_device(
    pki, websockets
):
    root = pki.root(unique_id(f"{tag(websockets)}-root3"))
    intermediate = pki.signed(unique_id(f"{tag(websockets)}-int3"), root, ca=True)
    enroll_group(pki, unique_id(f"{tag(websockets)}-grp3"), intermediate)
    stranger_root = pki.root(unique_id(f"{tag(websockets)}-stranger"))
    stranger = pki.signed(unique_id(f"{tag(websockets)}-foreign"), stranger_root)
    attempt = register(stranger, pki.chain(stranger, stranger_root), pki.path(stranger, "key"),
                       websockets)
    assert_refused(attempt, r"status code 401")

    blocked = pki.signed(unique_id(f"{tag(websockets)}-blocked"), intermediate)
    # Its own (disabled) individual enrollment, with some other certificate of the same name.
    other = pki.self_signed_device(f"{blocked}-other")
    enroll(pki, blocked, other, status="disabled")
    attempt = register(blocked, pki.chain(blocked, intermediate), pki.path(blocked, "key"),
                       websockets)
    assert_refused(attempt, r"disabled")


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_an_expired_certificate_and_a_common_name_not_the_registration_id_are_refused(
    pki, websockets
):
    root = pki.root(unique_id(f"{tag(websockets)}-root4"))
    enroll_group(pki, unique_id(f"{tag(websockets)}-grp4"), root)
    expired = pki.expired(unique_id(f"{tag(websockets)}-expired"), root)
    attempt = register(expired, pki.path(expired), pki.path(expired, "key"), websockets)
    assert_refused(attempt, r"status code 401")

    # A valid device of the group, claiming another registration ID than its certificate's CN.
    device = pki.signed(unique_id(f"{tag(websockets)}-cn"), root)
    attempt = register(f"{device}-other", pki.path(device), pki.path(device, "key"), websockets)
    assert_refused(attempt, r"status code 401")
    # The same device under its own name provisions.
    assert_assigned(register(device, pki.path(device), pki.path(device, "key"), websockets),
                    device)


@pytest.mark.parametrize("websockets", TRANSPORTS)
def test_a_group_naming_a_verified_ca_certificate(pki, websockets):
    root = pki.root(unique_id(f"{tag(websockets)}-verified"))
    name = unique_id(f"{tag(websockets)}-ca")
    added = usher_json("certificate", "add", "--data-dir", DATA_DIR, "--name", name, "--path",
                       pki.path(root), "--json")
    assert added["properties"]["isVerified"] is False, added
    assert added["properties"]["thumbprint"] == pki.openssl_info(root)["sha1Thumbprint"]
    code = added["properties"]["verificationCode"]
    proof = f"{name}-proof"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{proof}.key", "-out", f"{proof}.csr", "-subj", f"/CN={code}",
            cwd=pki.dir)
    openssl("x509", "-req", "-in", f"{proof}.csr", "-CA", f"{root}.pem", "-CAkey", f"{root}.key",
            "-days", "1", "-out", f"{proof}.pem", cwd=pki.dir)
    usher_sdk.usher("certificate", "verify", "--data-dir", DATA_DIR, "--name", name, "--path",
                    pki.path(proof))
    created = usher_json("enrollment-group", "create", "--data-dir", DATA_DIR, "--group-id",
                         unique_id(f"{tag(websockets)}-ca-grp"), "--attestation-type", "x509",
                         "--ca-name", name)
    assert created["attestation"]["x509"]["caReferences"]["primary"] == name
    device = pki.signed(unique_id(f"{tag(websockets)}-cadev"), root)
    assert_assigned(register(device, pki.path(device), pki.path(device, "key"), websockets),
                    device)


def assert_refused(attempt, pattern):
    err = attempt.error
    assert err is not None, f"expected register() to fail, but it returned {attempt.result}"
    assert type(err) is exceptions.ClientError, f"expected ClientError, got {attempt.describe()}"
    assert re.search(pattern, str(err.__cause__)), (
        f"expected the cause to match {pattern!r}, got {attempt.describe()}"
    )
