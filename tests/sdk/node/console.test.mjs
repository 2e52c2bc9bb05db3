// The web console in a real browser: headless Chromium (the distribution's package) driven over
// WebDriver. Follows the DPS documentation's portal steps for legacy devices on Usher's console,
// provisions with `usher provision` and the official Node SDK client, and checks a stale edit, a
// read-only policy, CSRF, sign-out, session expiry, that keys stay out of pages until asked for,
// labels, contrast and a phone's width. Saves a screenshot of each page (see lib/browser.mjs).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import https from 'node:https';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  assertAssigned,
  dataDir,
  deriveKey,
  generateKey,
  instance,
  register,
  uniqueId,
  usher,
  usherBin,
  usherJson,
} from './lib/usher.mjs';
import {
  By,
  DESKTOP,
  PHONE,
  bodyText,
  clickAndWait,
  pageFetch,
  pageProblems,
  readClipboard,
  screenshot,
  setViewport,
  startBrowser,
  waitForPath,
} from './lib/browser.mjs';

const base = 'https://localhost';
let browser;
let driver;
const visited = new Map(); // screenshot name -> URL, for the phone-width pass

before(async () => {
  browser = await startBrowser();
  driver = browser.driver;
  await setViewport(driver, DESKTOP);
});

after(async () => {
  await browser?.quit();
});

/** Checks labels, contrast and width on the current page, then saves its screenshot. */
async function checkAndShoot(name) {
  const problems = await pageProblems(driver);
  assert.deepEqual(problems, [], `${name}: ${await driver.getCurrentUrl()}`);
  visited.set(name, await driver.getCurrentUrl());
  await screenshot(driver, name);
}

async function go(pathAndQuery, pattern) {
  await driver.get(base + pathAndQuery);
  await waitForPath(driver, pattern ?? /.*/);
}

const byId = (id) => driver.findElement(By.id(id));
const exists = async (css) => (await driver.findElements(By.css(css))).length > 0;

/** Signs in through the form with a connection string (or name and key). */
async function signIn({ connectionString, policy, key }) {
  await go('/console/signin', /^\/console\/signin/);
  if (connectionString) {
    await byId('connection_string').sendKeys(connectionString);
  } else {
    await byId('policy').sendKeys(policy);
    await byId('key').sendKeys(key);
  }
  await clickAndWait(driver, await byId('signin'), /^\/console\/$/);
}

async function signOut() {
  await clickAndWait(driver, await driver.findElement(By.css('form.signout button')), /^\/console\/signin/);
}

/** The group's keys as the management API has them (through the CLI). */
function groupKeys(groupId) {
  return usherJson('enrollment-group', 'show', groupId, '--show-keys', '--json').attestation.symmetricKey;
}

const group = uniqueId('guide-group');
const devA = uniqueId('guide-cli').toLowerCase();
const devB = uniqueId('guide-sdk').toLowerCase();
const reader = uniqueId('reader');
let readerConnectionString;

test("the DPS guide's portal steps on the console: group, key, ID scope, two devices, the hub's device list", async () => {
  // Signing in: the console sends an anonymous visitor to the sign-in form.
  await go('/console/', /^\/console\/signin$/);
  await checkAndShoot('signin');
  await signIn({ connectionString: instance().serviceConnectionString });
  const ownerKey = instance().serviceConnectionString.split('SharedAccessKey=')[1];

  // Overview: the ID scope, endpoints, CA; the connection string only when asked for.
  const scope = await byId('id-scope').getText();
  assert.equal(scope, instance().idScope);
  assert.ok(!(await driver.getPageSource()).includes(ownerKey), 'the owner key is not in the overview');
  await checkAndShoot('overview');
  await clickAndWait(driver, await byId('show-connection-string'), /show=connection-string/);
  assert.equal(await byId('connection-string').getText(), instance().serviceConnectionString);
  const ca = await pageFetch(driver, '/console/ca.pem');
  assert.equal(ca.status, 200);
  assert.equal(ca.text, readFileSync(instance().caCertificate, 'utf8'), 'the CA download is the server CA');
  const caFile = path.join(mkdtempSync(path.join(tmpdir(), 'usher-console-ca-')), 'ca.pem');
  writeFileSync(caFile, ca.text);

  // Manage enrollments → Add enrollment group: symmetric key, auto-generated keys, static
  // allocation to the built-in hub.
  await clickAndWait(driver, await driver.findElement(By.linkText('Manage enrollments')), /^\/console\/enrollments/);
  await clickAndWait(driver, await byId('add-enrollment'), /^\/console\/enrollments\/new\?kind=group/);
  await byId('id').sendKeys(group);
  assert.equal(await byId('auto_keys').isSelected(), true, 'auto-generate keys is the default');
  assert.equal(await byId('primary_key').isEnabled(), false, 'key fields follow auto-generate');
  await driver.findElement(By.css('#allocation option[value="static"]')).click();
  const hubLabel = await driver.findElement(By.xpath("//label[starts-with(normalize-space(.), 'usher-hub (')]"));
  await hubLabel.click();
  await byId('tags').clear();
  await byId('tags').sendKeys('{"site": "berlin"}');
  await checkAndShoot('add-group');
  await clickAndWait(driver, await byId('save'), /^\/console\/enrollments\/group\//);
  assert.match(await bodyText(driver), new RegExp(`Created the enrollment group ${group}`));
  assert.equal(await byId('allocation-policy').getText(), 'Static configuration');
  assert.equal(await byId('iot-hubs').getText(), 'localhost');

  // The keys are not in the page until asked for; "Show keys", then copy the primary key.
  const keys = groupKeys(group);
  const hidden = await driver.getPageSource();
  assert.ok(!hidden.includes(keys.primaryKey) && !hidden.includes(keys.secondaryKey), 'keys hidden');
  await clickAndWait(driver, await byId('show-keys'), /show=keys/);
  await byId('copy-primary-key').click();
  await driver.wait(async () => (await byId('copy-primary-key').getText()) === 'Copied', 5000, 'copy feedback');
  const groupKey = await readClipboard(driver);
  assert.equal(groupKey, keys.primaryKey, 'the copied primary key is the group key');

  // Derive each device's key in the page, as the guide's openssl line does.
  const derived = {};
  for (const id of [devA, devB]) {
    await byId('derive').clear();
    await byId('derive').sendKeys(id);
    await clickAndWait(driver, await byId('derive-button'), /derive=/);
    derived[id] = await byId('derived-key').getText();
    assert.equal(derived[id], deriveKey(groupKey, id), `derived key of ${id}`);
  }
  await driver.get(`${base}/console/enrollments/group/${group}?derive=${devA}`);
  await waitForPath(driver, /derive=/);
  await checkAndShoot('group');

  // The hub's "IoT devices" before the devices boot.
  await clickAndWait(driver, await driver.findElement(By.linkText('Linked IoT hubs')), /^\/console\/hubs$/);
  await checkAndShoot('hubs');
  await clickAndWait(driver, await byId('devices-usher-hub'), /^\/console\/hubs\/usher-hub\/devices$/);
  const before = await bodyText(driver);
  assert.ok(!before.includes(devA) && !before.includes(devB));

  // The devices boot: one with `usher provision` (the ID scope read from the page, the CA
  // downloaded from it), one with the official Node SDK client.
  const out = usher('provision', '--id-scope', scope, '--registration-id', devA, '--key', derived[devA],
    '--host', 'localhost', '--ca', caFile);
  assert.match(out, /status assigned/, out);
  assertAssigned(assert, await register(devB, derived[devB]), devB);

  // Refresh: both devices, enabled.
  await clickAndWait(driver, await byId('refresh'), /^\/console\/hubs\/usher-hub\/devices/);
  for (const id of [devA, devB]) {
    const row = await driver.findElement(By.xpath(`//table[@id='device-list']//tr[td/a[normalize-space(.)='${id}']]`));
    assert.equal(await row.findElement(By.css('.status')).getText(), 'enabled', `${id} is enabled`);
  }
  await checkAndShoot('devices');

  // Device details and twin: the enrollment's initial twin tags arrived; keys hidden.
  await clickAndWait(driver, await driver.findElement(By.linkText(devA)), /\/devices\//);
  assert.equal(await byId('device-status').getText(), 'enabled');
  assert.match(await byId('twin-tags').getText(), /"site": "berlin"/);
  assert.ok(!(await driver.getPageSource()).includes(derived[devA]), 'device keys hidden');
  await checkAndShoot('device');

  // Registration records: search the group's devices, open one, delete another.
  await go(`/console/registrations?q=${encodeURIComponent(`SELECT * WHERE symmetricKey.enrollmentGroupId = '${group}'`)}`, /^\/console\/registrations/);
  const listed = await bodyText(driver);
  assert.ok(listed.includes(devA) && listed.includes(devB), listed);
  await checkAndShoot('registrations');
  await clickAndWait(driver, await driver.findElement(By.linkText(devA)), /^\/console\/registrations\//);
  assert.equal(await byId('registration-status').getText(), 'assigned');
  await checkAndShoot('registration');
  await go(`/console/registrations/${devB}`, /registrations\//);
  await clickAndWait(driver, await byId('delete'), /\/delete$/);
  await checkAndShoot('confirm-delete');
  await clickAndWait(driver, await byId('confirm'), /^\/console\/registrations$/);
  assert.match(await bodyText(driver), new RegExp(`Deleted the registration record of ${devB}`));
  assert.throws(() => usher('registration', 'show', devB), /not found/i);

  // Overview again: counts and recent registrations.
  await go('/console/', /^\/console\/$/);
  assert.ok((await bodyText(driver)).includes(devA), 'recent registrations list the device');
  assert.ok(Number(await byId('count-groups').getText()) >= 1);
  await checkAndShoot('overview');

  // Access policies: a read-only policy for the next test; its keys only when asked for.
  await go('/console/policies', /^\/console\/policies$/);
  await byId('policy-name').sendKeys(reader);
  await byId('right-EnrollmentRead').click();
  await byId('right-RegistrationStatusRead').click();
  await clickAndWait(driver, await byId('create-policy'), /^\/console\/policies$/);
  assert.match(await bodyText(driver), new RegExp(`Created the policy ${reader}`));
  assert.ok(!(await driver.getPageSource()).includes(ownerKey), 'policy keys hidden');
  await checkAndShoot('policies');
  await clickAndWait(driver, await byId(`show-${reader}`), /show=/);
  readerConnectionString = await byId(`connection-string-${reader}`).getText();
  assert.match(readerConnectionString, new RegExp(`^HostName=localhost;SharedAccessKeyName=${reader};SharedAccessKey=`));

  // Derive a device key from a pasted group key (the standalone page).
  await go('/console/derive', /^\/console\/derive$/);
  await byId('group_key').sendKeys(groupKey);
  await byId('registration_id').sendKeys(devA);
  await clickAndWait(driver, await byId('derive-button'), /^\/console\/derive$/);
  assert.equal(await byId('derived-key').getText(), derived[devA]);
  await checkAndShoot('derive');
  rmSync(path.dirname(caFile), { recursive: true, force: true });
});

test('an individual enrollment edited concurrently: the stale edit is refused and shown, not written', async () => {
  const id = uniqueId('edited');
  const [primary, secondary] = [generateKey(), generateKey()];
  await go('/console/enrollments/new?kind=individual', /kind=individual/);
  await byId('id').sendKeys(id);
  await byId('auto_keys').click();
  await byId('primary_key').sendKeys(primary);
  await byId('secondary_key').sendKeys(secondary);
  await checkAndShoot('add-individual');
  await clickAndWait(driver, await byId('save'), /^\/console\/enrollments\/individual\//);
  const shown = usherJson('enrollment', 'show', id, '--show-keys', '--json');
  assert.equal(shown.attestation.symmetricKey.primaryKey, primary, 'the given keys were kept');

  // Open the editor, then someone else disables the enrollment.
  await clickAndWait(driver, await byId('edit'), /\/edit$/);
  await byId('tags').clear();
  await byId('tags').sendKeys('{"line": 7}');
  usher('enrollment', 'update', id, '--provisioning-status', 'disabled');
  await clickAndWait(driver, await byId('save'), /\/edit$/);
  assert.match(await byId('form-error').getText(), /someone changed this individual enrollment after you opened it/);
  assert.equal(await byId('current-status').getText(), 'Disabled');
  assert.match(await byId('tags').getAttribute('value'), /"line": 7/, 'the user\'s edit is still in the form');
  await checkAndShoot('edit-conflict');
  const stored = usherJson('enrollment', 'show', id, '--json');
  assert.equal(stored.provisioningStatus, 'disabled', 'the concurrent change stands');
  assert.equal(stored.initialTwin?.tags?.line, undefined, 'the stale edit wrote nothing');

  // Edit the current version: it saves, and keeps the keys.
  await clickAndWait(driver, await byId('edit-current'), /\/edit$/);
  await byId('tags').clear();
  await byId('tags').sendKeys('{"line": 7}');
  await clickAndWait(driver, await byId('save'), /^\/console\/enrollments\/individual\/[^/]+$/);
  const saved = usherJson('enrollment', 'show', id, '--show-keys', '--json');
  assert.deepEqual(saved.initialTwin.tags, { line: 7 });
  assert.equal(saved.provisioningStatus, 'disabled');
  assert.equal(saved.attestation.symmetricKey.primaryKey, primary);

  // Enable, then delete with confirmation.
  await clickAndWait(driver, await byId('enable'), /^\/console\/enrollments\/individual\//);
  assert.equal(await byId('provisioning-status').getText(), 'Enabled');
  await checkAndShoot('individual');
  await clickAndWait(driver, await byId('delete'), /\/delete$/);
  await clickAndWait(driver, await byId('confirm'), /^\/console\/enrollments\?kind=individual/);
  assert.throws(() => usher('enrollment', 'show', id), /not found/i);
  await checkAndShoot('enrollments');
});

test('a read-only policy sees no write controls and is refused when it posts anyway', async () => {
  await signOut();
  assert.match(await byId('signin-notice').getText(), /signed out/);
  // The signed-out session is gone on the server, not just in this browser.
  await go('/console/enrollments', /^\/console\/signin$/);

  const key = readerConnectionString.split('SharedAccessKey=')[1];
  await signIn({ policy: reader, key });
  assert.equal(await byId('signed-in-policy').getText(), reader);
  const nav = await driver.findElement(By.css('nav')).getText();
  assert.ok(nav.includes('Manage enrollments') && nav.includes('Registration records'), nav);
  assert.ok(!nav.includes('Shared access policies') && !nav.includes('Linked IoT hubs'), nav);

  await go(`/console/enrollments/group/${group}`, /enrollments\/group\//);
  for (const id of ['edit', 'disable', 'delete']) {
    assert.equal(await exists(`#${id}`), false, `no ${id} control`);
  }
  await go('/console/enrollments?kind=group', /enrollments/);
  assert.equal(await exists('#add-enrollment'), false, 'no add control');
  const forms = await driver.findElements(By.css('form[method="post"]'));
  assert.equal(forms.length, 1, 'the only form that writes is sign-out');
  await checkAndShoot('read-only');
  await go(`/console/registrations/${devA}`, /registrations\//);
  assert.equal(await exists('#delete'), false, 'no delete control on records');

  // Posting anyway, with the session's own CSRF token: refused, nothing written.
  const csrf = await driver.findElement(By.css('form.signout input[name="csrf"]')).getAttribute('value');
  const sneaky = uniqueId('sneaky');
  const post = await pageFetch(driver, '/console/enrollments', {
    method: 'POST',
    form: { csrf, kind: 'group', id: sneaky, auto_keys: 'on' },
  });
  assert.equal(post.status, 403, post.text);
  assert.match(post.text, /lacks the EnrollmentWrite right/);
  assert.throws(() => usher('enrollment-group', 'show', sneaky), /not found/i);
  const del = await pageFetch(driver, `/console/registrations/${devA}/delete`, { method: 'POST', form: { csrf } });
  assert.equal(del.status, 403);
  assert.equal(usherJson('registration', 'show', devA, '--json').registrationId.toLowerCase(), devA);
  const page = await pageFetch(driver, '/console/policies');
  assert.equal(page.status, 403);
});

test('CSRF: a form without the session token, or posted from another site, is refused', async () => {
  // Same site, signed in, but without the token or with a wrong one.
  for (const form of [{ name: 'x', rights: 'EnrollmentRead' }, { csrf: 'forged', name: 'x', rights: 'EnrollmentRead' }]) {
    const res = await pageFetch(driver, '/console/signout', { method: 'POST', form });
    assert.equal(res.status, 403, res.text);
    assert.match(res.text, /CSRF/);
  }
  await go('/console/', /^\/console\/$/);
  assert.equal(await byId('signed-in-policy').getText(), reader, 'still signed in');

  // Another site (https://127.0.0.1 is a different site from https://localhost; this address
  // answers a JSON 404 with no content policy) submits a form with the right token: the
  // SameSite=Strict cookie is not sent, so nobody is signed out.
  const csrf = await driver.findElement(By.css('form.signout input[name="csrf"]')).getAttribute('value');
  await driver.get('https://127.0.0.1/another-site');
  await driver.executeScript(
    `const f = document.createElement('form');
     f.method = 'post'; f.action = 'https://localhost/console/signout';
     const i = document.createElement('input'); i.type = 'hidden'; i.name = 'csrf'; i.value = arguments[0];
     f.appendChild(i); document.body.appendChild(f); f.submit();`,
    csrf,
  );
  await driver.wait(async () => (await driver.getCurrentUrl()).startsWith('https://localhost/'), 10_000);
  await waitForPath(driver, /^\/console\/signin/);
  assert.ok(!(await driver.getCurrentUrl()).includes('why=out'), 'the cross-site post signed nobody out');
  await go('/console/', /^\/console\/$/);
  assert.equal(await byId('signed-in-policy').getText(), reader, 'the session survived the cross-site form');
  await signOut();
});

test('sessions expire after the configured lifetime', async () => {
  // A second server with a 3-second session lifetime, on its own ports and data directory.
  const dir = mkdtempSync(path.join(tmpdir(), 'usher-console-expiry-'));
  const server = spawn(usherBin, ['serve', '--data-dir', dir, '--https-addr', '127.0.0.1:0', '--mqtt-addr', '127.0.0.1:0',
    '--amqp-addr', '127.0.0.1:0', '--console-session-ttl', '3s'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  server.stdout.on('data', (d) => (log += d));
  server.stderr.on('data', (d) => (log += d));
  const exited = new Promise((r) => server.once('exit', r));
  try {
    const runtime = path.join(dir, 'runtime.json');
    for (let i = 0; i < 300 && !existsSync(runtime) && server.exitCode === null; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(existsSync(runtime), `the second server did not start:\n${log}`);
    const port = JSON.parse(readFileSync(runtime, 'utf8')).httpsAddr.split(':').pop();
    const other = `https://localhost:${port}`;
    const owner = usherJson('instance', 'show', '--data-dir', dir, '--json', '--show-keys').serviceConnectionString;

    await driver.get(`${other}/console/signin`);
    await byId('connection_string').sendKeys(owner);
    await clickAndWait(driver, await byId('signin'), /^\/console\/$/);
    const started = Date.now();
    assert.ok((await bodyText(driver)).includes('Overview'));
    const cookie = await driver.manage().getCookie('__Host-usher-session');
    assert.ok(cookie?.value, 'the session cookie is set');
    await new Promise((r) => setTimeout(r, Math.max(0, 3500 - (Date.now() - started))));

    // The browser drops the cookie when it expires (Max-Age is the session lifetime): sign in again.
    await driver.get(`${other}/console/enrollments`);
    await waitForPath(driver, /^\/console\/signin/);
    assert.ok(await exists('#signin'), 'the sign-in form is shown');

    // The server ended the session too: the old cookie, replayed, opens nothing.
    const replay = await new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: 'localhost',
          port,
          path: '/console/enrollments',
          headers: { cookie: `__Host-usher-session=${cookie.value}` },
          ca: readFileSync(path.join(dir, 'pki', 'ca.pem')),
        },
        (res) => {
          res.resume();
          resolve({ status: res.statusCode, location: res.headers.location });
        },
      );
      req.on('error', reject);
      req.end();
    });
    assert.deepEqual(replay, { status: 303, location: '/console/signin?why=expired' });
    await driver.get(`${other}${replay.location}`);
    await waitForPath(driver, /why=expired/);
    assert.match(await byId('signin-notice').getText(), /Your session has expired/);
  } finally {
    if (server.exitCode === null) server.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("every page works at a phone's width: labels, contrast, no sideways scrolling", async () => {
  await setViewport(driver, PHONE);
  try {
    await signIn({ connectionString: instance().serviceConnectionString });
    const pages = ['overview', 'enrollments', 'add-group', 'group', 'hubs', 'devices', 'device', 'registrations',
      'registration', 'policies', 'derive'];
    for (const name of pages) {
      const url = visited.get(name);
      assert.ok(url, `${name} was visited at desktop width`);
      await driver.get(url);
      await waitForPath(driver, /.*/);
      const problems = await pageProblems(driver);
      assert.deepEqual(problems, [], `${name} at ${PHONE.width}px: ${url}`);
    }
    for (const name of ['overview', 'group', 'devices']) {
      await driver.get(visited.get(name));
      await waitForPath(driver, /.*/);
      await screenshot(driver, `${name}-phone`);
    }
    await signOut();
  } finally {
    await setViewport(driver, DESKTOP);
  }
});
