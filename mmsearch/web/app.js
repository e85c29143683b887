// mmsearch web page: vanilla JS over the HTTP API of the server that serves this file.
"use strict";

(() => {
  const TOKEN_KEY = "mmsearch-token";
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("search-form"), q: $("q"), pick: $("pick-button"), file: $("file"), k: $("k"),
    tokenForm: $("token-form"), token: $("token"), error: $("error"), status: $("status"),
    stats: $("stats"), results: $("results"), captions: $("captions"), overlay: $("drop-overlay"),
    queryLine: $("query-line"), queryThumb: $("query-thumb"), queryLabel: $("query-label"),
    clearQuery: $("clear-query"),
  };

  // The current query: {kind: "text", text} | {kind: "upload", file} | {kind: "id", id, name}.
  let current = null;
  let sequence = 0; // answers to superseded requests are dropped
  let objectUrls = []; // blob: URLs of the shown thumbnails, revoked on the next render
  let queryThumbUrl = null; // blob: URL of the query image's preview

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    } catch (err) {
      throw new ApiError(0, `cannot reach the server (${err.message}); is \`mmsearch serve\` still running?`);
    }
    if (response.status === 401) showTokenForm();
    const type = response.headers.get("content-type") || "";
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      if (type.includes("application/json")) {
        const body = await response.json().catch(() => null);
        if (body && typeof body.detail === "string") detail = body.detail;
      }
      throw new ApiError(response.status, detail);
    }
    return type.includes("application/json") ? response.json() : response.blob();
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  function showTokenForm() {
    el.tokenForm.hidden = false;
    el.token.value = token();
  }

  function selectedTarget() {
    return document.querySelector('input[name="to"]:checked').value;
  }

  function clearResults() {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
    el.results.replaceChildren();
    el.captions.replaceChildren();
  }

  function setQueryLine(label, thumbSource) {
    if (!label) {
      el.queryLine.hidden = true;
      return;
    }
    el.queryLabel.textContent = label;
    el.queryThumb.removeAttribute("src");
    el.queryThumb.hidden = true; // shown once it has decoded: a bad upload shows no broken icon
    if (queryThumbUrl) URL.revokeObjectURL(queryThumbUrl);
    queryThumbUrl = null;
    const show = (blob) => {
      queryThumbUrl = URL.createObjectURL(blob);
      el.queryThumb.src = queryThumbUrl;
    };
    if (thumbSource instanceof Blob) show(thumbSource);
    else if (typeof thumbSource === "string") api(thumbSource).then(show).catch(() => {});
    el.queryLine.hidden = false;
  }

  async function loadThumbnail(img, holder, url) {
    try {
      const blob = await api(url);
      const objectUrl = URL.createObjectURL(blob);
      objectUrls.push(objectUrl);
      img.src = objectUrl;
    } catch (err) {
      const broken = document.createElement("span");
      broken.className = "broken";
      broken.textContent = `⚠ ${err.message}`;
      holder.replaceChildren(broken);
    }
  }

  function renderImages(results) {
    for (const hit of results) {
      const li = document.createElement("li");
      li.className = "result";
      li.dataset.id = String(hit.id);
      li.dataset.rank = String(hit.rank);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb";
      button.title = `${hit.path}\nclick to find similar images`;
      const img = document.createElement("img");
      img.alt = hit.name;
      button.append(img);
      button.addEventListener("click", () => searchBy({ kind: "id", id: hit.id, name: hit.name }));
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = hit.name;
      name.title = hit.path;
      li.append(button, score, name);
      el.results.append(li);
      loadThumbnail(img, button, hit.thumbnail_url);
    }
  }

  function renderTexts(results) {
    for (const hit of results) {
      const li = document.createElement("li");
      li.className = "caption";
      li.dataset.id = String(hit.id);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = hit.text;
      li.append(score, text);
      el.captions.append(li);
    }
  }

  function request(query, to, k) {
    if (query.kind === "text") {
      const params = new URLSearchParams({ q: query.text, k: String(k) });
      return api(`${to === "text" ? "/texts/search" : "/search"}?${params}`);
    }
    const body = new FormData();
    if (query.kind === "upload") body.append("file", query.file, query.file.name || "upload");
    else body.append("id", String(query.id));
    body.append("k", String(k));
    body.append("to", to);
    return api("/search/image", { method: "POST", body });
  }

  async function run() {
    if (!current) return;
    const mine = ++sequence;
    const to = selectedTarget();
    const k = Number(el.k.value);
    clearError();
    el.status.textContent = "Searching…";
    document.body.classList.add("busy");
    try {
      const answer = await request(current, to, k);
      if (mine !== sequence) return;
      clearResults();
      if (answer.kind === "text") renderTexts(answer.results);
      else renderImages(answer.results);
      const what = answer.kind === "text" ? "captions" : "images";
      el.status.textContent = answer.results.length
        ? `${answer.results.length} ${what} in ${Math.round(answer.took_ms)} ms`
        : `No ${what} found. Is the index empty? Add ${what} with \`mmsearch ${answer.kind === "text" ? "add-texts" : "index"}\`.`;
    } catch (err) {
      if (mine !== sequence) return;
      clearResults();
      el.status.textContent = "";
      showError(err.message);
    } finally {
      if (mine === sequence) document.body.classList.remove("busy");
    }
  }

  function searchBy(query) {
    current = query;
    if (query.kind === "text") {
      setQueryLine(null);
      history.replaceState(null, "", `#q=${encodeURIComponent(query.text)}`);
    } else {
      el.q.value = "";
      history.replaceState(null, "", location.pathname);
      if (query.kind === "upload") setQueryLine(`Similar to your image “${query.file.name || "pasted image"}”`, query.file);
      else setQueryLine(`Similar to ${query.name || `image ${query.id}`}`, `/images/${query.id}/thumbnail`);
    }
    window.scrollTo({ top: 0 });
    return run();
  }

  function searchByFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(`${file.name} is not an image (${file.type})`);
      return;
    }
    searchBy({ kind: "upload", file });
  }

  async function loadStats() {
    try {
      const stats = await api("/stats");
      el.stats.textContent = `${stats.images} images · ${stats.texts} captions`;
    } catch (err) {
      el.stats.textContent = "";
      if (err.status !== 401) showError(err.message);
    }
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.q.value.trim();
    if (!text) {
      showError("Type a sentence describing the picture, or drop an image.");
      return;
    }
    searchBy({ kind: "text", text });
  });

  el.queryThumb.addEventListener("load", () => { el.queryThumb.hidden = false; });
  el.pick.addEventListener("click", () => el.file.click());
  el.file.addEventListener("change", () => {
    searchByFile(el.file.files[0]);
    el.file.value = "";
  });
  el.clearQuery.addEventListener("click", () => {
    current = null;
    sequence++;
    setQueryLine(null);
    clearResults();
    el.status.textContent = "";
    el.q.focus();
  });
  for (const input of document.querySelectorAll('input[name="to"]')) input.addEventListener("change", run);
  el.k.addEventListener("change", run);

  el.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, el.token.value.trim());
    el.tokenForm.hidden = true;
    clearError();
    loadStats();
    run();
  });

  // Drag and drop anywhere on the page; paste an image from the clipboard.
  let dragDepth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth++;
    el.overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    el.overlay.hidden = true;
    searchByFile(event.dataTransfer?.files?.[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = Array.from(event.clipboardData?.items || []).find((i) => i.type.startsWith("image/"));
    if (item) searchByFile(item.getAsFile());
  });

  async function start() {
    try {
      const health = await api("/health");
      if (health.auth_required && !token()) showTokenForm();
    } catch (err) {
      showError(err.message);
      return;
    }
    loadStats();
    const match = /^#q=(.*)$/.exec(location.hash);
    if (match) {
      el.q.value = decodeURIComponent(match[1]);
      searchBy({ kind: "text", text: el.q.value });
    }
  }

  start();
})();
