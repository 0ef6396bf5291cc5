// The page of `xomcloud serve`: paste SoundCloud links, run them as a job (POST /jobs), watch it
// (GET /jobs/{id}), cancel it (DELETE /jobs/{id}), download the zip. Plain JavaScript, no build
// step, nothing loaded from elsewhere; the token lives in sessionStorage, the ids of this
// browser's jobs (and the links they were made of) in localStorage.
"use strict";

(() => {
  // ---- The link rule: a copy of `check_url` (crates/download-tracks/src/validate.rs). ----
  // tests/fixtures/url-cases.json drives both; the server stays the authority.

  const MAX_URL_CHARS = 2048;
  const ALLOWED_HOSTS = [
    "soundcloud.com",
    "www.soundcloud.com",
    "m.soundcloud.com",
    "on.soundcloud.com",
    "api.soundcloud.com",
  ];
  const asciiLower = (s) => s.replace(/[A-Z]+/g, (c) => c.toLowerCase());

  /** null when `url` is allowed; otherwise the reason, in the server's words. */
  function checkUrl(url) {
    if (url === "") return "it is empty";
    if ([...url].length > MAX_URL_CHARS) return `it is longer than ${MAX_URL_CHARS} characters`;
    // A leading '-' would be read as an option by scdl.
    if (url.startsWith("-")) return "it must not start with '-'";
    if (/[\p{White_Space}\p{Cc}]/u.test(url)) {
      return "it must not contain whitespace or control characters";
    }
    if (url.includes("\\")) return "it must not contain backslashes";
    const schemeLen = url.indexOf("://");
    if (schemeLen < 0) return "it must start with https://";
    if (asciiLower(url.slice(0, schemeLen)) !== "https") return "the scheme must be https";
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      return "it is not a valid URL";
    }
    if (parsed.protocol !== "https:") return "the scheme must be https";
    if (parsed.username !== "" || parsed.password !== "") {
      return "it must not contain a user name or password";
    }
    if (parsed.port !== "") return "it must not contain a port";
    const host = parsed.hostname;
    if (host.startsWith("[") || /^\d+\.\d+\.\d+\.\d+$/.test(host)) {
      return "the host must not be an IP address";
    }
    if (host === "") return "it has no host";
    if (!ALLOWED_HOSTS.includes(host)) {
      return "the host must be soundcloud.com or one of its subdomains www, m, on, api";
    }
    // The host as written must be the host as parsed: no %-escapes, IDNA look-alikes, ports.
    const authority = url.slice(schemeLen + 3).split(/[/?#]/)[0];
    if (asciiLower(authority) !== host) {
      return "the host must be written plainly, without a port or user name";
    }
    if (parsed.pathname === "" || parsed.pathname === "/") return "it must have a path";
    return null;
  }

  /** The links of the text area: whitespace-separated, each with its line number. */
  function parseLinks(text) {
    const links = [];
    text.split("\n").forEach((line, i) => {
      for (const match of line.matchAll(/[^\p{White_Space}]+/gu)) {
        links.push({ url: match[0], line: i + 1, at: match.index, why: checkUrl(match[0]) });
      }
    });
    return links;
  }

  // Exposed for the browser test (tests/web_ui.rs), which runs the URL cases through it.
  window.xomcloud = Object.freeze({ checkUrl, parseLinks });

  // ---- Storage ----

  const TOKEN_KEY = "xomcloud.token";
  const CURRENT_KEY = "xomcloud.job";
  const JOBS_KEY = "xomcloud.jobs";
  const MAX_RECENT = 20;

  const store = {
    get(area, key) {
      try {
        return window[area].getItem(key);
      } catch {
        return null;
      }
    },
    set(area, key, value) {
      try {
        if (value === null) window[area].removeItem(key);
        else window[area].setItem(key, value);
      } catch {
        // Storage refused (private mode, quota): the page still works for this load.
      }
    },
  };

  /** [{id, created, urls: {t1: url, …}, status?, total?, done?, failed?}], newest first. */
  function recentJobs() {
    try {
      const jobs = JSON.parse(store.get("localStorage", JOBS_KEY) || "[]");
      return Array.isArray(jobs) ? jobs.filter((j) => j && typeof j.id === "string") : [];
    } catch {
      return [];
    }
  }

  function saveRecent(jobs) {
    store.set("localStorage", JOBS_KEY, JSON.stringify(jobs.slice(0, MAX_RECENT)));
  }

  function updateRecent(id, change) {
    const jobs = recentJobs();
    const job = jobs.find((j) => j.id === id);
    if (job) {
      Object.assign(job, change);
      saveRecent(jobs);
    }
  }

  function forgetRecent(id) {
    saveRecent(recentJobs().filter((j) => j.id !== id));
  }

  // ---- Elements ----

  const $ = (id) => document.getElementById(id);
  const el = {
    who: $("who"),
    forget: $("forget-token"),
    notice: $("notice"),
    tokenPanel: $("token-panel"),
    tokenReason: $("token-reason"),
    tokenForm: $("token-form"),
    tokenInput: $("token-input"),
    newJob: $("new-job"),
    form: $("job-form"),
    links: $("links"),
    backdrop: $("links-backdrop"),
    issues: $("links-issues"),
    formError: $("form-error"),
    submit: $("submit"),
    linkCount: $("link-count"),
    job: $("job"),
    jobTitle: $("job-title"),
    jobStatus: $("job-status"),
    jobCounts: $("job-counts"),
    jobProgress: $("job-progress"),
    jobError: $("job-error"),
    jobZip: $("job-zip"),
    jobCancel: $("job-cancel"),
    jobExpiry: $("job-expiry"),
    tracks: $("job-tracks"),
    recent: $("recent"),
    recentList: $("recent-list"),
    recentEmpty: $("recent-empty"),
  };

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setText(node, text) {
    node.textContent = text || "";
    show(node, Boolean(text));
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const clock = (date) =>
    date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  // ---- Notices: one line for problems that are not about one form ----

  function notify(kind, text) {
    el.notice.dataset.kind = kind;
    el.notice.textContent = text;
    show(el.notice, true);
  }

  function clearNotice(...kinds) {
    if (kinds.includes(el.notice.dataset.kind)) {
      delete el.notice.dataset.kind;
      el.notice.textContent = "";
      show(el.notice, false);
    }
  }

  // ---- The API ----

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status; // 0: no answer
      this.code = code;
      this.retryAfter = retryAfter; // seconds, for a 429
    }
  }

  /** Seconds to wait after a 429: `Retry-After` (seconds or a date), else the body's hint. */
  function retryAfter(response, error) {
    const header = response.headers.get("Retry-After");
    if (header) {
      const seconds = Number(header);
      if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
      const date = Date.parse(header);
      if (!Number.isNaN(date)) return Math.max(0, Math.ceil((date - Date.now()) / 1000));
    }
    const hint = error && (error.retry_after ?? (error.details && error.details.retry_after));
    return Number.isFinite(Number(hint)) && hint !== null ? Math.ceil(Number(hint)) : 5;
  }

  let token = null;

  async function api(method, path, body, headers = {}) {
    const init = {
      method,
      cache: "no-store",
      headers: { Authorization: `Bearer ${token}`, ...headers },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError(0, "UNREACHABLE", "Server unreachable");
    }
    let json = null;
    try {
      json = await response.json();
    } catch {
      // Not JSON: described by the status below.
    }
    if (response.ok) return json;
    const error = (json && json.error) || {};
    throw new ApiError(
      response.status,
      error.code || `HTTP_${response.status}`,
      error.message || `The server answered ${response.status} ${response.statusText}`.trim(),
      response.status === 429 ? retryAfter(response, error) : undefined,
    );
  }

  function rateLimited(err) {
    const at = new Date(Date.now() + err.retryAfter * 1000);
    return `Too many requests: try again in ${err.retryAfter} s (at ${clock(at)}). ${err.message}`;
  }

  /** What every caller does with a 401 and no answer; false when the caller should go on. */
  function handledGlobally(err) {
    if (err.status === 401) {
      askForToken(
        `The server refused the token (${err.message}): it has expired or was signed with ` +
          "another secret. Paste a new one.",
      );
      return true;
    }
    return false;
  }

  // ---- The token ----

  /** The token's claims, or null when it is not a JWT at all. */
  function claims(jwt) {
    const parts = jwt.split(".");
    if (parts.length !== 3) return null;
    try {
      const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      const payload = JSON.parse(new TextDecoder().decode(bytes));
      return payload && typeof payload === "object" ? payload : null;
    } catch {
      return null;
    }
  }

  /** Why `jwt` cannot be used, or null. */
  function tokenProblem(jwt) {
    const payload = claims(jwt);
    if (!payload) return "That is not a token (three dot-separated parts, from xomcloud token).";
    if (typeof payload.exp === "number" && payload.exp * 1000 <= Date.now()) {
      return `That token expired at ${new Date(payload.exp * 1000).toLocaleString()}. Paste a new one.`;
    }
    return null;
  }

  /** `#token=…` moves into sessionStorage and out of the address bar (and its history). */
  function takeTokenFromFragment() {
    const match = /^#token=([^&]*)/.exec(location.hash);
    if (!match) return;
    let value = match[1];
    try {
      value = decodeURIComponent(value);
    } catch {
      // Kept as it is; the checks below judge it.
    }
    history.replaceState(history.state, "", location.pathname + location.search);
    if (value) store.set("sessionStorage", TOKEN_KEY, value);
  }

  /** A pasted token: also `Bearer …` or the whole link serve prints. */
  function cleanToken(text) {
    let value = text.trim();
    const inLink = /#token=([^&\s]+)/.exec(value);
    if (inLink) value = decodeURIComponent(inLink[1]);
    return value.replace(/^Bearer\s+/i, "").trim();
  }

  function askForToken(reason) {
    token = null;
    store.set("sessionStorage", TOKEN_KEY, null);
    stopPolling();
    for (const panel of [el.newJob, el.job, el.recent, el.who, el.forget]) show(panel, false);
    clearNotice("unreachable", "rate");
    setText(el.tokenReason, reason);
    show(el.tokenPanel, true);
    el.tokenInput.value = "";
    el.tokenInput.focus();
  }

  function useToken(value) {
    token = value;
    store.set("sessionStorage", TOKEN_KEY, value);
    const payload = claims(value) || {};
    const expires =
      typeof payload.exp === "number" ? `, until ${clock(new Date(payload.exp * 1000))}` : "";
    setText(el.who, `Token for ${payload.sub || "?"}${expires}`);
    show(el.forget, true);
    show(el.tokenPanel, false);
    show(el.newJob, true);
    show(el.recent, true);
    renderRecent();
    refreshRecent();
    const current = store.get("sessionStorage", CURRENT_KEY);
    if (current) openJob(current);
  }

  el.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = cleanToken(el.tokenInput.value);
    const problem = value ? tokenProblem(value) : "Paste a token first.";
    if (problem) {
      setText(el.tokenReason, problem);
      el.tokenInput.focus();
      return;
    }
    useToken(value);
    el.links.focus();
  });

  el.forget.addEventListener("click", () => askForToken(""));

  // ---- The links: flagged in place as they are typed ----

  let submitKey = null;

  function renderLinks() {
    const text = el.links.value;
    const links = parseLinks(text);
    const bad = links.filter((l) => l.why);
    // The backdrop repeats the text under the (transparent) text area, bad links marked.
    const fragment = document.createDocumentFragment();
    let lineStart = 0;
    const lines = text.split("\n");
    let cursor = 0;
    lines.forEach((line, i) => {
      for (const link of bad.filter((l) => l.line === i + 1)) {
        const start = lineStart + link.at;
        fragment.append(text.slice(cursor, start), make("mark", "", link.url));
        cursor = start + link.url.length;
      }
      lineStart += line.length + 1;
    });
    // A trailing space keeps a final empty line as tall as in the text area.
    fragment.append(text.slice(cursor) + " ");
    el.backdrop.replaceChildren(fragment);
    el.backdrop.scrollTop = el.links.scrollTop;

    el.issues.replaceChildren(
      ...bad.map((l) => {
        const item = make("li", "issue");
        item.dataset.line = String(l.line);
        item.append(`Line ${l.line}: `, make("code", "", l.url), ` is not a SoundCloud link: ${l.why}.`);
        return item;
      }),
    );
    el.links.setAttribute("aria-invalid", bad.length ? "true" : "false");
    el.linkCount.textContent = links.length
      ? `${links.length} link${links.length === 1 ? "" : "s"}` +
        (bad.length ? `, ${bad.length} to fix` : "")
      : "";
    return { links, bad };
  }

  el.links.addEventListener("input", () => {
    submitKey = null; // other links: another job
    setText(el.formError, "");
    renderLinks();
  });
  el.links.addEventListener("scroll", () => {
    el.backdrop.scrollTop = el.links.scrollTop;
  });
  el.links.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      el.form.requestSubmit();
    }
  });

  function randomKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  let submitBlockedUntil = 0;

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { links, bad } = renderLinks();
    if (!links.length) {
      setText(el.formError, "Paste at least one SoundCloud link.");
      el.links.focus();
      return;
    }
    if (bad.length) {
      setText(
        el.formError,
        `Fix the flagged line${bad.length === 1 ? "" : "s"} first: nothing was sent.`,
      );
      el.links.focus();
      return;
    }
    if (Date.now() < submitBlockedUntil) return;
    // A track is its link: no title or artist is sent, so the job reads them from SoundCloud
    // (and expands sets) when it starts; the ids only tie the rows to the links typed here.
    const tracks = links.map((l, i) => ({ id: `t${i + 1}`, url: l.url }));
    submitKey = submitKey || randomKey(); // a retry of the same links is the same job
    el.submit.disabled = true;
    setText(el.formError, "");
    try {
      const answer = await api("POST", "/jobs", { tracks }, { "Idempotency-Key": submitKey });
      const id = answer.data.job_id;
      const urls = Object.fromEntries(tracks.map((t) => [t.id, t.url]));
      saveRecent([
        { id, created: Date.now(), urls, status: answer.data.status, total: answer.data.total },
        ...recentJobs().filter((j) => j.id !== id),
      ]);
      el.links.value = "";
      submitKey = null;
      renderLinks();
      renderRecent();
      openJob(id);
      el.jobTitle.focus();
    } catch (err) {
      if (handledGlobally(err)) return;
      if (err.status === 0) {
        setText(el.formError, "Server unreachable: nothing was sent. Try again.");
      } else if (err.status === 429) {
        setText(el.formError, rateLimited(err));
        submitBlockedUntil = Date.now() + err.retryAfter * 1000;
        setTimeout(() => {
          if (Date.now() >= submitBlockedUntil) setText(el.formError, "");
        }, err.retryAfter * 1000);
      } else {
        setText(el.formError, err.message); // the server's words (400: its validation)
      }
    } finally {
      el.submit.disabled = false;
    }
  });

  // ---- One job ----

  const TERMINAL = ["done", "failed", "cancelled"];
  const VISIBLE_DELAY = 1000;
  const HIDDEN_DELAY = 5000;
  const MAX_DELAY = 30000;

  const polling = { id: null, timer: null, generation: 0, delay: VISIBLE_DELAY };

  function stopPolling() {
    clearTimeout(polling.timer);
    polling.timer = null;
    polling.generation += 1;
  }

  function schedule(delay) {
    clearTimeout(polling.timer);
    polling.delay = delay;
    polling.timer = setTimeout(poll, delay);
  }

  function openJob(id) {
    stopPolling();
    polling.id = id;
    store.set("sessionStorage", CURRENT_KEY, id);
    el.job.dataset.jobId = id;
    delete el.job.dataset.status;
    el.jobTitle.textContent = "Job";
    el.tracks.replaceChildren();
    for (const node of [el.jobZip, el.jobCancel, el.jobError]) show(node, false);
    el.jobStatus.textContent = "loading";
    el.jobCounts.textContent = "";
    el.jobExpiry.textContent = "";
    show(el.job, true);
    renderRecent();
    poll();
  }

  async function poll() {
    const generation = polling.generation;
    const id = polling.id;
    polling.timer = null;
    if (!id) return;
    let data;
    try {
      data = (await api("GET", `/jobs/${encodeURIComponent(id)}`)).data;
    } catch (err) {
      if (generation !== polling.generation) return;
      if (handledGlobally(err)) return;
      if (err.status === 404) {
        forgetRecent(id);
        store.set("sessionStorage", CURRENT_KEY, null);
        el.jobStatus.textContent = "gone";
        setText(el.jobError, `${err.message}: it expired, or belongs to another token's user.`);
        renderRecent();
        return;
      }
      if (err.status === 429) {
        notify("rate", rateLimited(err));
        schedule(err.retryAfter * 1000);
      } else if (err.status === 0) {
        notify("unreachable", "Server unreachable: still trying…");
        schedule(Math.min(Math.max(polling.delay * 2, 2000), document.hidden ? MAX_DELAY : 5000));
      } else {
        notify("server", `${err.message} (still trying)`);
        schedule(Math.min(polling.delay * 2, MAX_DELAY));
      }
      return;
    }
    if (generation !== polling.generation) return;
    clearNotice("unreachable", "rate", "server");
    renderJob(data);
    if (TERMINAL.includes(data.status)) {
      polling.timer = null;
      return;
    }
    schedule(
      document.hidden
        ? Math.min(Math.max(polling.delay * 2, HIDDEN_DELAY), MAX_DELAY)
        : VISIBLE_DELAY,
    );
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && polling.timer !== null) {
      clearTimeout(polling.timer);
      polling.delay = VISIBLE_DELAY;
      poll();
    }
  });

  /** The server's placeholder title: the track has no known title yet. */
  const placeholder = (t) =>
    /^Track \d+$/.test(t.title || "") && (!t.artist || t.artist === "Unknown Artist");

  const safeLink = (url) => {
    try {
      return ["http:", "https:"].includes(new URL(url, location.href).protocol);
    } catch {
      return false;
    }
  };

  function trackRow(id) {
    let row = el.tracks.querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (!row) {
      row = make("li", "track");
      row.dataset.id = id;
      const main = make("div", "track-main");
      main.append(make("span", "name"), make("span", "artist"));
      const side = make("div", "track-side");
      side.append(make("span", "state"), make("a", "mp3", "MP3"));
      row.append(main, side, make("p", "reason"));
      el.tracks.append(row);
    }
    return row;
  }

  function renderJob(data) {
    const recent = recentJobs().find((j) => j.id === data.job_id);
    const urls = (recent && recent.urls) || {};
    const status = data.status;
    el.job.dataset.status = status;
    el.jobTitle.textContent =
      `Job of ${data.total} track${data.total === 1 ? "" : "s"}` +
      (data.created_at ? `, ${clock(new Date(data.created_at))}` : "");
    el.jobStatus.textContent = status;
    el.jobStatus.dataset.status = status;
    el.jobCounts.textContent =
      `${data.settled} of ${data.total} finished: ${data.done} done, ` +
      `${data.failed_count} failed`;
    el.jobProgress.max = Math.max(1, data.total);
    el.jobProgress.value = data.settled;
    setText(el.jobError, data.error || "");

    const zip = status === "done" && data.download_url;
    if (zip) {
      el.jobZip.href = data.download_url;
      el.jobZip.setAttribute("download", "");
      const minutes = Math.round((data.expires_in || 0) / 60);
      el.jobExpiry.textContent = minutes ? `The link works for ${minutes} min.` : "";
    } else {
      el.jobZip.removeAttribute("href");
      el.jobExpiry.textContent = "";
    }
    show(el.jobZip, Boolean(zip));
    show(el.jobCancel, status === "queued" || status === "running");

    for (const t of data.tracks || []) {
      const row = trackRow(t.id);
      const state = t.state; // `cancelled` for the tracks a cancelled job never settled
      row.dataset.state = state;
      const source = urls[t.id];
      const name = row.querySelector(".name");
      const artist = row.querySelector(".artist");
      if (placeholder(t) && source) {
        name.textContent = source;
        artist.textContent = "";
      } else {
        name.textContent = t.title;
        artist.textContent = t.artist || "";
      }
      name.title = source || "";
      row.querySelector(".state").textContent = state;
      setText(row.querySelector(".reason"), t.state === "failed" ? t.error || "failed" : "");
      const mp3 = row.querySelector(".mp3");
      if (t.state === "done" && t.url && safeLink(t.url)) {
        mp3.href = t.url;
        show(mp3, true);
      } else {
        mp3.removeAttribute("href");
        show(mp3, false);
      }
    }

    updateRecent(data.job_id, {
      status,
      total: data.total,
      done: data.done,
      failed: data.failed_count,
    });
    renderRecent();
  }

  el.jobCancel.addEventListener("click", async () => {
    const id = polling.id;
    if (!id) return;
    el.jobCancel.disabled = true;
    try {
      const answer = await api("DELETE", `/jobs/${encodeURIComponent(id)}`);
      if (polling.id === id) {
        stopPolling();
        polling.id = id;
        renderJob(answer.data);
      }
    } catch (err) {
      if (handledGlobally(err)) return;
      if (err.status === 429) setText(el.jobError, rateLimited(err));
      else if (err.status === 0) setText(el.jobError, "Server unreachable: the job was not cancelled.");
      else setText(el.jobError, err.message); // 409: it finished meanwhile
      if (polling.id === id && polling.timer === null) poll();
    } finally {
      el.jobCancel.disabled = false;
    }
  });

  // ---- This browser's jobs ----

  function renderRecent() {
    const jobs = recentJobs();
    show(el.recentEmpty, jobs.length === 0);
    el.recentList.replaceChildren(
      ...jobs.map((job) => {
        const item = make("li");
        item.dataset.id = job.id;
        const button = make("button", "link");
        button.type = "button";
        const when = job.created ? clock(new Date(job.created)) : "";
        const counts =
          job.done !== undefined ? ` (${job.done} done, ${job.failed || 0} failed)` : "";
        const total = job.total ?? Object.keys(job.urls || {}).length;
        button.textContent =
          `${when} · ${total} track${total === 1 ? "" : "s"} · ${job.status || "?"}${counts}`;
        if (job.id === polling.id) button.setAttribute("aria-current", "true");
        button.addEventListener("click", () => openJob(job.id));
        item.append(button);
        return item;
      }),
    );
  }

  /** Each remembered job, read again from the server (an expired one is forgotten). */
  async function refreshRecent() {
    for (const job of recentJobs()) {
      if (job.id === polling.id) continue; // the poller reads it
      if (TERMINAL.includes(job.status) && job.checked && Date.now() - job.checked < 60000) {
        continue;
      }
      try {
        const { data } = await api("GET", `/jobs/${encodeURIComponent(job.id)}`);
        updateRecent(job.id, {
          status: data.status,
          total: data.total,
          done: data.done,
          failed: data.failed_count,
          checked: Date.now(),
        });
      } catch (err) {
        if (handledGlobally(err)) return;
        if (err.status === 404) forgetRecent(job.id);
        else break; // unreachable or rate limited: the list keeps what it knew
      }
    }
    renderRecent();
  }

  // ---- Start ----

  takeTokenFromFragment();
  renderLinks();
  const saved = store.get("sessionStorage", TOKEN_KEY);
  if (!saved) {
    askForToken("");
  } else {
    const problem = tokenProblem(saved);
    if (problem) askForToken(problem);
    else useToken(saved);
  }
})();
