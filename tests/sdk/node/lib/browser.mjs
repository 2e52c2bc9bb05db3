// A real headless Chromium for the console tests, driven through chromedriver's W3C WebDriver
// protocol by the pinned selenium-webdriver client (installed into .sdk/node with the SDKs).
//
// Chromium and chromedriver are the distribution's packages (/usr/bin/chromium,
// /usr/bin/chromedriver; tests/sdk/run installs them with apt-get when they are missing). The
// machine's network is closed, so Chromium starts with everything that phones home switched off
// and a new, empty profile.
//
// Environment:
//   USHER_CONSOLE_SCREENSHOTS  where page screenshots go (default <repo>/.sdk/console-screenshots)
//   USHER_CHROMIUM, USHER_CHROMEDRIVER  other binaries than /usr/bin/chromium, /usr/bin/chromedriver

import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { repoRoot, requireSdk } from './usher.mjs';

const { Builder, By, until } = requireSdk('selenium-webdriver');
const chrome = requireSdk('selenium-webdriver/chrome');
export { By, until };

export const chromium = process.env.USHER_CHROMIUM || '/usr/bin/chromium';
export const chromedriver = process.env.USHER_CHROMEDRIVER || '/usr/bin/chromedriver';
export const screenshotDir =
  process.env.USHER_CONSOLE_SCREENSHOTS || path.join(repoRoot, '.sdk', 'console-screenshots');

/** Desktop and phone viewports (CSS pixels). */
export const DESKTOP = { width: 1280, height: 900 };
export const PHONE = { width: 390, height: 844 };

/**
 * Starts Chromium (headless, no sandbox: the suite runs as root) with a fresh profile directory.
 * Returns { driver, quit }.
 */
export async function startBrowser() {
  for (const bin of [chromium, chromedriver]) {
    if (!existsSync(bin)) {
      throw new Error(`${bin} is missing: tests/sdk/run installs the chromium and chromium-driver packages with apt-get`);
    }
  }
  const profile = mkdtempSync(path.join(tmpdir(), 'usher-chromium-'));
  const options = new chrome.Options();
  options.setChromeBinaryPath(chromium);
  options.addArguments(
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
    `--user-data-dir=${profile}`,
    `--window-size=${DESKTOP.width},${DESKTOP.height}`,
  );
  // The server's certificate comes from Usher's development CA, which this fresh profile does
  // not trust; the W3C capability lets the session proceed (the devices, CLI and SDK clients in
  // these tests do verify it).
  options.setAcceptInsecureCerts(true);
  const service = new chrome.ServiceBuilder(chromedriver);
  const driver = await new Builder().forBrowser('chrome').setChromeOptions(options).setChromeService(service).build();
  await driver.manage().setTimeouts({ implicit: 0, pageLoad: 20_000, script: 10_000 });
  // Clipboard access for the copy buttons, granted as a user would.
  await driver.sendDevToolsCommand('Browser.grantPermissions', {
    permissions: ['clipboardReadWrite', 'clipboardSanitizedWrite'],
  });
  return {
    driver,
    async quit() {
      try {
        await driver.quit();
      } finally {
        rmSync(profile, { recursive: true, force: true });
      }
    },
  };
}

/** Sets the viewport (CSS pixels) through the DevTools protocol, so screenshots are exact. */
export async function setViewport(driver, { width, height }) {
  await driver.sendDevToolsCommand('Emulation.setDeviceMetricsOverride', {
    width,
    height,
    deviceScaleFactor: 1,
    mobile: width < 600,
  });
}

/** Saves a screenshot of the whole page (not just the viewport) as <screenshotDir>/<name>.png. */
export async function screenshot(driver, name) {
  mkdirSync(screenshotDir, { recursive: true });
  const metrics = await driver.sendAndGetDevToolsCommand('Page.getLayoutMetrics', {});
  const size = metrics.cssContentSize || metrics.contentSize;
  const { data } = await driver.sendAndGetDevToolsCommand('Page.captureScreenshot', {
    format: 'png',
    captureBeyondViewport: true,
    clip: { x: 0, y: 0, width: Math.ceil(size.width), height: Math.min(Math.ceil(size.height), 4000), scale: 1 },
  });
  const file = path.join(screenshotDir, `${name}.png`);
  writeFileSync(file, data, 'base64');
  return file;
}

/** The page's visible text. */
export async function bodyText(driver) {
  return driver.findElement(By.css('body')).getText();
}

/**
 * Runs a script, reading a navigation in progress (the old document unloading, the new one not
 * there yet) as "not yet" rather than as an error.
 */
async function scriptOrNull(driver, script) {
  try {
    return await driver.executeScript(script);
  } catch {
    return null;
  }
}

/** Waits until the document at a URL whose path matches `pattern` has loaded. */
export async function waitForPath(driver, pattern) {
  await driver.wait(async () => {
    const url = new URL(await driver.getCurrentUrl());
    const ready = await scriptOrNull(driver, 'return document.readyState');
    return pattern.test(url.pathname + url.search) && ready === 'complete';
  }, 10_000, `waiting for a page matching ${pattern}`);
}

let pageMark = 0;

/**
 * Clicks an element and waits for the next page to load. The current document is marked first; the
 * next page is the first complete document without the mark (no stale-element polling, which
 * chromedriver answers with assorted errors while a page unloads).
 */
export async function clickAndWait(driver, element, pattern) {
  const mark = `usher-${++pageMark}`;
  await driver.executeScript('window.__usherPageMark = arguments[0];', mark);
  await element.click();
  await driver.wait(async () => {
    const state = await scriptOrNull(driver, 'return [window.__usherPageMark || null, document.readyState];');
    return state !== null && state[0] !== mark && state[1] === 'complete';
  }, 10_000, 'waiting for the next page');
  if (pattern) await waitForPath(driver, pattern);
}

/** The text the page's copy button put on the clipboard. */
export async function readClipboard(driver) {
  return driver.executeAsyncScript(
    'const done = arguments[arguments.length - 1];' +
      'navigator.clipboard.readText().then(done, (e) => done("clipboard error: " + e));',
  );
}

/**
 * A fetch() from inside the page (same origin, the page's cookies): resolves to
 * {status, url, redirected, text}. `form` is an object sent urlencoded.
 */
export async function pageFetch(driver, url, { method = 'GET', form } = {}) {
  return driver.executeAsyncScript(
    `const [url, method, form, done] = arguments;
     const init = { method, credentials: 'same-origin', redirect: 'manual' };
     if (form) {
       init.body = new URLSearchParams(form);
       init.headers = { 'content-type': 'application/x-www-form-urlencoded' };
     }
     fetch(url, init)
       .then(async (r) => done({ status: r.status, type: r.type, text: await r.text() }))
       .catch((e) => done({ status: -1, text: String(e) }));`,
    url,
    method,
    form ?? null,
  );
}

/**
 * The page's accessibility and layout problems, checked in the page itself:
 *  - every visible form control has an accessible name (a <label>, aria-label or
 *    aria-labelledby; a button its text);
 *  - every visible text meets WCAG AA contrast against its background (4.5:1, or 3:1 for large
 *    text), disabled controls excepted;
 *  - nothing is wider than the viewport (no sideways scrolling at a phone's width).
 * Returns a list of human-readable problems (empty when the page is fine).
 */
export async function pageProblems(driver) {
  return driver.executeScript(`
    const problems = [];
    const visible = (el) => {
      const s = getComputedStyle(el);
      const r = el.getBoundingClientRect();
      return s.display !== 'none' && s.visibility !== 'hidden' && r.width > 0 && r.height > 0;
    };
    const describe = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.name ? '[name=' + el.name + ']' : '') + ' "' + (el.textContent || '').trim().slice(0, 40) + '"';

    for (const el of document.querySelectorAll('input, select, textarea, button')) {
      if (el.type === 'hidden' || !visible(el)) continue;
      const named = (el.labels && el.labels.length > 0) || el.getAttribute('aria-label') ||
        el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON' && el.textContent.trim());
      if (!named) problems.push('no label: ' + describe(el));
    }

    const rgba = (text) => {
      const m = text.match(/rgba?\\(([^)]+)\\)/);
      if (!m) return [0, 0, 0, 0];
      const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    };
    const over = (top, bottom) => {
      const a = top[3];
      return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat(1);
    };
    const background = (el) => {
      const layers = [];
      for (let e = el; e; e = e.parentElement) {
        const c = rgba(getComputedStyle(e).backgroundColor);
        if (c[3] > 0) layers.push(c);
        if (c[3] >= 1) break;
      }
      let bg = [255, 255, 255, 1];
      for (const layer of layers.reverse()) bg = over(layer, bg);
      return bg;
    };
    const luminance = (c) => {
      const [r, g, b] = c.slice(0, 3).map((v) => {
        v /= 255;
        return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const ratio = (a, b) => {
      const [l1, l2] = [luminance(a), luminance(b)].sort((x, y) => y - x);
      return (l1 + 0.05) / (l2 + 0.05);
    };
    const seen = new Set();
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const text = walker.currentNode;
      if (!text.textContent.trim()) continue;
      const el = text.parentElement;
      if (!el || seen.has(el) || !visible(el) || el.closest('[disabled]')) continue;
      if (el.closest('.vh, .skip')) continue;
      seen.add(el);
      const s = getComputedStyle(el);
      const bg = background(el);
      const fg = over(rgba(s.color), bg);
      const size = parseFloat(s.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
      const need = large ? 3 : 4.5;
      const r = ratio(fg, bg);
      if (r < need) problems.push('contrast ' + r.toFixed(2) + ' < ' + need + ': ' + describe(el));
    }

    const width = document.documentElement.clientWidth;
    if (document.documentElement.scrollWidth > width + 1) {
      problems.push('the page is ' + document.documentElement.scrollWidth + 'px wide in a ' + width + 'px viewport');
    }
    return problems;
  `);
}
