// X.509 attestation with the official Node SDK: azure-iot-security-x509's X509Security with
// ProvisioningDeviceClient over every transport (Http, Mqtt, MqttWs, Amqp, AmqpWs). Certificates
// are made with the openssl command line, as the README's walk-through makes them: a root, an
// intermediate signed by it, device certificates signed by the intermediate (the device presents
// its certificate and the intermediate), and self-signed device certificates for individual
// enrollments. For each transport: an individual enrollment, a group device presenting its chain,
// a device of a group that names a verified CA certificate (proof of possession made with openssl),
// and a device of another CA (refused); also an individual enrollment with a device ID, a device of
// a group signed by a root, an expired certificate (made with `openssl ca`, which can date one in
// the past), a certificate whose CN is not the registration ID, and a device blocked by its
// disabled individual enrollment. And the CSR flow: a symmetric-key device asks for a certificate
// in its register body (curl: no published SDK release sends `csr` yet: Node 1.9.1 and Python
// 2.14.0 are the newest), and the issued certificate then provisions with the SDK over every
// transport, in a group whose signing certificate is Usher's issuing CA.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import {
  usher,
  createEnrollment,
  curl,
  deviceToken,
  symmetricKeys,
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

// A v1 self-signed certificate (no extensions), as the Node SDK's own e2e test makes its
// individual enrollments' device certificates.
function selfSignedV1(name) {
  openssl('req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-signkey', `${name}.key`, '-days', '30', '-out', `${name}.pem`);
  assert.match(openssl('x509', '-in', `${name}.pem`, '-noout', '-text'), /Version: 1 \(0x0\)/);
  return name;
}

function signed(name, issuer, { ca = false } = {}) {
  openssl('req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-CAcreateserial', '-days', '30', '-extfile', ca ? 'ca.ext' : 'device.ext', '-out', `${name}.pem`);
  return name;
}

// `openssl ca` dates a certificate in the past, which `openssl x509 -req` (3.0) cannot.
writeFileSync(path.join(dir, 'index.txt'), '');
writeFileSync(path.join(dir, 'serial'), '2000\n');
writeFileSync(
  path.join(dir, 'ca.cnf'),
  '[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n' +
    'default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n',
);

function expired(name, issuer) {
  openssl('req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  openssl('ca', '-batch', '-config', 'ca.cnf', '-cert', `${issuer}.pem`, '-keyfile', `${issuer}.key`, '-in', `${name}.csr`, '-out', `${name}.pem`, '-notext', '-startdate', '20200101000000Z', '-enddate', '20210101000000Z', '-extfile', 'device.ext');
  return name;
}

/**
 * The SDK's refusal of a device credential. Over AMQP a credential refused when the connection
 * opens comes as rhea's connection error (the condition and the DPS error JSON); a request refused
 * later (a certificate whose CN is not the registration ID the link names) as the SDK's
 * UnauthorizedError, translated from the rejection. Elsewhere UnauthorizedError.
 */
function assertUnauthorized(tag, err) {
  if (tag.startsWith('amqp') && err?.condition !== undefined) {
    assert.equal(err.condition, 'amqp:unauthorized-access', `condition of ${JSON.stringify(err)}`);
    assert.equal(JSON.parse(err.description).errorCode, 401002, `errorCode in ${err.description}`);
  } else {
    assert.equal(err?.name, 'UnauthorizedError', `expected UnauthorizedError, got ${describeError(err)}`);
  }
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
const directRoot = selfSigned(uniqueId('node-x509-direct'), { ca: true });
enrollGroup(uniqueId('node-x509-root-group'), directRoot);

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

  test(`${name}: an individual enrollment's v1 self-signed device provisions`, TIMEOUT, async () => {
    const regId = selfSignedV1(uniqueId(`nx-${tag}-v1`));
    enroll(regId, regId);
    const result = await registerX509(create(), regId, pem(regId), keyOf(regId));
    assertAssigned(assert, result, regId);
  });

  test(`${name}: an individual enrollment with a device ID provisions under that ID`, TIMEOUT, async () => {
    const regId = selfSigned(uniqueId(`nx-${tag}-named`));
    usherJson('enrollment', 'create', '--data-dir', dataDir, '--enrollment-id', regId, '--device-id', `${regId}-dev`, '--attestation-type', 'x509', '--certificate-path', path.join(dir, `${regId}.pem`));
    const result = await registerX509(create(), regId, pem(regId), keyOf(regId));
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.deviceId, `${regId}-dev`, JSON.stringify(result));
  });

  test(`${name}: a device of a group signed by a root provisions`, TIMEOUT, async () => {
    const regId = signed(uniqueId(`nx-${tag}-rootdev`), directRoot);
    const result = await registerX509(create(), regId, pem(regId), keyOf(regId));
    assertAssigned(assert, result, regId);
  });

  test(`${name}: an expired certificate and a CN that is not the registration ID are refused`, TIMEOUT, async () => {
    const old = expired(uniqueId(`nx-${tag}-expired`), directRoot);
    assertUnauthorized(tag, await rejectionOf(registerX509(create(), old, pem(old), keyOf(old)), old));
    const regId = signed(uniqueId(`nx-${tag}-cn`), directRoot);
    const claimed = `${regId}-other`;
    assertUnauthorized(tag, await rejectionOf(registerX509(create(), claimed, pem(regId), keyOf(regId)), claimed));
  });

  test(`${name}: a disabled individual enrollment blocks a device of its group`, TIMEOUT, async () => {
    const regId = signed(uniqueId(`nx-${tag}-blocked`), directRoot);
    const other = selfSigned(`${regId}-other`);
    usherJson('enrollment', 'create', '--data-dir', dataDir, '--enrollment-id', regId, '--attestation-type', 'x509', '--certificate-path', path.join(dir, `${other}.pem`), '--provisioning-status', 'disabled');
    const err = await rejectionOf(registerX509(create(), regId, pem(regId), keyOf(regId)), regId);
    assert.equal(err?.result?.status, 'disabled', `status in ${describeError(err)}`);
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

// The CSR flow end to end: register with a symmetric key and a CSR (api-version
// 2025-07-01-preview), read the issued chain from the operation, then provision with the issued
// certificate through the SDK over every transport.
const csrGroup = uniqueId('node-x509-issued');
usherJson('enrollment-group', 'create', '--data-dir', dataDir, '--group-id', csrGroup, '--attestation-type', 'x509', '--certificate-path', path.join(dataDir, 'pki', 'issuing-ca.pem'));

async function issuedCertificate(regId) {
  const { primaryKey } = symmetricKeys(createEnrollment(regId));
  const scope = instance().idScope;
  const token = deviceToken(scope, regId, primaryKey);
  openssl('req', '-new', ...EC, '-keyout', `${regId}.key`, '-subj', `/CN=${regId}`, '-outform', 'DER', '-out', `${regId}.csr.der`);
  const csr = readFileSync(path.join(dir, `${regId}.csr.der`)).toString('base64');
  const api = 'api-version=2025-07-01-preview';
  const put = await curl('PUT', `/${scope}/registrations/${regId}/register?${api}`, {
    authorization: token,
    body: JSON.stringify({ registrationId: regId, csr }),
  });
  assert.ok([200, 202].includes(put.status), `register with csr: ${put.status} ${put.body}`);
  let state = put.json;
  for (let i = 0; i < 20 && state.status === 'assigning'; i++) {
    await new Promise((r) => setTimeout(r, 500));
    state = (await curl('GET', `/${scope}/registrations/${regId}/operations/${put.json.operationId}?${api}`, { authorization: token })).json;
  }
  assert.equal(state.status, 'assigned', JSON.stringify(state));
  const chain = state.registrationState.issuedCertificateChain;
  assert.equal(chain.length, 2, JSON.stringify(state));
  const pemOf = (b64) => `-----BEGIN CERTIFICATE-----\n${b64.match(/.{1,64}/g).join('\n')}\n-----END CERTIFICATE-----\n`;
  // The issued certificate is the device's own: openssl reads its subject as the registration ID
  // and its issuer as the issuing CA's subject.
  writeFileSync(path.join(dir, `${regId}.pem`), pemOf(chain[0]));
  const subject = openssl('x509', '-in', `${regId}.pem`, '-noout', '-subject', '-nameopt', 'RFC2253').trim();
  assert.equal(subject, `subject=CN=${regId}`);
  // From now on the device is a member of the group of the issuing CA's devices.
  usher('enrollment', 'delete', '--data-dir', dataDir, regId);
  return regId;
}

for (const { name, tag, create } of transports) {
  test(`${name}: a certificate issued for a CSR at registration then provisions the device`, TIMEOUT, async () => {
    const regId = await issuedCertificate(uniqueId(`nx-${tag}-csr`));
    const result = await registerX509(create(), regId, pem(regId), keyOf(regId));
    assertAssigned(assert, result, regId);
  });
}
