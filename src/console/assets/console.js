// The console's page: sign-in, four views, and the calls behind them. Plain JavaScript,
// no library: every value from the server is put in the page as text (never as HTML).
"use strict";

const KEY_STORE = "switchyard-admin-key";
const REFRESH_MS = 5000;

// The client APIs the playground can speak, one entry each: the route, how a request
// body is written, how the stream is framed, and how each streamed piece is read
// (`out.text` grows with the answer; `out.usage` gets the token counts).
const APIS = [
  {
    id: "openai", label: "OpenAI chat (/v1/chat/completions)", path: "/v1/chat/completions", framing: "sse",
    body: (model, system, message) => ({
      model, stream: true, stream_options: { include_usage: true },
      messages: [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: message }],
    }),
    read: (data, out) => {
      const delta = data.choices && data.choices[0] && data.choices[0].delta;
      if (delta && typeof delta.content === "string") out.text += delta.content;
      if (data.usage) out.usage = { prompt: data.usage.prompt_tokens, completion: data.usage.completion_tokens };
    },
  },
  {
    id: "ollama", label: "Ollama chat (/api/chat)", path: "/api/chat", framing: "ndjson",
    body: (model, system, message) => ({
      model, stream: true,
      messages: [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: message }],
    }),
    read: (data, out) => {
      if (data.message && typeof data.message.content === "string") out.text += data.message.content;
      if (data.done) out.usage = { prompt: data.prompt_eval_count, completion: data.eval_count };
    },
  },
  {
    id: "anthropic", label: "Anthropic Messages (/v1/messages)", path: "/v1/messages", framing: "sse",
    body: (model, system, message) => ({
      model, stream: true, max_tokens: 1024, ...(system ? { system } : {}),
      messages: [{ role: "user", content: message }],
    }),
    read: (data, out) => {
      if (data.type === "content_block_delta" && data.delta && data.delta.type === "text_delta") out.text += data.delta.text;
      const usage = (data.type === "message_start" && data.message && data.message.usage) || (data.type === "message_delta" && data.usage);
      if (usage) {
        out.usage = {
          prompt: usage.input_tokens ?? (out.usage && out.usage.prompt),
          completion: usage.output_tokens ?? (out.usage && out.usage.completion),
        };
      }
    },
  },
  {
    id: "responses", label: "OpenAI Responses (/v1/responses)", path: "/v1/responses", framing: "sse",
    body: (model, system, message) => ({
      model, stream: true, store: false, input: message, ...(system ? { instructions: system } : {}),
    }),
    read: (data, out) => {
      if (data.type === "response.output_text.delta" && typeof data.delta === "string") out.text += data.delta;
      const usage = data.type === "response.completed" && data.response && data.response.usage;
      if (usage) out.usage = { prompt: usage.input_tokens, completion: usage.output_tokens };
    },
  },
];

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem(KEY_STORE), timer: null, usage: null };

// Builds an element; children are nodes or text.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field; }
}

// Calls the console's API with the admin key; a change is a JSON POST marked as ours.
async function api(path, options = {}, key = state.key) {
  const headers = { Authorization: `Bearer ${key}` };
  const init = { method: options.method || "GET", headers, cache: "no-store" };
  if (init.method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-Switchyard-Console"] = "1";
    init.body = JSON.stringify(options.body || {});
  }
  const response = await fetch(`/ui/api${path}`, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    throw new ApiError(response.status, error.message || `${response.status} ${response.statusText}`, error.field);
  }
  return data;
}

// ---- sign-in ----

async function signIn(event) {
  event.preventDefault();
  const key = $("admin-key").value.trim();
  $("login-error").textContent = "";
  try {
    const who = await api("/session", {}, key);
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    $("admin-key").value = "";
    enter(who);
  } catch (error) {
    $("login-error").textContent = `Not signed in: ${error.message}`;
    $("admin-key").focus();
  }
}

function signOut() {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  clearInterval(state.timer);
  $("nav").hidden = true;
  for (const page of document.querySelectorAll(".page")) page.hidden = true;
  $("login").hidden = false;
  $("admin-key").focus();
}

function enter(who) {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").textContent = `Signed in as ${who.user} (${who.key})`;
  show();
}

// ---- pages ----

const PAGES = { overview: loadOverview, playground: loadPlayground, keys: loadKeys, usage: loadUsage };

function show() {
  if (!state.key) return;
  const name = (location.hash || "#overview").slice(1);
  const page = PAGES[name] ? name : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${page}`;
  clearInterval(state.timer);
  PAGES[page]();
  if (page === "overview") state.timer = setInterval(loadOverview, REFRESH_MS);
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) signOut();
}

// ---- overview ----

async function loadOverview() {
  let data;
  try { data = await api("/overview"); } catch (error) { failed(error); $("overview-stamp").textContent = error.message; return; }
  $("overview-stamp").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  const cards = data.backends.map((backend) => {
    const upstreams = (backend.upstreams || []).map((u) =>
      el("li", {}, u.url, " ", el("strong", { class: `state-${u.state}` }, u.state),
        u.consecutive_failures ? ` (${u.consecutive_failures} failures in a row)` : ""));
    const hour = backend.last_hour;
    return el("article", { class: "card", "aria-label": `Backend ${backend.name}` },
      el("h3", {}, backend.name),
      el("div", { class: "muted" }, `kind ${backend.kind}`),
      upstreams.length ? el("ul", { "aria-label": "Upstreams" }, upstreams) : el("p", { class: "muted" }, "built in, no upstream"),
      el("div", { class: "numbers" },
        el("span", {}, `in flight ${backend.in_flight}${backend.max_concurrent ? ` / ${backend.max_concurrent}` : ""}`),
        el("span", {}, `queued ${backend.queued}`),
        hour ? el("span", {}, `last hour: ${hour.requests} requests, ${hour.errors} errors`) : null));
  });
  $("backends").replaceChildren(...cards);
  const errors = data.recent_errors || [];
  $("recent-errors").replaceChildren(errors.length
    ? el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ["When", "Backend", "Kind", "Error"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, errors.map((e) => el("tr", {}, el("td", {}, e.at), el("td", {}, e.backend), el("td", {}, e.kind), el("td", {}, e.message))))))
    : el("p", { class: "muted" }, "None lately."));
}

// ---- playground ----

let modelsLoaded = false;

async function loadPlayground() {
  const select = $("play-api");
  if (!select.options.length) {
    for (const choice of APIS) select.append(el("option", { value: choice.id }, choice.label));
  }
  if (modelsLoaded) return;
  try {
    const response = await fetch("/v1/models", { headers: { Authorization: `Bearer ${state.key}` } });
    const data = await response.json();
    $("model-list").replaceChildren(...(data.data || []).map((m) => el("option", { value: m.id })));
    modelsLoaded = true;
  } catch (error) {
    $("play-error").textContent = `The model list did not load: ${error.message}`;
  }
}

// Splits a stream into its pieces as they come: SSE events (their `data:` lines, less
// comments and `[DONE]`) or NDJSON lines.
async function* pieces(body, framing) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const separator = framing === "sse" ? /\r?\n\r?\n/ : /\r?\n/;
  const parse = (chunk) => {
    if (framing !== "sse") return chunk.trim() ? [chunk] : [];
    const data = chunk.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
    return data.length && data.join("\n") !== "[DONE]" ? [data.join("\n")] : [];
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const parts = buffer.split(separator);
    buffer = parts.pop();
    for (const part of parts) yield* parse(part);
  }
  buffer += decoder.decode();
  if (buffer.trim()) yield* parse(buffer);
}

// `db;dur=1.2, upstream;dur=30.5;desc="first byte"` → [{name, dur, desc}].
function serverTiming(header) {
  if (!header) return [];
  return header.split(",").map((entry) => {
    const [name, ...params] = entry.trim().split(";");
    const out = { name: name.trim() };
    for (const param of params) {
      const [key, value] = param.trim().split("=");
      out[key] = (value || "").replace(/^"|"$/g, "");
    }
    return out;
  });
}

async function send(event) {
  event.preventDefault();
  const choice = APIS.find((a) => a.id === $("play-api").value) || APIS[0];
  const model = $("play-model").value.trim();
  const button = $("play-send");
  const answer = $("play-answer");
  answer.textContent = "";
  $("play-error").textContent = "";
  $("play-stats").replaceChildren();
  $("play-path").textContent = `POST ${choice.path}`;
  button.disabled = true;
  const started = performance.now();
  let firstPiece = null;
  const out = { text: "", usage: null };
  try {
    const response = await fetch(choice.path, {
      method: "POST",
      headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json" },
      body: JSON.stringify(choice.body(model, $("play-system").value, $("play-message").value)),
    });
    if (!response.ok) {
      const text = await response.text();
      let message = text;
      try {
        const data = JSON.parse(text);
        message = (data.error && (data.error.message || data.error)) || text;
      } catch (_) { /* not JSON: the text as it is */ }
      throw new Error(`${response.status}: ${message}`);
    }
    for await (const piece of pieces(response.body, choice.framing)) {
      if (firstPiece === null) firstPiece = performance.now();
      let data;
      try { data = JSON.parse(piece); } catch (_) { continue; }
      if (data.error) throw new Error(data.error.message || JSON.stringify(data.error));
      choice.read(data, out);
      answer.textContent = out.text;
    }
    const stats = [];
    for (const timing of serverTiming(response.headers.get("server-timing"))) {
      stats.push([`Server-Timing ${timing.name}`, `${timing.dur ?? "?"} ms${timing.desc ? ` (${timing.desc})` : ""}`]);
    }
    if (firstPiece !== null) stats.push(["First piece after", `${Math.round(firstPiece - started)} ms`]);
    stats.push(["Whole answer after", `${Math.round(performance.now() - started)} ms`]);
    if (out.usage) {
      stats.push(["Prompt tokens", String(out.usage.prompt ?? "?")]);
      stats.push(["Completion tokens", String(out.usage.completion ?? "?")]);
    }
    $("play-stats").replaceChildren(...stats.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  } catch (error) {
    $("play-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

// ---- keys ----

function limitsOf(key) {
  const parts = [["rpm", key.rpm], ["tpm", key.tpm], ["concurrent", key.max_concurrent], ["per day", key.tokens_per_day]]
    .filter(([, value]) => value !== null && value !== undefined).map(([name, value]) => `${name} ${value}`);
  return parts.length ? parts.join(", ") : "none";
}

async function loadKeys() {
  let data;
  try { data = await api("/keys"); } catch (error) { failed(error); $("keys-file").textContent = error.message; return; }
  $("keys-file").textContent = data.keys_file
    ? `Keys file ${data.keys_file}; changes apply at once.` : "This gateway has no auth.keys_file, so keys cannot be managed here.";
  const rows = data.keys.map((key) => {
    const userId = `key-user-${key.id}`;
    const stateText = key.disabled ? "disabled" : key.expired ? "expired" : key.admin ? "admin" : "active";
    const act = (action) => async () => {
      if (action === "remove" && !confirm(`Remove the key ${key.key} of ${key.user}? Whoever uses it is refused at once.`)) return;
      try { await api(`/keys/${key.id}/${action}`, { method: "POST" }); } catch (error) { $("add-error").textContent = error.message; }
      loadKeys();
    };
    return el("tr", {},
      el("td", { id: userId }, key.user),
      el("td", {}, el("code", {}, key.key)),
      el("td", {}, key.models.length ? key.models.join(", ") : "all"),
      el("td", {}, limitsOf(key)),
      el("td", {}, key.expires || "never"),
      el("td", {}, stateText),
      el("td", {}, key.note || ""),
      el("td", { class: "num" }, key.tokens_today === null || key.tokens_today === undefined ? "–" : String(key.tokens_today)),
      el("td", {}, el("div", { class: "actions" },
        key.disabled
          ? el("button", { type: "button", class: "secondary", "aria-describedby": userId, onclick: act("enable") }, "Enable")
          : el("button", { type: "button", class: "secondary", "aria-describedby": userId, onclick: act("disable") }, "Disable"),
        el("button", { type: "button", class: "danger", "aria-describedby": userId, onclick: act("remove") }, "Remove"))));
  });
  document.querySelector("#keys-table tbody").replaceChildren(...rows);
}

const FIELD_INPUTS = {
  user: "add-user", models: "add-models", rpm: "add-rpm", tpm: "add-tpm", max_concurrent: "add-concurrent",
  tokens_per_day: "add-day", expires: "add-expires", note: "add-note",
};

async function addKey(event) {
  event.preventDefault();
  $("add-error").textContent = "";
  const number = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
  const body = {
    user: $("add-user").value.trim(),
    models: $("add-models").value.split(",").map((m) => m.trim()).filter(Boolean),
    rpm: number("add-rpm"), tpm: number("add-tpm"), max_concurrent: number("add-concurrent"),
    tokens_per_day: number("add-day"),
    expires: $("add-expires").value || undefined,
    note: $("add-note").value.trim() || undefined,
  };
  try {
    const added = await api("/keys", { method: "POST", body });
    $("new-key-value").textContent = added.key;
    $("copy-done").textContent = "";
    $("new-key").hidden = false;
    $("add-form").reset();
    $("copy-key").focus();
    loadKeys();
  } catch (error) {
    failed(error);
    $("add-error").textContent = error.message;
    const input = error.field && FIELD_INPUTS[error.field];
    if (input) $(input).focus();
  }
}

async function copyKey() {
  const text = $("new-key-value").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // Without a secure context (plain http to another machine) the clipboard API is
    // absent: select the key so that Ctrl-C copies it.
    const range = document.createRange();
    range.selectNodeContents($("new-key-value"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("copy-done").textContent = "Copied.";
}

// ---- usage ----

const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// Tokens per day as bars, each stacked by user.
function dayChart(days, users, series) {
  if (!days.length) return el("p", { class: "muted" }, "No traffic in this period.");
  const width = 520, height = 220, left = 50, bottom = 40, top = 10;
  const totals = days.map((day) => users.reduce((sum, user) => sum + (series[user][day] || 0), 0));
  const max = Math.max(1, ...totals);
  const step = (width - left) / days.length;
  const bar = Math.max(4, step * 0.7);
  const scale = (v) => (v / max) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Tokens per day by user, ${days.length} days`, width: "100%" });
  chart.append(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }));
  chart.append(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, String(max)));
  chart.append(svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, "0"));
  days.forEach((day, i) => {
    let y = height - bottom;
    const x = left + i * step + (step - bar) / 2;
    users.forEach((user, u) => {
      const value = series[user][day] || 0;
      if (!value) return;
      const h = scale(value);
      y -= h;
      chart.append(svg("rect", { x, y, width: bar, height: h, fill: COLORS[u % COLORS.length] }, svg("title", {}, `${day} ${user}: ${value} tokens`)));
    });
    if (days.length <= 14 || i % Math.ceil(days.length / 14) === 0) {
      chart.append(svg("text", { x: x + bar / 2, y: height - bottom + 14, "text-anchor": "middle" }, day.slice(5)));
    }
  });
  const legend = el("div", { class: "legend" }, users.map((user, u) => {
    const swatch = el("span", { class: "swatch" });
    // Through the style object: the page's policy refuses inline style attributes.
    swatch.style.background = COLORS[u % COLORS.length];
    return el("span", {}, swatch, user);
  }));
  return el("div", {}, chart, legend);
}

// Requests by model as horizontal bars.
function modelChart(rows) {
  if (!rows.length) return el("p", { class: "muted" }, "No traffic in this period.");
  const width = 520, line = 24, left = 170;
  const height = rows.length * line + 10;
  const max = Math.max(1, ...rows.map((r) => r.requests));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Requests by model", width: "100%" });
  rows.forEach((row, i) => {
    const y = 5 + i * line;
    const w = (row.requests / max) * (width - left - 50);
    chart.append(svg("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, row.name || "(none)"));
    chart.append(svg("rect", { x: left, y: y + 3, width: Math.max(1, w), height: line - 8, fill: COLORS[i % COLORS.length] }));
    chart.append(svg("text", { x: left + w + 6, y: y + 15 }, String(row.requests)));
  });
  return chart;
}

const COLUMNS = ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors"];
const GROUPS = [["by_user", "User"], ["by_model", "Model"], ["by_backend", "Backend"], ["by_day", "Day"]];

function totalsTable(title, rows, total) {
  return el("section", { "aria-label": `Totals by ${title.toLowerCase()}` },
    el("h3", {}, `By ${title.toLowerCase()}`),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, title), COLUMNS.map((c) => el("th", { scope: "col", class: "num" }, c.replace("_", " "))))),
      el("tbody", {}, rows.map((row) => el("tr", {}, el("th", { scope: "row" }, row.name || "(none)"), COLUMNS.map((c) => el("td", { class: "num" }, String(row[c])))))),
      el("tfoot", {}, el("tr", {}, el("th", { scope: "row" }, "Total"), COLUMNS.map((c) => el("td", { class: "num" }, String(total[c]))))))));
}

async function loadUsage(event) {
  if (event) event.preventDefault();
  $("usage-error").textContent = "";
  let data;
  try {
    data = await api(`/usage?since=${encodeURIComponent($("usage-since").value)}`);
  } catch (error) {
    failed(error);
    $("usage-error").textContent = error.message;
    return;
  }
  state.usage = data;
  const users = Object.keys(data.days_by_user);
  const days = data.by_day.map((row) => row.name);
  const series = {};
  for (const user of users) {
    series[user] = {};
    for (const row of data.days_by_user[user]) series[user][row.name] = row.total_tokens;
  }
  $("chart-days").replaceChildren(dayChart(days, users, series));
  $("chart-models").replaceChildren(modelChart(data.by_model));
  $("usage-tables").replaceChildren(...GROUPS.map(([group, title]) => totalsTable(title, data[group], data.total)));
}

function downloadCsv() {
  const data = state.usage;
  if (!data) return;
  const quote = (text) => (/[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text);
  const lines = [["group", "name", ...COLUMNS].join(",")];
  for (const [group] of GROUPS) {
    for (const row of data[group]) lines.push([group.slice(3), quote(row.name || ""), ...COLUMNS.map((c) => row[c])].join(","));
  }
  lines.push(["total", "", ...COLUMNS.map((c) => data.total[c])].join(","));
  const link = el("a", {
    href: URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" })),
    download: `switchyard-usage-${$("usage-since").value}.csv`,
  });
  document.body.append(link);
  link.click();
  link.remove();
}

// ---- start ----

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", signOut);
  $("play-form").addEventListener("submit", send);
  $("add-form").addEventListener("submit", addKey);
  $("copy-key").addEventListener("click", copyKey);
  $("usage-form").addEventListener("submit", loadUsage);
  $("usage-csv").addEventListener("click", downloadCsv);
  window.addEventListener("hashchange", show);
  if (state.key) {
    try { enter(await api("/session")); return; } catch (_) { signOut(); }
  } else {
    $("admin-key").focus();
  }
});
