// The three official SDKs sign different spellings of the same resource URI (device-protocol.md
// §2.3): Node signs it raw, Python url-encodes it with upper-case hex and omits skn, C encodes it
// with lower-case hex. All three must be accepted. The tokens here are built by azure-iot-common's
// SharedAccessSignature.create over the chosen `sr` literal and sent by the real Node Http
// transport, through a security client with the SDK's interface.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  createEnrollment,
  createGroup,
  CustomTokenSecurityClient,
  deriveKey,
  instance,
  register,
  symmetricKeys,
  uniqueId,
} from './lib/usher.mjs';

const TIMEOUT = { timeout: 60_000 };

const upperEncoded = (scope, id) => encodeURIComponent(`${scope}/registrations/${id}`);
const lowerEncoded = (scope, id) => upperEncoded(scope, id).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

const styles = [
  { name: 'Node style (raw sr, skn=registration)', resource: (s, id) => `${s}/registrations/${id}`, keyName: 'registration' },
  { name: 'Python style (sr with %2F, no skn)', resource: upperEncoded, keyName: null },
  { name: 'C style (sr with %2f, skn=registration)', resource: lowerEncoded, keyName: 'registration' },
];

for (const [i, style] of styles.entries()) {
  test(`individual enrollment accepts a ${style.name} token`, TIMEOUT, async () => {
    const id = uniqueId(`sdk-style${i}`);
    const { primaryKey } = symmetricKeys(createEnrollment(id));
    const security = new CustomTokenSecurityClient(id, primaryKey, {
      resource: style.resource(instance().idScope, id),
      keyName: style.keyName,
    });
    assertAssigned(assert, await register(id, undefined, security), id);
    const token = security.tokens[0];
    assert.ok(token.startsWith(`SharedAccessSignature sr=${style.resource(instance().idScope, id)}&`), token);
    assert.equal(token.includes('skn='), style.keyName !== null, token);
  });
}

test('enrollment group accepts a C style (%2f) token signed with a derived key', TIMEOUT, async () => {
  const { primaryKey } = symmetricKeys(createGroup(uniqueId('sdk-grp-style')));
  const id = uniqueId('sdk-grp-style-dev');
  const security = new CustomTokenSecurityClient(id, deriveKey(primaryKey, id), {
    resource: lowerEncoded(instance().idScope, id),
  });
  assertAssigned(assert, await register(id, undefined, security), id);
});
