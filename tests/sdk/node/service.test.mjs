// The management API with the official Node service client, azure-iot-provisioning-service's
// ProvisioningServiceClient.fromConnectionString(serviceConnectionString): individual enrollments
// and enrollment groups with generated and supplied keys (create, get, update with the etag, a
// stale etag refused, attestation mechanism, delete), bulk create and delete, queries paged across
// several pages, device registration states after a device provisioned (get, group query, delete),
// and access policies (a policy without EnrollmentWrite, a rotated-out key).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  builtInHub,
  deriveKey,
  describeError,
  register,
  rejectionOf,
  runSuffix,
  uniqueId,
} from './lib/usher.mjs';
import {
  allPages,
  createPolicy,
  deletePolicy,
  errorCodeOf,
  policyConnectionString,
  randomKey,
  rotatePolicyKey,
  runBulk,
  serviceClient,
  statusOf,
} from './lib/service.mjs';

const TIMEOUT = { timeout: 90_000 };
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const client = serviceClient();

/** Asserts a client call failed with this HTTP status, error class and (if given) DPS errorCode. */
function assertFailure(err, { status, name, errorCode }) {
  assert.equal(statusOf(err), status, `HTTP status of ${describeError(err)}`);
  assert.equal(err.name, name, `error class of ${describeError(err)}`);
  if (errorCode !== undefined) assert.equal(errorCodeOf(err), errorCode, `errorCode of ${describeError(err)}`);
}

/** Drops what GET adds (registrationState) so a GET result can be sent back as an update. */
function withoutRegistrationState(record) {
  const { registrationState, ...rest } = record;
  return rest;
}

test('individual enrollment, generated keys: create, get, update with etag, stale etag, attestation, delete', TIMEOUT, async () => {
  const regId = uniqueId('svc-ind-gen');

  const created = await client.createOrUpdateIndividualEnrollment({
    registrationId: regId,
    attestation: { type: 'symmetricKey' },
  });
  assert.equal(created.httpResponse.statusCode, 200);
  const enrollment = created.responseBody;
  assert.equal(enrollment.registrationId, regId);
  const keys = enrollment.attestation?.symmetricKey;
  assert.match(keys?.primaryKey ?? '', BASE64, `generated primaryKey in ${JSON.stringify(enrollment)}`);
  assert.match(keys?.secondaryKey ?? '', BASE64, `generated secondaryKey in ${JSON.stringify(enrollment)}`);
  assert.notEqual(keys.primaryKey, keys.secondaryKey);
  assert.ok(enrollment.etag, `etag in ${JSON.stringify(enrollment)}`);

  // GET hides the keys and adds the (never registered) registration state.
  const got = (await client.getIndividualEnrollment(regId)).responseBody;
  assert.equal(got.registrationId, regId);
  assert.equal(got.etag, enrollment.etag);
  assert.deepEqual(got.attestation, { type: 'symmetricKey' }, `attestation in GET ${JSON.stringify(got)}`);
  assert.equal(got.registrationState?.status, 'unassigned', `registrationState in ${JSON.stringify(got)}`);

  // The same create again (no etag, so no If-Match) is a conflict.
  const conflict = await rejectionOf(
    client.createOrUpdateIndividualEnrollment({ registrationId: regId, attestation: { type: 'symmetricKey' } }),
    'createOrUpdate of an existing enrollment without etag',
  );
  assertFailure(conflict, { status: 409, name: 'DeviceAlreadyExistsError', errorCode: 409201 });

  // Update: send back the GET result (keys hidden) with changes; If-Match carries its etag.
  const update = {
    ...withoutRegistrationState(got),
    provisioningStatus: 'disabled',
    capabilities: { iotEdge: true },
    initialTwin: { tags: { stage: 'updated' }, properties: { desired: { interval: 30 } } },
  };
  const updated = (await client.createOrUpdateIndividualEnrollment(update)).responseBody;
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.deepEqual(updated.capabilities, { iotEdge: true });
  assert.deepEqual(updated.initialTwin?.tags, { stage: 'updated' });
  assert.ok(updated.etag && updated.etag !== enrollment.etag, `a new etag after the update: ${JSON.stringify(updated)}`);
  assert.deepEqual(updated.attestation?.symmetricKey, keys, 'an update without keys keeps the stored keys');
  assert.equal(updated.createdDateTimeUtc, enrollment.createdDateTimeUtc);

  // The first etag is stale now: update and delete with it are refused.
  const staleUpdate = await rejectionOf(
    client.createOrUpdateIndividualEnrollment({ ...update, etag: enrollment.etag, provisioningStatus: 'enabled' }),
    'createOrUpdate with a stale etag',
  );
  assertFailure(staleUpdate, { status: 412, name: 'InvalidEtagError' });
  const staleDelete = await rejectionOf(client.deleteIndividualEnrollment(regId, enrollment.etag), 'delete with a stale etag');
  assertFailure(staleDelete, { status: 412, name: 'InvalidEtagError' });
  assert.equal((await client.getIndividualEnrollment(regId)).responseBody.provisioningStatus, 'disabled');

  // The attestation mechanism has the keys.
  const attestation = (await client.getIndividualEnrollmentAttestationMechanism(regId)).responseBody;
  assert.deepEqual(attestation, { type: 'symmetricKey', symmetricKey: keys });

  // Delete with the current etag (the record object: its etag goes into If-Match).
  await client.deleteIndividualEnrollment(updated);
  const gone = await rejectionOf(client.getIndividualEnrollment(regId), 'get of a deleted enrollment');
  assert.equal(statusOf(gone), 404, describeError(gone));
  assert.equal(errorCodeOf(gone), 404201, describeError(gone));
});

test('individual enrollment, supplied keys: a device provisions; registration state get and delete', TIMEOUT, async () => {
  const regId = uniqueId('svc-ind-keys');
  const keys = { primaryKey: randomKey(), secondaryKey: randomKey() };

  const enrollment = (
    await client.createOrUpdateIndividualEnrollment({
      registrationId: regId,
      attestation: { type: 'symmetricKey', symmetricKey: keys },
    })
  ).responseBody;
  assert.deepEqual(enrollment.attestation?.symmetricKey, keys, `supplied keys in ${JSON.stringify(enrollment)}`);
  assert.deepEqual((await client.getIndividualEnrollmentAttestationMechanism(regId)).responseBody.symmetricKey, keys);

  // No registration record before the device registers.
  const before = await rejectionOf(client.getDeviceRegistrationState(regId), 'registration state before registering');
  assert.equal(statusOf(before), 404, describeError(before));

  assertAssigned(assert, await register(regId, keys.secondaryKey), regId);

  const state = (await client.getDeviceRegistrationState(regId)).responseBody;
  assert.equal(state.registrationId, regId, `registrationId in ${JSON.stringify(state)}`);
  assert.equal(state.status, 'assigned', `status in ${JSON.stringify(state)}`);
  assert.equal(state.assignedHub, builtInHub().hostname, `assignedHub in ${JSON.stringify(state)}`);
  assert.equal(state.deviceId, regId, `deviceId in ${JSON.stringify(state)}`);
  assert.equal(state.substatus, 'initialAssignment', `substatus in ${JSON.stringify(state)}`);
  assert.ok(state.etag, `etag in ${JSON.stringify(state)}`);

  // GET of the enrollment carries the same registration state.
  const got = (await client.getIndividualEnrollment(regId)).responseBody;
  assert.equal(got.registrationState?.status, 'assigned', `registrationState in ${JSON.stringify(got)}`);
  assert.equal(got.registrationState?.assignedHub, builtInHub().hostname);

  // Delete the record with its etag (the state object), then it is gone; the enrollment stays.
  await client.deleteDeviceRegistrationState(state);
  const gone = await rejectionOf(client.getDeviceRegistrationState(regId), 'registration state after delete');
  assert.equal(statusOf(gone), 404, describeError(gone));
  assert.equal(errorCodeOf(gone), 404202, describeError(gone));
  assert.equal((await client.getIndividualEnrollment(regId)).responseBody.registrationState?.status, 'unassigned');

  await client.deleteIndividualEnrollment(regId);
});

test('enrollment group, generated keys: create, get, update with etag, stale etag, attestation, delete', TIMEOUT, async () => {
  const groupId = uniqueId('svc-grp-gen');

  const group = (
    await client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: groupId, attestation: { type: 'symmetricKey' } })
  ).responseBody;
  assert.equal(group.enrollmentGroupId, groupId);
  const keys = group.attestation?.symmetricKey;
  assert.match(keys?.primaryKey ?? '', BASE64, `generated primaryKey in ${JSON.stringify(group)}`);
  assert.match(keys?.secondaryKey ?? '', BASE64, `generated secondaryKey in ${JSON.stringify(group)}`);

  const got = (await client.getEnrollmentGroup(groupId)).responseBody;
  assert.equal(got.etag, group.etag);
  assert.deepEqual(got.attestation, { type: 'symmetricKey' }, `attestation in GET ${JSON.stringify(got)}`);

  const conflict = await rejectionOf(
    client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: groupId, attestation: { type: 'symmetricKey' } }),
    'createOrUpdate of an existing group without etag',
  );
  assertFailure(conflict, { status: 409, name: 'DeviceAlreadyExistsError', errorCode: 409202 });

  // The SDK's create_enrollment_group sample sends the PUT response back with changes.
  const updated = (
    await client.createOrUpdateEnrollmentGroup({ ...group, provisioningStatus: 'disabled', initialTwin: { tags: { fleet: 'a' } } })
  ).responseBody;
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.deepEqual(updated.initialTwin?.tags, { fleet: 'a' });
  assert.ok(updated.etag && updated.etag !== group.etag);
  assert.deepEqual(updated.attestation?.symmetricKey, keys);

  const stale = await rejectionOf(
    client.createOrUpdateEnrollmentGroup({ ...group, provisioningStatus: 'enabled' }),
    'group createOrUpdate with a stale etag',
  );
  assertFailure(stale, { status: 412, name: 'InvalidEtagError' });
  const staleDelete = await rejectionOf(client.deleteEnrollmentGroup(groupId, group.etag), 'group delete with a stale etag');
  assertFailure(staleDelete, { status: 412, name: 'InvalidEtagError' });

  const attestation = (await client.getEnrollmentGroupAttestationMechanism(groupId)).responseBody;
  assert.deepEqual(attestation, { type: 'symmetricKey', symmetricKey: keys });

  await client.deleteEnrollmentGroup(groupId, updated.etag);
  const gone = await rejectionOf(client.getEnrollmentGroup(groupId), 'get of a deleted group');
  assert.equal(statusOf(gone), 404, describeError(gone));
  assert.equal(errorCodeOf(gone), 404204, describeError(gone));
});

test('enrollment group, supplied keys: devices provision; registration states queried in pages, got and deleted', TIMEOUT, async () => {
  const groupId = uniqueId('svc-grp-keys');
  const keys = { primaryKey: randomKey(), secondaryKey: randomKey() };
  const group = (
    await client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: groupId,
      attestation: { type: 'symmetricKey', symmetricKey: keys },
    })
  ).responseBody;
  assert.deepEqual(group.attestation?.symmetricKey, keys);
  assert.deepEqual((await client.getEnrollmentGroupAttestationMechanism(groupId)).responseBody.symmetricKey, keys);

  // Nothing registered yet: the registration query answers one empty page.
  const empty = await allPages(client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, groupId, 2));
  assert.deepEqual(empty.map((p) => p.items), [[]]);
  assert.equal(empty[0].itemType, 'DeviceRegistration');

  const deviceIds = [1, 2, 3].map((i) => uniqueId(`svc-grp-dev${i}`));
  for (const [i, regId] of deviceIds.entries()) {
    const key = deriveKey(i === 2 ? keys.secondaryKey : keys.primaryKey, regId);
    assertAssigned(assert, await register(regId, key), regId);
  }

  const pages = await allPages(client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, groupId, 2));
  assert.deepEqual(pages.map((p) => p.items.length), [2, 1], `page sizes of ${JSON.stringify(pages)}`);
  assert.ok(pages[0].continuation, 'a continuation on the first page');
  assert.equal(pages.at(-1).continuation, undefined, 'no x-ms-continuation on the last page');
  assert.ok(pages.every((p) => p.itemType === 'DeviceRegistration'), `x-ms-item-type of ${JSON.stringify(pages)}`);
  const states = pages.flatMap((p) => p.items);
  assert.deepEqual(states.map((s) => s.registrationId).sort(), [...deviceIds].sort());
  for (const s of states) {
    assert.equal(s.status, 'assigned', JSON.stringify(s));
    assert.equal(s.assignedHub, builtInHub().hostname, JSON.stringify(s));
  }

  const state = (await client.getDeviceRegistrationState(deviceIds[0])).responseBody;
  assert.equal(state.status, 'assigned');
  assert.equal(state.deviceId, deviceIds[0]);

  // Delete one record without an etag; one with a wrong etag (another record's) is refused, then
  // deleted with its own.
  await client.deleteDeviceRegistrationState(deviceIds[0]);
  const other = (await client.getDeviceRegistrationState(deviceIds[2])).responseBody;
  const current = (await client.getDeviceRegistrationState(deviceIds[1])).responseBody;
  assert.notEqual(other.etag, current.etag);
  const wrong = await rejectionOf(client.deleteDeviceRegistrationState(deviceIds[1], other.etag), 'registration delete with a wrong etag');
  assertFailure(wrong, { status: 412, name: 'InvalidEtagError' });
  await client.deleteDeviceRegistrationState(deviceIds[1], current.etag);

  const left = (await allPages(client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, groupId))).flatMap((p) => p.items);
  assert.deepEqual(left.map((s) => s.registrationId), [deviceIds[2]]);

  await client.deleteEnrollmentGroup(groupId);
});

test('bulk create, queries paged across several pages, bulk delete', TIMEOUT, async () => {
  const batch = `b${runSuffix}`;
  const ids = [1, 2, 3, 4, 5].map((i) => uniqueId(`svc-bulk${i}`));
  const given = { primaryKey: randomKey(), secondaryKey: randomKey() };
  const enrollments = ids.map((registrationId, i) => ({
    registrationId,
    attestation: i === 0 ? { type: 'symmetricKey', symmetricKey: given } : { type: 'symmetricKey' },
    initialTwin: { tags: { batch } },
  }));

  const created = (await runBulk(client, { mode: 'create', enrollments })).responseBody;
  assert.deepEqual(created, { isSuccessful: true, errors: [] });
  assert.deepEqual((await client.getIndividualEnrollmentAttestationMechanism(ids[0])).responseBody.symmetricKey, given);
  const generated = (await client.getIndividualEnrollmentAttestationMechanism(ids[1])).responseBody.symmetricKey;
  assert.match(generated?.primaryKey ?? '', BASE64, 'bulk create generates missing keys');

  // The SDK sample's query '*' over every enrollment, 2 a page: every ID exactly once.
  const all = await allPages(client.createIndividualEnrollmentQuery({ query: '*' }, 2));
  assert.ok(all.length >= 3, `at least 3 pages of 2 for >= 5 enrollments, got ${all.length}`);
  all.forEach((p, i) => {
    const last = i === all.length - 1;
    assert.equal(p.itemType, 'Enrollment');
    if (last) {
      assert.equal(p.continuation, undefined, 'no x-ms-continuation on the last page');
      assert.ok(p.items.length >= 1 && p.items.length <= 2, `last page size ${p.items.length}`);
    } else {
      assert.ok(p.continuation, `a continuation on page ${i + 1}`);
      assert.equal(p.items.length, 2, `page ${i + 1} of ${all.length}`);
    }
  });
  const seen = all.flatMap((p) => p.items.map((e) => e.registrationId));
  assert.equal(new Set(seen).size, seen.length, 'no enrollment on two pages');
  for (const id of ids) assert.ok(seen.includes(id), `${id} in the query results`);
  const item = all.flatMap((p) => p.items).find((e) => e.registrationId === ids[0]);
  assert.deepEqual(item.attestation, { type: 'symmetricKey' }, 'keys hidden in query results');
  assert.equal(item.registrationState, undefined, 'no registrationState in query results');

  // A WHERE filter on the batch tag (Usher's query extension): exactly 2 + 2 + 1.
  const filtered = await allPages(
    client.createIndividualEnrollmentQuery({ query: `SELECT * FROM enrollments WHERE initialTwin.tags.batch = '${batch}'` }, 2),
  );
  assert.deepEqual(filtered.map((p) => p.items.length), [2, 2, 1]);
  assert.deepEqual(filtered.flatMap((p) => p.items.map((e) => e.registrationId)).sort(), [...ids].sort());

  // Create again with one existing and one new record: the new one is created, the other reported.
  const extra = uniqueId('svc-bulk6');
  const partial = (
    await runBulk(client, {
      mode: 'create',
      enrollments: [
        { registrationId: ids[2], attestation: { type: 'symmetricKey' } },
        { registrationId: extra, attestation: { type: 'symmetricKey' } },
      ],
    })
  ).responseBody;
  assert.equal(partial.isSuccessful, false, JSON.stringify(partial));
  assert.equal(partial.errors?.length, 1, JSON.stringify(partial));
  assert.equal(partial.errors[0].registrationId, ids[2]);
  assert.equal(partial.errors[0].errorCode, 409201);
  assert.equal((await client.getIndividualEnrollment(extra)).responseBody.registrationId, extra);

  // More than 10 items is a request error, not a bulk result.
  const tooMany = await rejectionOf(
    runBulk(client, {
      mode: 'create',
      enrollments: Array.from({ length: 11 }, (_, i) => ({ registrationId: uniqueId(`svc-bulk-x${i}`), attestation: { type: 'symmetricKey' } })),
    }),
    'bulk create of 11 enrollments',
  );
  assertFailure(tooMany, { status: 400, name: 'ArgumentError' });

  // Bulk delete all six.
  const deleted = (
    await runBulk(client, {
      mode: 'delete',
      enrollments: [...ids, extra].map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })),
    })
  ).responseBody;
  assert.deepEqual(deleted, { isSuccessful: true, errors: [] });
  for (const id of [...ids, extra]) {
    const gone = await rejectionOf(client.getIndividualEnrollment(id), `get of bulk-deleted ${id}`);
    assert.equal(statusOf(gone), 404, describeError(gone));
  }
  const none = await allPages(
    client.createIndividualEnrollmentQuery({ query: `SELECT * FROM enrollments WHERE initialTwin.tags.batch = '${batch}'` }, 2),
  );
  assert.deepEqual(none.map((p) => p.items), [[]]);
});

test('enrollment group query paged across several pages', TIMEOUT, async () => {
  const batch = `g${runSuffix}`;
  const ids = [1, 2, 3].map((i) => uniqueId(`svc-gq${i}`));
  for (const enrollmentGroupId of ids) {
    await client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId,
      attestation: { type: 'symmetricKey' },
      initialTwin: { tags: { batch } },
    });
  }

  const all = await allPages(client.createEnrollmentGroupQuery({ query: 'SELECT *' }, 1));
  assert.ok(all.length >= 3, `at least 3 pages of 1, got ${all.length}`);
  assert.ok(all.every((p) => p.itemType === 'EnrollmentGroup'), 'x-ms-item-type EnrollmentGroup');
  assert.ok(all.slice(0, -1).every((p) => p.items.length === 1 && p.continuation), 'full pages with continuations');
  assert.equal(all.at(-1).continuation, undefined);
  const seen = all.flatMap((p) => p.items.map((g) => g.enrollmentGroupId));
  for (const id of ids) assert.ok(seen.includes(id), `${id} in the group query results`);
  assert.ok(all.flatMap((p) => p.items).every((g) => !g.attestation?.symmetricKey), 'keys hidden in query results');

  const filtered = await allPages(
    client.createEnrollmentGroupQuery({ query: `SELECT * FROM enrollmentGroups WHERE initialTwin.tags.batch = '${batch}'` }, 2),
  );
  assert.deepEqual(filtered.map((p) => p.items.length), [2, 1]);

  for (const id of ids) await client.deleteEnrollmentGroup(id);
});

test('a policy without EnrollmentWrite cannot create an enrollment (401, errorCode 401003)', TIMEOUT, async () => {
  const policy = createPolicy(uniqueId('reader'), 'EnrollmentRead');
  assert.equal(policy.keyName, uniqueId('reader'));
  const reader = serviceClient(policyConnectionString(policy));

  const regId = uniqueId('svc-policy');
  const denied = await rejectionOf(
    reader.createOrUpdateIndividualEnrollment({ registrationId: regId, attestation: { type: 'symmetricKey' } }),
    'create with an EnrollmentRead-only policy',
  );
  assertFailure(denied, { status: 401, name: 'UnauthorizedError', errorCode: 401003 });
  const deniedBulk = await rejectionOf(
    runBulk(reader, { mode: 'create', enrollments: [{ registrationId: regId, attestation: { type: 'symmetricKey' } }] }),
    'bulk create with an EnrollmentRead-only policy',
  );
  assertFailure(deniedBulk, { status: 401, name: 'UnauthorizedError', errorCode: 401003 });
  const notCreated = await rejectionOf(client.getIndividualEnrollment(regId), 'get of the refused enrollment');
  assert.equal(statusOf(notCreated), 404, describeError(notCreated));

  // Reading is what the policy may do.
  await client.createOrUpdateIndividualEnrollment({ registrationId: regId, attestation: { type: 'symmetricKey' } });
  assert.equal((await reader.getIndividualEnrollment(regId)).responseBody.registrationId, regId);
  const deniedDelete = await rejectionOf(reader.deleteIndividualEnrollment(regId), 'delete with an EnrollmentRead-only policy');
  assertFailure(deniedDelete, { status: 401, name: 'UnauthorizedError', errorCode: 401003 });
  // Registration states need RegistrationStatusRead, which the policy lacks.
  const deniedState = await rejectionOf(reader.getDeviceRegistrationState(regId), 'registration state with an EnrollmentRead-only policy');
  assertFailure(deniedState, { status: 401, name: 'UnauthorizedError', errorCode: 401003 });

  await client.deleteIndividualEnrollment(regId);
  deletePolicy(policy.keyName);
});

test('a token signed with a rotated-out key is refused; the new key works', TIMEOUT, async () => {
  const name = uniqueId('rotated');
  const policy = createPolicy(name, 'EnrollmentRead,EnrollmentWrite');
  const regId = uniqueId('svc-rotate');
  const oldClient = serviceClient(policyConnectionString(policy));
  await oldClient.createOrUpdateIndividualEnrollment({ registrationId: regId, attestation: { type: 'symmetricKey' } });

  const rotated = rotatePolicyKey(name, 'primary');
  assert.notEqual(rotated.primaryKey, policy.primaryKey, `a new primary key: ${JSON.stringify(rotated)}`);
  assert.equal(rotated.secondaryKey, policy.secondaryKey, 'rotating the primary keeps the secondary');

  const refused = await rejectionOf(oldClient.getIndividualEnrollment(regId), 'get with the rotated-out key');
  assertFailure(refused, { status: 401, name: 'UnauthorizedError', errorCode: 401002 });

  const newClient = serviceClient(policyConnectionString(rotated));
  assert.equal((await newClient.getIndividualEnrollment(regId)).responseBody.registrationId, regId);
  const secondaryClient = serviceClient(policyConnectionString(policy, policy.secondaryKey));
  assert.equal((await secondaryClient.getIndividualEnrollment(regId)).responseBody.registrationId, regId);

  await newClient.deleteIndividualEnrollment(regId);

  // Deleting the policy revokes its keys.
  deletePolicy(name);
  const revoked = await rejectionOf(newClient.getIndividualEnrollment(regId), 'get with a deleted policy');
  assertFailure(revoked, { status: 401, name: 'UnauthorizedError', errorCode: 401002 });
});
