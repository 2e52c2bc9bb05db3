// Provisioning with the official Node SDK over AMQP (azure-iot-provisioning-device-amqp):
//   Amqp    connects to amqps://localhost, i.e. AMQP 1.0 over TLS on port 5671;
//   AmqpWs  connects to wss://localhost:443/$iothub/websocket (subprotocol AMQPWSB10) on the HTTPS
//           port, the same path MQTT over WebSockets uses.
// Both authenticate with SASL PLAIN ({idScope}/registrations/{registrationId} and the SAS token),
// attach a receiver and a sender link at {idScope}/registrations/{registrationId}, and send
// requests told apart by iotdps-operation-type, answered by correlation_id (device-protocol.md §6).
// For each transport: an individual enrollment and a group device provision, a wrong key is
// refused when the connection opens (amqp:unauthorized-access with the DPS error JSON as the
// description), a disabled enrollment is answered with status "disabled", a device re-registers,
// and the transport's own register/poll exchange follows the server's register answer (assigning
// with retry-after and a poll, usher serve's default; or assigned at once). The devices are then
// listed in the hub.
//
// Top-level tests in one file run in order; the hub listing test at the end relies on the devices
// registered before it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Amqp,
  AmqpWs,
  assertAssigned,
  builtInHub,
  createEnrollment,
  createGroup,
  deriveKey,
  describeError,
  deviceToken,
  generateKey,
  hubDevices,
  instance,
  provisioningHost,
  registerOver,
  rejectionOf,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';

const TIMEOUT = { timeout: 60_000 };
const registerResponse = process.env.USHER_REGISTER_RESPONSE;
const retryAfter = process.env.USHER_RETRY_AFTER;

const transports = [
  { name: 'Amqp', tag: 'amqp', create: () => new Amqp() },
  { name: 'AmqpWs', tag: 'amqpws', create: () => new AmqpWs() },
];

/** Devices this file provisioned, for the hub listing test. */
const provisioned = [];

/** Calls a transport method that takes a Node-style callback (err, result, response, pollingInterval). */
function call(transport, method, ...args) {
  return new Promise((resolve, reject) => {
    transport[method](...args, (err, result, response, pollingInterval) => {
      if (err) reject(err);
      else resolve({ result, pollingInterval });
    });
  });
}

function disconnect(transport) {
  return new Promise((resolve) => transport.disconnect(() => resolve()));
}

for (const { name, tag, create } of transports) {
  test(`${name}: individual enrollment provisions with its primary key`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-ind`);
    const { primaryKey } = symmetricKeys(createEnrollment(regId));

    const result = await registerOver(create(), regId, primaryKey);
    console.log(`${name} provisioned ${regId}: ${JSON.stringify(result)}`);
    assertAssigned(assert, result, regId);
    assert.equal(result.deviceId, regId);
    assert.equal(result.substatus, 'initialAssignment', `substatus in ${JSON.stringify(result)}`);
    provisioned.push(regId);
  });

  test(`${name}: enrollment group device provisions with its derived key`, TIMEOUT, async () => {
    const { primaryKey } = symmetricKeys(createGroup(uniqueId(`sdk-${tag}-grp`)));
    const regId = uniqueId(`sdk-${tag}-grp-dev`);

    const result = await registerOver(create(), regId, deriveKey(primaryKey, regId));
    console.log(`${name} provisioned ${regId}: ${JSON.stringify(result)}`);
    assertAssigned(assert, result, regId);
    assert.equal(result.deviceId, regId);
    provisioned.push(regId);
  });

  test(`${name}: a wrong key is refused when the connection opens (amqp:unauthorized-access, errorCode 401002)`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-badkey`);
    createEnrollment(regId);

    const err = await rejectionOf(registerOver(create(), regId, generateKey()), `register() over ${name} with a wrong key`);
    // rhea's connection error, passed through by the SDK: the condition and the DPS error JSON.
    assert.equal(err?.condition, 'amqp:unauthorized-access', `condition of ${describeError(err)} ${JSON.stringify(err)}`);
    const body = JSON.parse(err.description);
    assert.equal(body.errorCode, 401002, `errorCode in ${err.description}`);
    assert.equal(body.message, 'Unauthorized', `message in ${err.description}`);
    assert.equal(typeof body.trackingId, 'string', `trackingId in ${err.description}`);
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

  test(`${name}: a provisioned device re-registers and is assigned again`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-rereg`);
    const { primaryKey } = symmetricKeys(createEnrollment(regId));
    const first = await registerOver(create(), regId, primaryKey);
    assertAssigned(assert, first, regId);
    const second = await registerOver(create(), regId, primaryKey);
    assertAssigned(assert, second, regId);
    assert.equal(second.deviceId, first.deviceId);
    assert.equal(second.createdDateTimeUtc, first.createdDateTimeUtc, 'the registration record is the same one');
    assert.notEqual(second.etag, first.etag, 'the record was written again');
  });

  test(`${name}: register and poll follow the server's register answer (${registerResponse ?? 'unknown'})`, TIMEOUT, async () => {
    const regId = uniqueId(`sdk-${tag}-poll`);
    const { primaryKey } = symmetricKeys(createEnrollment(regId));
    const { idScope } = instance();
    const transport = create();
    transport.setSharedAccessSignature(deviceToken(idScope, regId, primaryKey));
    const request = { registrationId: regId, provisioningHost, idScope };
    try {
      const registered = await call(transport, 'registrationRequest', request);
      const answer = registered.result;
      assert.equal(typeof answer?.operationId, 'string', `operationId in ${JSON.stringify(answer)}`);
      if (registerResponse === 'assigned') {
        assert.equal(answer.status, 'assigned', `register: ${JSON.stringify(answer)}`);
        assert.equal(answer.registrationState?.assignedHub, builtInHub().hostname);
      } else {
        // 202 assigning with a retry-after (usher serve's default, DPS's own flow): the transport
        // reads the retry-after application property.
        assert.equal(registerResponse, 'assigning', 'USHER_REGISTER_RESPONSE is assigned or assigning');
        assert.equal(answer.status, 'assigning', `register: ${JSON.stringify(answer)}`);
        assert.match(String(retryAfter), /^[0-9]+$/, 'USHER_RETRY_AFTER is set with assigning');
        assert.equal(
          registered.pollingInterval,
          Number(retryAfter) * 1000,
          `polling interval from retry-after ${retryAfter}: ${registered.pollingInterval}`,
        );
      }
      const polled = await call(transport, 'queryOperationStatus', request, answer.operationId);
      assert.equal(polled.result?.operationId, answer.operationId, `operationId in ${JSON.stringify(polled.result)}`);
      assert.equal(polled.result?.status, 'assigned', `poll: ${JSON.stringify(polled.result)}`);
      assertAssigned(assert, polled.result.registrationState, regId);
    } finally {
      await disconnect(transport);
    }
  });
}

test('devices provisioned over AMQP and AMQP over WebSockets are listed in the built-in hub', () => {
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
