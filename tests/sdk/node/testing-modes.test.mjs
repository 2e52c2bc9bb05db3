// Usher's firmware-testing modes seen through the official Node clients. Each enrollment carries
// its own `usherTesting` field, written with azure-iot-provisioning-service's
// createOrUpdateIndividualEnrollment (the service client sends the object as given and reads it
// back), so these tests do not disturb the others sharing the server.
//
// What each client does (device-protocol.md §4.4, §5.3, §10):
//   Http (azure-iot-provisioning-device-http): polls while `assigning`; any 429 or 5xx is final.
//   Mqtt (azure-iot-provisioning-device-mqtt): polls while `assigning`; retries after 429 and 5xx.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Http, Mqtt, describeError, registerOver, rejectionOf, uniqueId } from './lib/usher.mjs';
import { randomKey, serviceClient } from './lib/service.mjs';

const TIMEOUT = { timeout: 60_000 };
const client = serviceClient();

/** Creates an individual enrollment with these testing modes through the service client. */
async function enrollWith(tag, usherTesting) {
  const registrationId = uniqueId(`modes-${tag}`);
  const key = randomKey();
  const created = await client.createOrUpdateIndividualEnrollment({
    registrationId,
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: key, secondaryKey: randomKey() } },
    usherTesting,
  });
  assert.deepEqual(created.responseBody.usherTesting, usherTesting, 'the extension field round-trips');
  const read = await client.getIndividualEnrollment(registrationId);
  assert.deepEqual(read.responseBody.usherTesting, usherTesting);
  return { registrationId, key };
}

for (const { name, create } of [
  { name: 'Http', create: () => new Http() },
  { name: 'Mqtt', create: () => new Mqtt() },
]) {
  test(`${name}: polls through pollsAssigning (DPS-like asynchrony) and is assigned`, TIMEOUT, async () => {
    const { registrationId, key } = await enrollWith(`async-${name}`, { pollsAssigning: 2, retryAfter: 1 });
    const started = Date.now();
    const result = await registerOver(create(), registrationId, key);
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    // register (202) + two assigning polls + the final poll, 1 s apart.
    assert.ok(Date.now() - started >= 2_000, `waited ${Date.now() - started} ms`);
  });
}

test('Http: an injected 503 on the first attempt is final (the HTTP client does not retry)', TIMEOUT, async () => {
  const { registrationId, key } = await enrollWith('fault503-Http', {
    fault: { status: 503, firstAttempts: 1, retryAfter: 1 },
  });
  const err = await rejectionOf(registerOver(new Http(), registrationId, key), 'register');
  assert.match(String(err?.name), /ServiceUnavailable|Error/, describeError(err));
  assert.equal(err?.response?.statusCode, 503, describeError(err));
});

test('Mqtt: an injected 503 on the first attempt is retried after Retry-After, then assigned', TIMEOUT, async () => {
  const { registrationId, key } = await enrollWith('fault503-Mqtt', {
    fault: { status: 503, firstAttempts: 1, retryAfter: 1 },
  });
  const result = await registerOver(new Mqtt(), registrationId, key);
  assert.equal(result.status, 'assigned', JSON.stringify(result));
});

test('Http: an injected 429 is final (ThrottlingError)', TIMEOUT, async () => {
  const { registrationId, key } = await enrollWith('fault429-Http', {
    fault: { status: 429, firstAttempts: 1, retryAfter: 1 },
  });
  const err = await rejectionOf(registerOver(new Http(), registrationId, key), 'register');
  assert.equal(err?.name, 'ThrottlingError', describeError(err));
});

test('Mqtt: injected 429s on the first two attempts are retried, then assigned', TIMEOUT, async () => {
  const { registrationId, key } = await enrollWith('fault429-Mqtt', {
    fault: { status: 429, firstAttempts: 2, retryAfter: 1 },
  });
  const result = await registerOver(new Mqtt(), registrationId, key);
  assert.equal(result.status, 'assigned', JSON.stringify(result));
});

test('Http: DPS polling quota (5 per 10 s, one more every 2 s) exceeded by 1 s polls is final; Mqtt waits and succeeds', TIMEOUT, async () => {
  const modes = { pollsAssigning: 12, retryAfter: 1, quotas: true };
  const http = await enrollWith('quota-Http', modes);
  const err = await rejectionOf(registerOver(new Http(), http.registrationId, http.key), 'register');
  assert.equal(err?.name, 'ThrottlingError', describeError(err));
  const mqtt = await enrollWith('quota-Mqtt', modes);
  const result = await registerOver(new Mqtt(), mqtt.registrationId, mqtt.key);
  assert.equal(result.status, 'assigned', JSON.stringify(result));
});
