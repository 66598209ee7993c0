// The control panel's page: plain DOM, no framework, no build step.
// Everything that came from a task or a model is put on the page with textContent
// (or as a text node), never parsed as HTML.
"use strict";

(() => {
  const MAX_LIVE_ROWS = 200;
  const SUMMARY_EVERY_MS = 2000;
  const TASKS_EVERY_MS = 3000;
  const TAB_EVERY_MS = 5000;
  const PER_PAGE = 50;
  const SMALL_MONEY_DIGITS = 4;

  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const tones = JSON.parse(document.body.dataset.tones || "{}");
  const byId = (id) => document.getElementById(id);

  const state = {
    status: "", q: "", host: "", fleet: null, page: 1, pages: 1, tab: "tasks", detailId: null,
    paused: null, taskTimer: null, detailTimer: null, tasksBusy: false, tasksAgain: false,
  };

  // --- small helpers ------------------------------------------------------------------

  function el(tag, options = {}, ...children) {
    const node = document.createElement(tag);
    if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
    if (options.className) node.className = options.className;
    if (options.title) node.title = String(options.title);
    if (options.onClick) node.addEventListener("click", options.onClick);
    if (options.type) node.type = options.type;
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.firstChild.remove();
  }

  function statusBadge(status) {
    return el("span", { className: `status tone-${tones[status] || "neutral"}`, text: status });
  }

  function when(iso) {
    if (!iso) return "";
    const moment = new Date(iso);
    if (Number.isNaN(moment.getTime())) return String(iso);
    const sameDay = moment.toDateString() === new Date().toDateString();
    return sameDay ? moment.toLocaleTimeString() : moment.toLocaleString();
  }

  // Dollars: "$0" for nothing, cents from a cent up, else the first significant digits
  // ("$0.0012"), so a small spend is never shown as zeros.
  function money(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "–";
    if (value === 0) return "$0";
    const sign = value < 0 ? "-" : "";
    const size = Math.abs(value);
    return `${sign}$${size >= 0.01 ? size.toFixed(2) : significant(size, SMALL_MONEY_DIGITS)}`;
  }

  function significant(size, digits) {
    const decimals = Math.min(20, digits - 1 - Math.floor(Math.log10(size)));
    return size.toFixed(decimals).replace(/\.?0+$/, "");
  }

  function bytes(value) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let size = value || 0;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
    return `${size.toFixed(unit ? 1 : 0)} ${units[unit]}`;
  }

  function shown(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  async function api(path, { method = "GET", body } = {}) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRF-Token"] = csrfToken;
      options.body = JSON.stringify(body || {});
    }
    const reply = await fetch(path, options);
    let data = null;
    try { data = await reply.json(); } catch (_) { data = null; }
    if (!reply.ok) throw new Error((data && data.error) || `HTTP ${reply.status}`);
    return data;
  }

  function say(node, message, isError) {
    node.textContent = message;
    node.classList.toggle("error", Boolean(isError));
  }

  function connection(ok) {
    const node = byId("connection");
    node.textContent = ok ? "connected" : "panel unreachable, retrying…";
    node.classList.toggle("error", !ok);
  }

  // --- the health header --------------------------------------------------------------

  async function refreshSummary() {
    try {
      renderSummary(await api("/api/summary"));
      connection(true);
    } catch (_) {
      connection(false);
    }
    await refreshFleet();
  }

  function renderSummary(summary) {
    renderApi(summary.api);
    renderWorkers(summary.workers);
    renderPause(summary.pause, summary.workers.length);
    renderBudget(summary.budget);
    renderQueue(summary.queue);
    renderLog(summary.log);
  }

  function tile(id, tone) {
    const node = byId(id);
    node.classList.remove("tone-good", "tone-bad", "tone-warn");
    if (tone) node.classList.add(`tone-${tone}`);
  }

  function renderApi(api) {
    const up = api.reachable && api.ok !== false;
    const unknown = api.reachable === null;
    byId("api-state").textContent = unknown ? "unknown"
      : api.reachable ? (up ? "reachable" : "answering with errors") : "unreachable";
    byId("api-note").textContent = [api.endpoint, api.provider && `model: ${api.provider}`,
      providerNote(api), api.error].filter(Boolean).join(" · ");
    const providerDown = up && api.provider_answering === false;
    tile("tile-api", unknown ? "warn" : up ? (providerDown ? "warn" : "good") : "bad");
  }

  function providerNote(api) {
    if (!api.provider_name || api.provider_name === "offline") return "";
    if (api.provider_answering === true) return `provider ${api.provider_name} answers`;
    if (api.provider_answering === false) {
      return `provider ${api.provider_name} does not answer (${api.provider_error || "no reason given"})`;
    }
    return `provider ${api.provider_name}: not checked yet`;
  }

  function workerNote(worker) {
    const doing = worker.task_id ? `on ${worker.task_id}` : (worker.paused ? "paused" : "idle");
    return `${worker.worker_id} ${doing}`;
  }

  function renderWorkers(workers) {
    byId("workers-state").textContent = workers.length ? `${workers.length} alive` : "none alive";
    byId("workers-note").textContent = workers.length
      ? workers.map(workerNote).join(", ")
      : "a running worker shows here, idle or busy";
    tile("tile-workers", workers.length ? "good" : "warn");
  }

  function pausedBy(pause) {
    const reason = pause.reason ? ` · ${pause.reason}` : "";
    return `by ${pause.by || "an operator"} ${when(pause.since)}${reason}`;
  }

  function pausedHosts(pause) {
    return Object.entries(pause.hosts || {}).filter(([, entry]) => entry.paused).map(([name]) => name);
  }

  // Claiming runs only when it is not paused and some worker is alive to claim.
  function claiming(pause, alive) {
    if (pause.paused) return ["paused", pausedBy(pause), "warn"];
    const hosts = pausedHosts(pause);
    const some = hosts.length ? ` · paused host(s): ${hosts.join(", ")}` : "";
    if (!alive) return ["no worker alive", `not paused: a started worker claims the next runnable task${some}`, "warn"];
    return ["running", `workers claim the next runnable task${some}`, hosts.length ? "warn" : "good"];
  }

  function renderPause(pause, alive) {
    state.paused = Boolean(pause.paused);
    const [value, note, tone] = claiming(pause, alive);
    byId("run-state").textContent = value;
    byId("run-note").textContent = pause.error || note;
    const button = byId("pause-button");
    button.disabled = false;
    button.textContent = pause.paused ? "Resume workers" : "Pause workers";
    tile("tile-run", tone);
  }

  function renderBudget(budget) {
    if (budget.error) {
      byId("budget-state").textContent = "ledger unreadable";
      byId("budget-note").textContent = budget.error;
      tile("tile-budget", "bad");
      return;
    }
    byId("budget-state").textContent = `${money(budget.spent)} of ${money(budget.limit)}`;
    const meter = byId("budget-meter");
    meter.max = budget.limit || 1;
    meter.value = budget.spent;
    byId("budget-note").textContent = `reserved ${money(budget.reserved)} · remaining ${money(budget.remaining)}`;
    tile("tile-budget", budget.remaining <= 0 ? "bad" : null);
  }

  function renderQueue(queue) {
    const list = byId("queue-counts");
    clear(list);
    if (queue.error) {
      byId("queue-note").textContent = queue.error;
      tile("tile-queue", "bad");
      return;
    }
    for (const [status, count] of Object.entries(queue.by_status)) {
      const chip = el("li", {}, statusBadge(status), el("span", { className: "count", text: count }));
      chip.addEventListener("click", () => { byId("filter-status").value = status; filterChanged(); });
      list.append(chip);
    }
    if (!queue.total) list.append(el("li", { className: "note", text: "the queue is empty" }));
    const archived = queue.archived.completed + queue.archived.failed;
    byId("queue-note").textContent = `${queue.total} in the queue` +
      (archived ? ` · archived: ${queue.archived.completed} completed, ${queue.archived.failed} failed` : "");
    tile("tile-queue", null);
  }

  function renderLog(info) {
    byId("log-state").textContent = `${info.events} events`;
    const parts = [info.epoch === "rows" ? "in the database" : bytes(info.file_bytes)];
    if (info.behind_bytes > 0) parts.push(`indexing, ${bytes(info.behind_bytes)} to go`);
    if (info.malformed_count) {
      const last = info.malformed[info.malformed.length - 1];
      parts.push(`${info.malformed_count} malformed line(s), last: line ${last.line}: ${last.reason}`);
    }
    byId("log-note").textContent = parts.join(" · ");
    tile("tile-log", info.malformed_count ? "warn" : null);
  }

  async function togglePause() {
    const button = byId("pause-button");
    button.disabled = true;
    try {
      await api(state.paused ? "/api/resume" : "/api/pause", { method: "POST", body: {} });
    } catch (error) {
      say(byId("action-result"), error.message, true);
    }
    await refreshSummary();
  }

  // --- the task table -----------------------------------------------------------------

  function scheduleTasks(delay = 250) {
    clearTimeout(state.taskTimer);
    state.taskTimer = setTimeout(refreshTasks, delay);
  }

  async function refreshTasks() {
    clearTimeout(state.taskTimer);
    if (state.tasksBusy) { state.tasksAgain = true; return; }
    state.tasksBusy = true;
    const query = new URLSearchParams({ page: state.page, per_page: PER_PAGE });
    if (state.status) query.set("status", state.status);
    if (state.host) query.set("host", state.host);
    if (state.q) query.set("q", state.q);
    try {
      renderTasks(await api(`/api/tasks?${query}`));
    } catch (error) {
      say(byId("action-result"), error.message, true);
    } finally {
      state.tasksBusy = false;
    }
    if (state.tasksAgain) {
      state.tasksAgain = false;
      refreshTasks();
      return;
    }
    state.taskTimer = setTimeout(refreshTasks, TASKS_EVERY_MS);
  }

  function renderTasks(data) {
    state.page = data.page;
    state.pages = data.pages;
    const body = byId("task-rows");
    clear(body);
    for (const task of data.tasks) body.append(taskRow(task));
    byId("tasks-empty").hidden = data.tasks.length > 0;
    byId("page-info").textContent = `page ${data.page} of ${data.pages} · ${data.total} task(s)`;
    byId("prev-page").disabled = data.page <= 1;
    byId("next-page").disabled = data.page >= data.pages;
  }

  function taskRow(task) {
    const row = el("tr", { className: state.detailId === task.id ? "selected" : "" });
    row.dataset.taskId = task.id;
    const idCell = el("td", { className: "ids" }, el("button", {
      className: "link id", text: task.id, type: "button", title: task.headline,
      onClick: () => openDetail(task.id),
    }));
    if (task.error) idCell.append(el("div", { className: "row-error", text: task.error, title: task.error }));
    const hostCell = el("td", { className: "ids" }, el("span", { className: "id", text: task.host || "" }));
    if (task.waiting_for) hostCell.append(el("div", { className: "row-waiting", text: task.waiting_for }));
    row.append(
      idCell,
      el("td", {}, statusBadge(task.status)),
      el("td", { text: task.mode }),
      el("td", { text: task.model || "" }),
      el("td", { text: task.attempts }),
      el("td", { className: "ids" }, idList(task.depends_on)),
      el("td", { className: "when", text: when(task.last_event || task.updated_at), title: task.last_event || "" }),
      hostCell,
      el("td", {}, actionButtons(task)),
    );
    return row;
  }

  function actionButtons(task) {
    const box = el("span", { className: "actions" });
    for (const action of task.actions) {
      box.append(el("button", {
        type: "button", className: `action action-${action}`, text: action,
        onClick: (event) => { event.stopPropagation(); act(task.id, action); },
      }));
    }
    return box;
  }

  async function act(taskId, action) {
    const result = byId("action-result");
    try {
      await api(`/api/tasks/${encodeURIComponent(taskId)}/${action}`, { method: "POST", body: {} });
      say(result, `${action}: ${taskId}`, false);
    } catch (error) {
      say(result, error.message, true);
    }
    refreshTasks();
    refreshSummary();
    if (state.detailId === taskId) openDetail(taskId);
  }

  async function requeueFailed() {
    const result = byId("action-result");
    try {
      const data = await api("/api/tasks/requeue-failed", { method: "POST", body: {} });
      say(result, data.requeued.length ? `requeued ${data.requeued.join(", ")}` : "no failed task to requeue", false);
    } catch (error) {
      say(result, error.message, true);
    }
    refreshTasks();
    refreshSummary();
  }

  function filterChanged() {
    state.status = byId("filter-status").value;
    state.q = byId("filter-q").value.trim();
    state.page = 1;
    scheduleTasks(0);
  }

  // --- adding a task ------------------------------------------------------------------

  function modeChanged() {
    const local = byId("add-mode").value === "local";
    byId("add-text-label").textContent = local ? "Command (runs in the sandbox)" : "Prompt";
  }

  // Kind stays as chosen: the next task is most often of the same kind.
  function clearAddForm() {
    for (const id of ["add-id", "add-text", "add-deps", "add-budget", "add-host", "add-labels"]) {
      byId(id).value = "";
    }
  }

  async function addTask(event) {
    event.preventDefault();
    const mode = byId("add-mode").value;
    const text = byId("add-text").value;
    const body = { id: byId("add-id").value.trim(), mode, depends_on: byId("add-deps").value };
    body[mode === "local" ? "command" : "prompt"] = text;
    const budget = byId("add-budget").value;
    if (budget !== "") body.max_budget = Number(budget);
    const host = byId("add-host").value.trim();
    if (host !== "") body.host = host;
    const labels = byId("add-labels").value.trim();
    if (labels !== "") body.worker_labels = labels;
    const result = byId("add-result");
    try {
      const data = await api("/api/tasks", { method: "POST", body });
      say(result, `added ${data.task.id} (${data.task.status})`, false);
      clearAddForm();
    } catch (error) {
      say(result, error.message, true);
    }
    refreshTasks();
    refreshSummary();
  }

  // --- a task's detail ----------------------------------------------------------------

  async function openDetail(taskId) {
    state.detailId = taskId;
    if (location.hash !== `#task=${encodeURIComponent(taskId)}`) {
      history.replaceState(null, "", `#task=${encodeURIComponent(taskId)}`);
    }
    for (const row of byId("task-rows").children) {
      row.classList.toggle("selected", row.dataset.taskId === taskId);
    }
    try {
      renderDetail(await api(`/api/tasks/${encodeURIComponent(taskId)}`));
      say(byId("detail-error"), "", false);
    } catch (error) {
      byId("detail-title").textContent = taskId;
      say(byId("detail-error"), error.message, true);
    }
    byId("detail").hidden = false;
  }

  function closeDetail() {
    state.detailId = null;
    byId("detail").hidden = true;
    history.replaceState(null, "", location.pathname);
  }

  function renderDetail(detail) {
    const row = detail.row;
    byId("detail-title").textContent = detail.id;
    const status = byId("detail-status");
    clear(status);
    if (row) status.append(statusBadge(row.status));
    else if (detail.archived) status.append(el("span", { className: "status", text: "archived" }));
    const actions = byId("detail-actions");
    clear(actions);
    if (row) actions.append(actionButtons(row));
    renderFacts(detail);
    renderLinks(detail.links);
    for (const field of ["prompt", "command", "output", "result", "errors"]) {
      const value = detail[field];
      byId(`detail-${field}`).textContent = shown(value);
      document.querySelector(`[data-field="${field}"]`).hidden = !value;
    }
    byId("detail-count").textContent = detail.timeline_total > detail.timeline.length
      ? `latest ${detail.timeline.length} of ${detail.timeline_total} events`
      : `${detail.timeline_total} event(s)`;
    // The timeline is rebuilt on every new event; entries the reader opened stay open.
    const list = byId("detail-timeline");
    const open = new Set([...list.querySelectorAll("details[open]")].map((node) => node.dataset.key));
    clear(list);
    for (const item of detail.timeline) list.append(timelineEntry(item.event, open));
  }

  function renderFacts(detail) {
    const facts = byId("detail-facts");
    clear(facts);
    const task = detail.task || {};
    const review = task.review || {};
    const pairs = [
      ["waiting for", detail.waiting_for], ["host", detail.host],
      ["worker labels", (task.worker_labels || []).join(", ")],
      ["mode", detail.row && detail.row.mode], ["model", detail.row && detail.row.model],
      ["attempts", task.attempts], ["created", when(task.created_at)], ["updated", when(task.updated_at)],
      ["max budget", task.max_budget], ["last error", task.last_error],
      ["review", review.verdict && `${review.verdict} (${review.confidence})`],
      ["review issues", review.issues && review.issues.length ? review.issues.join("; ") : null],
      ["lease", task.lease && `${task.lease.worker_id} until ${when(new Date(task.lease.expires_at * 1000).toISOString())}`],
    ];
    for (const [name, value] of pairs) {
      if (value === null || value === undefined || value === "") continue;
      facts.append(el("dt", { text: name }), el("dd", { text: value }));
    }
  }

  function renderLinks(links) {
    const box = byId("detail-links");
    clear(box);
    const groups = [["parent", links.parent ? [links.parent] : []], ["subtasks", links.subtasks],
      ["depends on", links.depends_on], ["needed by", links.dependents]];
    for (const [name, ids] of groups) {
      if (!ids.length) continue;
      const line = el("p", {}, el("span", { className: "note", text: `${name}: ` }));
      for (const id of ids) line.append(taskLink(id), " ");
      box.append(line);
    }
  }

  const ENVELOPE = new Set(["task_id", "worker_id", "status", "timestamp", "host"]);

  function timelineEntry(event, open) {
    const summary = el("summary", {},
      el("span", { className: "time", text: when(event.timestamp), title: event.timestamp }),
      statusBadge(event.status),
      el("span", { className: "worker", text: event.worker_id }),
    );
    if (event.host) summary.append(el("span", { className: "host", text: `@${event.host}` }));
    const note = eventNote(event);
    if (note) summary.append(el("span", { className: "event-note", text: note }));
    const fields = el("dl", { className: "fields" });
    for (const [key, value] of Object.entries(event)) {
      if (ENVELOPE.has(key) || value === null || value === undefined) continue;
      fields.append(el("dt", { text: key }), el("dd", {}, el("pre", { text: shown(value) })));
    }
    if (!fields.childElementCount) return el("li", {}, el("div", { className: "entry" }, ...summary.childNodes));
    const details = el("details", {}, summary, fields);
    details.dataset.key = `${event.task_id}|${event.timestamp}|${event.status}`;
    details.open = open.has(details.dataset.key);
    return el("li", {}, details);
  }

  function eventNote(event) {
    if (event.operator_action) return `operator: ${event.operator_action}`;
    if (event.review_verdict) return `review: ${event.review_verdict}`;
    if (event.errors) return String(event.errors).slice(0, 160);
    if (event.tool_route) return `route: ${event.tool_route}${event.tool_name ? ` (${event.tool_name})` : ""}`;
    if (event.result_summary) return String(event.result_summary).slice(0, 160);
    return "";
  }

  function scheduleDetail(taskId) {
    if (state.detailId !== taskId) return;
    clearTimeout(state.detailTimer);
    state.detailTimer = setTimeout(() => openDetail(taskId), 300);
  }

  // --- the live event stream ----------------------------------------------------------

  function connectStream() {
    const source = new EventSource("/api/stream?backlog=100");
    const status = byId("stream-state");
    source.addEventListener("open", () => { status.textContent = "live"; });
    source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
    source.addEventListener("unavailable", (message) => {
      status.textContent = `waiting for the store: ${JSON.parse(message.data).error}`;
    });
    source.addEventListener("available", () => { status.textContent = "live"; });
    source.addEventListener("reset", () => {
      clear(byId("events"));
      status.textContent = "log restarted";
    });
    source.addEventListener("message", (message) => {
      const item = JSON.parse(message.data);
      addLiveEvent(item.event);
      scheduleTasks();
      scheduleDetail(item.event.task_id);
    });
  }

  function addLiveEvent(event) {
    const list = byId("events");
    const row = el("li", {},
      el("span", { className: "time", text: when(event.timestamp), title: event.timestamp }),
      statusBadge(event.status),
      taskLink(event.task_id),
      el("span", { className: "worker", text: event.worker_id }),
    );
    if (event.host) row.append(el("span", { className: "host", text: `@${event.host}` }));
    row.dataset.host = event.host || "";
    row.hidden = !onChosenHost(row.dataset.host);
    const note = eventNote(event);
    if (note) row.append(el("div", { className: "event-note", text: note }));
    list.prepend(row);
    while (list.children.length > MAX_LIVE_ROWS) list.lastElementChild.remove();
  }

  // --- the other views ----------------------------------------------------------------

  const TABS = { review: refreshGate, safety: refreshSafety, rewards: refreshRewards, spend: refreshSpend };

  // --- the fleet: every host's workers, and the host filter ---------------------------

  function onChosenHost(host) {
    return !state.host || host === state.host;
  }

  async function refreshFleet() {
    try {
      state.fleet = await api("/api/fleet");
    } catch (error) {
      say(byId("fleet-result"), error.message, true);
      return;
    }
    renderHostChoices(state.fleet.hosts.map((h) => h.host));
    renderFleet(state.fleet);
  }

  // The chosen host stays a choice while it has nothing to show, so the filter holds.
  function renderHostChoices(hosts) {
    const select = byId("filter-host");
    const names = [...new Set([...hosts, ...(state.host ? [state.host] : [])])].sort();
    const shownNames = [...select.options].slice(1).map((option) => option.value);
    if (names.join("\n") === shownNames.join("\n")) return;
    while (select.options.length > 1) select.remove(1);
    for (const name of names) select.append(el("option", { text: name }));
    select.value = state.host;
  }

  function renderFleet(fleet) {
    const hosts = fleet.hosts.filter((h) => onChosenHost(h.host));
    fillRows("host-rows", hosts.map(hostCells), "no host has a live worker, a running or pinned task, or a pause", 6);
    const workers = hosts.flatMap((h) => h.workers);
    fillRows("worker-rows", workers.map((w) => [
      token(w.host), token(w.worker_id), workerState(w), taskLink(w.task_id), token(w.labels.join(" ")),
      w.paused ? "yes" : "no", w.pid, stamp(w.last_seen),
    ]), state.host ? `no worker alive on ${state.host}` : "no worker alive", 8);
    if (fleet.pause_error) say(byId("fleet-result"), fleet.pause_error, true);
  }

  function hostCells(host) {
    const scope = host.pause_scope === "fleet" ? " (every host)" : "";
    const claiming = host.paused ? `paused${scope} ${pausedBy(host.pause)}` : "running";
    const busy = host.workers.filter((w) => w.state === "busy").length;
    const button = el("button", {
      type: "button", className: "action host-pause", text: host.paused ? "Resume host" : "Pause host",
      onClick: () => toggleHostPause(host),
    });
    button.dataset.host = host.host;
    button.disabled = host.pause_scope === "fleet";
    if (button.disabled) button.title = "every host is paused: resume workers in the header";
    return [token(host.host), claiming, `${host.workers.length} (${busy} busy)`, host.running,
      host.pinned_waiting, button];
  }

  function workerState(worker) {
    return el("span", { className: `status tone-${worker.state === "busy" ? "active" : worker.state === "idle" ? "good" : "warn"}`, text: worker.state });
  }

  async function toggleHostPause(host) {
    const result = byId("fleet-result");
    const path = host.paused ? "/api/resume" : "/api/pause";
    try {
      await api(path, { method: "POST", body: { host: host.host } });
      say(result, `${host.paused ? "resumed" : "paused"} host ${host.host}`, false);
    } catch (error) {
      say(result, error.message, true);
    }
    await refreshSummary();
  }

  function hostChanged() {
    state.host = byId("filter-host").value;
    state.page = 1;
    scheduleTasks(0);
    if (state.fleet) renderFleet(state.fleet);
    for (const row of byId("events").children) row.hidden = !onChosenHost(row.dataset.host);
  }

  function showTab(name) {
    state.tab = name;
    for (const button of document.querySelectorAll(".tab-button")) {
      button.setAttribute("aria-pressed", String(button.dataset.tab === name));
    }
    for (const section of document.querySelectorAll(".tab")) {
      section.hidden = section.id !== `tab-${name}`;
    }
    if (TABS[name]) TABS[name]();
  }

  function fillRows(bodyId, rows, emptyText, columns) {
    const body = byId(bodyId);
    clear(body);
    if (!rows.length) {
      const blank = el("td", { className: "empty", text: emptyText });
      blank.colSpan = columns;
      body.append(el("tr", {}, blank));
    }
    for (const cells of rows) body.append(el("tr", {}, ...cells.map(cell)));
  }

  function cell(content) {
    if (!(content instanceof Node)) return el("td", { text: content });
    return el("td", { className: content.matches(".id, .ids") ? "ids" : "" }, content);
  }

  function taskLink(id) {
    if (!id) return "";
    return el("button", { type: "button", className: "link id", text: id, title: id, onClick: () => openDetail(id) });
  }

  // Machine words (identities, states, reason codes) wrap at spaces and after a colon,
  // never inside a word.
  function token(text) {
    const box = el("span", { className: "ids" });
    String(text ?? "").split(/\s+/).filter(Boolean).forEach((word, index) => {
      if (index) box.append(" ");
      word.split(/(?<=:)/).forEach((piece, part) => {
        if (part) box.append(el("wbr"));
        box.append(el("span", { className: "id", text: piece }));
      });
    });
    return box;
  }

  function stamp(iso) {
    return el("span", { className: "stamp", text: when(iso), title: iso });
  }

  // Ids side by side: a long list wraps at the space after a comma, never inside an id
  // nor before its comma.
  function idList(ids) {
    const box = el("span", { className: "ids" });
    ids.forEach((id, index) => {
      if (index) box.append(" ");
      const item = el("span", { className: "id-item" }, taskLink(id));
      if (index < ids.length - 1) item.append(",");
      box.append(item);
    });
    return box;
  }

  async function refreshGate() {
    const status = byId("gate-status").value;
    try {
      const data = await api(`/api/quality-gate${status ? `?status=${encodeURIComponent(status)}` : ""}`);
      byId("gate-note").textContent = Object.entries(data.counts).map(([k, v]) => `${k}: ${v}`).join(" · ");
      fillRows("gate-rows", data.changes.map((c) => [
        taskLink(c.change_id), statusBadge(c.status), c.vote.verdict, c.vote.confidence,
        c.vote.issues.join("; "), stamp(c.updated_at),
      ]), "nothing in the review queue", 6);
    } catch (error) {
      byId("gate-note").textContent = error.message;
    }
  }

  async function refreshSafety() {
    try {
      const data = await api("/api/safety");
      byId("safety-note").textContent = `${data.blocked} blocked of ${data.checked} checks` +
        (data.tasks.length ? ` · blocked tasks in the queue: ${data.tasks.map((t) => t.id).join(", ")}` : "");
      fillRows("safety-rows", data.blocks.map((b) => [
        stamp(b.timestamp), taskLink(b.task_id), b.rules.join(", "), b.reason || "",
      ]), "no safety block recorded", 4);
    } catch (error) {
      byId("safety-note").textContent = error.message;
    }
  }

  async function refreshRewards() {
    try {
      const data = await api("/api/rewards");
      fillRows("balance-rows", Object.entries(data.identities).map(([name, b]) => [
        token(name), `${b.free_time_tokens} / ${b.free_time_cap}`, `${b.journal_tokens} / ${b.journal_cap}`, b.total,
      ]), "no identity has earned anything yet", 4);
      byId("grants-note").textContent = `${data.total_grants} grant(s)`;
      fillRows("grant-rows", data.grants.map((g) => [
        taskLink(g.task_id), token(g.identity_id), g.tokens_awarded, g.tokens_requested, token(g.state), token(g.reason),
        stamp(g.granted_at),
      ]), "no reward granted yet", 7);
    } catch (error) {
      byId("grants-note").textContent = error.message;
    }
  }

  async function refreshSpend() {
    const bucket = byId("spend-bucket").value;
    try {
      const data = await api(`/api/spend?bucket=${encodeURIComponent(bucket)}`);
      const events = Object.entries(data.events).map(([k, v]) => `${k}: ${v}`).join(" · ");
      byId("spend-note").textContent = `total ${money(data.total_cost)}${events ? ` · ${events}` : ""}`;
      renderChart(data.points);
      fillRows("spend-rows", data.points.slice().reverse().map((p) => [stamp(p.start), p.calls, money(p.cost)]),
        "no LLM call audited yet", 3);
      const byModel = Object.entries(data.budget.by_model || {});
      fillRows("spend-models", byModel.map(([model, s]) => [model, s.calls, money(s.spent)]),
        "no paid LLM call yet", 3);
    } catch (error) {
      byId("spend-note").textContent = error.message;
    }
  }

  function renderChart(points) {
    const chart = byId("spend-chart");
    clear(chart);
    const top = Math.max(...points.map((p) => p.cost), 0);
    if (top <= 0) {
      const calls = points.reduce((sum, p) => sum + p.calls, 0);
      chart.append(el("p", { className: "chart-empty", text: calls ? `no spend yet (${calls} free call(s))` : "no spend yet" }));
      return;
    }
    for (const point of points) {
      const bar = el("div", { className: "bar", title: `${when(point.start)}: ${money(point.cost)}, ${point.calls} call(s)` });
      bar.style.height = `${Math.max(2, (point.cost / top) * 100)}%`;
      chart.append(bar);
    }
  }

  // --- start --------------------------------------------------------------------------

  function start() {
    byId("pause-button").addEventListener("click", togglePause);
    byId("requeue-failed").addEventListener("click", requeueFailed);
    byId("filter-status").addEventListener("change", filterChanged);
    byId("filter-host").addEventListener("change", hostChanged);
    let typing = null;
    byId("filter-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(filterChanged, 250); });
    byId("prev-page").addEventListener("click", () => { state.page -= 1; scheduleTasks(0); });
    byId("next-page").addEventListener("click", () => { state.page += 1; scheduleTasks(0); });
    byId("add-mode").addEventListener("change", modeChanged);
    byId("add-form").addEventListener("submit", addTask);
    byId("detail-close").addEventListener("click", closeDetail);
    byId("gate-status").addEventListener("change", refreshGate);
    byId("spend-bucket").addEventListener("change", refreshSpend);
    for (const button of document.querySelectorAll(".tab-button")) {
      button.addEventListener("click", () => showTab(button.dataset.tab));
    }
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
    modeChanged();
    refreshSummary();
    refreshTasks();
    connectStream();
    setInterval(refreshSummary, SUMMARY_EVERY_MS);
    setInterval(() => { if (TABS[state.tab]) TABS[state.tab](); }, TAB_EVERY_MS);
    window.addEventListener("hashchange", followHash);
    followHash();
  }

  // A #task=<id> link opens that task, also when only the hash changes.
  function followHash() {
    const match = /^#task=(.+)$/.exec(location.hash);
    if (!match) { if (state.detailId !== null) closeDetail(); return; }
    let taskId;
    try { taskId = decodeURIComponent(match[1]); } catch (_) { return; }
    if (taskId !== state.detailId || byId("detail").hidden) openDetail(taskId);
  }

  start();
})();
