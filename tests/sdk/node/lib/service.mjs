// Helpers for the management-API tests: the official service clients (azure-iot-provisioning-service's
// ProvisioningServiceClient and azure-iothub's Registry, both pinned in ../package.json), access
// policies made with the usher CLI, and query paging.
//
// Both clients always talk HTTPS to port 443 of the connection string's HostName (they cannot take
// a port); Node trusts the server's dev CA through NODE_EXTRA_CA_CERTS, which tests/sdk/run sets.

import { randomBytes } from 'node:crypto';

import { builtInHub, dataDir, instance, requireSdk, usher, usherJson } from './usher.mjs';

export const { ProvisioningServiceClient } = requireSdk('azure-iot-provisioning-service');
export const { Registry } = requireSdk('azure-iothub');

/** The instance owner's connection string (policy provisioningserviceowner, all rights). */
export function serviceConnectionString() {
  const cs = instance().serviceConnectionString;
  if (!cs) throw new Error(`usher instance show has no serviceConnectionString: ${JSON.stringify(instance())}`);
  return cs;
}

/** The HostName of a connection string. */
export function hostNameOf(connectionString) {
  const m = /(?:^|;)HostName=([^;]+)/i.exec(connectionString);
  if (!m) throw new Error(`no HostName in ${connectionString}`);
  return m[1];
}

/** ProvisioningServiceClient.fromConnectionString, as the SDK's samples build it. */
export function serviceClient(connectionString = serviceConnectionString()) {
  return ProvisioningServiceClient.fromConnectionString(connectionString);
}

/** The built-in hub's connection string (policy iothubowner). */
export function hubConnectionString() {
  const cs = builtInHub().connectionString;
  if (!cs) throw new Error(`the built-in hub has no connectionString: ${JSON.stringify(builtInHub())}`);
  return cs;
}

/** Registry.fromConnectionString on the built-in hub, as the SDK's samples build it. */
export function hubRegistry(connectionString = hubConnectionString()) {
  return Registry.fromConnectionString(connectionString);
}

/** A random symmetric key (32 bytes, base64), as a user would supply one. */
export function randomKey() {
  return randomBytes(32).toString('base64');
}

/**
 * `usher policy create --name NAME --rights RIGHTS`: {keyName, primaryKey, secondaryKey, rights}.
 */
export function createPolicy(name, rights) {
  return usherJson('policy', 'create', '--data-dir', dataDir, '--name', name, '--rights', rights);
}

/** `usher policy rotate-key NAME --key WHICH`: the policy with its new keys. */
export function rotatePolicyKey(name, which) {
  return usherJson('policy', 'rotate-key', name, '--data-dir', dataDir, '--key', which);
}

/** `usher policy delete NAME`. */
export function deletePolicy(name) {
  return usher('policy', 'delete', name, '--data-dir', dataDir);
}

/** A service connection string for a policy, on the instance's host. */
export function policyConnectionString(policy, key = policy.primaryKey) {
  return `HostName=${hostNameOf(serviceConnectionString())};SharedAccessKeyName=${policy.keyName};SharedAccessKey=${key}`;
}

/**
 * Runs a Query (createIndividualEnrollmentQuery, createEnrollmentGroupQuery,
 * createEnrollmentGroupDeviceRegistrationStateQuery) to the end, the way the SDK's query sample
 * does: `query.next(callback)` while `query.hasMoreResults` (the callback form continues from
 * `query.continuationToken`; the promise form `next()` without a token would restart at page 1).
 * Returns [{items, continuation, itemType}] per page. Fails after maxPages pages.
 */
export async function allPages(query, maxPages = 10_000) {
  const pages = [];
  while (query.hasMoreResults) {
    if (pages.length >= maxPages) {
      throw new Error(`query still has more results after ${maxPages} pages: ${JSON.stringify(pages.slice(-3))}`);
    }
    const page = await new Promise((resolve, reject) => {
      query.next((err, result, response) => {
        if (err) {
          reject(err);
        } else {
          resolve({
            items: result,
            continuation: response.headers['x-ms-continuation'],
            itemType: response.headers['x-ms-item-type'],
          });
        }
      });
    });
    if (!Array.isArray(page.items)) {
      throw new Error(`a query page is not a JSON array: ${JSON.stringify(page)}`);
    }
    pages.push(page);
  }
  return pages;
}

/** HTTP status of a client error (the clients attach the response). */
export function statusOf(err) {
  return err?.response?.statusCode;
}

/** The DPS errorCode in a client error's response body (undefined if it has none). */
export function errorCodeOf(err) {
  try {
    return JSON.parse(err?.responseBody)?.errorCode;
  } catch {
    return undefined;
  }
}

/**
 * client.runBulkEnrollmentOperation(operation) through its callback form, as the SDK's
 * run_bulk_operation sample calls it; resolves like the promise form would, {responseBody,
 * httpResponse}. The promise form of azure-iot-provisioning-service 1.11.2 never settles: its
 * compiled runBulkEnrollmentOperation calls the promise's callback only `if (callback)`, i.e.
 * only when the caller passed one (the request itself is sent).
 */
export function runBulk(client, operation) {
  return new Promise((resolve, reject) => {
    client.runBulkEnrollmentOperation(operation, (err, responseBody, httpResponse) => {
      if (err) reject(err);
      else resolve({ responseBody, httpResponse });
    });
  });
}
