// The built-in hub's registry API (api-version 2021-04-12) with the official Node hub service
// client, azure-iothub's Registry.fromConnectionString(hub connection string from `usher instance
// show`): create (generated and supplied keys), get, list, update and delete devices, get and
// update twins (with the etag; a stale etag refused), the hub's error types, and devices DPS
// provisioned showing up in the registry.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  createGroup,
  deriveKey,
  describeError,
  register,
  rejectionOf,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';
import { hostNameOf, hubConnectionString, hubRegistry, randomKey, serviceClient, statusOf } from './lib/service.mjs';

const TIMEOUT = { timeout: 90_000 };
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const registry = hubRegistry();

/** Asserts a Registry call failed with this HTTP status and error class. */
function assertFailure(err, { status, name }) {
  assert.equal(statusOf(err), status, `HTTP status of ${describeError(err)}`);
  assert.equal(err.name, name, `error class of ${describeError(err)}`);
}

test('devices: create with generated keys, get, list, update, delete', TIMEOUT, async () => {
  const deviceId = uniqueId('hub-node-gen');

  // Registry.create without authentication sends empty keys, which the hub fills in.
  const created = await registry.create({ deviceId });
  assert.equal(created.httpResponse.statusCode, 200);
  const device = created.responseBody;
  assert.equal(device.deviceId, deviceId);
  assert.equal(device.status, 'enabled');
  assert.equal(device.authentication?.type, 'sas', JSON.stringify(device));
  const keys = device.authentication?.symmetricKey;
  assert.match(keys?.primaryKey ?? '', BASE64, `generated primaryKey in ${JSON.stringify(device)}`);
  assert.match(keys?.secondaryKey ?? '', BASE64, `generated secondaryKey in ${JSON.stringify(device)}`);
  assert.notEqual(keys.primaryKey, keys.secondaryKey);
  assert.ok(device.etag && device.generationId, `etag and generationId in ${JSON.stringify(device)}`);

  const got = (await registry.get(deviceId)).responseBody;
  assert.equal(got.deviceId, deviceId);
  assert.equal(got.status, 'enabled');
  assert.deepEqual(got.authentication?.symmetricKey, keys);

  const listed = (await registry.list()).responseBody;
  assert.ok(Array.isArray(listed), `list() is an array: ${JSON.stringify(listed)}`);
  assert.ok(listed.some((d) => d.deviceId === deviceId), `${deviceId} in list()`);

  // Registry.update always sends If-Match "*": disable the device and give it new keys.
  const newKeys = { primaryKey: randomKey(), secondaryKey: randomKey() };
  const updated = (
    await registry.update({ deviceId, status: 'disabled', authentication: { type: 'sas', symmetricKey: newKeys } })
  ).responseBody;
  assert.equal(updated.status, 'disabled');
  assert.deepEqual(updated.authentication?.symmetricKey, newKeys);
  assert.notEqual(updated.etag, device.etag);
  assert.equal(updated.generationId, device.generationId);
  assert.equal((await registry.get(deviceId)).responseBody.status, 'disabled');

  await registry.delete(deviceId);
  const gone = await rejectionOf(registry.get(deviceId), 'get of a deleted device');
  assertFailure(gone, { status: 404, name: 'DeviceNotFoundError' });
  assert.equal(gone.response?.headers?.['iothub-errorcode'], 'DeviceNotFound', describeError(gone));
  assert.ok(!(await registry.list()).responseBody.some((d) => d.deviceId === deviceId), `${deviceId} no longer listed`);
  const goneAgain = await rejectionOf(registry.delete(deviceId), 'delete of a deleted device');
  assertFailure(goneAgain, { status: 404, name: 'DeviceNotFoundError' });
});

test('devices: create with supplied keys; creating it again is DeviceAlreadyExistsError', TIMEOUT, async () => {
  const deviceId = uniqueId('hub-node-keys');
  const keys = { primaryKey: randomKey(), secondaryKey: randomKey() };
  const device = (
    await registry.create({ deviceId, status: 'disabled', authentication: { type: 'sas', symmetricKey: keys } })
  ).responseBody;
  assert.equal(device.status, 'disabled');
  assert.deepEqual(device.authentication?.symmetricKey, keys);

  const again = await rejectionOf(registry.create({ deviceId }), 'create of an existing device');
  assertFailure(again, { status: 409, name: 'DeviceAlreadyExistsError' });
  assert.equal(again.response?.headers?.['iothub-errorcode'], 'DeviceAlreadyExists', describeError(again));

  await registry.delete(deviceId);
});

test('twins: get, update with the etag, a stale etag refused, Twin.update', TIMEOUT, async () => {
  const deviceId = uniqueId('hub-node-twin');
  await registry.create({ deviceId });

  const twin = (await registry.getTwin(deviceId)).responseBody;
  assert.equal(twin.deviceId, deviceId);
  assert.ok(twin.etag && twin.etag !== '*', `etag in ${JSON.stringify(twin)}`);
  assert.deepEqual(twin.tags ?? {}, {});
  assert.equal(typeof twin.properties?.desired?.$version, 'number', JSON.stringify(twin.properties));

  const patch = { tags: { building: '43', floor: 2 }, properties: { desired: { telemetryInterval: 10, mode: 'eco' } } };
  const updated = (await registry.updateTwin(deviceId, patch, twin.etag)).responseBody;
  assert.deepEqual(updated.tags, patch.tags);
  assert.equal(updated.properties.desired.telemetryInterval, 10);
  assert.equal(updated.properties.desired.mode, 'eco');
  assert.ok(updated.properties.desired.$version > twin.properties.desired.$version, 'desired $version grows');
  assert.notEqual(updated.etag, twin.etag);

  // The first etag is stale now.
  const stale = await rejectionOf(registry.updateTwin(deviceId, { tags: { floor: 3 } }, twin.etag), 'updateTwin with a stale etag');
  assertFailure(stale, { status: 412, name: 'InvalidEtagError' });

  // "*" updates whatever the etag; null removes a property (merge patch).
  const merged = (await registry.updateTwin(deviceId, { tags: { floor: null }, properties: { desired: { mode: null } } }, '*')).responseBody;
  assert.deepEqual(merged.tags, { building: '43' });
  assert.equal(merged.properties.desired.mode, undefined, JSON.stringify(merged.properties.desired));
  assert.equal(merged.properties.desired.telemetryInterval, 10);

  // The Twin object the SDK returns patches itself with its etag and refreshes.
  const twinObject = (await registry.getTwin(deviceId)).responseBody;
  const etagBefore = twinObject.etag;
  await twinObject.update({ tags: { owner: 'sdk' } });
  assert.deepEqual(twinObject.tags, { building: '43', owner: 'sdk' });
  assert.notEqual(twinObject.etag, etagBefore);

  const unknown = await rejectionOf(registry.getTwin(uniqueId('hub-node-nobody')), 'getTwin of an unknown device');
  assertFailure(unknown, { status: 404, name: 'DeviceNotFoundError' });

  await registry.delete(deviceId);
});

test('devices DPS provisioned show up in the registry, enabled, with the enrollment keys and initial twin', TIMEOUT, async () => {
  // An individual enrollment with an initial twin, made with the service client.
  const regId = uniqueId('hub-node-dps');
  const enrollment = (
    await serviceClient().createOrUpdateIndividualEnrollment({
      registrationId: regId,
      attestation: { type: 'symmetricKey' },
      initialTwin: { tags: { origin: 'dps' }, properties: { desired: { interval: 5 } } },
    })
  ).responseBody;
  const keys = enrollment.attestation.symmetricKey;
  assertAssigned(assert, await register(regId, keys.primaryKey), regId);

  const device = (await registry.get(regId)).responseBody;
  assert.equal(device.deviceId, regId);
  assert.equal(device.status, 'enabled');
  assert.deepEqual(device.authentication?.symmetricKey, keys, `hub keys of ${JSON.stringify(device)}`);
  const twin = (await registry.getTwin(regId)).responseBody;
  assert.equal(twin.tags?.origin, 'dps', `initialTwin tags in ${JSON.stringify(twin)}`);
  assert.equal(twin.properties?.desired?.interval, 5, `initialTwin desired in ${JSON.stringify(twin)}`);

  // A group device: its hub keys are the ones derived from the group keys.
  const group = createGroup(uniqueId('hub-node-grp'));
  const groupKeys = symmetricKeys(group);
  const devId = uniqueId('hub-node-grp-dev');
  assertAssigned(assert, await register(devId, deriveKey(groupKeys.primaryKey, devId)), devId);
  const groupDevice = (await registry.get(devId)).responseBody;
  assert.equal(groupDevice.status, 'enabled');
  assert.deepEqual(groupDevice.authentication?.symmetricKey, {
    primaryKey: deriveKey(groupKeys.primaryKey, devId),
    secondaryKey: deriveKey(groupKeys.secondaryKey, devId),
  });
  const listed = (await registry.list()).responseBody.map((d) => d.deviceId);
  assert.ok(listed.includes(regId) && listed.includes(devId), 'both provisioned devices listed');
});

test('a hub connection string with a wrong key is refused (UnauthorizedError)', TIMEOUT, async () => {
  const wrong = `HostName=${hostNameOf(hubConnectionString())};SharedAccessKeyName=iothubowner;SharedAccessKey=${randomKey()}`;
  const err = await rejectionOf(hubRegistry(wrong).list(), 'list() with a wrong key');
  assertFailure(err, { status: 401, name: 'UnauthorizedError' });
});
