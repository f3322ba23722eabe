// Hangar dashboard: snapshots from /api/nodes and /api/backends, then every change from the
// server-sent-event stream /api/events, resumed by revision after a reconnect.
//
// Every value from the controller is put into the page with textContent or as an attribute
// value, never parsed as HTML: keys, names and labels are user input.
"use strict";

(() => {
  const TOKEN_KEY = "hangar.dashboard.token";
  const MAX_ROWS = 1000;
  const HEARTBEAT_REFRESH_MS = 5000;

  const state = {
    nodes: new Map(), // id -> { node, revision }
    backends: new Map(), // id -> { backend, revision }
    revision: 0, // everything up to here has been applied
    skewMs: 0, // controller clock minus ours
    controllerId: "",
    stream: null, // AbortController of the open event stream
    generation: 0, // bumped by every fresh load; stale streams stop
    detailId: null,
    changed: new Set(),
  };

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function stateBadge(value) {
    return el("span", { class: "state", "data-state": value, text: value || "—" });
  }

  // ---- formatting --------------------------------------------------------------------------

  function now() {
    return Date.now() + state.skewMs;
  }

  function age(fromIso) {
    const ms = now() - Date.parse(fromIso);
    if (!Number.isFinite(ms)) return "—";
    let s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    let m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return `${m}m ${s}s`;
    let h = Math.floor(m / 60);
    m %= 60;
    if (h < 24) return `${h}h ${m}m`;
    const d = Math.floor(h / 24);
    h %= 24;
    return `${d}d ${h}h`;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n) || 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${v >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }

  function time(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "—" : d.toLocaleString();
  }

  function termination(status) {
    if (!status || !status.termination_reason) return "";
    const parts = [status.termination_reason];
    if (status.termination_kind) parts.push(status.termination_kind.toLowerCase());
    if (status.exit_code !== null && status.exit_code !== undefined) parts.push(`exit ${status.exit_code}`);
    return parts.join(" · ");
  }

  // ---- talking to the controller -----------------------------------------------------------

  class AuthNeeded extends Error {
    constructor(status, body) {
      super(body && body.message ? body.message : `HTTP ${status}`);
      this.status = status;
    }
  }

  class Gone extends Error {}

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  async function errorOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON */
    }
    if (response.status === 401 || response.status === 403) return new AuthNeeded(response.status, body);
    if (response.status === 410) return new Gone(body ? body.message : "gone");
    return new Error(body && body.message ? `${body.reason}: ${body.message}` : `HTTP ${response.status}`);
  }

  async function api(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  function setConnection(kind, text) {
    const p = $("connection");
    p.dataset.state = kind;
    $("connection-text").textContent = text;
  }

  function showToken(error) {
    const panel = $("token-panel");
    const reason = $("token-reason");
    if (error && error.status === 403) {
      reason.textContent =
        `This token may not read the dashboard (${error.message}). ` +
        "Use a token whose role is reader or above.";
    } else if (sessionStorage.getItem(TOKEN_KEY)) {
      reason.textContent = `The controller refused this token (${error ? error.message : "no reason given"}). ` +
        "Enter another one.";
    }
    panel.hidden = false;
    $("main").hidden = true;
    $("footer").hidden = true;
    $("token-input").focus();
    setConnection("down", "Token needed");
  }

  function hideToken() {
    $("token-panel").hidden = true;
    $("main").hidden = false;
    $("footer").hidden = false;
    $("sign-out").hidden = !sessionStorage.getItem(TOKEN_KEY);
  }

  // ---- loading and following ---------------------------------------------------------------

  async function load() {
    const generation = ++state.generation;
    if (state.stream) state.stream.abort();
    setConnection("connecting", "Loading…");
    try {
      // Backends first; nodes at the backends' revision: one consistent picture to follow.
      const backends = await api("/api/backends");
      const nodes = await api(`/api/nodes?at=${backends.revision}`);
      if (generation !== state.generation) return;
      hideToken();
      state.skewMs = Date.parse(nodes.now) - Date.now();
      state.controllerId = nodes.controller_id;
      $("controller").textContent = nodes.controller_id ? `controller ${nodes.controller_id}` : "";
      state.nodes.clear();
      state.backends.clear();
      for (const node of nodes.nodes) state.nodes.set(node.id, { node, revision: nodes.revision });
      for (const backend of backends.backends) state.backends.set(backend.id, { backend, revision: backends.revision });
      state.revision = backends.revision;
      render();
      follow(generation, 0);
    } catch (error) {
      if (generation !== state.generation) return;
      if (error instanceof AuthNeeded) return showToken(error);
      setConnection("down", `Cannot load: ${error.message}; retrying`);
      setTimeout(() => generation === state.generation && load(), 3000);
    }
  }

  // Reads the event stream with fetch (EventSource cannot send an Authorization header), from
  // state.revision; reconnects from the last event's id after a drop.
  async function follow(generation, attempt) {
    if (generation !== state.generation) return;
    const abort = new AbortController();
    state.stream = abort;
    try {
      const response = await fetch("/api/events", {
        headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(state.revision) }),
        cache: "no-store",
        signal: abort.signal,
      });
      if (!response.ok) throw await errorOf(response);
      setConnection("live", `Live · revision ${state.revision}`);
      attempt = 0;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const ended = dispatch(frame);
          if (ended) {
            abort.abort();
            if (ended === "resync") return load();
            throw new Error(ended);
          }
        }
      }
      throw new Error("the controller closed the stream");
    } catch (error) {
      if (generation !== state.generation) return;
      if (error instanceof AuthNeeded) return showToken(error);
      if (error instanceof Gone) return load();
      const wait = Math.min(10000, 500 * 2 ** attempt);
      setConnection("reconnecting", `Reconnecting in ${Math.ceil(wait / 1000)}s (${error.message || error})`);
      setTimeout(() => follow(generation, attempt + 1), wait);
    }
  }

  // One SSE frame. Returns a reason to stop reading ("resync" to reload), or nothing.
  function dispatch(frame) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of frame.split(/\r?\n/)) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (event === "end") {
      const body = JSON.parse(data.join("\n") || "{}");
      return body.reason === "REVISION_COMPACTED" ? "resync" : body.message || body.reason || "stream ended";
    }
    const payload = data.length ? data.join("\n") : null;
    if (event === "node") applyNode(JSON.parse(payload));
    else if (event === "backend") applyBackend(JSON.parse(payload));
    if (id !== null && /^\d+$/.test(id)) {
      const revision = Number(id);
      if (revision > state.revision) state.revision = revision;
      setConnection("live", `Live · revision ${state.revision}`);
    }
    return null;
  }

  function applyNode(change) {
    const held = state.nodes.get(change.node.id);
    if (held && held.revision >= change.revision) return;
    if (change.type === "REMOVED") {
      state.nodes.delete(change.node.id);
    } else {
      const node = change.node;
      // The live heartbeat time may be newer than the change's copy.
      if (held && Date.parse(held.node.last_heartbeat_at) > Date.parse(node.last_heartbeat_at)) {
        node.last_heartbeat_at = held.node.last_heartbeat_at;
      }
      state.nodes.set(node.id, { node, revision: change.revision });
      state.changed.add(node.id);
    }
    scheduleRender();
  }

  function applyBackend(change) {
    const held = state.backends.get(change.backend.id);
    if (held && held.revision >= change.revision) return;
    if (change.type === "REMOVED") state.backends.delete(change.backend.id);
    else {
      state.backends.set(change.backend.id, { backend: change.backend, revision: change.revision });
      state.changed.add(change.backend.id);
    }
    if (state.detailId === change.backend.id) loadDetail(state.detailId);
    scheduleRender();
  }

  // Heartbeats are not changes (they never reach the store at their own rate), so the live
  // times are read every few seconds; ages tick in between.
  async function refreshHeartbeats() {
    if ($("main").hidden || document.hidden) return;
    try {
      const nodes = await api("/api/nodes");
      state.skewMs = Date.parse(nodes.now) - Date.now();
      for (const node of nodes.nodes) {
        const held = state.nodes.get(node.id);
        if (held && Date.parse(node.last_heartbeat_at) > Date.parse(held.node.last_heartbeat_at)) {
          held.node.last_heartbeat_at = node.last_heartbeat_at;
        }
      }
      tick();
    } catch (_) {
      /* the stream's state says what is wrong */
    }
  }

  // Every 5 s; slower for big fleets (a snapshot of 10,000 nodes is a few megabytes), at most
  // once a minute.
  async function heartbeatLoop() {
    await refreshHeartbeats();
    const every = Math.min(60000, Math.max(HEARTBEAT_REFRESH_MS, state.nodes.size * 5));
    setTimeout(heartbeatLoop, every);
  }

  // ---- rendering ---------------------------------------------------------------------------

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function filters() {
    return {
      cluster: $("filter-cluster").value,
      pool: $("filter-pool").value,
      nodeState: $("filter-node-state").value,
      backendState: $("filter-backend-state").value,
      text: $("filter-text").value.trim().toLowerCase(),
    };
  }

  function labelText(labels) {
    return Object.entries(labels || {})
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
  }

  function matchesText(text, ...values) {
    if (!text) return true;
    return values.some((v) => v && String(v).toLowerCase().includes(text));
  }

  function syncOptions(select, values) {
    const current = select.value;
    const wanted = [...values].sort();
    const have = [...select.options].slice(1).map((o) => o.value);
    if (wanted.length === have.length && wanted.every((v, i) => v === have[i])) return;
    while (select.options.length > 1) select.remove(1);
    for (const value of wanted) select.append(el("option", { value, text: value }));
    if (current && !wanted.includes(current)) select.append(el("option", { value: current, text: current }));
    select.value = current;
  }

  function counts(target, items, key, order) {
    const tally = new Map();
    for (const item of items) tally.set(item[key], (tally.get(item[key]) || 0) + 1);
    target.replaceChildren(el("span", { class: "total", text: items.length }));
    for (const value of order) {
      const n = tally.get(value);
      if (n) target.append(el("span", {}, stateBadge(value), ` ${n}`));
    }
  }

  function render() {
    const f = filters();
    const nodes = [...state.nodes.values()].map((h) => h.node);
    const backends = [...state.backends.values()].map((h) => h.backend);
    syncOptions($("filter-cluster"), new Set([...nodes, ...backends].map((x) => x.cluster)));
    syncOptions($("filter-pool"), new Set([...nodes, ...backends].map((x) => x.pool)));

    const nodeOrder = ["READY", "DRAINING", "UNHEALTHY", "OFFLINE"];
    counts($("summary-drones"), nodes.filter((n) => n.kind === "DRONE"), "state", nodeOrder);
    counts($("summary-proxies"), nodes.filter((n) => n.kind === "PROXY"), "state", nodeOrder);
    const backendOrder = ["SCHEDULED", "LOADING", "STARTING", "WAITING", "READY", "TERMINATING", "HARD_TERMINATING", "TERMINATED"];
    counts($("summary-backends"), backends, "state", backendOrder);

    const shownNodes = nodes
      .filter((n) => !f.cluster || n.cluster === f.cluster)
      .filter((n) => !f.pool || n.pool === f.pool)
      .filter((n) => !f.nodeState || n.state === f.nodeState)
      .filter((n) => matchesText(f.text, n.name, n.id, n.version, labelText(n.labels)))
      .sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    renderRows($("nodes"), shownNodes, nodeRow, $("nodes-empty"), $("nodes-shown"), nodes.length);

    const shownBackends = backends
      .filter((b) => !f.cluster || b.cluster === f.cluster)
      .filter((b) => !f.pool || b.pool === f.pool)
      .filter((b) => !f.backendState || (f.backendState === "LIVE" ? b.state !== "TERMINATED" : b.state === f.backendState))
      .filter((b) => matchesText(f.text, b.id, b.key, b.drone_id, b.image, labelText(b.labels)))
      .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
    renderRows($("backends"), shownBackends, backendRow, $("backends-empty"), $("backends-shown"), backends.length);

    $("revision").textContent = `Revision ${state.revision}`;
    state.changed.clear();
  }

  function renderRows(table, items, row, empty, shown, total) {
    const body = table.tBodies[0];
    const rows = items.slice(0, MAX_ROWS).map(row);
    body.replaceChildren(...rows);
    empty.hidden = items.length > 0;
    shown.textContent =
      items.length > MAX_ROWS
        ? `showing ${MAX_ROWS} of ${items.length} matching (${total} in all); narrow the filters to see the rest`
        : `${items.length} of ${total}`;
  }

  function nodeRow(n) {
    const r = n.resources || {};
    const cores = r.cpu_cores || 0;
    const cpuUsed = (r.cpu_used_millis || 0) / 1000;
    // A node that reported no figures (a proxy, an offline node) shows none rather than zeros.
    const cpu = cores
      ? el("td", {},
        el("meter", { min: 0, max: cores, value: cpuUsed, "aria-label": `CPU of ${n.name}` }),
        el("span", { class: "figure", text: `${cpuUsed.toFixed(2)} / ${cores} cores` }))
      : el("td", { class: "muted", text: "—" });
    const mem = r.memory_total_bytes
      ? el("td", {},
        el("meter", { min: 0, max: r.memory_total_bytes, value: r.memory_used_bytes || 0, "aria-label": `Memory of ${n.name}` }),
        el("span", { class: "figure", text: `${bytes(r.memory_used_bytes)} / ${bytes(r.memory_total_bytes)}` }))
      : el("td", { class: "muted", text: "—" });
    const labels = el("td", { class: "labels" });
    for (const [k, v] of Object.entries(n.labels || {})) labels.append(el("span", { class: "label", text: `${k}=${v}` }));
    const heartbeat = el("td", { class: "num age", "data-since": n.last_heartbeat_at, "data-kind": "heartbeat", "data-node-state": n.state });
    heartbeatCell(heartbeat);
    return el("tr", { "data-id": n.id, "data-name": n.name, "data-state": n.state, class: state.changed.has(n.id) ? "changed" : null },
      el("th", { scope: "row", title: n.id, text: n.name }),
      el("td", { class: "muted", text: n.kind.toLowerCase() }),
      el("td", {}, stateBadge(n.state)),
      el("td", { text: `${n.cluster} / ${n.pool}` }),
      cpu,
      mem,
      el("td", { class: "num", text: n.kind === "DRONE" ? `${n.backend_count} / ${n.backend_capacity}` : "—" }),
      heartbeat,
      labels);
  }

  function heartbeatCell(td) {
    td.textContent = age(td.dataset.since);
    const silentMs = now() - Date.parse(td.dataset.since);
    td.classList.toggle("dead", td.dataset.nodeState === "OFFLINE");
    td.classList.toggle("stale", td.dataset.nodeState !== "OFFLINE" && silentMs > 15000);
    td.title = `last heartbeat ${time(td.dataset.since)}`;
  }

  function backendRow(b) {
    const open = el("button", { type: "button", class: "row-link mono", text: b.id, "aria-label": `Status history of backend ${b.id}` });
    open.addEventListener("click", () => openDetail(b.id));
    const status = b.status || {};
    return el("tr", { "data-id": b.id, "data-state": b.state, class: state.changed.has(b.id) ? "changed" : null },
      el("th", { scope: "row" }, open),
      el("td", { class: "key", text: b.key || "—" }),
      el("td", {}, stateBadge(b.state)),
      el("td", { class: "mono", text: droneName(b.drone_id) }),
      el("td", { text: `${b.cluster} / ${b.pool}` }),
      el("td", { class: "num age", "data-since": b.created_at, text: age(b.created_at), title: `created ${time(b.created_at)}` }),
      el("td", { class: "muted", text: termination(status), title: status.message || null }));
  }

  function droneName(id) {
    const held = state.nodes.get(id);
    return held ? held.node.name : id || "—";
  }

  // Ages move every second without a render.
  function tick() {
    for (const td of document.querySelectorAll("td.age")) {
      if (td.dataset.kind === "heartbeat") heartbeatCell(td);
      else td.textContent = age(td.dataset.since);
    }
  }

  // ---- one backend's history ---------------------------------------------------------------

  function openDetail(id) {
    state.detailId = id;
    $("detail-title").textContent = `Backend ${id}`;
    $("detail-fields").replaceChildren();
    $("history").tBodies[0].replaceChildren();
    $("detail-error").hidden = true;
    const dialog = $("detail");
    if (!dialog.open) dialog.showModal();
    loadDetail(id);
  }

  async function loadDetail(id) {
    try {
      const detail = await api(`/api/backends/${encodeURIComponent(id)}`);
      if (state.detailId !== id) return;
      const b = detail.backend;
      const fields = [
        ["State", stateBadge(b.state)],
        ["Key", b.key || "—"],
        ["Drone", `${droneName(b.drone_id)} (${b.drone_id || "—"})`],
        ["Cluster / pool", `${b.cluster} / ${b.pool}`],
        ["Image", b.image || "—"],
        ["Address", b.address || "—"],
        ["Fencing token", String(b.fencing_token)],
        ["Created", `${time(b.created_at)} (${age(b.created_at)} ago)`],
        ["Last activity", time(b.last_activity_at)],
        ["Termination", termination(b.status) || "—"],
        ["Message", (b.status && b.status.message) || "—"],
        ["Labels", labelText(b.labels) || "—"],
      ];
      $("detail-fields").replaceChildren(
        ...fields.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
      $("history").tBodies[0].replaceChildren(
        ...detail.history.map((s) =>
          el("tr", { "data-state": s.state },
            el("td", { class: "num", text: s.revision }),
            el("td", { text: time(s.time) }),
            el("td", {}, stateBadge(s.state)),
            el("td", { class: "muted", text: termination(s) }),
            el("td", { class: "message", text: s.message || "" }))));
      $("detail-error").hidden = true;
    } catch (error) {
      if (state.detailId !== id) return;
      if (error instanceof AuthNeeded) return showToken(error);
      $("detail-error").textContent = `Cannot load backend ${id}: ${error.message}`;
      $("detail-error").hidden = false;
    }
  }

  // ---- wiring ------------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      load();
    });
    $("sign-out").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.generation++;
      if (state.stream) state.stream.abort();
      showToken(null);
    });
    for (const id of ["filter-cluster", "filter-pool", "filter-node-state", "filter-backend-state"]) {
      $(id).addEventListener("change", render);
    }
    $("filter-text").addEventListener("input", render);
    $("detail").addEventListener("close", () => {
      state.detailId = null;
    });
    setInterval(tick, 1000);
    setTimeout(heartbeatLoop, HEARTBEAT_REFRESH_MS);
    load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
