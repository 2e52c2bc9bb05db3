// Shared helpers for Usher's Node SDK compatibility tests.
//
// The tests drive a running `usher serve` (started by tests/sdk/run) through the `usher` CLI and
// provision devices with the real, published Azure IoT Node SDK clients, which tests/sdk/run
// installs (pinned, see ../package.json) into the git-ignored folder .sdk/node at the repo root.
//
// Environment (set by tests/sdk/run):
//   USHER_BIN            path of the usher binary
//   USHER_DATA_DIR       data directory of the running server (the CLI finds the server from it)
//   USHER_SDK_NODE_DIR   folder holding node_modules with the SDK clients (default <repo>/.sdk/node)
//   NODE_EXTRA_CA_CERTS  the server's CA certificate, so Node's TLS trusts the dev CA
//   USHER_REGISTER_RESPONSE  how the server answers register: assigned (200) or assigning (202 + poll)

import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..', '..', '..');

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through tests/sdk/run, which starts the server`);
  }
  return value;
}

export const usherBin = requiredEnv('USHER_BIN');
export const dataDir = requiredEnv('USHER_DATA_DIR');
const sdkNodeDir = process.env.USHER_SDK_NODE_DIR || path.join(repoRoot, '.sdk', 'node');

// The SDK packages are CommonJS and live outside this folder's resolution path. Exported for the
// service-client helpers (service.mjs), which load their packages only when a test file needs them.
export const requireSdk = createRequire(path.join(sdkNodeDir, 'package.json'));
export const { ProvisioningDeviceClient } = requireSdk('azure-iot-provisioning-device');
export const { Http } = requireSdk('azure-iot-provisioning-device-http');
export const { Mqtt, MqttWs } = requireSdk('azure-iot-provisioning-device-mqtt');
export const { Amqp, AmqpWs } = requireSdk('azure-iot-provisioning-device-amqp');
export const { SymmetricKeySecurityClient } = requireSdk('azure-iot-security-symmetric-key');
export const { SharedAccessSignature } = requireSdk('azure-iot-common');

/** The host name devices use: the server's default --hostname (a SAN of its certificate). */
export const provisioningHost = 'localhost';

/** One random suffix per test process, so re-runs against the same data dir never collide. */
export const runSuffix = randomBytes(4).toString('hex');

/** A registration/enrollment ID unique to this run: `<prefix>-<suffix>`. */
export function uniqueId(prefix) {
  return `${prefix}-${runSuffix}`;
}

/**
 * Runs the usher CLI synchronously with USHER_DATA_DIR pointing at the test server and returns
 * its trimmed stdout. Throws an error quoting the command, exit status, stdout and stderr.
 */
export function usher(...args) {
  try {
    return execFileSync(usherBin, args, {
      env: { ...process.env, USHER_DATA_DIR: dataDir },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    }).trim();
  } catch (err) {
    const shown = ['usher', ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a}'`)).join(' ');
    throw new Error(
      `command failed: ${shown}\n  exit status: ${err.status ?? err.signal ?? err.code}\n` +
        `  stdout: ${(err.stdout ?? '').trim()}\n  stderr: ${(err.stderr ?? '').trim()}`,
    );
  }
}

/** Runs the usher CLI and parses its stdout as JSON. */
export function usherJson(...args) {
  const out = usher(...args);
  try {
    return JSON.parse(out);
  } catch (err) {
    throw new Error(`usher ${args.join(' ')} did not print JSON (${err.message}):\n${out}`);
  }
}

let instanceCache;
/** `usher instance show --json`: idScope, deviceEndpoint, caCertificate, hubs, ... */
export function instance() {
  if (!instanceCache) {
    instanceCache = usherJson('instance', 'show', '--data-dir', dataDir, '--json', '--show-keys');
  }
  return instanceCache;
}

/** The built-in hub (the first one `instance show` lists). */
export function builtInHub() {
  const hubs = instance().hubs;
  if (!Array.isArray(hubs) || hubs.length === 0) {
    throw new Error(`usher instance show lists no hubs: ${JSON.stringify(instance())}`);
  }
  return hubs[0];
}

export function generateKey() {
  return usher('key', 'generate');
}

export function deriveKey(groupKey, registrationId) {
  return usher('key', 'derive', '--group-key', groupKey, '--registration-id', registrationId);
}

export function deviceToken(idScope, registrationId, key, ttl) {
  const args = ['sas-token', 'device', '--id-scope', idScope, '--registration-id', registrationId, '--key', key];
  if (ttl) args.push('--ttl', ttl);
  return usher(...args);
}

/**
 * `usher enrollment create` for a symmetric-key individual enrollment; returns the printed
 * IndividualEnrollment. Options: primaryKey, secondaryKey, provisioningStatus.
 */
export function createEnrollment(enrollmentId, opts = {}) {
  const args = ['enrollment', 'create', '--data-dir', dataDir, '--enrollment-id', enrollmentId, '--attestation-type', 'symmetrickey'];
  if (opts.primaryKey) args.push('--primary-key', opts.primaryKey);
  if (opts.secondaryKey) args.push('--secondary-key', opts.secondaryKey);
  if (opts.provisioningStatus) args.push('--provisioning-status', opts.provisioningStatus);
  return usherJson(...args);
}

/** `usher enrollment-group create` for a symmetric-key group; returns the printed EnrollmentGroup. */
export function createGroup(groupId, opts = {}) {
  const args = ['enrollment-group', 'create', '--data-dir', dataDir, '--group-id', groupId, '--attestation-type', 'symmetrickey'];
  if (opts.primaryKey) args.push('--primary-key', opts.primaryKey);
  if (opts.secondaryKey) args.push('--secondary-key', opts.secondaryKey);
  if (opts.provisioningStatus) args.push('--provisioning-status', opts.provisioningStatus);
  return usherJson(...args);
}

/** The symmetric keys of a created enrollment or group, checked to be present. */
export function symmetricKeys(created) {
  const sk = created?.attestation?.symmetricKey;
  if (!sk || typeof sk.primaryKey !== 'string' || typeof sk.secondaryKey !== 'string') {
    throw new Error(`expected .attestation.symmetricKey.{primaryKey,secondaryKey} in ${JSON.stringify(created)}`);
  }
  return sk;
}

/** `usher hub devices <hub> --json`. */
export function hubDevices(hubName) {
  return usherJson('hub', 'devices', hubName, '--data-dir', dataDir, '--json');
}

/**
 * Provisions with the real Node SDK over HTTPS: ProvisioningDeviceClient + Http transport +
 * a security client (SymmetricKeySecurityClient unless one is given). Resolves with the
 * registrationState the SDK returns.
 */
export function register(registrationId, key, securityClient) {
  return registerOver(new Http(), registrationId, key, securityClient);
}

/**
 * Like register(), over a given transport instance: new Http(), new Mqtt() (mqtts://localhost,
 * port 8883), new MqttWs() (wss://localhost:443/$iothub/websocket), new Amqp() (amqps://localhost,
 * port 5671) or new AmqpWs() (wss://localhost:443/$iothub/websocket, subprotocol AMQPWSB10). Use
 * a fresh transport for every registration, as an application would.
 */
export function registerOver(transport, registrationId, key, securityClient) {
  const security = securityClient ?? new SymmetricKeySecurityClient(registrationId, key);
  const client = ProvisioningDeviceClient.create(provisioningHost, instance().idScope, transport, security);
  return client.register();
}

/**
 * A security client implementing the interface the SDK's symmetric-key registration calls
 * (getRegistrationId, createSharedAccessSignature) whose token is built by azure-iot-common's
 * SharedAccessSignature.create, with a chosen expiry and resource-URI spelling.
 *   expiry:    Unix seconds (default: an hour from now)
 *   resource:  the literal `sr` to sign (default: the Node style, raw `{scope}/registrations/{id}`)
 *   keyName:   `skn` (default 'registration'; null omits it, as the Python SDK does)
 */
export class CustomTokenSecurityClient {
  constructor(registrationId, key, { expiry, resource, keyName = 'registration' } = {}) {
    this.registrationId = registrationId;
    this.key = key;
    this.expiry = expiry;
    this.resource = resource;
    this.keyName = keyName;
    this.tokens = [];
  }

  getRegistrationId(callback) {
    callback(null, this.registrationId);
  }

  createSharedAccessSignature(idScope, callback) {
    try {
      const resource = this.resource ?? `${idScope}/registrations/${this.registrationId}`;
      const expiry = this.expiry ?? Math.ceil(Date.now() / 1000) + 3600;
      const sas = SharedAccessSignature.create(resource, this.keyName, this.key, expiry);
      this.tokens.push(sas.toString());
      callback(null, sas);
    } catch (err) {
      callback(err);
    }
  }
}

/** Asserts a registration succeeded with status assigned on the built-in hub. */
export function assertAssigned(assert, result, registrationId) {
  assert.ok(result, 'register() resolved without a registrationState');
  const hub = builtInHub();
  assert.equal(result.status, 'assigned', `status in ${JSON.stringify(result)}`);
  assert.equal(result.assignedHub, hub.hostname, `assignedHub in ${JSON.stringify(result)}`);
  assert.equal(
    String(result.deviceId).toLowerCase(),
    registrationId.toLowerCase(),
    `deviceId in ${JSON.stringify(result)}`,
  );
  if (result.registrationId !== undefined) {
    assert.equal(result.registrationId.toLowerCase(), registrationId.toLowerCase(), `registrationId in ${JSON.stringify(result)}`);
  }
}

/** Awaits a promise expected to reject and returns the rejection (fails if it resolves). */
export async function rejectionOf(promise, what) {
  try {
    const value = await promise;
    throw Object.assign(new Error(`${what}: expected a rejection, but it resolved with ${JSON.stringify(value)}`), {
      unexpectedResolve: true,
    });
  } catch (err) {
    if (err && err.unexpectedResolve) throw err;
    return err;
  }
}

/** A short description of an SDK error for assertion messages. */
export function describeError(err) {
  return JSON.stringify({
    name: err?.name,
    message: err?.message,
    statusCode: err?.response?.statusCode,
    responseBody: err?.responseBody,
    result: err?.result,
    // The MQTT transports attach {topic, payload} of the response that failed the request.
    topic: err?.transportObject?.topic,
    code: err?.code,
  });
}

/**
 * Runs curl against the device API and returns {status, headers (lower-cased names), body (text),
 * json (parsed or undefined)}. Trusts the server's CA with --cacert.
 */
export function curl(method, urlPath, { authorization, body, extraHeaders = [] } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'usher-curl-'));
  const headerFile = path.join(dir, 'headers');
  const bodyFile = path.join(dir, 'body');
  const args = ['-sS', '--max-time', '20', '--cacert', instance().caCertificate, '-X', method, '-D', headerFile, '-o', bodyFile, '-w', '%{http_code}'];
  args.push('-H', 'Content-Type: application/json', '-H', 'Content-Encoding: utf-8');
  if (authorization !== undefined) args.push('-H', `Authorization: ${authorization}`);
  for (const h of extraHeaders) args.push('-H', h);
  if (body !== undefined) args.push('-d', body);
  args.push(`https://${provisioningHost}${urlPath}`);
  return new Promise((resolve, reject) => {
    execFile('curl', args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      try {
        if (err) {
          reject(new Error(`curl ${args.join(' ')} failed: ${err.message}\n${stderr}`));
          return;
        }
        // With redirects or 1xx there can be several header blocks; the last one is the answer.
        const blocks = readFileSync(headerFile, 'utf8').split(/\r?\n\r?\n/).filter((b) => b.trim());
        const headers = {};
        for (const line of (blocks.at(-1) ?? '').split(/\r?\n/).slice(1)) {
          const i = line.indexOf(':');
          if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        const text = existsSync(bodyFile) ? readFileSync(bodyFile, 'utf8') : '';
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: Number(stdout.trim()), headers, body: text, json });
      } catch (e) {
        reject(e);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
