// Successful provisioning with the official Node SDK (azure-iot-provisioning-device + Http
// transport + SymmetricKeySecurityClient): individual enrollments, enrollment groups with keys
// derived from the group's primary and secondary key, case-insensitive registration IDs, and the
// devices showing up in the built-in hub.
//
// Top-level tests in one file run in order; the hub listing test relies on the devices
// registered before it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  builtInHub,
  createEnrollment,
  createGroup,
  deriveKey,
  generateKey,
  hubDevices,
  instance,
  register,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';

const TIMEOUT = { timeout: 60_000 };

/** Devices this file provisioned, for the hub listing test: [registrationId, expected in hub]. */
const provisioned = [];

test('instance show describes the server the devices talk to', () => {
  const inst = instance();
  assert.match(inst.idScope, /^0ne[0-9A-Fa-f]+$/, `idScope in ${JSON.stringify(inst)}`);
  assert.equal(inst.deviceEndpoint, 'localhost');
  assert.ok(builtInHub().name, 'built-in hub has a name');
  assert.ok(builtInHub().hostname, 'built-in hub has a hostname');
});

test('individual enrollment: device provisions with its primary key', TIMEOUT, async () => {
  const regId = uniqueId('sdk-ind');
  const enrollment = createEnrollment(regId);
  assert.equal(enrollment.registrationId, regId, `registrationId in ${JSON.stringify(enrollment)}`);
  const { primaryKey } = symmetricKeys(enrollment);

  const result = await register(regId, primaryKey);
  assertAssigned(assert, result, regId);
  assert.equal(result.deviceId, regId);
  provisioned.push(regId);
});

test('individual enrollment: device provisions with its secondary key', TIMEOUT, async () => {
  const regId = uniqueId('sdk-ind-sec');
  const { secondaryKey } = symmetricKeys(createEnrollment(regId));

  const result = await register(regId, secondaryKey);
  assertAssigned(assert, result, regId);
  provisioned.push(regId);
});

test('individual enrollment: keys given with --primary-key/--secondary-key are used', TIMEOUT, async () => {
  const regId = uniqueId('sdk-ind-keys');
  const primaryKey = generateKey();
  const secondaryKey = generateKey();
  const keys = symmetricKeys(createEnrollment(regId, { primaryKey, secondaryKey }));
  assert.equal(keys.primaryKey, primaryKey);
  assert.equal(keys.secondaryKey, secondaryKey);

  assertAssigned(assert, await register(regId, primaryKey), regId);
  assertAssigned(assert, await register(regId, secondaryKey), regId);
});

test('enrollment group: device with a key derived from the group primary key provisions', TIMEOUT, async () => {
  const group = createGroup(uniqueId('sdk-grp'));
  const { primaryKey } = symmetricKeys(group);
  const regId = uniqueId('sdk-grp-dev1');
  const deviceKey = deriveKey(primaryKey, regId);

  const result = await register(regId, deviceKey);
  assertAssigned(assert, result, regId);
  assert.equal(result.deviceId, regId);
  provisioned.push(regId);
});

test('enrollment group: device with a key derived from the group secondary key provisions', TIMEOUT, async () => {
  const group = createGroup(uniqueId('sdk-grp-sec'));
  const { secondaryKey } = symmetricKeys(group);
  const regId = uniqueId('sdk-grp-sec-dev1');

  const result = await register(regId, deriveKey(secondaryKey, regId));
  assertAssigned(assert, result, regId);
  provisioned.push(regId);
});

test('enrollment group: several devices of one group provision with their own derived keys', TIMEOUT, async () => {
  const { primaryKey } = symmetricKeys(createGroup(uniqueId('sdk-grp-many')));
  for (const n of [1, 2, 3]) {
    const regId = uniqueId(`sdk-grp-many-dev${n}`);
    assertAssigned(assert, await register(regId, deriveKey(primaryKey, regId)), regId);
  }
});

test('a provisioned device re-registers and is assigned again', TIMEOUT, async () => {
  const regId = uniqueId('sdk-rereg');
  const { primaryKey } = symmetricKeys(createEnrollment(regId));
  const first = await register(regId, primaryKey);
  assertAssigned(assert, first, regId);
  const second = await register(regId, primaryKey);
  assertAssigned(assert, second, regId);
  assert.equal(second.deviceId, first.deviceId);
});

test('registration IDs are case-insensitive (individual enrollment)', TIMEOUT, async () => {
  const enrolled = uniqueId('Dev-Mixed-1');
  const { primaryKey } = symmetricKeys(createEnrollment(enrolled));
  const presented = enrolled.toLowerCase();
  assert.notEqual(presented, enrolled);

  const result = await register(presented, primaryKey);
  assertAssigned(assert, result, enrolled);
});

test('registration IDs are case-insensitive (individual enrollment, upper-case spelling)', TIMEOUT, async () => {
  const enrolled = uniqueId('dev-lower-1');
  const { primaryKey } = symmetricKeys(createEnrollment(enrolled));

  const result = await register(enrolled.toUpperCase(), primaryKey);
  assertAssigned(assert, result, enrolled);
});

test('enrollment group: the derived key uses the device’s own spelling of its registration ID', TIMEOUT, async () => {
  const { primaryKey } = symmetricKeys(createGroup(uniqueId('sdk-grp-case')));

  const mixed = uniqueId('Grp-Mixed-Dev');
  assertAssigned(assert, await register(mixed, deriveKey(primaryKey, mixed)), mixed);

  const lower = uniqueId('grp-lower-dev');
  assertAssigned(assert, await register(lower, deriveKey(primaryKey, lower)), lower);
});

test('provisioned devices are listed in the built-in hub as enabled', () => {
  assert.ok(
    provisioned.length >= 4,
    `the provisioning tests above must pass first (provisioned so far: ${JSON.stringify(provisioned)})`,
  );
  const hub = builtInHub();
  const devices = hubDevices(hub.name);
  assert.ok(Array.isArray(devices), `usher hub devices ${hub.name} --json printed ${JSON.stringify(devices)}`);
  for (const regId of provisioned) {
    const device = devices.find((d) => String(d.deviceId).toLowerCase() === regId.toLowerCase());
    assert.ok(device, `device ${regId} not listed in hub ${hub.name}: ${JSON.stringify(devices.map((d) => d.deviceId))}`);
    assert.equal(device.status, 'enabled', `status of ${JSON.stringify(device)}`);
    assert.ok(device.createdDateTimeUtc, `createdDateTimeUtc of ${JSON.stringify(device)}`);
  }
});
