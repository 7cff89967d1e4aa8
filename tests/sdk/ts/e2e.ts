// The SDK round trip of tests/sdk/e2e.py, in TypeScript: a client generated
// from openapi.yaml (openapi-typescript types, openapi-fetch calls) gets a
// token, registers a subscription, posts a comment, receives the thin webhook
// on a local receiver that verifies it with the `standardwebhooks` package,
// and fetches the comment the webhook links to.
//
// Usage: node build/e2e.js THINHOOK_BINARY  (run by .ci/run)

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createConnection, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import createClient from "openapi-fetch";
import { Webhook } from "standardwebhooks";
import type { paths } from "./generated/api.js";

const binary = resolve(process.argv[2] ?? "");
const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

function fail(what: string, detail?: unknown): never {
  throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

/** A port nothing listens on (bound, then released). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address() as AddressInfo;
  await new Promise((done) => server.close(done));
  return port;
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const open = await new Promise<boolean>((done) => {
      const socket = createConnection({ host: "127.0.0.1", port });
      socket.on("connect", () => (socket.destroy(), done(true)));
      socket.on("error", () => done(false));
    });
    if (open) return;
    await sleep(50);
  }
  fail("the gateway did not start on port", port);
}

type Received = { verified: boolean; event?: any; error?: string };

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), "thinhook-sdk-ts-"));
  const [port, hookPort] = [await freePort(), await freePort()];
  const env = {
    PATH: process.env.PATH ?? "",
    THINHOOK_LISTEN: `127.0.0.1:${port}`,
    THINHOOK_DELIVERY_ALLOW_CIDRS: "127.0.0.0/8",
    THINHOOK_LOG_LEVEL: "warn",
  };
  execFileSync(binary, ["migrate"], { cwd: work, env, stdio: "pipe" });
  // The round trip runs in a workspace of its own, as a tenant would.
  const workspace = execFileSync(binary, ["workspaces", "create", "--name", "sdk-ts"], {
    cwd: work,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  }).toString();
  const workspaceId = /workspace_id:\s+(\S+)/.exec(workspace)?.[1] ?? fail("no workspace id", workspace);
  const created = execFileSync(
    binary,
    ["clients", "create", "--name", "sdk-ts", "--workspace", workspaceId],
    { cwd: work, env, stdio: ["ignore", "pipe", "pipe"] },
  ).toString();
  const clientId = /client_id:\s+(\S+)/.exec(created)?.[1] ?? fail("no client id", created);
  const clientSecret = /client_secret:\s+(\S+)/.exec(created)?.[1] ?? fail("no secret", created);

  const received: Received[] = [];
  let webhookSecret = "";
  const receiver: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      try {
        const headers = Object.fromEntries(
          Object.entries(req.headers).map(([name, value]) => [name, String(value)]),
        );
        received.push({ verified: true, event: new Webhook(webhookSecret).verify(body, headers) });
        res.writeHead(204).end();
      } catch (error) {
        received.push({ verified: false, error: String(error) });
        res.writeHead(400).end();
      }
    });
  });
  await new Promise<void>((done) => receiver.listen(hookPort, "127.0.0.1", done));

  const gateway = spawn(binary, ["serve"], { cwd: work, env, stdio: "inherit" });
  try {
    await waitForPort(port);
    const baseUrl = `http://127.0.0.1:${port}`;
    const anonymous = createClient<paths>({ baseUrl });
    const token = await anonymous.POST("/oauth/token", {
      body: { grant_type: "client_credentials", client_id: clientId, client_secret: clientSecret },
      bodySerializer: (body) => new URLSearchParams(body as Record<string, string>),
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
    });
    if (!token.data || token.data.token_type !== "Bearer") fail("no token", token.error);
    const api = createClient<paths>({
      baseUrl,
      headers: { Authorization: `Bearer ${token.data.access_token}` },
    });

    const message = await api.POST("/messages", { body: { text: "from the TypeScript SDK" } });
    if (!message.data) fail("no message", message.error);
    const subscription = await api.POST("/subscriptions", {
      body: {
        url: `http://127.0.0.1:${hookPort}/hook`,
        event_types: ["comment.created"],
        message_id: message.data.id,
      },
    });
    if (!subscription.data) fail("no subscription", subscription.error);
    webhookSecret = subscription.data.secret;
    const comment = await api.POST("/messages/{messageId}/comments", {
      params: { path: { messageId: message.data.id } },
      body: { text: "read me through the API" },
    });
    if (!comment.data) fail("no comment", comment.error);

    for (let i = 0; i < 400 && received.length === 0; i++) await sleep(50);
    const first = received[0] ?? fail("no webhook arrived");
    if (!first.verified) fail("the webhook did not verify", first.error);
    if (JSON.stringify(first.event).includes("read me")) fail("the webhook carried the comment");
    const resource = first.event.data.resource;
    if (resource.id !== comment.data.id) fail("the webhook links elsewhere", first.event);

    const fetched = await api.GET("/messages/{messageId}/comments/{commentId}", {
      params: { path: { messageId: first.event.data.message_id, commentId: resource.id } },
    });
    if (fetched.data?.text !== "read me through the API") fail("fetch", fetched.error);
    console.log("sdk e2e (TypeScript): token, subscription, comment, verified webhook, fetch: ok");
  } finally {
    gateway.kill("SIGTERM");
    receiver.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
