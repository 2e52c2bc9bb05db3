// X.509 attestation with the official Node SDK: azure-iot-security-x509's X509Security with
// ProvisioningDeviceClient over every transport (Http, Mqtt, MqttWs, Amqp, AmqpWs). Certificates
// are made with the openssl command line, as the README's walk-through makes them: a root, an
// intermediate signed by it, device certificates signed by the intermediate (the device presents
// its certificate and the intermediate), and self-signed device certificates for individual
// enrollments. For each transport: an individual enrollment, a group device presenting its chain,
// a device of a group that names a verified CA certificate (proof of possession made with openssl),
// and a device of another CA (refused). (Expired certificates are covered by the Rust integration
// tests: openssl 3.0's command line cannot date a certificate in the past.)

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import {
  usher,
  Amqp,
  AmqpWs,
  assertAssigned,
  dataDir,
  describeError,
  Http,
  instance,
  Mqtt,
  MqttWs,
  ProvisioningDeviceClient,
  provisioningHost,
  rejectionOf,
  requireSdk,
  uniqueId,
  usherJson,
} from './lib/usher.mjs';

const { X509Security } = requireSdk('azure-iot-security-x509');

const TIMEOUT = { timeout: 60_000 };

const dir = mkdtempSync(path.join(tmpdir(), 'usher-x509-'));
after(() => rmSync(dir, { recursive: true, force: true }));

writeFileSync(
  path.join(dir, 'ca.ext'),
  'basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign, digitalSignature\n',
);
writeFileSync(
  path.join(dir, 'device.ext'),
  'basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n',
);

function openssl(...args) {
  return execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

function selfSigned(name, { ca = false } = {}) {
  const ext = ca ? [] : ['-addext', 'extendedKeyUsage=clientAuth'];
  openssl('req', '-x509', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '30', '-subj', `/CN=${name}`, ...ext);
  return name;
}

function signed(name, issuer, { ca = false } = {}) {
  openssl('req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-CAcreateserial', '-days', '30', '-extfile', ca ? 'ca.ext' : 'device.ext', '-out', `${name}.pem`);
  return name;
}

const pem = (name) => readFileSync(path.join(dir, `${name}.pem`), 'utf8');
const keyOf = (name) => readFileSync(path.join(dir, `${name}.key`), 'utf8');

function registerX509(transport, registrationId, cert, key) {
  const security = new X509Security(registrationId, { cert, key });
  const client = ProvisioningDeviceClient.create(provisioningHost, instance().idScope, transport, security);
  return client.register();
}

function enroll(registrationId, certName) {
  return usherJson('enrollment', 'create', '--data-dir', dataDir, '--enrollment-id', registrationId, '--attestation-type', 'x509', '--certificate-path', path.join(dir, `${certName}.pem`));
}

function enrollGroup(groupId, signingName) {
  return usherJson('enrollment-group', 'create', '--data-dir', dataDir, '--group-id', groupId, '--attestation-type', 'x509', '--certificate-path', path.join(dir, `${signingName}.pem`));
}

const root = selfSigned(uniqueId('node-x509-root'), { ca: true });
const intermediate = signed(uniqueId('node-x509-int'), root, { ca: true });
const strangerRoot = selfSigned(uniqueId('node-x509-stranger'), { ca: true });
enrollGroup(uniqueId('node-x509-group'), intermediate);

// A verified CA certificate, as the README's walk-through makes one: uploaded with `usher
// certificate add`, proven with a certificate whose CN is the verification code (openssl, signed
// by the CA's key), and named by a group with --ca-name.
const verifiedRoot = selfSigned(uniqueId('node-x509-verified'), { ca: true });
const caName = uniqueId('node-ca');
const added = usherJson('certificate', 'add', '--data-dir', dataDir, '--name', caName, '--path', path.join(dir, `${verifiedRoot}.pem`), '--json');
assert.equal(added.properties.isVerified, false);
const code = added.properties.verificationCode;
openssl('req', '-new', ...EC, '-keyout', 'proof.key', '-out', 'proof.csr', '-subj', `/CN=${code}`);
openssl('x509', '-req', '-in', 'proof.csr', '-CA', `${verifiedRoot}.pem`, '-CAkey', `${verifiedRoot}.key`, '-CAcreateserial', '-days', '1', '-out', 'proof.pem');
const verified = usher('certificate', 'verify', '--data-dir', dataDir, '--name', caName, '--path', path.join(dir, 'proof.pem'));
assert.match(verified, /Verified:\s+true/);
usherJson('enrollment-group', 'create', '--data-dir', dataDir, '--group-id', uniqueId('node-x509-ca-group'), '--attestation-type', 'x509', '--ca-name', caName);

const transports = [
  { name: 'Http', tag: 'http', create: () => new Http() },
  { name: 'Mqtt', tag: 'mqtt', create: () => new Mqtt() },
  { name: 'MqttWs', tag: 'mqttws', create: () => new MqttWs() },
  { name: 'Amqp', tag: 'amqp', create: () => new Amqp() },
  { name: 'AmqpWs', tag: 'amqpws', create: () => new AmqpWs() },
];

for (const { name, tag, create } of transports) {
  test(`${name}: an individual enrollment's self-signed device provisions`, TIMEOUT, async () => {
    const regId = selfSigned(uniqueId(`nx-${tag}-ind`));
    const created = enroll(regId, regId);
    const info = created.attestation.x509.clientCertificates.primary.info;
    assert.equal(info.subjectName, `CN=${regId}`);
    const result = await registerX509(create(), regId, pem(regId), keyOf(regId));
    assertAssigned(assert, result, regId);
  });

  test(`${name}: a device of a group signed by an intermediate provisions with its chain`, TIMEOUT, async () => {
    const regId = signed(uniqueId(`nx-${tag}-grp`), intermediate);
    const result = await registerX509(create(), regId, pem(regId) + pem(intermediate), keyOf(regId));
    assertAssigned(assert, result, regId);
  });

  test(`${name}: a device of a group naming a verified CA certificate provisions`, TIMEOUT, async () => {
    const regId = signed(uniqueId(`nx-${tag}-ca`), verifiedRoot);
    const result = await registerX509(create(), regId, pem(regId), keyOf(regId));
    assertAssigned(assert, result, regId);
  });

  test(`${name}: a device of another CA is refused`, TIMEOUT, async () => {
    const regId = signed(uniqueId(`nx-${tag}-foreign`), strangerRoot);
    const err = await rejectionOf(registerX509(create(), regId, pem(regId) + pem(strangerRoot), keyOf(regId)), regId);
    if (tag.startsWith('amqp')) {
      // rhea's connection error, passed through by the SDK: the condition and the DPS error JSON.
      assert.equal(err?.condition, 'amqp:unauthorized-access', `condition of ${JSON.stringify(err)}`);
      assert.equal(JSON.parse(err.description).errorCode, 401002, `errorCode in ${err.description}`);
    } else {
      assert.equal(err?.name, 'UnauthorizedError', `expected UnauthorizedError, got ${describeError(err)}`);
    }
  });
}
