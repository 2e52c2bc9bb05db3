// The raw-HTTPS walk-through of the DPS documentation (iot-dps-https-sym-key-support.md), with
// curl: a token from `usher sas-token device`, PUT .../register, then GET .../operations/{id};
// and the error shape for a bad token (401, errorCode 401002, x-ms-request-id, x-ms-error-code).

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';

import {
  builtInHub,
  createEnrollment,
  createGroup,
  curl,
  deriveKey,
  deviceToken,
  generateKey,
  instance,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';

const TIMEOUT = { timeout: 60_000 };
/** How the server was told to answer register (tests/sdk/run sets it): assigned | assigning. */
const registerResponse = process.env.USHER_REGISTER_RESPONSE;
const API = 'api-version=2021-06-01';

const registerPath = (scope, id) => `/${scope}/registrations/${id}/register?${API}`;
const operationPath = (scope, id, op) => `/${scope}/registrations/${id}/operations/${encodeURIComponent(op)}?${API}`;
const show = (res) => `HTTP ${res.status} ${JSON.stringify(res.headers)} ${res.body}`;

function assertJsonResponse(res) {
  assert.match(res.headers['content-type'] ?? '', /application\/json/, `content-type of ${show(res)}`);
  assert.ok(res.json !== undefined, `body is not JSON: ${show(res)}`);
}

/** Asserts the DPS error shape: JSON {errorCode, trackingId, ...} + x-ms-request-id + x-ms-error-code. */
function assertErrorResponse(res, status, errorCode) {
  assert.equal(res.status, status, show(res));
  assertJsonResponse(res);
  if (errorCode !== undefined) {
    assert.equal(res.json.errorCode, errorCode, `errorCode in ${show(res)}`);
  } else {
    assert.equal(Math.floor(res.json.errorCode / 1000), status, `errorCode class in ${show(res)}`);
  }
  assert.ok(res.json.trackingId, `trackingId in ${show(res)}`);
  assert.ok(res.headers['x-ms-request-id'], `x-ms-request-id header in ${show(res)}`);
  assert.ok(res.headers['x-ms-error-code'], `x-ms-error-code header in ${show(res)}`);
  assert.equal(res.headers['x-ms-request-id'], res.json.trackingId, `x-ms-request-id mirrors trackingId: ${show(res)}`);
}

/**
 * PUT register, then GET the operation (polling while it is assigning) with the same token.
 * Returns the final operation-status response.
 */
async function walkThrough(scope, id, token) {
  const put = await curl('PUT', registerPath(scope, id), {
    authorization: token,
    body: JSON.stringify({ registrationId: id }),
  });
  assert.ok([200, 202].includes(put.status), `register: ${show(put)}`);
  assertJsonResponse(put);
  assert.equal(typeof put.json.operationId, 'string', `operationId in ${show(put)}`);
  assert.match(put.json.operationId, /^[A-Za-z0-9._-]+$/, `operationId uses unreserved characters only: ${show(put)}`);
  assert.ok(['assigning', 'assigned'].includes(put.json.status), `status in ${show(put)}`);
  if (registerResponse === 'assigned') {
    // --register-response assigned, the fast path: the assignment is answered at once.
    assert.equal(put.status, 200, `register (--register-response assigned): ${show(put)}`);
    assert.equal(put.json.status, 'assigned', `register: ${show(put)}`);
  } else if (registerResponse === 'assigning') {
    // usher serve's default (and --register-response assigning): the DPS flow, 202 +
    // Retry-After, then poll.
    assert.equal(put.status, 202, `register (--register-response assigning): ${show(put)}`);
    assert.equal(put.json.status, 'assigning', `register: ${show(put)}`);
    assert.equal(put.headers['retry-after'], process.env.USHER_RETRY_AFTER, `Retry-After of ${show(put)}`);
  }

  const opId = put.json.operationId;
  let get;
  for (let attempt = 0; attempt < 10; attempt++) {
    get = await curl('GET', operationPath(scope, id, opId), { authorization: token });
    assert.ok([200, 202].includes(get.status), `operation status: ${show(get)}`);
    assertJsonResponse(get);
    assert.equal(get.json.operationId, opId, `operationId in ${show(get)}`);
    if (get.json.status !== 'assigning') break;
    await sleep(1000 * Math.min(Number(get.headers['retry-after']) || 1, 3));
  }
  assert.equal(get.status, 200, `final operation status: ${show(get)}`);
  return get;
}

test('curl walk-through: individual enrollment, PUT register then GET operation status', TIMEOUT, async () => {
  const { idScope } = instance();
  const id = uniqueId('curl-ind');
  const { primaryKey } = symmetricKeys(createEnrollment(id));
  const token = deviceToken(idScope, id, primaryKey);
  assert.match(token, /^SharedAccessSignature /);

  const res = await walkThrough(idScope, id, token);
  assert.equal(res.json.status, 'assigned', show(res));
  const state = res.json.registrationState;
  assert.ok(state, `registrationState in ${show(res)}`);
  assert.equal(state.assignedHub, builtInHub().hostname, `assignedHub in ${show(res)}`);
  assert.equal(state.deviceId, id, `deviceId in ${show(res)}`);
  assert.equal(state.registrationId, id, `registrationId in ${show(res)}`);
  assert.equal(state.status, 'assigned', `registrationState.status in ${show(res)}`);
});

test('curl walk-through: enrollment group device with a derived key', TIMEOUT, async () => {
  const { idScope } = instance();
  const { primaryKey } = symmetricKeys(createGroup(uniqueId('curl-grp')));
  const id = uniqueId('curl-grp-dev');
  const token = deviceToken(idScope, id, deriveKey(primaryKey, id), '15m');

  const res = await walkThrough(idScope, id, token);
  assert.equal(res.json.status, 'assigned', show(res));
  assert.equal(res.json.registrationState?.assignedHub, builtInHub().hostname, show(res));
  assert.equal(res.json.registrationState?.deviceId, id, show(res));
});

test('curl: a token signed with the wrong key gets 401, errorCode 401002 and the x-ms headers', TIMEOUT, async () => {
  const { idScope } = instance();
  const id = uniqueId('curl-badtoken');
  createEnrollment(id);
  const badToken = deviceToken(idScope, id, generateKey());

  const res = await curl('PUT', registerPath(idScope, id), {
    authorization: badToken,
    body: JSON.stringify({ registrationId: id }),
  });
  assertErrorResponse(res, 401, 401002);
});

test('curl: a register request without Authorization gets a 401 error body', TIMEOUT, async () => {
  const { idScope } = instance();
  const id = uniqueId('curl-noauth');
  createEnrollment(id);

  const res = await curl('PUT', registerPath(idScope, id), { body: JSON.stringify({ registrationId: id }) });
  assertErrorResponse(res, 401);
});

test('curl: the operation status cannot be read with a bad token', TIMEOUT, async () => {
  const { idScope } = instance();
  const id = uniqueId('curl-badpoll');
  const { primaryKey } = symmetricKeys(createEnrollment(id));
  const put = await curl('PUT', registerPath(idScope, id), {
    authorization: deviceToken(idScope, id, primaryKey),
    body: JSON.stringify({ registrationId: id }),
  });
  assert.ok([200, 202].includes(put.status), show(put));

  const res = await curl('GET', operationPath(idScope, id, put.json.operationId), {
    authorization: deviceToken(idScope, id, generateKey()),
  });
  assertErrorResponse(res, 401, 401002);
});
