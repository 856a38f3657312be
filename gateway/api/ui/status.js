// The status page's script: polls /v1/status and draws it with DOM calls (textContent only,
// so nothing the gateway reports can inject markup). No libraries, no build step.
"use strict";

(function () {
  const KEY_STORE = "claude-max-gateway-key";
  const POLL_MS = Number(document.body.dataset.poll) || 2000;
  const $ = (id) => document.getElementById(id);
  let offset = 0; // server clock minus this browser's, in seconds
  let last = null; // the last status
  const expanded = new Map(); // conversation key -> its transcript element
  let timer = null;
  const USAGE_MS = 30000; // usage changes slowly: read every 30 s (and after each turn ends)
  let usage = null; // the last /v1/usage
  let usageAt = 0;
  let running = 0; // running turns at the last status

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function now() { return Date.now() / 1000 + offset; }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor(seconds % 86400 / 3600) + " h";
  }

  function ago(at) { return at ? duration(now() - at) + " ago" : "never"; }
  function until(at) {
    if (!at) return "—";
    const left = at - now();
    return left <= 0 ? "now" : "in " + duration(left);
  }
  function clock(at) {
    if (!at) return "—";
    const d = new Date(at * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return (today ? "" : d.toLocaleDateString() + " ") +
      d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function tokens(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return Math.round(n / 1e3) + "k";
    return String(n);
  }
  function money(usd) { return "$" + (usd || 0).toFixed(usd >= 1 ? 2 : 4); }
  function mb(bytes) { return bytes === null || bytes === undefined ? "?" : Math.round(bytes / 1048576) + " MB"; }

  function headers(json) {
    const h = {};
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) h.Authorization = "Bearer " + key;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(method, path, body) {
    const response = await fetch(path, {
      method, headers: headers(body !== undefined), cache: "no-store",
      credentials: "omit", body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { status: response.status, data };
  }

  function banner(text) {
    const node = $("banner");
    node.textContent = text || "";
    node.hidden = !text;
  }

  function show(id, visible) { $(id).hidden = !visible; }

  // ------------------------------------------------------------------ actions

  async function act(button, path, body, what) {
    button.disabled = true;
    try {
      const { status, data } = await api("POST", path, body);
      if (status !== 200) {
        const message = data && data.error ? data.error.message : "HTTP " + status;
        banner(what + " failed: " + message);
      } else {
        banner("");
      }
    } catch (e) {
      banner(what + " failed: the gateway did not answer");
    }
    refresh();
  }

  async function toggleTranscript(key, holder, button) {
    if (expanded.has(key)) {
      expanded.get(key).remove();
      expanded.delete(key);
      button.textContent = "Messages";
      return;
    }
    const box = el("div", { class: "transcript", "data-conversation": key }, "loading…");
    holder.append(box);
    expanded.set(key, box);
    button.textContent = "Hide";
    await loadTranscript(key, box);
  }

  async function loadTranscript(key, box) {
    try {
      const { status, data } = await api("GET",
        "/v1/status/transcript?limit=20&conversation=" + encodeURIComponent(key));
      box.replaceChildren();
      if (status !== 200) {
        box.append(el("p", { class: "error" }, data && data.error ? data.error.message : "HTTP " + status));
        return;
      }
      if (!data.messages.length) box.append(el("p", { class: "muted" }, "No messages in its transcript."));
      for (const m of data.messages) {
        box.append(el("p", { class: "msg " + m.role }, el("span", { class: "role" }, m.role + ":"), m.text));
      }
    } catch (e) {
      box.replaceChildren(el("p", { class: "error" }, "The gateway did not answer."));
    }
  }

  // ------------------------------------------------------------------ drawing

  function drawOverview(s) {
    const cli = s.cli;
    $("cli").textContent = cli.version ? cli.version + (cli.source ? " (" + cli.source + ")" : "") : "not found";
    $("login").replaceChildren(cli.logged_in === null ? el("span", { class: "muted" }, "checking…")
      : cli.logged_in ? el("span", { class: "badge ok" }, "logged in" + (cli.auth ? " · " + cli.auth : ""))
        : el("span", { class: "badge error" }, "not logged in: run claude, then /login"));
    $("uptime").textContent = duration(s.uptime_s) + " (since " + clock(s.started_at) + ")";
    $("config").textContent = s.config_file || "none (built-in defaults)";
    $("turns").textContent = s.running_turns + " running · " + s.queued_turns + " queued";
    show("overview", true);
  }

  function toolLabel(c) {
    const summary = c.tool_summary || "";
    return summary && !summary.startsWith(c.tool) ? c.tool + ": " + summary : summary || c.tool;
  }

  function conversationItem(c) {
    const stop = (c.state === "running" || c.state === "starting" || c.state === "waiting_approval")
      ? el("button", { class: "stop", "data-stop": c.key,
        onclick: (ev) => act(ev.currentTarget, "/v1/status/stop", { conversation: c.key }, "Stop") }, "Stop")
      : null;
    const li = el("li", { "data-conversation": c.key, "data-state": c.state });
    const messages = el("button", { "data-messages": c.key,
      onclick: (ev) => toggleTranscript(c.key, li, ev.currentTarget) },
    expanded.has(c.key) ? "Hide" : "Messages");
    const state = el("span", { class: "badge " + c.state }, c.state.replace("_", " for "));
    li.append(el("div", { class: "head" },
      el("span", { class: "name" }, c.key), el("span", { class: "badge" }, c.frontend), state,
      el("span", { class: "actions" }, stop, messages)));
    if (c.state === "running") {
      const started = c.tool_started_at || c.turn_started_at;
      li.append(el("div", { class: "tool" },
        c.tool ? "▶ " + toolLabel(c) + " · " : "thinking · ",
        el("span", { class: "elapsed", "data-since": started }, duration(now() - started)),
        c.tool ? el("span", { class: "muted" }, " (turn ",
          el("span", { class: "elapsed", "data-since": c.turn_started_at }, duration(now() - c.turn_started_at)), ")") : null));
    }
    if (c.approval) {
      li.append(el("div", { class: "tool" }, "? " + c.approval.tool + ": " + c.approval.summary + " · waiting ",
        el("span", { class: "elapsed", "data-since": c.approval.since }, duration(now() - c.approval.since)),
        el("span", { class: "muted" }, " (denied after " + duration(c.approval.timeout_s) + ")")));
    }
    if (c.queued) li.append(el("div", { class: "meta" }, c.queued + " waiting"));
    const t = c.tokens;
    li.append(el("div", { class: "meta", title: c.folder },
      c.project + " · " + (c.model || "default model") + " · " + c.turns + " turn" + (c.turns === 1 ? "" : "s") + " · " +
      tokens(t.input + t.cache_read + t.cache_creation) + " in / " + tokens(t.output) + " out · " +
      money(c.cost_usd) + " · " + ago(c.last_activity) + (c.live ? " · process " + c.pid : "")));
    if (expanded.has(c.key)) li.append(expanded.get(c.key));
    return li;
  }

  function drawConversations(s) {
    const list = $("conv-list");
    list.replaceChildren(...s.conversations.map(conversationItem));
    const shown = s.conversations.length;
    $("conv-count").textContent = s.conversations_total > shown ? "(" + shown + " of " + s.conversations_total + ")" : "(" + shown + ")";
    show("conv-empty", shown === 0);
    for (const key of [...expanded.keys()]) {
      const c = s.conversations.find((item) => item.key === key);
      if (!c) { expanded.delete(key); continue; }
      const box = expanded.get(key);
      const seen = c.last_activity + ":" + c.turns + ":" + c.state;
      if (box.dataset.seen !== seen) { // read the transcript again only when it can have changed
        box.dataset.seen = seen;
        loadTranscript(key, box);
      }
    }
    show("conversations", true);
  }

  function drawProcesses(s) {
    const p = s.processes;
    const live = p.items.length;
    $("proc-summary").textContent = live + " of " + p.max_live + " live · " + p.spares + " spare" +
      (p.spares === 1 ? "" : "s") + " (keeps " + p.spares_wanted + " ready) · " + mb(p.total_rss_bytes) + " in all";
    $("proc-list").replaceChildren(...p.items.map((item) => el("li", { "data-pid": item.pid },
      el("span", { class: "name" }, "pid " + item.pid), " · ",
      item.conversation ? item.conversation : el("span", { class: "muted" }, "spare"),
      " · " + mb(item.rss_bytes) + (item.model ? " · " + item.model : ""))));
    show("processes", true);
  }

  function windowItem(w) {
    // w: {window, status, utilization, resets_at (epoch), expired?}
    const used = w.utilization === null || w.utilization === undefined ? null : w.utilization;
    const pct = used === null ? null : Math.round(used * 100);
    const level = used === null ? "" : used >= 0.9 ? "bad" : used >= 0.75 ? "warn" : "";
    const badge = w.status === "allowed" ? "ok" : w.status === "rejected" ? "error" : "queued";
    return el("div", { class: "window", "data-window": w.window },
      el("div", {}, el("span", { class: "name" }, (w.window || "limit").replace(/_/g, " ")), " ",
        el("span", { class: "badge " + badge }, w.status.replace(/_/g, " ")),
        pct === null ? "" : " · " + pct + "% used",
        " · resets " + until(w.resets_at) + (w.resets_at ? " (" + clock(w.resets_at) + ")" : ""),
        w.expired ? el("span", { class: "muted" }, " · reset since") : null),
      pct === null ? null : el("div", { class: "bar " + level }, barFill(pct)));
  }

  function barFill(pct) {
    const span = el("span");
    span.style.width = Math.min(100, Math.max(0, pct)) + "%";
    return span;
  }

  function allTokens(t) {
    return t.input_tokens + t.output_tokens + t.cache_read_tokens + t.cache_creation_tokens;
  }

  function chart(buckets) {
    // buckets: [{start_epoch, turns, input_tokens, output_tokens, cache_*_tokens, cost_usd}],
    // oldest first, one per hour
    const ns = "http://www.w3.org/2000/svg";
    const W = 360, H = 110, pad = 14;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "tokens per hour, the last " + buckets.length + " hours");
    const max = Math.max(1, ...buckets.map(allTokens));
    const width = (W - 2) / Math.max(1, buckets.length);
    buckets.forEach((b, i) => {
      const x = 1 + i * width;
      const value = allTokens(b);
      const height = (H - pad - 4) * value / max;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("class", "col");
      rect.setAttribute("x", x.toFixed(2));
      rect.setAttribute("y", (H - pad - height).toFixed(2));
      rect.setAttribute("width", Math.max(0.5, width - 0.6).toFixed(2));
      rect.setAttribute("height", height.toFixed(2));
      const title = document.createElementNS(ns, "title");
      title.textContent = clock(b.start_epoch) + ": " + b.turns + " turns, " + tokens(value) +
        " tokens, " + money(b.cost_usd);
      rect.append(title);
      svg.append(rect);
      if (new Date(b.start_epoch * 1000).getHours() === 0) {
        const label = document.createElementNS(ns, "text");
        label.setAttribute("x", x.toFixed(2));
        label.setAttribute("y", H - 2);
        label.textContent = new Date(b.start_epoch * 1000).toLocaleDateString([], { weekday: "short" });
        svg.append(label);
      }
    });
    const axis = document.createElementNS(ns, "line");
    axis.setAttribute("class", "axis");
    axis.setAttribute("x1", 0); axis.setAttribute("x2", W);
    axis.setAttribute("y1", H - pad); axis.setAttribute("y2", H - pad);
    svg.append(axis);
    return svg;
  }

  async function loadUsage(path) {
    usageAt = Date.now();
    try {
      const { status, data } = await api("GET", path);
      usage = status === 200 ? data : null;
    } catch (e) {
      usage = null;
    }
    if (last) drawUsage(last);
  }

  function drawUsage(s) {
    if (s.usage_url && Date.now() - usageAt > USAGE_MS) loadUsage(s.usage_url);
    const u = usage;
    const windows = u && u.windows.length ? u.windows.map((w) => ({ ...w, resets_at: w.resets_at_epoch }))
      : s.rate_limit ? [{ ...s.rate_limit, window: s.rate_limit.type }] : [];
    $("usage-windows").replaceChildren(...windows.map(windowItem));
    const today = u && u.today ? u.today.totals : null;
    $("usage-today").textContent = today ? "Today: " + today.turns + " turn" + (today.turns === 1 ? "" : "s") +
      " · " + tokens(today.input_tokens + today.cache_read_tokens + today.cache_creation_tokens) + " in / " +
      tokens(today.output_tokens) + " out · " + money(today.cost_usd) : "";
    const buckets = u && u.hourly && u.hourly.buckets.length ? u.hourly.buckets : null;
    $("usage-chart").replaceChildren(...(buckets ? [chart(buckets)] : []));
    show("usage", windows.length > 0 || !!today || !!buckets);
  }

  function jobItem(j) {
    const li = el("li", { "data-job": j.name });
    const run = j.held ? null : el("button", { class: "run", "data-run": j.name, disabled: j.running,
      onclick: (ev) => act(ev.currentTarget, "/v1/status/run", { job: j.name }, "Run now") }, j.running ? "Running…" : "Run now");
    li.append(el("div", { class: "head" }, el("span", { class: "name" }, j.name),
      el("span", { class: "badge" }, j.cron),
      j.held ? el("span", { class: "badge held" }, "held") : !j.enabled ? el("span", { class: "badge" }, "paused")
        : j.running ? el("span", { class: "badge running" }, "running") : null,
      el("span", { class: "actions" }, run)));
    if (j.held) li.append(el("div", { class: "error" }, j.held));
    const lr = j.last_run;
    li.append(el("div", { class: "meta" }, "→ " + j.target + " · next " + (j.next_run ? until(j.next_run) + " (" + clock(j.next_run) + ")" : "—") +
      " · last " + (lr ? lr.status + " " + ago(lr.started_at) + (lr.duration_ms !== null ? " in " + (lr.duration_ms / 1000).toFixed(1) + " s" : "") : "never")));
    if (lr && lr.error) li.append(el("div", { class: "meta error" }, lr.error));
    return li;
  }

  function drawJobs(s) {
    $("job-list").replaceChildren(...s.jobs.map(jobItem));
    show("jobs-empty", s.jobs.length === 0);
    show("jobs", s.scheduler_enabled || s.jobs.length > 0);
  }

  function drawEvents(s) {
    $("event-list").replaceChildren(...s.events.map((e) => el("li", { "data-kind": e.kind },
      el("span", { class: "badge " + (e.level === "error" ? "error" : "") }, e.kind), " ",
      el("span", { class: "muted" }, clock(e.at) + " · " + e.conversation), el("div", {}, e.message))));
    show("events-empty", s.events.length === 0);
    show("events", true);
  }

  function tick() {
    for (const node of document.querySelectorAll(".elapsed[data-since]")) {
      node.textContent = duration(now() - Number(node.dataset.since));
    }
  }

  function draw(s) {
    offset = s.now - Date.now() / 1000;
    if (s.running_turns < running) usageAt = 0; // a turn ended: its usage is in
    running = s.running_turns;
    last = s;
    drawOverview(s);
    drawConversations(s);
    drawProcesses(s);
    drawUsage(s);
    drawJobs(s);
    drawEvents(s);
    $("updated").textContent = "gateway " + s.version + " · updated " + new Date().toLocaleTimeString();
  }

  // ------------------------------------------------------------------ polling

  async function refresh() {
    clearTimeout(timer);
    try {
      const { status, data } = await api("GET", "/v1/status");
      if (status === 401) {
        $("dot").className = "dot bad";
        show("keyform", true);
        const had = !!sessionStorage.getItem(KEY_STORE);
        $("keyerror").textContent = had ? "That key was not accepted." : "";
        show("keyerror", had);
        $("updated").textContent = "needs an API key";
        return; // polling resumes once a key is entered
      }
      if (status !== 200 || !data) {
        throw new Error(data && data.error ? data.error.message : "HTTP " + status);
      }
      show("keyform", false);
      $("dot").className = "dot ok";
      if ($("banner").dataset.kind === "down") { banner(""); delete $("banner").dataset.kind; }
      draw(data);
    } catch (e) {
      $("dot").className = "dot bad";
      banner("The gateway did not answer (" + (e && e.message ? e.message : e) + "); retrying.");
      $("banner").dataset.kind = "down";
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("key").value = "";
    refresh();
  });
  setInterval(tick, 1000);
  refresh();
})();
