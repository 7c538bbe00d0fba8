// aihost console: a small single-page application over the public API.
//
// Routes (the URL's hash): #/ overview, #/tasks?status=&type=&since=&cursor=, #/task/ID,
// #/submit, #/submit/TYPE, #/workflow/NAME. All text reaches the page as text nodes (never as
// HTML). The API key, when the service wants one, is asked for once and kept in
// sessionStorage; every call sends it as `Authorization: Bearer`.
"use strict";

const KEY_NAME = "aihost.apiKey";
const TERMINAL = ["COMPLETED", "FAILED", "CANCELLED"];
const STATUSES = ["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"];

// ---------- DOM helpers ----------

/** Builds an element: attributes (on* keys become listeners), then children (text or nodes). */
function h(tag, attrs, ...children) {
  const svg = ["svg", "rect", "line", "text", "g", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value" && !svg) el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces the children of `el` (arrays flattened; null, undefined and false left out). */
function put(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function $(sel, root) {
  return (root || document).querySelector(sel);
}

function fmtTime(t) {
  if (!t) return "—";
  const d = new Date(t);
  return d.toLocaleString();
}

function fmtBytes(n) {
  if (n === undefined || n === null) return "";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function statusBadge(status) {
  return h("span", { class: "badge s-" + String(status).toLowerCase(), "data-status": status }, status);
}

function notice(text, kind) {
  const el = $("#notice");
  el.textContent = text;
  el.className = kind || "info";
  el.hidden = !text;
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = sessionStorage.getItem(KEY_NAME);
  if (key) headers.set("Authorization", "Bearer " + key);
  return headers;
}

/** Calls the API; answers the parsed JSON (or null for 204). Asks for a key on 401. */
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  if (opts.json !== undefined) {
    opts.headers.set("Content-Type", "application/json");
    opts.body = JSON.stringify(opts.json);
    delete opts.json;
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, "unreachable", "the service cannot be reached: " + e.message);
  }
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = text;
  }
  if (!resp.ok) {
    const err = body && body.error ? body.error : { code: "http_" + resp.status, message: String(text).slice(0, 300) };
    if (resp.status === 401) askKey(err.message);
    throw new ApiError(resp.status, err.code, err.message);
  }
  return body;
}

function askKey(message) {
  $("#auth").hidden = false;
  $("#auth-message").textContent = message || "This service requires an API key.";
  $("#api-key").focus();
}

/** Follows a task's SSE stream with fetch (so the API key can go in a header); calls
 * onEvent for each event until the server ends the stream or `signal` aborts. */
async function followEvents(id, onEvent, signal) {
  const resp = await fetch("/api/tasks/" + encodeURIComponent(id) + "/events", {
    headers: authHeaders({ Accept: "text/event-stream" }),
    signal,
  });
  if (resp.status === 401) {
    askKey("This service requires an API key.");
    return;
  }
  if (!resp.ok || !resp.body) return;
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) {
        try {
          onEvent(JSON.parse(data));
        } catch (_) {
          /* not JSON: ignored */
        }
      }
    }
  }
}

// ---------- routing ----------

let pageAbort = null; // aborts the current page's timers and streams
let pageTimers = [];

function every(ms, fn) {
  pageTimers.push(setInterval(fn, ms));
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || "") };
}

async function route() {
  if (pageAbort) pageAbort.abort();
  pageTimers.forEach(clearInterval);
  pageTimers = [];
  pageAbort = new AbortController();
  const signal = pageAbort.signal;
  const { parts, query } = parseHash();
  const main = $("#main");
  const section = parts[0] || "overview";
  document.querySelectorAll("[data-nav]").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (section === "task" ? "tasks" : section === "workflow" ? "submit" : section));
  });
  $("#forget-key").hidden = !sessionStorage.getItem(KEY_NAME);
  notice("");
  try {
    if (section === "overview") await overview(main, signal);
    else if (section === "tasks") await tasksPage(main, query, signal);
    else if (section === "task" && parts[1]) await taskPage(main, parts[1], signal);
    else if (section === "submit") await submitPage(main, parts[1], null, signal);
    else if (section === "workflow" && parts[1]) await submitPage(main, null, parts[1], signal);
    else put(main, h("p", {}, "No such page. "), h("a", { href: "#/" }, "Overview"));
  } catch (e) {
    if (signal.aborted) return;
    put(main, h("p", { class: "error", id: "page-error" }, errorText(e)));
  }
}

function errorText(e) {
  return e instanceof ApiError ? e.message + " [" + e.code + "]" : String(e && e.message ? e.message : e);
}

// ---------- overview ----------

async function overview(main, signal) {
  const view = h("div", { id: "overview" });
  put(main, h("h1", {}, "Overview"), view);
  const draw = async () => {
    const [status, stats, hist] = await Promise.all([api("/api/status"), api("/api/stats"), lastHour()]);
    if (signal.aborted) return;
    $("#version").textContent = "aihost " + status.version;
    put(view,
      h(
        "div",
        { class: "cards" },
        card("Service", h("span", { class: "badge " + (status.status === "ok" ? "s-completed" : "s-failed"), id: "service-status" }, status.status)),
        card("Queue depth", h("span", { id: "queue-depth" }, String(status.queue_depth))),
        card("Running here", String(status.running)),
        card("Success rate", stats.success_rate === null || stats.success_rate === undefined ? "—" : (stats.success_rate * 100).toFixed(1) + " %"),
        card("Uptime", fmtDuration(status.uptime_secs)),
      ),
      h("h2", {}, "Last hour"),
      chart(hist),
      h("h2", {}, "Tasks by type and status"),
      byTypeTable(stats),
      h("h2", {}, "Engines and plugins"),
      pluginsTable(status),
      status.consumers && status.consumers.length ? [h("h2", {}, "Consumers"), consumersTable(status.consumers)] : null,
    );
  };
  await draw();
  every(5000, () => draw().catch((e) => notice(errorText(e), "error")));
}

function card(title, value) {
  return h("div", { class: "card" }, h("div", { class: "card-title" }, title), h("div", { class: "card-value" }, value));
}

function fmtDuration(s) {
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

/** Completed and failed tasks per 5 minutes over the last hour, from the newest 1000 tasks of
 * each status (GET /api/tasks), bucketed by finished_at. */
async function lastHour() {
  const now = Date.now();
  const buckets = Array.from({ length: 12 }, (_, i) => ({ start: now - (12 - i) * 300000, completed: 0, failed: 0 }));
  for (const status of ["COMPLETED", "FAILED"]) {
    const page = await api("/api/tasks?status=" + status + "&limit=1000");
    for (const t of page.tasks) {
      const at = Date.parse(t.finished_at);
      if (!(at > now - 3600000)) continue;
      const i = Math.min(11, Math.floor((at - (now - 3600000)) / 300000));
      buckets[i][status.toLowerCase()] += 1;
    }
  }
  return buckets;
}

function chart(buckets) {
  const W = 600;
  const H = 160;
  const pad = 24;
  const max = Math.max(1, ...buckets.map((b) => b.completed + b.failed));
  const bw = (W - pad * 2) / buckets.length;
  const svg = h("svg", { viewBox: `0 0 ${W} ${H + 20}`, class: "chart", id: "throughput-chart", role: "img", "aria-label": "tasks finished per 5 minutes" });
  svg.append(h("line", { x1: pad, y1: H, x2: W - pad, y2: H, class: "axis" }));
  buckets.forEach((b, i) => {
    const x = pad + i * bw + 2;
    const hc = ((H - 10) * b.completed) / max;
    const hf = ((H - 10) * b.failed) / max;
    const g = h("g", {}, h("title", {}, `${new Date(b.start).toLocaleTimeString()}: ${b.completed} completed, ${b.failed} failed`));
    g.append(h("rect", { x, y: H - hc, width: bw - 4, height: hc, class: "bar-ok" }));
    g.append(h("rect", { x, y: H - hc - hf, width: bw - 4, height: hf, class: "bar-fail" }));
    svg.append(g);
    if (i % 3 === 0) svg.append(h("text", { x, y: H + 14, class: "tick" }, new Date(b.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  });
  svg.append(h("text", { x: 2, y: 12, class: "tick" }, String(max)));
  const total = buckets.reduce((a, b) => ({ c: a.c + b.completed, f: a.f + b.failed }), { c: 0, f: 0 });
  const rate = total.c + total.f ? ((100 * total.f) / (total.c + total.f)).toFixed(1) + " % failed" : "no finished tasks";
  return h(
    "figure",
    {},
    svg,
    h("figcaption", {}, h("span", { class: "key-ok" }, "■ completed " + total.c), " ", h("span", { class: "key-fail" }, "■ failed " + total.f), " — " + rate + " (per 5 minutes)"),
  );
}

function byTypeTable(stats) {
  const types = Object.keys(stats.by_type || {});
  if (!types.length) return h("p", { class: "muted" }, "No tasks yet.");
  return h(
    "table",
    { id: "by-type" },
    h("thead", {}, h("tr", {}, h("th", {}, "Type"), STATUSES.map((s) => h("th", {}, s)))),
    h(
      "tbody",
      {},
      types.map((t) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: "#/tasks?type=" + encodeURIComponent(t) }, t)),
          STATUSES.map((s) => {
            const n = (stats.by_type[t] || {})[s] || 0;
            return h("td", { class: "num" }, n ? h("a", { href: `#/tasks?type=${encodeURIComponent(t)}&status=${s}` }, String(n)) : "0");
          }),
        ),
      ),
    ),
  );
}

function pluginsTable(status) {
  const rows = Object.entries(status.plugins || {}).map(([name, health]) => {
    // A failed health call is {"status": "error", code, message}; `waiting` lists the task
    // types whose engine is not ready (their tasks wait in the queue).
    const bad = health && health.status === "error";
    const waiting = health && health.waiting && Object.keys(health.waiting).length;
    return h(
      "tr",
      { "data-plugin": name },
      h("td", {}, name),
      h("td", {}, statusBadgeText(bad ? "unhealthy" : waiting ? "waiting" : "healthy")),
      h("td", {}, h("code", { class: "json" }, JSON.stringify(health))),
    );
  });
  const failures = (status.plugin_failures || []).map((f) =>
    h("tr", {}, h("td", {}, f.name || f.file), h("td", {}, statusBadgeText("not loaded")), h("td", {}, f.message + " [" + f.code + "]")),
  );
  return h(
    "table",
    { id: "plugins" },
    h("thead", {}, h("tr", {}, h("th", {}, "Plugin"), h("th", {}, "Health"), h("th", {}, "Details"))),
    h("tbody", {}, rows, failures),
    h("caption", {}, "Store: " + (status.store_ok ? "ok" : "failing") + " · Storage: " + (status.storage_ok ? "ok" : "failing")),
  );
}

function statusBadgeText(text) {
  const cls = text === "healthy" ? "s-completed" : text === "waiting" ? "s-pending" : "s-failed";
  return h("span", { class: "badge " + cls }, text);
}

function consumersTable(consumers) {
  return h(
    "table",
    { id: "consumers" },
    h("thead", {}, h("tr", {}, ["Worker", "Host", "Version", "Task types", "Started", "Heard from"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      consumers.map((c) =>
        h("tr", {}, h("td", {}, c.worker), h("td", {}, c.hostname), h("td", {}, c.version), h("td", {}, (c.task_types || []).join(", ")), h("td", {}, fmtTime(c.started_at)), h("td", {}, fmtTime(c.heartbeat_at))),
      ),
    ),
  );
}

// ---------- tasks list ----------

async function taskTypes() {
  const list = await api("/api/plugins");
  return list.plugins.flatMap((p) => p.task_types);
}

async function tasksPage(main, query, signal) {
  const status = query.get("status") || "";
  const type = query.get("type") || "";
  const since = query.get("since") || "";
  const cursor = query.get("cursor") || "";
  const types = await taskTypes();
  const go = (changes) => {
    const q = new URLSearchParams({ status, type, since, cursor: "" });
    for (const [k, v] of Object.entries(changes)) q.set(k, v);
    for (const k of [...q.keys()]) if (!q.get(k)) q.delete(k);
    location.hash = "#/tasks?" + q.toString();
  };
  const filters = h(
    "form",
    { class: "filters", id: "task-filters", onsubmit: (e) => e.preventDefault() },
    h("label", {}, "Status ", h("select", { name: "status", onchange: (e) => go({ status: e.target.value }) }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)))),
    h("label", {}, "Type ", h("select", { name: "type", onchange: (e) => go({ type: e.target.value }) }, h("option", { value: "" }, "any"), types.map((t) => h("option", { value: t.name, selected: t.name === type }, t.name)))),
    h(
      "label",
      {},
      "Created ",
      h(
        "select",
        { name: "since", onchange: (e) => go({ since: e.target.value }) },
        [["", "any time"], ["15", "last 15 minutes"], ["60", "last hour"], ["1440", "last day"]].map(([v, l]) => h("option", { value: v, selected: v === since }, l)),
      ),
    ),
    h("label", { class: "live" }, h("input", { type: "checkbox", name: "live", checked: !cursor, id: "live" }), " live"),
  );
  const table = h("div", { id: "task-table" });
  const pager = h("div", { class: "pager" });
  put(main, h("h1", {}, "Tasks"), filters, table, pager);
  const draw = async () => {
    const q = new URLSearchParams({ limit: "50" });
    if (status) q.set("status", status);
    if (type) q.set("type", type);
    if (cursor) q.set("cursor", cursor);
    const page = await api("/api/tasks?" + q.toString());
    if (signal.aborted) return;
    const cutoff = since ? Date.now() - Number(since) * 60000 : 0;
    const tasks = page.tasks.filter((t) => !cutoff || Date.parse(t.created_at) >= cutoff);
    put(table, tasks.length ? taskTable(tasks) : h("p", { class: "muted", id: "no-tasks" }, "No tasks match."));
    put(pager,
      cursor ? h("a", { href: "#", onclick: (e) => (e.preventDefault(), go({})) }, "« first page") : null,
      page.next_cursor && (!cutoff || tasks.length === page.tasks.length)
        ? h("a", { href: "#", id: "next-page", onclick: (e) => (e.preventDefault(), go({ cursor: page.next_cursor })) }, "next page »")
        : null,
    );
  };
  await draw();
  every(2000, () => {
    if ($("#live") && $("#live").checked) draw().catch((e) => notice(errorText(e), "error"));
  });
}

function taskTable(tasks) {
  return h(
    "table",
    { class: "tasks" },
    h("thead", {}, h("tr", {}, ["Task", "Type", "Status", "Progress", "Attempts", "Created", "Finished"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      tasks.map((t) =>
        h(
          "tr",
          { "data-task": t.task_id },
          h("td", {}, h("a", { href: "#/task/" + t.task_id, class: "mono" }, t.task_id.slice(0, 8) + "…" + t.task_id.slice(-4))),
          h("td", {}, t.type),
          h("td", {}, statusBadge(t.status)),
          h("td", {}, t.progress ? progressBar(t.progress.percent) : t.error ? h("span", { class: "error-code" }, t.error.code) : ""),
          h("td", { class: "num" }, t.attempts + " / " + t.max_attempts),
          h("td", {}, fmtTime(t.created_at)),
          h("td", {}, fmtTime(t.finished_at)),
        ),
      ),
    ),
  );
}

function progressBar(percent) {
  const bar = h("span", { class: "bar-fill" });
  bar.style.width = Math.max(0, Math.min(100, percent || 0)) + "%";
  return h("span", { class: "bar", title: (percent || 0).toFixed(0) + " %" }, bar);
}

// ---------- one task ----------

async function taskPage(main, id, signal) {
  let task = await api("/api/tasks/" + encodeURIComponent(id));
  if (signal.aborted) return;
  const events = [];
  const box = h("div", { id: "task" });
  put(main, h("h1", {}, "Task ", h("span", { class: "mono" }, id)), box);
  const draw = () => put(box, taskView(task, events, actions));
  const follow = () => {
    if (TERMINAL.includes(task.status)) return;
    followEvents(
      id,
      (ev) => {
        events.push({ at: new Date(), event: ev.event, status: ev.status, progress: ev.progress });
        const input = task.input;
        task = Object.assign({}, ev.task, { input });
        draw();
      },
      signal,
    )
      .then(async () => {
        // The stream ended (terminal state, or the server cut it): read the task once more.
        if (signal.aborted) return;
        const fresh = await api("/api/tasks/" + encodeURIComponent(id));
        task = fresh;
        draw();
        if (!TERMINAL.includes(task.status)) setTimeout(() => signal.aborted || follow(), 1000);
      })
      .catch(() => {});
  };
  const act = async (what, fn) => {
    try {
      notice("");
      await fn();
    } catch (e) {
      notice(what + ": " + errorText(e), "error");
    }
  };
  const actions = {
    cancel: () =>
      act("Cancel", async () => {
        task = Object.assign(await api(`/api/tasks/${id}/cancel`, { method: "POST" }), { input: task.input });
        draw();
      }),
    retry: () =>
      act("Retry", async () => {
        task = await api(`/api/tasks/${id}/retry`, { method: "POST" });
        events.push({ at: new Date(), event: "retried", status: task.status });
        draw();
        follow();
      }),
    remove: () =>
      act("Delete", async () => {
        if (!confirm("Delete this task and its output files?")) return;
        await api(`/api/tasks/${id}`, { method: "DELETE" });
        location.hash = "#/tasks";
      }),
  };
  draw();
  follow();
}

function taskView(t, events, actions) {
  const live = !TERMINAL.includes(t.status);
  const buttons = h(
    "div",
    { class: "actions" },
    h("button", { type: "button", id: "cancel-task", disabled: !live, onclick: actions.cancel }, "Cancel"),
    h("button", { type: "button", id: "retry-task", disabled: !["FAILED", "CANCELLED"].includes(t.status), onclick: actions.retry }, "Retry"),
    h("button", { type: "button", id: "delete-task", class: "danger", disabled: live, onclick: actions.remove }, "Delete"),
  );
  const rows = [
    ["Status", h("span", { id: "task-status", "data-status": t.status }, statusBadge(t.status))],
    ["Type", t.type],
    ["Attempts", t.attempts + " of " + t.max_attempts],
    ["Priority", String(t.priority)],
    ["Created", fmtTime(t.created_at)],
    ["Started", fmtTime(t.started_at)],
    ["Finished", fmtTime(t.finished_at)],
    t.timeout_secs ? ["Time limit", t.timeout_secs + " s"] : null,
    t.idempotency_key ? ["Idempotency key", t.idempotency_key] : null,
    t.webhook_url ? ["Webhook", t.webhook_url] : null,
  ].filter(Boolean);
  const out = [buttons, h("table", { class: "envelope" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))))];
  if (t.progress) {
    out.push(
      h("div", { id: "task-progress", class: "progress" }, progressBar(t.progress.percent), " ", h("span", {}, t.progress.percent.toFixed(0) + " % " + (t.progress.message || ""))),
    );
    if (t.progress.preview) out.push(h("img", { class: "preview", src: t.progress.preview.url, alt: "live preview" }));
  }
  if (t.error) {
    out.push(h("div", { class: "error", id: "task-error" }, h("strong", { class: "error-code" }, t.error.code), ": " + t.error.message));
  }
  const outputs = (t.result && t.result.outputs) || [];
  if (outputs.length) out.push(h("h2", {}, "Outputs"), h("div", { id: "outputs" }, outputs.map(outputView)));
  if (t.result) {
    const rest = Object.assign({}, t.result);
    delete rest.outputs;
    if (Object.keys(rest).length) out.push(h("h2", {}, "Result"), h("pre", { class: "json" }, JSON.stringify(rest, null, 2)));
  }
  out.push(h("h2", {}, "Input"), h("pre", { class: "json", id: "task-input" }, JSON.stringify(t.input, null, 2)));
  const timeline = [["created", t.created_at], ["started (attempt " + t.attempts + ")", t.started_at], [String(t.status).toLowerCase(), t.finished_at]]
    .filter(([, at]) => at)
    .map(([what, at]) => h("li", {}, h("time", {}, fmtTime(at)), " " + what));
  const seen = events.map((e) =>
    h("li", { class: "ev" }, h("time", {}, e.at.toLocaleTimeString()), " " + e.event + (e.progress ? ` ${e.progress.percent.toFixed(0)} % ${e.progress.message || ""}` : e.status ? " → " + e.status : "")),
  );
  out.push(h("h2", {}, "Timeline"), h("ul", { class: "timeline", id: "timeline" }, timeline, seen));
  return out;
}

function outputView(o) {
  const type = o.content_type || "";
  const name = (o.key || o.url || "").split("/").pop();
  let media = null;
  if (type.startsWith("image/")) media = h("img", { src: o.url, alt: name, class: "output" });
  else if (type.startsWith("video/")) media = h("video", { src: o.url, controls: true, class: "output" });
  else if (type.startsWith("audio/")) media = h("audio", { src: o.url, controls: true });
  return h("figure", { class: "out" }, media, h("figcaption", {}, h("a", { href: o.url, download: name }, name), " " + type + " " + fmtBytes(o.size)));
}

// ---------- submit ----------

async function submitPage(main, typeName, workflowName, signal) {
  const types = await taskTypes();
  let workflows = [];
  try {
    workflows = ((await api("/api/workflows")) || {}).workflows || [];
  } catch (_) {
    workflows = []; // no comfyui plugin: no templates
  }
  if (signal.aborted) return;
  const list = h(
    "div",
    { class: "choices" },
    h("h2", {}, "Task types"),
    h("ul", {}, types.map((t) => h("li", {}, h("a", { href: "#/submit/" + encodeURIComponent(t.name), class: t.name === typeName ? "active" : null }, t.name), " ", h("span", { class: "muted" }, t.description)))),
    workflows.length ? h("h2", {}, "Workflows") : null,
    workflows.length ? h("ul", {}, workflows.map((w) => h("li", {}, h("a", { href: "#/workflow/" + encodeURIComponent(w.name), class: w.name === workflowName ? "active" : null }, w.name), " ", h("span", { class: "muted" }, w.description || "")))) : null,
  );
  let formBox = h("p", { class: "muted" }, "Pick a task type or a workflow.");
  if (typeName) {
    const t = types.find((x) => x.name === typeName);
    formBox = t
      ? submitForm(t.name, t.description, t.input_schema, async (input) => api("/api/tasks", { method: "POST", json: { type: t.name, input } }))
      : h("p", { class: "error" }, "No task type " + typeName);
  } else if (workflowName) {
    const w = workflows.find((x) => x.name === workflowName);
    const schema = w && (w.params_schema || w.schema || w.input_schema);
    formBox = w
      ? submitForm(w.name, w.description || "", schema || { type: "object", properties: {} }, async (params) => api("/api/workflows/" + encodeURIComponent(w.name), { method: "POST", json: params }))
      : h("p", { class: "error" }, "No workflow " + workflowName);
  }
  put(main, h("h1", {}, "Submit"), h("div", { class: "submit" }, list, h("div", { class: "form-box" }, formBox)));
}

/** Whether a string field takes a file: a storage key or URL (the schemas say so in their
 * description or format). */
function isFileField(schema) {
  return schema.type === "string" && (schema.format === "uri-reference" || /storage key|upload/i.test(schema.description || ""));
}

/** A form for `schema`; `send(value)` submits it, then the page follows the new task. */
function submitForm(name, description, schema, send) {
  const root = fieldFor("", schema, true, []);
  const status = h("p", { class: "form-status", id: "form-status" });
  const form = h(
    "form",
    {
      id: "submit-form",
      "data-for": name,
      onsubmit: async (e) => {
        e.preventDefault();
        status.textContent = "";
        status.className = "form-status";
        let value;
        try {
          value = root.read();
        } catch (err) {
          status.textContent = err.message;
          status.className = "form-status error";
          return;
        }
        if (value === undefined) value = {};
        try {
          const task = await send(value);
          location.hash = "#/task/" + task.task_id;
        } catch (err) {
          status.textContent = errorText(err);
          status.className = "form-status error";
        }
      },
    },
    h("h2", {}, name),
    description ? h("p", { class: "muted" }, description) : null,
    root.el,
    h("button", { type: "submit", id: "submit-task" }, "Submit"),
    status,
  );
  return form;
}

/** One field for a (sub)schema: answers {el, read()} where read() gives the value or
 * undefined when left empty. */
function fieldFor(name, schema, required, path) {
  schema = schema || {};
  const label = (text) => h("span", { class: "label" }, text, required ? h("abbr", { title: "required" }, " *") : null);
  const help = schema.description ? h("small", { class: "muted" }, schema.description) : null;
  const fieldName = path.concat(name ? [name] : []).join(".");
  const values = schema.enum || (schema.const !== undefined ? [schema.const] : null);
  if (schema.type === "object" || (schema.properties && !schema.type)) {
    const req = schema.required || [];
    // Required fields first, the others in the schema's order.
    const entries = Object.entries(schema.properties || {});
    entries.sort(([a], [b]) => Number(req.includes(b)) - Number(req.includes(a)));
    const kids = entries.map(([k, s]) => [k, fieldFor(k, s, req.includes(k), path.concat(name ? [name] : []))]);
    const el = name ? h("fieldset", {}, h("legend", {}, name), help, kids.map(([, f]) => f.el)) : h("div", { class: "fields" }, kids.map(([, f]) => f.el));
    return {
      el,
      read() {
        const out = {};
        for (const [k, f] of kids) {
          const v = f.read();
          if (v !== undefined) out[k] = v;
        }
        return Object.keys(out).length || required || !name ? out : undefined;
      },
    };
  }
  if (values) {
    const sel = h(
      "select",
      { name: fieldName },
      required ? null : h("option", { value: "" }, "—"),
      values.map((v, i) => h("option", { value: String(i), selected: schema.default !== undefined && JSON.stringify(schema.default) === JSON.stringify(v) }, String(v))),
    );
    return { el: h("label", { class: "field" }, label(name), sel, help), read: () => (sel.value === "" ? undefined : values[Number(sel.value)]) };
  }
  if (schema.type === "boolean") {
    const box = h("input", { type: "checkbox", name: fieldName, checked: schema.default === true });
    let touched = false;
    box.addEventListener("change", () => (touched = true));
    return { el: h("label", { class: "field check" }, box, label(" " + name), help), read: () => (touched || required ? box.checked : undefined) };
  }
  if (schema.type === "integer" || schema.type === "number") {
    const input = h("input", { type: "number", name: fieldName, step: schema.type === "integer" ? "1" : "any", min: schema.minimum, max: schema.maximum, placeholder: schema.default !== undefined ? String(schema.default) : "" });
    return {
      el: h("label", { class: "field" }, label(name), input, help),
      read() {
        if (input.value === "") {
          if (required) throw new Error(fieldName + " is required");
          return undefined;
        }
        const n = Number(input.value);
        if (!Number.isFinite(n) || (schema.type === "integer" && !Number.isInteger(n))) throw new Error(fieldName + " must be " + (schema.type === "integer" ? "an integer" : "a number"));
        return n;
      },
    };
  }
  if (schema.type === "string") {
    const input = h("input", { type: "text", name: fieldName, placeholder: schema.default !== undefined ? String(schema.default) : "" });
    const parts = [label(name), input];
    if (isFileField(schema)) {
      const state = h("small", { class: "upload-state" });
      const file = h("input", {
        type: "file",
        name: fieldName + ".file",
        "data-upload-for": fieldName,
        onchange: async () => {
          if (!file.files.length) return;
          const body = new FormData();
          body.append("file", file.files[0]);
          state.textContent = "uploading…";
          try {
            const up = await api("/api/uploads", { method: "POST", body });
            input.value = up.key;
            state.textContent = "uploaded: " + up.key;
            state.dataset.uploaded = up.key;
          } catch (e) {
            state.textContent = "upload failed: " + errorText(e);
          }
        },
      });
      parts.push(h("span", { class: "upload" }, "or upload a file: ", file, state));
    }
    return {
      el: h("label", { class: "field" }, parts, help),
      read() {
        if (input.value === "") {
          if (required) throw new Error(fieldName + " is required");
          return undefined;
        }
        return input.value;
      },
    };
  }
  // Arrays, unions and anything else: JSON.
  const area = h("textarea", { name: fieldName, rows: 3, placeholder: schema.default !== undefined ? JSON.stringify(schema.default) : "JSON" });
  return {
    el: h("label", { class: "field" }, label(name + " (JSON)"), area, help),
    read() {
      if (area.value.trim() === "") {
        if (required) throw new Error(fieldName + " is required");
        return undefined;
      }
      try {
        return JSON.parse(area.value);
      } catch (e) {
        throw new Error(fieldName + " is not valid JSON: " + e.message);
      }
    },
  };
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  $("#auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_NAME, $("#api-key").value.trim());
    $("#api-key").value = "";
    $("#auth").hidden = true;
    route();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
