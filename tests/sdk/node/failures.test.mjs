// Registrations the official Node SDK must NOT complete: wrong keys, unknown devices, expired
// tokens (the server runs with --clock-skew 0s) and disabled enrollments.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  createEnrollment,
  createGroup,
  CustomTokenSecurityClient,
  deriveKey,
  describeError,
  generateKey,
  register,
  rejectionOf,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';

const TIMEOUT = { timeout: 60_000 };

/** The SDK's http-base layer turns a 401 into azure-iot-common's UnauthorizedError. */
function assertUnauthorized(err) {
  assert.equal(err?.name, 'UnauthorizedError', `expected UnauthorizedError, got ${describeError(err)}`);
  assert.equal(err.response?.statusCode, 401, `HTTP status of ${describeError(err)}`);
  let body;
  try {
    body = JSON.parse(err.responseBody);
  } catch {
    assert.fail(`401 body is not JSON: ${describeError(err)}`);
  }
  assert.equal(body.errorCode, 401002, `errorCode in ${err.responseBody}`);
}

test('individual enrollment: a wrong key is rejected with 401 (UnauthorizedError)', TIMEOUT, async () => {
  const regId = uniqueId('sdk-badkey');
  createEnrollment(regId);
  const err = await rejectionOf(register(regId, generateKey()), 'register() with a wrong key');
  assertUnauthorized(err);
});

test('enrollment group: the group key itself (not derived) is rejected with 401', TIMEOUT, async () => {
  const { primaryKey } = symmetricKeys(createGroup(uniqueId('sdk-grp-raw')));
  const regId = uniqueId('sdk-grp-raw-dev');
  const err = await rejectionOf(register(regId, primaryKey), 'register() with the group key itself');
  assertUnauthorized(err);
});

test('enrollment group: a key derived for another registration ID is rejected with 401', TIMEOUT, async () => {
  const { primaryKey } = symmetricKeys(createGroup(uniqueId('sdk-grp-other')));
  const regId = uniqueId('sdk-grp-other-dev');
  const err = await rejectionOf(
    register(regId, deriveKey(primaryKey, `${regId}-x`)),
    'register() with a key derived for another ID',
  );
  assertUnauthorized(err);
});

test('a device with no enrollment (and no group) is rejected', TIMEOUT, async () => {
  const regId = uniqueId('sdk-nobody');
  const err = await rejectionOf(register(regId, generateKey()), 'register() of an unknown device');
  assert.ok(
    [401, 404].includes(err?.response?.statusCode),
    `expected HTTP 401 or 404, got ${describeError(err)}`,
  );
});

test('custom security client with a fresh token provisions (control for the expiry test)', TIMEOUT, async () => {
  const regId = uniqueId('sdk-custom');
  const { primaryKey } = symmetricKeys(createEnrollment(regId));
  const security = new CustomTokenSecurityClient(regId, primaryKey);
  assertAssigned(assert, await register(regId, undefined, security), regId);
  assert.equal(security.tokens.length, 1, 'the SDK asked the security client for one token');
});

test('an expired token (se 10 s in the past) is rejected with 401', TIMEOUT, async () => {
  const regId = uniqueId('sdk-expired');
  const { primaryKey } = symmetricKeys(createEnrollment(regId));
  const expiry = Math.floor(Date.now() / 1000) - 10;
  const security = new CustomTokenSecurityClient(regId, primaryKey, { expiry });
  const err = await rejectionOf(register(regId, undefined, security), 'register() with an expired token');
  assert.match(security.tokens[0] ?? '', new RegExp(`&se=${expiry}(&|$)`), 'the token carries the past expiry');
  assertUnauthorized(err);
});

test('a disabled individual enrollment does not provision (200 with status "disabled")', TIMEOUT, async () => {
  const regId = uniqueId('sdk-disabled');
  const enrollment = createEnrollment(regId, { provisioningStatus: 'disabled' });
  assert.equal(enrollment.provisioningStatus, 'disabled', `provisioningStatus in ${JSON.stringify(enrollment)}`);
  const { primaryKey } = symmetricKeys(enrollment);

  const err = await rejectionOf(register(regId, primaryKey), 'register() of a disabled enrollment');
  // The SDK's polling state machine turns any status other than assigned/assigning/failed into
  // an error carrying the service's answer in err.result.
  assert.equal(err?.result?.status, 'disabled', `expected a status "disabled" answer, got ${describeError(err)}`);
  assert.match(String(err.message), /disabled/);
});

test('a device of a disabled enrollment group does not provision', TIMEOUT, async () => {
  const group = createGroup(uniqueId('sdk-grp-disabled'), { provisioningStatus: 'disabled' });
  assert.equal(group.provisioningStatus, 'disabled', `provisioningStatus in ${JSON.stringify(group)}`);
  const { primaryKey } = symmetricKeys(group);
  const regId = uniqueId('sdk-grp-disabled-dev');

  const err = await rejectionOf(register(regId, deriveKey(primaryKey, regId)), 'register() in a disabled group');
  assert.equal(err?.result?.status, 'disabled', `expected a status "disabled" answer, got ${describeError(err)}`);
});
