// The subscriber portal in a real browser: Debian's headless Chromium,
// driven by playwright-core (no browser download), against a real gateway
// on loopback with a real webhook receiver.
//
// Usage: THINHOOK_BIN=target/debug/thinhook npm test  (run by .ci/run)
// With SCREENSHOTS=DIR it also saves the README's screenshots there.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createPrivateKey, generateKeyPairSync, sign } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const binary = resolve(process.env.THINHOOK_BIN ?? "../../target/debug/thinhook");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const screenshots = process.env.SCREENSHOTS ? resolve(process.env.SCREENSHOTS) : null;
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** A port nothing listens on (bound, then released). */
async function freePort() {
  const server = createServer();
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address();
  await new Promise((done) => server.close(done));
  return port;
}

async function waitForPort(port) {
  for (let i = 0; i < 200; i += 1) {
    const open = await new Promise((done) => {
      const socket = createConnection({ host: "127.0.0.1", port });
      socket.on("connect", () => { socket.destroy(); done(true); });
      socket.on("error", () => done(false));
    });
    if (open) return;
    await sleep(50);
  }
  throw new Error(`the gateway did not start on port ${port}`);
}

/** Polls `check` until it returns something truthy, for up to `ms`. */
async function eventually(what, check, ms = 10000) {
  const until = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ------------------------------------------------------------ the world

const work = mkdtempSync(join(tmpdir(), "thinhook-portal-"));
let gateway;
let base;
let env;
let browser;
let signingKey;
/** The webhooks the receiver got, and what it answers next. */
const received = [];
const replies = [];
let receiver;
let hookUrl;

function cli(...args) {
  return execFileSync(binary, args, { cwd: work, env, stdio: ["ignore", "pipe", "pipe"] }).toString();
}

function createClient(name) {
  const out = cli("clients", "create", "--name", name);
  return {
    id: /client_id:\s+(\S+)/.exec(out)[1],
    secret: /client_secret:\s+(\S+)/.exec(out)[1],
  };
}

async function apiToken(client) {
  const response = await fetch(`${base}/oauth/token`, {
    method: "POST",
    body: new URLSearchParams({ grant_type: "client_credentials", client_id: client.id, client_secret: client.secret }),
  });
  assert.equal(response.status, 200);
  return (await response.json()).access_token;
}

async function api(token, method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

let alice;
let bob;
let aliceToken;

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  // Token keys from a file of the test's own, so that it can sign an
  // expired portal link as the gateway would have.
  const { privateKey } = generateKeyPairSync("ed25519");
  signingKey = privateKey;
  const keyFile = join(work, "tokens.pem");
  writeFileSync(keyFile, privateKey.export({ type: "pkcs8", format: "pem" }));
  env = {
    PATH: process.env.PATH ?? "",
    THINHOOK_LISTEN: `127.0.0.1:${port}`,
    THINHOOK_DELIVERY_ALLOW_CIDRS: "127.0.0.0/8",
    // One attempt: a failure is final at once, for the retry test.
    THINHOOK_DELIVERY_RETRY_SCHEDULE_SECS: "0",
    THINHOOK_DELIVERY_POLL_INTERVAL_MS: "100",
    THINHOOK_AUTH_SIGNING_KEY_FILE: keyFile,
    THINHOOK_LOG_LEVEL: "warn",
  };
  cli("migrate");
  alice = createClient("alice");
  bob = createClient("bob");
  gateway = spawn(binary, ["serve"], { cwd: work, env, stdio: ["ignore", "inherit", "inherit"] });
  await waitForPort(port);
  aliceToken = await apiToken(alice);

  receiver = createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", async () => {
      const event = JSON.parse(Buffer.concat(chunks).toString() || "null");
      received.push(event);
      const status = replies.shift() ?? 200;
      // As a subscriber does: fetch what the notification points at.
      if (status === 200 && event?.data?.resource?.type === "comment") {
        await fetch(event.data.resource.url, { headers: { Authorization: `Bearer ${aliceToken}` } });
      }
      res.writeHead(status, { "Content-Type": "text/plain" });
      res.end(status === 200 ? "ok" : "receiver down for maintenance");
    });
  });
  await new Promise((done) => receiver.listen(0, "127.0.0.1", done));
  hookUrl = `http://127.0.0.1:${receiver.address().port}/hooks`;

  browser = await chromium.launch({
    executablePath: browserPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  receiver?.close();
  if (gateway) {
    gateway.kill("SIGTERM");
    await new Promise((done) => gateway.once("exit", done));
  }
  rmSync(work, { recursive: true, force: true });
});

/** A fresh browser page (its own storage) that fails the test on a CSP violation or a script error. */
async function newPage(viewport = { width: 1200, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.problems = [];
  page.on("console", (message) => {
    if (message.type() === "error" && !/status of 4\d\d/.test(message.text())) page.problems.push(message.text());
  });
  page.on("pageerror", (error) => page.problems.push(error.message));
  return page;
}

function noProblems(page) {
  assert.deepEqual(page.problems, [], "the page logged errors (CSP violations, exceptions)");
}

async function signIn(page, client) {
  await page.goto(`${base}/portal/`);
  await page.getByLabel("Client id").fill(client.id);
  await page.getByLabel("Client secret").fill(client.secret);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { level: 1, name: "Subscriptions" }).waitFor();
}

/** Goes to the subscriptions list, then to the receiver's subscription, drawn afresh with its log. */
async function openSubscription(page) {
  await page.getByRole("link", { name: "Subscriptions", exact: true }).click();
  await page.getByRole("link", { name: hookUrl }).click();
  await page.getByRole("heading", { level: 2, name: "Deliveries" }).waitFor();
}

async function shot(page, name) {
  if (!screenshots) return;
  mkdirSync(screenshots, { recursive: true });
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

// ------------------------------------------------------------ the tests

let subscriptionId;
let firstSecret;

test("the portal is served with a strict policy and is light", async () => {
  const response = await fetch(`${base}/portal/`);
  assert.equal(response.status, 200);
  const csp = response.headers.get("content-security-policy");
  for (const directive of ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'none'"]) {
    assert.ok(csp.includes(directive), `${directive} in ${csp}`);
  }
  assert.equal(response.headers.get("x-frame-options"), "DENY");
  assert.equal(response.headers.get("x-content-type-options"), "nosniff");

  const page = await newPage();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  let transferred = 0;
  cdp.on("Network.loadingFinished", (event) => { transferred += event.encodedDataLength; });
  await page.goto(`${base}/portal/`);
  await page.getByLabel("Client id").waitFor();
  await sleep(200);
  console.log(`# page weight: ${(transferred / 1024).toFixed(1)} KB transferred on first load`);
  assert.ok(transferred < 100 * 1024, `first load transferred ${transferred} bytes`);
  await shot(page, "sign-in");
  noProblems(page);
});

test("a wrong secret is refused with the API's reason, and the keyboard alone signs in", async () => {
  const page = await newPage();
  await page.goto(`${base}/portal/`);
  await page.getByLabel("Client id").fill(alice.id);
  await page.getByLabel("Client secret").fill("thcs_wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").getByText("Unknown client id or wrong secret").waitFor();

  // Labels on every control, then sign in by keyboard only.
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea")]
    .filter((control) => control.labels.length === 0 && !control.getAttribute("aria-label")).length);
  assert.equal(unlabelled, 0);
  await page.getByLabel("Client secret").fill("");
  await page.getByLabel("Client id").focus();
  await page.keyboard.press("Tab");
  await page.keyboard.type(alice.secret);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { level: 1, name: "Subscriptions" }).waitFor();
  await page.getByText("No subscriptions yet").waitFor();
  noProblems(page);
});

test("a subscription made in the portal receives a comment posted through the API", async () => {
  const page = await newPage();
  await signIn(page, alice);
  await page.getByRole("link", { name: "New subscription" }).click();
  await page.getByLabel("Endpoint URL").fill(hookUrl);
  await page.getByLabel("Description (optional)").fill("Order updates");
  await page.getByRole("button", { name: "Create subscription" }).click();
  const secret = await page.locator("#new-secret").textContent();
  assert.match(secret, /^whsec_/);
  firstSecret = secret;
  subscriptionId = new URL(page.url()).hash.split("/")[2];
  assert.match(subscriptionId, /^sub_/);
  await page.getByText("No deliveries yet").waitFor();

  const message = await api(aliceToken, "POST", "/messages", { text: "Hello" });
  await api(aliceToken, "POST", `/messages/${message.id}/comments`, { text: "First!" });
  await eventually("the webhook", () => received.length === 1);
  await eventually("the delivery in the log", async () => {
    await openSubscription(page);
    return (await page.locator('tr[data-status="delivered"]').count()) === 1;
  });
  // Delivered, then fetched by the receiver with the client's token.
  const row = page.locator('tr[data-status="delivered"]');
  assert.equal(await row.getByText("not fetched").count(), 0);
  await page.getByText("Last success").waitFor();
  await page.getByRole("link", { name: "Subscriptions", exact: true }).click();
  await page.getByRole("cell", { name: "Order updates" }).waitFor();
  await shot(page, "subscriptions");
  noProblems(page);
});

test("a failed delivery is retried from the log and then delivered", async () => {
  replies.push(500);
  const message = await api(aliceToken, "POST", "/messages", { text: "Again" });
  await api(aliceToken, "POST", `/messages/${message.id}/comments`, { text: "Second" });
  await eventually("the failing attempt", () => received.length === 2);

  const page = await newPage();
  await signIn(page, alice);
  const failed = page.locator('tr[data-status="failed"]');
  await eventually("the failed delivery", async () => {
    await openSubscription(page);
    return (await failed.count()) === 1;
  });
  await failed.locator("summary").click();
  await failed.getByRole("listitem").getByText("500").waitFor();
  await failed.locator("pre").getByText("receiver down for maintenance").waitFor();
  await shot(page, "subscription");
  await failed.getByRole("button", { name: /^Retry/ }).click();
  await page.getByRole("status").getByText("queued for another attempt").waitFor();
  await eventually("the retried attempt", () => received.length === 3);
  await eventually("both delivered", async () => {
    await openSubscription(page);
    return (await page.locator('tr[data-status="delivered"]').count()) === 2;
  });

  // Across subscriptions, with the chart of the day.
  await page.getByRole("link", { name: "Deliveries", exact: true }).click();
  await page.getByRole("img", { name: /2 delivered, 0 failed, 0 pending/ }).waitFor();
  await eventually("the log", async () => (await page.locator("tr[data-delivery]").count()) === 2);
  await shot(page, "deliveries");
  noProblems(page);
});

test("rotating a secret shows the new one once", async () => {
  const page = await newPage();
  await signIn(page, alice);
  await page.getByRole("link", { name: hookUrl }).click();
  await page.getByRole("button", { name: "Rotate secret" }).click();
  const rotated = await page.locator("#new-secret").textContent();
  assert.match(rotated, /^whsec_/);
  assert.notEqual(rotated, firstSecret);
  await page.getByText("previous one keeps signing until").waitFor();
  await page.getByRole("button", { name: "Copy" }).waitFor();
  // Shown once: gone after the page is drawn again.
  await openSubscription(page);
  assert.equal(await page.locator("#new-secret").count(), 0);

  // A test event reaches the endpoint and says what it answered.
  const before = received.length;
  await page.getByRole("button", { name: "Send test event" }).click();
  await page.getByText("Test event delivered.").waitFor();
  await page.getByText("Your endpoint answered 200").waitFor();
  assert.equal(received.length, before + 1);
  assert.equal(received.at(-1).type, "webhook.test");

  // Disable and enable again.
  await page.getByRole("button", { name: "Disable" }).click();
  await page.getByText("Disabled", { exact: true }).first().waitFor();
  await page.getByRole("button", { name: "Enable" }).click();
  await page.getByText("Enabled", { exact: true }).first().waitFor();
  noProblems(page);
});

test("a portal link signs in once; a used or expired link is refused", async () => {
  const link = cli("portal-link", "--client", alice.id).trim();
  assert.ok(link.startsWith(`${base}/portal/#link=`), link);
  const page = await newPage();
  await page.goto(link);
  await page.getByRole("heading", { level: 1, name: "Subscriptions" }).waitFor();
  await page.getByRole("link", { name: hookUrl }).waitFor();
  assert.ok(!page.url().includes("link="), "the link is dropped from the address");
  // Its token manages subscriptions only: a new one names its message.
  await page.getByRole("link", { name: "New subscription" }).click();
  assert.equal(await page.getByLabel("For message").getAttribute("required"), "");
  await page.getByText("subscribes to one message at a time").waitFor();

  const again = await newPage();
  await again.goto(link);
  await again.getByRole("alert").getByText("was used already").waitFor();
  await again.getByRole("heading", { level: 1, name: "Sign in" }).waitFor();

  // The same link, made an hour ago for fifteen minutes: signed by the
  // gateway's key, expired.
  const [header, payload] = link.split("#link=")[1].split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url"));
  const hourAgo = Math.floor(Date.now() / 1000) - 3600;
  const stale = { ...claims, iat: hourAgo, exp: hourAgo + 900, jti: claims.jti.replace(/.$/, "0") };
  const body = `${header}.${Buffer.from(JSON.stringify(stale)).toString("base64url")}`;
  const signature = sign(null, Buffer.from(body), createPrivateKey(signingKey.export({ type: "pkcs8", format: "pem" })));
  const expired = await newPage();
  await expired.goto(`${base}/portal/#link=${body}.${signature.toString("base64url")}`);
  await expired.getByRole("alert").getByText("has expired").waitFor();
});

test("one client never sees another's subscriptions", async () => {
  const page = await newPage();
  await signIn(page, bob);
  await page.getByText("No subscriptions yet").waitFor();
  assert.equal(await page.getByRole("link", { name: hookUrl }).count(), 0);
  await page.goto(`${base}/portal/#/subscriptions/${subscriptionId}`);
  await signIn(page, bob);
  await page.evaluate((id) => { location.hash = `#/subscriptions/${id}`; }, subscriptionId);
  await page.getByRole("heading", { level: 1, name: "Not found" }).waitFor();
  await page.getByRole("link", { name: "Deliveries", exact: true }).click();
  await page.getByRole("img", { name: /0 delivered, 0 failed, 0 pending/ }).waitFor();
  await page.getByText("No deliveries yet").waitFor();
  noProblems(page);
});

test("the portal fits a phone's width", async () => {
  const page = await newPage({ width: 375, height: 740 });
  await signIn(page, alice);
  await page.getByRole("link", { name: hookUrl }).click();
  await page.getByRole("heading", { level: 2, name: "Deliveries" }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  await shot(page, "phone");
  noProblems(page);
});
