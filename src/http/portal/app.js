// The subscriber portal: plain DOM, no library, no build step. Everything
// goes through thinhook's public API with a token that lives in this
// module's memory only (never in storage): a reload signs out.

const API = new URL("../", document.baseURI);
const EVENT_TYPES = ["message.created", "comment.created"];
const FORMATS = [
  ["standard-webhooks", "Standard Webhooks"],
  ["cloudevents", "CloudEvents (structured)"],
  ["cloudevents-binary", "CloudEvents (binary)"],
];
const OUTCOMES = [
  ["delivered", "Delivered"],
  ["failed", "Failed"],
  ["pending", "Pending"],
];
const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/** The signed-in client: its token and who it is. */
let session = null;
/** Bumped by each navigation: a slow page load must not draw over a newer one. */
let generation = 0;

// ---------------------------------------------------------------- the DOM

function h(tag, attributes = {}, ...children) {
  return fill(document.createElement(tag), attributes, children);
}

function svg(tag, attributes = {}, ...children) {
  return fill(document.createElementNS("http://www.w3.org/2000/svg", tag), attributes, children);
}

function fill(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const $ = (selector) => document.querySelector(selector);

/** Replaces what `element` shows (nulls and falses are left out). */
function show(element, ...children) {
  element.replaceChildren(fill(document.createDocumentFragment(), {}, children));
}

/** Says something to everyone, screen readers included, for a while. */
function notify(text, kind = "ok") {
  const notice = $("#notice");
  show(notice, h("p", { class: `flash ${kind}` }, text));
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => show(notice), 8000);
}

/** A problem document (or OAuth error) as the API gave it, for the page. */
class Problem extends Error {
  constructor(status, title, detail, code) {
    super(detail || title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.code = code;
  }
}

function problemBox(error) {
  const title = error instanceof Problem ? error.title : "Something went wrong";
  return h("div", { class: "problem", role: "alert" },
    h("strong", {}, title),
    error.detail || (error instanceof Problem ? "" : error.message) ? h("p", {}, error.detail ?? error.message) : null);
}

function when(value) {
  if (!value) return "—";
  const date = new Date(value);
  return h("time", { datetime: value, title: value }, date.toLocaleString());
}

const short = (id) => (id ? `${id.slice(0, 8)}…${id.slice(-6)}` : "—");

// ---------------------------------------------------------------- the API

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(new URL(path.replace(/^\//, ""), API), init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) {
      signOut("Your session has ended: sign in again.");
    }
    throw new Problem(response.status, data?.title ?? `HTTP ${response.status}`, data?.detail ?? "");
  }
  return data;
}

/** Every page of a list, up to `pages` pages. */
async function allPages(path, pages = 5) {
  const rows = [];
  let after = null;
  for (let page = 0; page < pages; page += 1) {
    const separator = path.includes("?") ? "&" : "?";
    const data = await api("GET", after ? `${path}${separator}after=${encodeURIComponent(after)}` : path);
    rows.push(...data.data);
    if (!data.has_more) return { rows, complete: true };
    after = data.next_cursor;
  }
  return { rows, complete: false };
}

async function requestToken(fields) {
  const response = await fetch(new URL("oauth/token", API), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
    body: new URLSearchParams(fields),
    cache: "no-store",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Problem(response.status, SIGN_IN_ERRORS[data.error] ?? "Sign-in failed", data.error_description ?? "", data.error);
  }
  return data;
}

const SIGN_IN_ERRORS = {
  invalid_client: "Unknown client id or wrong secret",
  invalid_grant: "This portal link cannot be used",
  invalid_scope: "This client may not manage subscriptions",
  slow_down: "Too many attempts",
};

function startSession(token) {
  const [, payload] = token.access_token.split(".");
  const claims = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/")));
  session = {
    token: token.access_token,
    client: claims.client_id,
    expires: claims.exp * 1000,
    scopes: (token.scope ?? "").split(" "),
  };
  $("#who").textContent = claims.client_id;
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  // The token cannot be renewed without the secret, which is not kept.
  clearTimeout(startSession.timer);
  startSession.timer = setTimeout(
    () => signOut("Your session has ended: sign in again."),
    Math.max(0, session.expires - Date.now()),
  );
}

function signOut(why) {
  session = null;
  clearTimeout(startSession.timer);
  $("#who").textContent = "";
  $("#nav").hidden = true;
  $("#signout").hidden = true;
  if (location.hash !== "") history.replaceState(null, "", location.pathname);
  signInPage(why);
}

// ---------------------------------------------------------------- pages

function page(title, ...content) {
  const heading = h("h1", { tabindex: "-1" }, title);
  show($("#main"), heading, content);
  document.title = `${title} · thinhook`;
  return heading;
}

function signInPage(why) {
  const error = h("div");
  const form = h("form", { class: "card narrow", novalidate: true },
    h("label", { for: "client-id" }, "Client id"),
    h("input", { id: "client-id", name: "client_id", autocomplete: "username", required: true, spellcheck: "false", placeholder: "cli_…" }),
    h("label", { for: "client-secret" }, "Client secret"),
    h("input", { id: "client-secret", name: "client_secret", type: "password", autocomplete: "current-password", required: true }),
    error,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (!data.get("client_id") || !data.get("client_secret")) {
      show(error, problemBox(new Problem(400, "Both fields are needed", "Enter the client id and its secret.")));
      return;
    }
    form.querySelector("button").disabled = true;
    const credentials = {
      grant_type: "client_credentials",
      client_id: data.get("client_id").trim(),
      client_secret: data.get("client_secret"),
    };
    try {
      // What the portal needs, no more: events:read too if the client holds
      // it (a subscription to every event needs it).
      let token;
      try {
        token = await requestToken({ ...credentials, scope: "subscriptions:manage events:read" });
      } catch (problem) {
        if (problem.code !== "invalid_scope") throw problem;
        token = await requestToken({ ...credentials, scope: "subscriptions:manage" });
      }
      startSession(token);
      go("#/subscriptions");
    } catch (problem) {
      show(error, problemBox(problem));
      form.querySelector("button").disabled = false;
    }
  });
  page("Sign in",
    why ? h("p", { class: "problem", role: "alert" }, why) : null,
    h("p", {}, "Sign in with your API client's id and secret, or open the portal link your operator gave you."),
    form);
  $("#client-id").focus();
}

function subscriptionState(subscription) {
  if (!subscription.enabled) return h("span", { class: "badge off" }, "Disabled");
  if (subscription.verification && !["not_required", "verified"].includes(subscription.verification.state)) {
    return h("span", { class: "badge warn" }, "Awaiting consent");
  }
  return h("span", { class: "badge ok" }, "Enabled");
}

function health(subscription) {
  const health = subscription.health ?? {};
  if (health.failing_since) {
    return h("span", { class: "bad" }, "Failing since ", when(health.failing_since));
  }
  if (health.last_success_at) return h("span", {}, "Last success ", when(health.last_success_at));
  return h("span", { class: "muted" }, "No delivery yet");
}

async function subscriptionsPage(mine) {
  const { rows, complete } = await allPages("/subscriptions?limit=100", 10);
  if (mine !== generation) return;
  const create = h("a", { class: "button", href: "#/subscriptions/new" }, "New subscription");
  if (rows.length === 0) {
    page("Subscriptions", h("div", { class: "empty" },
      h("p", {}, "No subscriptions yet. Create one to have events sent to your endpoint."), create));
    return;
  }
  const table = h("table", {},
    h("caption", { class: "visually-hidden" }, "Your subscriptions"),
    h("thead", {}, h("tr", {}, ["Endpoint", "Events", "Message", "State", "Health"].map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows.map((subscription) => h("tr", {},
      h("td", { class: "url" }, h("a", { href: `#/subscriptions/${subscription.id}` }, subscription.url),
        subscription.description ? h("div", { class: "muted" }, subscription.description) : null),
      h("td", {}, subscription.event_types.join(", ")),
      h("td", {}, subscription.message_id ? h("code", {}, short(subscription.message_id)) : h("span", { class: "muted" }, "any")),
      h("td", {}, subscriptionState(subscription)),
      h("td", {}, health(subscription))))));
  page("Subscriptions", h("p", {}, create),
    h("div", { class: "scroll" }, table),
    complete ? null : h("p", { class: "muted" }, "Only the first 1,000 subscriptions are shown."));
}

function subscriptionForm(existing) {
  const id = (name) => `form-${name}`;
  const types = h("fieldset", {},
    h("legend", {}, "Event types"),
    EVENT_TYPES.map((type) => h("label", { class: "check" },
      h("input", { type: "checkbox", name: "event_types", value: type, checked: existing ? existing.event_types.includes(type) : type === "comment.created" }),
      ` ${type}`)));
  const error = h("div");
  const form = h("form", { class: "card" },
    h("label", { for: id("url") }, "Endpoint URL"),
    h("input", { id: id("url"), name: "url", type: "url", required: true, value: existing?.url ?? "", placeholder: "https://example.com/webhooks", "aria-describedby": id("url-help") }),
    h("p", { id: id("url-help"), class: "help" }, "thinhook posts a signed notification here; your code fetches what changed."),
    types,
    existing ? null : messageField(id("message")),
    h("label", { for: id("description") }, "Description (optional)"),
    h("input", { id: id("description"), name: "description", value: existing?.description ?? "", maxlength: "500" }),
    h("label", { for: id("format") }, "Format"),
    h("select", { id: id("format"), name: "format" },
      FORMATS.map(([value, label]) => h("option", { value, selected: (existing?.format ?? "standard-webhooks") === value }, label))),
    error,
    h("div", { class: "actions" },
      h("button", { type: "submit" }, existing ? "Save changes" : "Create subscription"),
      h("a", { class: "button quiet", href: existing ? `#/subscriptions/${existing.id}` : "#/subscriptions" }, "Cancel")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {
      url: data.get("url").trim(),
      event_types: data.getAll("event_types"),
      format: data.get("format"),
    };
    const description = data.get("description").trim();
    if (existing) body.description = description || null;
    else if (description) body.description = description;
    if (!existing && data.get("message_id").trim()) body.message_id = data.get("message_id").trim();
    form.querySelector("button[type=submit]").disabled = true;
    try {
      if (existing) {
        await api("PATCH", `/subscriptions/${existing.id}`, body);
        notify("Saved.");
        go(`#/subscriptions/${existing.id}`);
      } else {
        const created = await api("POST", "/subscriptions", body);
        secretShown = { id: created.id, secret: created.secret, note: "Store this signing secret now: it is not shown again." };
        go(`#/subscriptions/${created.id}`);
      }
    } catch (problem) {
      show(error, problemBox(problem));
      form.querySelector("button[type=submit]").disabled = false;
    }
  });
  return form;
}

/**
 * The message filter of a new subscription. A session without events:read
 * (a portal link's) may subscribe to one message only, so there it is required.
 */
function messageField(fieldId) {
  const everything = session.scopes.includes("events:read");
  return [
    h("label", { for: fieldId }, everything ? "Only for message (optional)" : "For message"),
    h("input", {
      id: fieldId, name: "message_id", spellcheck: "false", placeholder: "msg_…",
      required: !everything, "aria-describedby": everything ? null : `${fieldId}-help`,
    }),
    everything ? null : h("p", { id: `${fieldId}-help`, class: "help" },
      "This sign-in subscribes to one message at a time; every event needs a sign-in with the client's secret."),
  ];
}

/** A secret just issued, shown once on the subscription's page. */
let secretShown = null;

function secretBox({ secret, note }) {
  const code = h("code", { id: "new-secret", class: "secret" }, secret);
  const copy = h("button", { type: "button", class: "quiet" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      copy.textContent = "Copied";
    } catch {
      // No clipboard (an insecure origin): select it for the user to copy.
      getSelection().selectAllChildren(code);
      copy.textContent = "Selected: press Ctrl+C";
    }
  });
  return h("div", { class: "card secret-box", role: "alert" },
    h("p", {}, h("strong", {}, note)), h("p", { class: "secret-line" }, code, " ", copy));
}

async function subscriptionPage(id, mine, editing) {
  const subscription = await api("GET", `/subscriptions/${encodeURIComponent(id)}`);
  if (mine !== generation) return;
  if (editing) {
    page(`Edit ${subscription.url}`, subscriptionForm(subscription));
    return;
  }
  const shown = secretShown?.id === id ? secretShown : null;
  secretShown = null;
  const actionError = h("div");
  const act = (label, run, kind) => {
    const button = h("button", { type: "button", class: kind ?? "" }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await run();
      } catch (problem) {
        show(actionError, problemBox(problem));
        button.disabled = false;
      }
    });
    return button;
  };
  const reload = () => subscriptionPage(id, generation, false);
  const toggle = act(subscription.enabled ? "Disable" : "Enable", async () => {
    await api("PATCH", `/subscriptions/${id}`, { enabled: !subscription.enabled });
    notify(subscription.enabled ? "Disabled: deliveries are held until you enable it." : "Enabled.");
    await reload();
  });
  const rotate = act("Rotate secret", async () => {
    const rotated = await api("POST", `/subscriptions/${id}/secret/rotate`, {});
    secretShown = {
      id,
      secret: rotated.secret,
      note: `New signing secret, shown once. The previous one keeps signing until ${new Date(rotated.previous_secret_expires_at).toLocaleString()}.`,
    };
    await reload();
  });
  const testResult = h("div", { role: "status", "aria-live": "polite" });
  const sendTest = act("Send test event", async () => {
    const sent = await api("POST", `/subscriptions/${id}/test`, {});
    const answer = sent.status_code
      ? `answered ${sent.status_code} in ${sent.duration_ms} ms`
      : `did not answer: ${sent.error}`;
    show(testResult, h("div", { class: sent.delivered ? "flash" : "problem" },
      h("strong", {}, sent.delivered ? "Test event delivered. " : "Test event not delivered. "),
      `Your endpoint ${answer}.`,
      sent.response_excerpt ? h("pre", { class: "excerpt" }, sent.response_excerpt) : null,
      h("p", { class: "muted" }, `webhook-id ${sent.event_id}; nothing is recorded or retried.`)));
    sendTest.disabled = false;
  }, "quiet");
  const remove = act("Delete", async () => {
    if (!confirm(`Delete the subscription to ${subscription.url} and its delivery log?`)) return;
    await api("DELETE", `/subscriptions/${id}`);
    notify("Deleted.");
    go("#/subscriptions");
  }, "danger");
  const details = h("dl", { class: "facts" },
    h("dt", {}, "Id"), h("dd", {}, h("code", {}, subscription.id)),
    h("dt", {}, "State"), h("dd", {}, subscriptionState(subscription),
      subscription.disabled_reason ? h("span", { class: "muted" }, ` ${subscription.disabled_reason}`) : null),
    h("dt", {}, "Health"), h("dd", {}, health(subscription)),
    h("dt", {}, "Events"), h("dd", {}, subscription.event_types.join(", ")),
    h("dt", {}, "Message"), h("dd", {}, subscription.message_id ? h("code", {}, subscription.message_id) : "any"),
    h("dt", {}, "Format"), h("dd", {}, subscription.format),
    subscription.description ? [h("dt", {}, "Description"), h("dd", {}, subscription.description)] : null,
    h("dt", {}, "Created"), h("dd", {}, when(subscription.created_at)));
  const log = h("section", { "aria-labelledby": "log-heading" }, h("h2", { id: "log-heading" }, "Deliveries"), h("p", {}, "Loading…"));
  page(subscription.url,
    shown ? secretBox(shown) : null,
    details,
    h("div", { class: "actions" },
      h("a", { class: "button", href: `#/subscriptions/${id}/edit` }, "Edit"),
      toggle, rotate, sendTest, remove),
    actionError,
    testResult,
    replayForm(id),
    log);
  await deliveryLog(log, `/subscriptions/${id}/deliveries`, mine);
}

function replayForm(id) {
  const dayAgo = new Date(Date.now() - 24 * 3600 * 1000);
  const local = new Date(dayAgo.getTime() - dayAgo.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  const error = h("div");
  const form = h("form", { class: "inline-form", "aria-labelledby": "replay-heading" },
    h("h2", { id: "replay-heading" }, "Send again"),
    h("label", { for: "replay-since" }, "Deliveries created since"),
    h("input", { id: "replay-since", name: "since", type: "datetime-local", required: true, value: local }),
    h("label", { for: "replay-include" }, "Which"),
    h("select", { id: "replay-include", name: "include" },
      h("option", { value: "failed" }, "Failed ones"),
      h("option", { value: "all" }, "Failed and delivered")),
    h("button", { type: "submit" }, "Replay"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      const since = new Date(data.get("since"));
      if (Number.isNaN(since.getTime())) throw new Problem(400, "Pick a time", "Enter the time to replay from.");
      const replayed = await api("POST", `/subscriptions/${id}/replay`, {
        since: since.toISOString().replace(/\.\d+Z$/, "Z"),
        include: data.get("include"),
      });
      show(error);
      notify(`${replayed.requeued} deliver${replayed.requeued === 1 ? "y" : "ies"} queued again${replayed.has_more ? "; replay again for more" : ""}.`);
      await subscriptionPage(id, generation, false);
    } catch (problem) {
      show(error, problemBox(problem));
    }
  });
  return form;
}

function lastResponse(delivery) {
  const last = delivery.attempts.at(-1);
  if (!last) return h("span", { class: "muted" }, "not attempted yet");
  const code = last.status_code ? h("code", {}, last.status_code) : h("span", { class: "bad" }, last.error ?? "no answer");
  return h("span", {}, code, last.response_excerpt ? h("span", { class: "excerpt" }, ` ${last.response_excerpt}`) : null);
}

function deliveryRow(delivery, onRetry) {
  const retry = delivery.status === "pending"
    ? h("span", { class: "muted" }, "queued")
    : h("button", { type: "button", class: "quiet", "aria-label": `Retry delivery ${delivery.id}` }, "Retry");
  if (retry.tagName === "BUTTON") {
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      await onRetry(delivery, retry);
    });
  }
  const attempts = h("details", {},
    h("summary", {}, `${delivery.attempt_count} attempt${delivery.attempt_count === 1 ? "" : "s"}`),
    delivery.attempts.length === 0 ? h("p", { class: "muted" }, "None yet.") :
      h("ol", { class: "attempts" }, delivery.attempts.map((attempt) => h("li", {},
        when(attempt.started_at), " · ",
        attempt.status_code ? h("code", {}, attempt.status_code) : h("span", { class: "bad" }, attempt.error ?? "no answer"),
        ` · ${attempt.duration_ms} ms`,
        attempt.response_excerpt ? h("pre", { class: "excerpt" }, attempt.response_excerpt) : null))));
  return h("tr", { "data-delivery": delivery.id, "data-status": delivery.status },
    h("td", {}, h("code", { title: delivery.id }, short(delivery.id)), h("div", { class: "muted" }, delivery.event_type)),
    h("td", {}, h("span", { class: `badge ${delivery.status}` }, delivery.status)),
    h("td", {}, attempts),
    h("td", {}, lastResponse(delivery)),
    h("td", {}, when(delivery.created_at)),
    h("td", {}, when(delivery.delivered_at), " → ", delivery.fetched_at ? when(delivery.fetched_at) : h("span", { class: "muted" }, "not fetched")),
    h("td", {}, retry));
}

/** Draws the deliveries at `path` into `section` under its heading, a page at a time. */
async function deliveryLog(section, path, mine, showSubscription = false) {
  const heading = section.querySelector("h2");
  const error = h("div");
  const body = h("tbody");
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Show more");
  let after = null;
  const onRetry = async (delivery, button) => {
    try {
      const retried = await api("POST", `/deliveries/${delivery.id}/retry`, {});
      notify(`Delivery ${short(delivery.id)} queued for another attempt.`);
      button.replaceWith(h("span", { class: "muted" }, "queued"));
      const row = body.querySelector(`[data-delivery="${retried.id}"]`);
      row?.setAttribute("data-status", retried.status);
    } catch (problem) {
      show(error, problemBox(problem));
      button.disabled = false;
    }
  };
  const load = async () => {
    const separator = path.includes("?") ? "&" : "?";
    const data = await api("GET", `${path}${separator}limit=50${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    if (mine !== generation) return false;
    for (const delivery of data.data) {
      const row = deliveryRow(delivery, onRetry);
      if (showSubscription) {
        row.firstChild.append(h("div", {}, h("a", { href: `#/subscriptions/${delivery.subscription_id}` }, short(delivery.subscription_id))));
      }
      body.append(row);
    }
    after = data.next_cursor;
    more.hidden = !data.has_more;
    return data.data.length > 0 || body.children.length > 0;
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      await load();
    } catch (problem) {
      show(error, problemBox(problem));
    }
    more.disabled = false;
  });
  const any = await load();
  if (mine !== generation) return;
  if (!any) {
    show(section, heading, h("p", { class: "empty" }, "No deliveries yet. They appear here as events are sent."));
    return;
  }
  const table = h("table", {},
    h("caption", { class: "visually-hidden" }, "Deliveries, oldest first"),
    h("thead", {}, h("tr", {}, ["Delivery", "Status", "Attempts", "Last response", "Created", "Delivered → fetched", ""].map((name) => h("th", { scope: "col" }, name)))),
    body);
  show(section, heading, error, h("div", { class: "scroll" }, table), more);
}

async function deliveriesPage(mine, query) {
  const status = query.get("status") ?? "";
  const filter = h("form", { class: "inline-form" },
    h("label", { for: "status-filter" }, "Status"),
    h("select", { id: "status-filter", name: "status" },
      h("option", { value: "" }, "Any"),
      OUTCOMES.map(([value, label]) => h("option", { value, selected: value === status }, label))),
    h("button", { type: "submit" }, "Show"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new FormData(filter).get("status");
    location.hash = chosen ? `#/deliveries?status=${chosen}` : "#/deliveries";
  });
  const chart = h("section", { "aria-labelledby": "chart-heading" }, h("h2", { id: "chart-heading" }, "Last 24 hours"), h("p", {}, "Loading…"));
  const log = h("section", { "aria-labelledby": "log-heading" }, h("h2", { id: "log-heading" }, "Log"), h("p", {}, "Loading…"));
  page("Deliveries", chart, filter, log);
  const since = new Date(Date.now() - 24 * 3600 * 1000);
  since.setMinutes(0, 0, 0);
  const sinceParam = since.toISOString().replace(/\.\d+Z$/, "Z");
  await Promise.all([
    hourlyChart(chart, since, mine),
    deliveryLog(log, `/deliveries?since=${sinceParam}${status ? `&status=${status}` : ""}`, mine, true),
  ]);
}

/** Deliveries per hour by outcome over the last day, as stacked bars and a table. */
async function hourlyChart(section, since, mine) {
  const sinceParam = since.toISOString().replace(/\.\d+Z$/, "Z");
  const stats = await api("GET", `/deliveries/stats?since=${sinceParam}`);
  if (mine !== generation) return;
  const hours = Array.from({ length: 25 }, (_, i) => ({
    start: new Date(since.getTime() + i * 3600 * 1000),
    delivered: 0, failed: 0, pending: 0,
  }));
  for (const counted of stats.hours) {
    const slot = Math.floor((new Date(counted.hour) - since) / 3600000);
    if (slot >= 0 && slot < hours.length) Object.assign(hours[slot], { ...counted, start: hours[slot].start });
  }
  const highest = Math.max(1, ...hours.map((hour) => hour.delivered + hour.failed + hour.pending));
  const [width, height, bar] = [25 * 20 + 16, 120, 14];
  const totals = Object.fromEntries(OUTCOMES.map(([outcome]) => [outcome, hours.reduce((sum, hour) => sum + hour[outcome], 0)]));
  const summary = OUTCOMES.map(([outcome, label]) => `${totals[outcome]} ${label.toLowerCase()}`).join(", ");
  const picture = svg("svg", { viewBox: `0 0 ${width} ${height + 16}`, class: "chart", role: "img", "aria-label": `Deliveries per hour over the last day: ${summary}` },
    hours.map((hour, i) => {
      let top = height;
      return OUTCOMES.map(([outcome]) => {
        const size = (hour[outcome] / highest) * (height - 4);
        top -= size;
        return size > 0 ? svg("rect", { x: i * 20 + 3, y: top, width: bar, height: size, class: `bar-${outcome}` },
          svg("title", {}, `${hour.start.getHours()}:00 · ${hour[outcome]} ${outcome}`)) : null;
      });
    }),
    [0, 6, 12, 18, 24].map((i) => svg("text", { x: i * 20 + 3, y: height + 13, class: "axis" }, `${hours[i].start.getHours()}:00`)));
  const legend = h("ul", { class: "legend" }, OUTCOMES.map(([outcome, label]) => h("li", {}, h("span", { class: `swatch bar-${outcome}` }), `${label} ${totals[outcome]}`)));
  const table = h("details", {},
    h("summary", {}, "As a table"),
    h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Hour"), OUTCOMES.map(([, label]) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, hours.filter((hour) => hour.delivered + hour.failed + hour.pending > 0).map((hour) => h("tr", {},
        h("th", { scope: "row" }, hour.start.toLocaleString()),
        OUTCOMES.map(([outcome]) => h("td", {}, hour[outcome]))))))));
  show(section, section.querySelector("h2"), picture, legend, table);
}

// ---------------------------------------------------------------- routing

/** Shows the page at `hash`, also when the address holds it already. */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  if (!session) return signInPage();
  const hash = location.hash;
  if (!hash.startsWith("#/")) {
    if (hash === "" || hash === "#") location.replace("#/subscriptions");
    return undefined;
  }
  const [path, search] = hash.slice(2).split("?");
  const parts = path.split("/");
  const mine = ++generation;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === parts[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (parts[0] === "subscriptions" && parts.length === 1) await subscriptionsPage(mine);
    else if (parts[0] === "subscriptions" && parts[1] === "new") page("New subscription", subscriptionForm(null));
    else if (parts[0] === "subscriptions") await subscriptionPage(parts[1], mine, parts[2] === "edit");
    else if (parts[0] === "deliveries") await deliveriesPage(mine, new URLSearchParams(search ?? ""));
    else page("Not found", h("p", {}, "There is no such page here. ", h("a", { href: "#/subscriptions" }, "Your subscriptions")));
  } catch (problem) {
    if (mine === generation && session) page(problem.status === 404 ? "Not found" : "Something went wrong", problemBox(problem));
    return undefined;
  }
  if (mine === generation) $("#main h1")?.focus();
  return undefined;
}

/** A portal link (`#link=…`) is exchanged for a token, then dropped from the address. */
async function signInByLink() {
  const link = new URLSearchParams(location.hash.slice(1)).get("link");
  history.replaceState(null, "", location.pathname);
  try {
    startSession(await requestToken({ grant_type: JWT_BEARER, assertion: link }));
    go("#/subscriptions");
  } catch (problem) {
    signInPage(`${problem.title}: ${problem.detail || "ask for a new portal link."}`);
  }
}

$("#signout").addEventListener("click", () => signOut("You are signed out."));
$("#skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("#main").focus();
});
window.addEventListener("hashchange", route);
if (location.hash.startsWith("#link=")) {
  signInByLink();
} else {
  signInPage();
}
