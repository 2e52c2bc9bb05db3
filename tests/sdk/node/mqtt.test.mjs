// Provisioning with the official Node SDK over MQTT (azure-iot-provisioning-device-mqtt):
//   Mqtt    connects to mqtts://localhost, i.e. MQTT 3.1.1 over TLS on port 8883;
//   MqttWs  connects to wss://localhost:443/$iothub/websocket (subprotocol mqtt) on the HTTPS port.
// For each transport: an individual enrollment and a group device provision, a wrong key is
// refused with a 401 response on the response topic, and a disabled enrollment is answered
// with status "disabled" (device-protocol.md §5).
//
// Top-level tests in one file run in order; the hub listing test at the end relies on the devices
// registered before it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  builtInHub,
  createEnrollment,
  createGroup,
  deriveKey,
  describeError,
  generateKey,
  hubDevices,
  Mqtt,
  MqttWs,
  registerOver,
  rejectionOf,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';

const TIMEOUT = { timeout: 60_000 };

const transports = [
  { name: 'Mqtt', tag: 'mqtt', create: () => new Mqtt() },
  { name: 'MqttWs', tag: 'mqttws', create: () => new MqttWs() },
];

/** Devices this file provisioned, for the hub listing test. */
const provisioned = [];

/** The MQTT transport turns a `$dps/registrations/res/401/...` response into an UnauthorizedError. */
function assertUnauthorizedOnTopic(err) {
  assert.equal(err?.name, 'UnauthorizedError', `expected UnauthorizedError, got ${describeError(err)}`);
  assert.match(
    String(err.transportObject?.topic),
    /^\$dps\/registrations\/res\/401\/\?\$rid=[^&]+/,
    `response topic of ${describeError(err)}`,
  );
  assert.equal(err.result?.errorCode, 401002, `errorCode in ${describeError(err)}`);
}

for (const { name, tag, create } of transports) {
  test(`${name}: individual enrollment provisions with its primary key`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-ind`);
    const { primaryKey } = symmetricKeys(createEnrollment(regId));

    const result = await registerOver(create(), regId, primaryKey);
    assertAssigned(assert, result, regId);
    assert.equal(result.deviceId, regId);
    provisioned.push(regId);
  });

  test(`${name}: enrollment group device provisions with its derived key`, TIMEOUT, async () => {
    const { primaryKey } = symmetricKeys(createGroup(uniqueId(`sdk-${tag}-grp`)));
    const regId = uniqueId(`sdk-${tag}-grp-dev`);

    const result = await registerOver(create(), regId, deriveKey(primaryKey, regId));
    assertAssigned(assert, result, regId);
    assert.equal(result.deviceId, regId);
    provisioned.push(regId);
  });

  test(`${name}: a wrong key is refused with res/401 and errorCode 401002 (UnauthorizedError)`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-badkey`);
    createEnrollment(regId);

    const err = await rejectionOf(registerOver(create(), regId, generateKey()), `register() over ${name} with a wrong key`);
    assertUnauthorizedOnTopic(err);
  });

  test(`${name}: a disabled enrollment does not provision (status "disabled")`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-disabled`);
    const enrollment = createEnrollment(regId, { provisioningStatus: 'disabled' });
    assert.equal(enrollment.provisioningStatus, 'disabled', `provisioningStatus in ${JSON.stringify(enrollment)}`);
    const { primaryKey } = symmetricKeys(enrollment);

    const err = await rejectionOf(registerOver(create(), regId, primaryKey), `register() over ${name} of a disabled enrollment`);
    // The SDK's polling state machine turns any 2xx status other than assigned/assigning/failed
    // into SyntaxError('status is <status>') carrying the service's answer in err.result.
    assert.equal(err?.name, 'SyntaxError', `expected SyntaxError, got ${describeError(err)}`);
    assert.equal(err.message, 'status is disabled', `message of ${describeError(err)}`);
    assert.equal(err.result?.status, 'disabled', `status in ${describeError(err)}`);
  });
}

test('devices provisioned over MQTT and MQTT over WebSockets are listed in the built-in hub', () => {
  assert.equal(
    provisioned.length,
    2 * transports.length,
    `the provisioning tests above must pass first (provisioned: ${JSON.stringify(provisioned)})`,
  );
  const hub = builtInHub();
  const devices = hubDevices(hub.name);
  assert.ok(Array.isArray(devices), `usher hub devices ${hub.name} --json printed ${JSON.stringify(devices)}`);
  for (const regId of provisioned) {
    const device = devices.find((d) => String(d.deviceId).toLowerCase() === regId.toLowerCase());
    assert.ok(device, `device ${regId} not listed in hub ${hub.name}: ${JSON.stringify(devices.map((d) => d.deviceId))}`);
    assert.equal(device.status, 'enabled', `status of ${JSON.stringify(device)}`);
  }
});
