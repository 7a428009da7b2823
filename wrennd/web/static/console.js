// wrennd console: the daemon's JSON-RPC API over the /rpc WebSocket, no framework.
"use strict";

const $ = (sel) => document.querySelector(sel);
const REFRESH_MS = 1500;
const USAGE_MS = 5000;

// --- JSON-RPC over a WebSocket, reconnecting ------------------------------------------
class Rpc {
  constructor(onState) {
    this.nextId = 1;
    this.pending = new Map();
    this.onState = onState;
    this.open();
  }
  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.ready = new Promise((resolve) => {
      this.ws = new WebSocket(`${scheme}://${location.host}/rpc`);
      this.ws.onopen = () => { this.onState(true); resolve(); };
      this.ws.onmessage = (ev) => this.receive(JSON.parse(ev.data));
      this.ws.onclose = () => {
        this.onState(false);
        for (const p of this.pending.values()) p.reject(new Error("connection to wrennd lost"));
        this.pending.clear();
        setTimeout(() => this.open(), 1000);
      };
    });
  }
  receive(msg) {
    for (const m of Array.isArray(msg) ? msg : [msg]) {
      if (m.method !== undefined) {
        const p = this.pending.get(m.params && m.params.request_id);
        if (p && p.onNote) p.onNote(m.method, m.params);
        continue;
      }
      const p = this.pending.get(m.id);
      if (!p) continue;
      this.pending.delete(m.id);
      if (m.error) {
        const e = new Error(m.error.message);
        e.rpc = m.error;
        p.reject(e);
      } else p.resolve(m.result);
    }
  }
  async call(method, params, onNote) {
    await this.ready;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onNote });
      this.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params: params || {} }));
    });
  }
}

// --- small helpers --------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h`;
}
function nanos(ns) { return ns >= 1e6 ? `${(ns / 1e6).toFixed(1)} ms` : `${(ns / 1e3).toFixed(0)} µs`; }
function showError(e) {
  $("#error-text").textContent = e.message || String(e);
  $("#error").hidden = false;
}
function b64encode(buf) {
  const u8 = new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
  return btoa(s);
}
function b64decode(text) {
  const s = atob(text);
  const u8 = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u8[i] = s.charCodeAt(i);
  return u8;
}

// --- state ----------------------------------------------------------------------------
const state = { sandboxes: [], templates: [], images: [], usage: {}, timings: {}, selected: null };
const rpc = new Rpc((up) => {
  $("#link").textContent = up ? "live" : "reconnecting";
  $("#link").className = `link ${up ? "up" : "down"}`;
});

// A lifecycle call with its progress shown in the activity panel; timings kept per sandbox.
async function lifecycle(method, params, label, sandboxId) {
  $("#activity").hidden = false;
  $("#activity-title").textContent = `${label}…`;
  $("#activity-stage").textContent = "";
  const bar = $("#activity-bar");
  bar.value = 0; bar.max = 1;
  const list = $("#activity-stages");
  list.replaceChildren();
  const started = performance.now();
  let last = started;
  const onNote = (kind, p) => {
    if (kind !== "progress") return;
    const now = performance.now();
    bar.max = p.total || 1; bar.value = p.done;
    $("#activity-stage").textContent = p.stage;
    if (list.lastChild) list.lastChild.dataset.ms = Math.round(now - last);
    list.lastChild && (list.lastChild.textContent += ` ${list.lastChild.dataset.ms} ms`);
    last = now;
    if (p.stage !== "done") list.append(el("li", { "data-stage": p.stage }, p.stage));
  };
  try {
    const result = await rpc.call(method, params, onNote);
    const ms = performance.now() - started;
    bar.value = bar.max;
    $("#activity-title").textContent = `${label}: done in ${duration(ms / 1000)}`;
    $("#activity").dataset.done = method;
    if (sandboxId) {
      const t = (state.timings[sandboxId] ||= {});
      t[method] = ms / 1000;
    }
    await refresh();
    return result;
  } catch (e) {
    $("#activity-title").textContent = `${label}: failed`;
    showError(e);
    await refresh();
    return null;
  }
}

// --- rendering ------------------------------------------------------------------------
// Rows are kept and updated in place: a row rebuilt under the pointer would swallow a click.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// Keep tbody's rows in the order of `items`, made by `make(item)` once per key.
function syncRows(tbody, items, key, make) {
  const rows = new Map([...tbody.children].map((r) => [r.dataset.key, r]));
  const wanted = items.map((item) => {
    const k = key(item);
    let row = rows.get(k);
    if (!row) { row = make(item); row.dataset.key = k; }
    rows.delete(k);
    return [row, item];
  });
  for (const row of rows.values()) row.remove();
  wanted.forEach(([row], i) => { if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null); });
  return wanted;
}

// [class, label]: the label heads the cell where a narrow window shows rows as cards.
const SANDBOX_CELLS = [["c-id", "ID"], ["c-state", "State"], ["c-from", "From"], ["c-vcpus", "vCPU"],
  ["c-memory", "Memory"], ["c-disk", "Disk"], ["c-uptime", "Uptime"], ["c-ttl", "TTL"],
  ["t-pause", "Last pause"], ["t-resume", "Last resume"], ["actions", ""]];

function sandboxRow(sb) {
  const row = el("tr", { "data-id": sb.id, onclick: () => select(row.dataset.id) },
    ...SANDBOX_CELLS.map(([c, label]) => el("td", { class: c, "data-label": label })));
  row.cells[0].append(el("code", {}, sb.id));
  row.cells[1].append(el("span", { class: "state" }));
  return row;
}

function actionButtons(row, sb) {
  const act = (name, cls) => el("button", {
    type: "button", class: `${cls || ""} act-${name}`, "data-action": name,
    onclick: (ev) => { ev.stopPropagation(); actions[name](state.sandboxes.find((s) => s.id === sb.id) || sb); },
  }, name);
  const buttons = [];
  if (sb.state === "running") buttons.push(act("pause"));
  if (sb.state === "paused") buttons.push(act("resume"));
  buttons.push(act("destroy", "danger"));
  row.cells[10].replaceChildren(...buttons);
}

function renderSandboxes() {
  const now = Date.now() / 1000;
  setText($("#sandbox-count"), `(${state.sandboxes.length})`);
  const rows = syncRows($("#sandboxes tbody"), state.sandboxes, (sb) => sb.id, sandboxRow);
  for (const [row, sb] of rows) {
    const usage = state.usage[sb.id] || {};
    const t = state.timings[sb.id] || {};
    const ttl = sb.expires_at ? Math.max(0, sb.expires_at - now) : null;
    if (row.dataset.state !== sb.state) {
      row.dataset.state = sb.state;
      row.cells[1].firstChild.className = `state ${sb.state}`;
      setText(row.cells[1].firstChild, sb.state);
      actionButtons(row, sb);
    }
    row.classList.toggle("selected", sb.id === state.selected);
    setText(row.cells[2], sb.template ? `template ${sb.template}` : sb.image || "–");
    setText(row.cells[3], String(sb.vcpus));
    setText(row.cells[4], `${sb.memory_mib} MiB`);
    setText(row.cells[5], bytes(usage.disk_bytes));
    setText(row.cells[6], sb.state === "running" ? duration(now - sb.updated_at) : "–");
    setText(row.cells[7], ttl === null ? "none" : duration(ttl));
    setText(row.cells[8], duration(t["sandbox.pause"]));
    setText(row.cells[9], duration(t["sandbox.resume"]));
  }
  renderDetail();
}

function renderDetail() {
  const sb = state.sandboxes.find((s) => s.id === state.selected);
  $("#detail").hidden = !sb;
  if (!sb) return;
  setText($("#detail-id"), sb.id);
  setText($("#detail-state"), sb.state);
  $("#detail-state").className = `state ${sb.state}`;
  const f = sb.faults;
  const facts = f ? [["faults", f.faults], ["p50", nanos(f.fault_p50_ns)], ["p99", nanos(f.fault_p99_ns)],
    ["max", nanos(f.fault_max_ns)], ["pages copied", f.pages_copied], ["pages zeroed", f.pages_zeroed],
    ["pages prefetched", f.pages_prefetched]] : [["faults", "no engine (booted, or not running)"]];
  const sig = facts.map(([k]) => k).join();
  if ($("#faults").dataset.keys !== sig) {
    $("#faults").dataset.keys = sig;
    $("#faults").replaceChildren(...facts.flatMap(([k]) => [el("dt", {}, k), el("dd", { "data-fact": k })]));
  }
  facts.forEach(([k, v], i) => setText($("#faults").children[2 * i + 1], String(v)));
  const hist = (f && f.histogram) || [];
  const top = Math.max(1, ...hist.map((b) => b.count));
  $("#fault-hist").replaceChildren(...hist.map((b, i) => {
    const bar = el("div", { title: `≤ ${nanos(b.le_ns)}: ${b.count}`, "data-count": b.count },
      i % 3 === 0 ? el("span", {}, nanos(b.le_ns)) : "");
    bar.style.height = `${Math.round((100 * b.count) / top)}%`;  // CSSOM: the CSP allows no inline style
    return bar;
  }));
}

let shownTemplates = "";
function renderTemplates() {
  const sig = JSON.stringify(state.templates);
  if (sig === shownTemplates) return;
  shownTemplates = sig;
  $("#templates tbody").replaceChildren(...state.templates.map((t) => el("tr", { "data-name": t.name },
    el("td", {}, t.name), el("td", {}, t.image || "–"), el("td", {}, String(t.vcpus)),
    el("td", {}, `${t.memory_mib} MiB`), el("td", {}, String(t.sandboxes.length)),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "act-clone", onclick: () => actions.clone(t) }, "clone"),
      el("button", { type: "button", class: "danger act-delete", onclick: () => actions.deleteTemplate(t) },
        "delete")))));
}

let shownImages = "";
function renderImages() {
  const sig = JSON.stringify([state.images, state.templates.map((t) => t.name)]);
  if (sig === shownImages) return;
  shownImages = sig;
  $("#images tbody").replaceChildren(...state.images.map((i) => el("tr", { "data-name": i.name },
    el("td", {}, i.name), el("td", {}, bytes(i.size_bytes)), el("td", {}, bytes(i.allocated_bytes)),
    el("td", {}, String(i.used_by.length)))));
  const source = $("#create-source");
  const chosen = source.value;
  source.replaceChildren(
    ...state.images.map((i) => el("option", { value: `image:${i.name}` }, `image ${i.name}`)),
    ...state.templates.map((t) => el("option", { value: `template:${t.name}` }, `template ${t.name}`)));
  if ([...source.options].some((o) => o.value === chosen)) source.value = chosen;
}

function select(id) {
  if (state.selected !== id) {
    $("#exec-out").textContent = "";
    $("#exec-status").textContent = "";
  }
  state.selected = id;
  renderSandboxes();
}

// --- refresh --------------------------------------------------------------------------
let lastUsage = 0;
async function refresh() {
  try {
    const [sbs, tps, ims] = await Promise.all([rpc.call("sandbox.list"), rpc.call("template.list"),
      rpc.call("image.list")]);
    state.sandboxes = sbs.sandboxes;
    state.templates = tps.templates;
    state.images = ims.images;
    if (Date.now() - lastUsage > USAGE_MS) {
      lastUsage = Date.now();
      const got = await Promise.all(state.sandboxes.map((s) =>
        rpc.call("sandbox.get", { id: s.id }).catch(() => null)));
      for (const g of got) if (g) state.usage[g.id] = g.usage;
    }
    renderSandboxes(); renderTemplates(); renderImages();
  } catch (e) {
    if (!/connection/.test(e.message)) showError(e);
  }
}

// --- actions --------------------------------------------------------------------------
const actions = {
  pause: (sb) => lifecycle("sandbox.pause", { id: sb.id }, `pause ${sb.id}`, sb.id),
  resume: (sb) => lifecycle("sandbox.resume", { id: sb.id }, `resume ${sb.id}`, sb.id),
  destroy: (sb) => lifecycle("sandbox.destroy", { id: sb.id }, `destroy ${sb.id}`, sb.id),
  clone: async (t) => {
    const sb = await lifecycle("sandbox.create", { template: t.name }, `clone of ${t.name}`);
    if (sb) select(sb.id);
  },
  deleteTemplate: (t) => lifecycle("template.delete", { name: t.name }, `delete template ${t.name}`),
};

async function create(ev) {
  ev.preventDefault();
  const [kind, name] = $("#create-source").value.split(/:(.*)/s);
  const params = { [kind]: name };
  if (kind === "image") {
    params.vcpus = Number($("#create-vcpus").value);
    params.memory_mib = Number($("#create-memory").value);
  }
  if ($("#create-ttl").value) params.timeout_s = Number($("#create-ttl").value);
  const sb = await lifecycle("sandbox.create", params, `create from ${kind} ${name}`);
  if (sb) select(sb.id);
}

async function exec(ev) {
  ev.preventDefault();
  const out = $("#exec-out");
  out.textContent = "";
  $("#exec-status").textContent = "running…";
  try {
    const r = await rpc.call("sandbox.exec", { id: state.selected, shell: $("#exec-cmd").value, stream: true, encoding: "text" },
      (kind, p) => { if (kind === "stream") out.append(el("span", { class: p.stream }, p.data)); });
    $("#exec-status").textContent = r.signal ? `killed by signal ${r.signal}` : `exit code ${r.code}`;
    $("#exec-status").dataset.code = String(r.code);
  } catch (e) {
    $("#exec-status").textContent = "failed";
    showError(e);
  }
}

async function upload(ev) {
  ev.preventDefault();
  const file = $("#upload-file").files[0];
  const path = $("#upload-path").value || (file && `/tmp/${file.name}`);
  if (!file) { showError(new Error("choose a file to upload")); return; }
  try {
    const data = b64encode(await file.arrayBuffer());
    const info = await rpc.call("sandbox.files.write", { id: state.selected, path, data });
    $("#upload-status").textContent = `uploaded ${info.size ?? file.size} bytes to ${path}`;
  } catch (e) { showError(e); }
}

async function download(ev) {
  ev.preventDefault();
  const path = $("#download-path").value;
  try {
    const r = await rpc.call("sandbox.files.read", { id: state.selected, path });
    const data = b64decode(r.data);
    const link = el("a", { href: URL.createObjectURL(new Blob([data])), download: path.split("/").pop() || "file",
      id: "download-link" }, "save");
    $("#download-status").replaceChildren(`${r.size} bytes from ${path} `, link);
    $("#download-preview").textContent = new TextDecoder().decode(data.subarray(0, 4096));
    link.click();
  } catch (e) { showError(e); }
}

async function makeTemplate(ev) {
  ev.preventDefault();
  const name = $("#template-name").value;
  await lifecycle("template.create", { name, sandbox_id: state.selected }, `template ${name}`,
    state.selected);
}

async function start() {
  $("#error-close").onclick = () => { $("#error").hidden = true; };
  $("#create-form").onsubmit = create;
  $("#exec-form").onsubmit = exec;
  $("#upload-form").onsubmit = upload;
  $("#download-form").onsubmit = download;
  $("#template-form").onsubmit = makeTemplate;
  try {
    const info = await rpc.call("host.info");
    $("#host-info").textContent =
      `${info.host.hostname} · wrennd ${info.version.wrennd} · ${info.vmm.path || ""} · ${info.config.storage_backend}`;
  } catch (e) { showError(e); }
  await refresh();
  setInterval(refresh, REFRESH_MS);
}
document.addEventListener("DOMContentLoaded", start);
