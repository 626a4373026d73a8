// mediagen's web page: plain JavaScript on the public /api/v1, nothing from another site.
// Live progress comes from the job's event stream read with fetch(), because EventSource
// cannot send an Authorization header; a dropped stream resumes with Last-Event-ID, and after
// repeated failures the page falls back to polling the job.
"use strict";

const KEY_STORE = "mediagen.apiKey";
// The finished job states, as the server's mediagen/jobs/states.py names them (the page's one
// list of them; tests/client/test_states.py holds it to the server's). "expired": completed,
// then its outputs deleted when their retention ended.
const TERMINAL = new Set(["completed", "failed", "canceled", "expired"]);
const PAGE_SIZE = 24;
const config = JSON.parse(document.getElementById("config").textContent);
// Everything of the server's is under its path prefix (ROOT_PATH; empty at /).
const API = `${config.root}/api/v1`;
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.errors = (body && body.errors) || [];
    this.retryAfter = retryAfter;
  }
}

// --- the API key ----------------------------------------------------------------------------

function apiKey() {
  try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

function setApiKey(value) {
  try {
    if (value) localStorage.setItem(KEY_STORE, value); else localStorage.removeItem(KEY_STORE);
  } catch { /* storage disabled: the key lasts as long as the page */ }
  updateKeyButton();
}

function updateKeyButton() {
  $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
}

function askForKey(reason) {
  $("key-reason").textContent = reason || "";
  // Once open, the field is the user's: a late refusal of the old key (several requests carry
  // it) must not put it back over a new one being typed.
  if ($("key-dialog").open) return;
  $("key-input").value = apiKey();
  $("key-dialog").showModal();
  $("key-input").focus();
}

// --- HTTP -----------------------------------------------------------------------------------

function headers(extra) {
  const h = new Headers(extra || {});
  const key = apiKey();
  if (key) h.set("Authorization", `Bearer ${key}`);
  return h;
}

async function api(path, { method = "GET", json, form, extraHeaders, signal } = {}) {
  const sentKey = apiKey();
  const init = { method, headers: headers(extraHeaders), signal, body: form };
  if (json !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const retry = Number(response.headers.get("Retry-After")) || null;
    const error = new ApiError(response.status, body, retry);
    // A refusal of the key this request carried; one sent before the key was changed (still
    // in flight while it was saved) says nothing about the new key.
    if (response.status === 401 && apiKey() === sentKey) {
      askForKey(sentKey ? "This key was not accepted. Check it, or make a new one."
        : "This server needs an API key.");
    }
    throw error;
  }
  return body;
}

function describe(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server (${error.message}).`;
  let text = error.message;
  if (error.status === 429 && error.retryAfter) text += ` Try again in ${error.retryAfter} s.`;
  for (const item of error.errors) {
    const field = (item.loc || []).filter((part) => part !== "body").join(".");
    text += `\n${field ? `${field}: ` : ""}${item.msg}`;
  }
  return text;
}

function randomKey() {
  // crypto.randomUUID exists only on secure origins; getRandomValues everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); });
});

// --- following a job ------------------------------------------------------------------------

function* parseEvents(buffer) {
  // Yields [event, consumed] for each complete SSE frame in buffer.
  let start = 0;
  for (;;) {
    const match = /\r?\n\r?\n/.exec(buffer.slice(start));
    if (!match) return;
    const frame = buffer.slice(start, start + match.index);
    start += match.index + match[0].length;
    const event = { event: "message", data: [], id: null };
    for (const line of frame.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") event.data.push(value);
      else if (field === "event") event.event = value;
      else if (field === "id") event.id = value;
    }
    yield [event, start];
  }
}

// Calls onEvent(kind, data) for each event (status, progress, and queue: a pending job's
// position when it changed) until the job is terminal or the signal aborts; returns the last
// status seen.
async function follow(jobId, onEvent, signal) {
  let lastId = null;
  let failures = 0;
  let status = null;
  while (!signal.aborted && failures < 3) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId) extra["Last-Event-ID"] = lastId;
      const response = await fetch(`${API}/jobs/${jobId}/events`,
        { headers: headers(extra), signal });
      if (response.status === 204) return status;
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let consumed = 0;
        for (const [event, end] of parseEvents(buffer)) {
          consumed = end;
          if (event.id) lastId = event.id;
          if (!event.data.length) continue;
          const data = JSON.parse(event.data.join("\n"));
          failures = 0;
          onEvent(event.event, data);
          if (event.event === "status") status = data.status;
          if (TERMINAL.has(status)) { reader.cancel().catch(() => {}); return status; }
        }
        buffer = buffer.slice(consumed);
      }
    } catch (error) {
      if (signal.aborted) return status;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) throw error;
    }
    failures += 1;
    await sleep(500 * failures, signal);
  }
  // The stream keeps failing (a proxy that buffers it, say): poll the job instead.
  while (!signal.aborted) {
    const job = await api(`${API}/jobs/${jobId}`, { signal });
    if (job.status !== status) { status = job.status; onEvent("status", job); }
    if (status === "pending") onEvent("queue", { job_id: job.job_id, queue_position: job.queue_position, paused: job.paused });
    if (job.progress) onEvent("progress", job.progress);
    if (TERMINAL.has(status)) return status;
    await sleep(1500, signal);
  }
  return status;
}

// --- rendering ------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function kindOf(contentType, url) {
  const type = contentType || "";
  if (type.startsWith("image/")) return "image";
  if (type.startsWith("video/")) return "video";
  if (type.startsWith("audio/")) return "audio";
  const path = (url || "").split("?")[0].toLowerCase();
  if (/\.(png|jpe?g|webp|gif)$/.test(path)) return "image";
  if (/\.(mp4|webm|mov)$/.test(path)) return "video";
  if (/\.(wav|mp3|ogg|flac|m4a)$/.test(path)) return "audio";
  return "file";
}

function fileName(url, fallback) {
  const path = (url || "").split("?")[0];
  return decodeURIComponent(path.slice(path.lastIndexOf("/") + 1)) || fallback;
}

function renderOutputs(container, job) {
  container.replaceChildren();
  const outputs = job.outputs && job.outputs.length ? job.outputs
    : job.result_url ? [{ url: job.result_url, content_type: "" }] : [];
  outputs.forEach((output, index) => {
    const label = `Output ${index + 1} of ${outputs.length}: ${job.prompt || ""}`;
    const kind = kindOf(output.content_type, output.url);
    let media;
    if (kind === "image") media = el("img", { src: output.url, alt: label, decoding: "async" });
    else if (kind === "video") media = el("video", { src: output.url, controls: true, preload: "metadata", "aria-label": label });
    else if (kind === "audio") media = el("audio", { src: output.url, controls: true, preload: "metadata", "aria-label": label });
    else media = el("p", { text: fileName(output.url, "output") });
    const name = fileName(output.url, `output-${index + 1}`);
    const size = output.size ? `, ${formatBytes(output.size)}` : "";
    const type = name.includes(".") ? name.slice(name.lastIndexOf(".") + 1).toUpperCase() : kind;
    const which = outputs.length > 1 ? ` ${index + 1}` : "";
    const link = el("a", { href: output.url, download: name, class: "download",
      text: `Download${which} (${type}${size})` });
    container.append(el("figure", {}, media, el("figcaption", {}, link)));
  });
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function statusText(job, progress) {
  let text = `Status: ${job.status}`;
  if (job.status === "pending" && job.queue_position !== undefined && job.queue_position !== null) {
    text += job.queue_position === 0 ? " (next in line)" : ` (${job.queue_position} ahead in the queue)`;
  }
  if (job.status === "pending" && job.paused) text += " (its model is paused)";
  if (job.status === "retrying" && job.retry_count) text += ` (retry ${job.retry_count})`;
  if (job.status === "processing" && progress) text += ` (${progress.percent}%)`;
  return text;
}

function setProgress(bar, job, progress) {
  if (job.status === "completed" || job.status === "expired") bar.value = 100;
  else if (progress) bar.value = progress.percent;
  else bar.removeAttribute("value"); // indeterminate while nothing is known
}

// --- the gallery ----------------------------------------------------------------------------

const gallery = { next: `${API}/jobs?limit=${PAGE_SIZE}`, loading: false, cards: new Map() };

function cardFor(job) {
  let card = gallery.cards.get(job.job_id);
  if (!card) {
    card = el("li", { class: "card", "data-job-id": job.job_id });
    gallery.cards.set(job.job_id, card);
  }
  card.job = job;
  const button = el("button", { type: "button", class: "thumb" });
  button.addEventListener("click", () => openDetail(job.job_id));
  const kind = kindOf("", job.result_url);
  const src = job.status === "completed" ? thumbnailOf(job) : null;
  if (src && kind === "image") {
    button.append(el("img", { src, alt: job.prompt, loading: "lazy", decoding: "async" }));
  } else {
    const glyph = { video: "▶", audio: "♪" }[kind] || (TERMINAL.has(job.status) ? "□" : "…");
    button.append(el("span", { class: "placeholder", "aria-hidden": "true", text: glyph }),
      el("span", { class: "sr-only", text: job.prompt }));
  }
  const badge = el("span", { class: `badge ${job.status}`, text: job.status });
  const prompt = el("span", { class: "caption", text: job.prompt, "aria-hidden": "true" });
  button.append(badge, prompt);
  button.setAttribute("aria-label", `${job.prompt} (${job.status})`);
  card.replaceChildren(button);
  return card;
}

// A card's picture: the first output's thumbnail (a small copy the server made once), else the
// output itself (a server without thumbnails, an image that small already). A job known only
// from its status events says neither yet: nothing, until its detail does (no full-size load).
function thumbnailOf(job) {
  const first = job.outputs && job.outputs[0];
  if (first) return first.thumbnail_url || first.url;
  if ("thumbnail_url" in job) return job.thumbnail_url || job.result_url;
  return null;
}

async function loadMore() {
  if (gallery.loading || !gallery.next) return;
  gallery.loading = true;
  $("gallery-status").textContent = "Loading…";
  let failed = false;
  try {
    const page = await api(gallery.next);
    for (const job of page.data) {
      if (!gallery.cards.has(job.job_id)) $("gallery").append(cardFor(job));
    }
    gallery.next = page.next ? relative(page.next) : null;
    $("gallery-status").textContent = gallery.next ? "" : (gallery.cards.size ? "That is all of your jobs." : "");
    $("gallery-empty").hidden = gallery.cards.size > 0;
  } catch (error) {
    failed = true; // no automatic retry: the button (or a new key) tries again
    $("gallery-status").textContent = error.status === 401 ? "" : describe(error);
  } finally {
    gallery.loading = false;
    $("more-button").hidden = !gallery.next;
    $("more-button").textContent = failed ? "Try again" : "Load more";
  }
  // A tall screen may show the sentinel with room to spare: keep filling it.
  if (!failed && gallery.next && sentinelVisible()) loadMore();
}

function relative(url) {
  const parsed = new URL(url, location.href);
  return parsed.pathname + parsed.search;
}

function sentinelVisible() {
  const box = $("more").getBoundingClientRect();
  return box.top < window.innerHeight + 400;
}

function resetGallery() {
  gallery.next = `${API}/jobs?limit=${PAGE_SIZE}`;
  gallery.cards.clear();
  $("gallery").replaceChildren();
  loadMore();
}

function updateCard(job) {
  const card = gallery.cards.get(job.job_id);
  if (card) cardFor({ ...card.job, ...job });
}

// --- the current job ------------------------------------------------------------------------

let live = null; // { jobId, controller }

async function watchLive(job) {
  if (live) live.controller.abort();
  const controller = new AbortController();
  live = { jobId: job.job_id, controller };
  const state = { ...job };
  let progress = null;
  $("live").hidden = false;
  $("live").dataset.jobId = job.job_id;
  $("live-prompt").textContent = job.prompt;
  $("live-outputs").replaceChildren();
  $("live-cancel").hidden = false;
  const show = () => {
    $("live-status").textContent = statusText(state, progress);
    setProgress($("live-progress"), state, progress);
    $("live-cancel").hidden = TERMINAL.has(state.status);
    if (gallery.cards.has(state.job_id)) cardFor({ ...state });
  };
  show();
  try {
    await follow(state.job_id, (kind, data) => {
      if (kind === "progress") progress = data;
      if (kind === "status") Object.assign(state, data);
      if (kind === "queue") Object.assign(state, { queue_position: data.queue_position, paused: data.paused });
      show();
    }, controller.signal);
    if (controller.signal.aborted) return;
    const detail = await api(`${API}/jobs/${state.job_id}`);
    Object.assign(state, detail);
    show();
    if (detail.status === "completed") renderOutputs($("live-outputs"), detail);
    if (detail.error) $("live-status").textContent += ` — ${detail.error}`;
  } catch (error) {
    if (!controller.signal.aborted) $("live-status").textContent = describe(error);
  }
}

// --- the input image (image-to-image) ---------------------------------------------------------

// The picked or dropped file, uploaded at once through POST /files; `upload` settles with its
// file's `uri` (what the job's `image` parameter names). A newer pick replaces an older one,
// even one whose upload is still running.
let inputImage = null; // { file, preview, upload }

function showFormError(text) {
  $("form-error").textContent = text;
  $("form-error").hidden = !text;
}

function forgetImage() {
  if (inputImage) URL.revokeObjectURL(inputImage.preview);
  inputImage = null;
  $("image-chosen").hidden = true;
  $("image-preview").removeAttribute("src");
}

function removeImage() {
  forgetImage();
  $("image-file").value = "";
}

function chooseImage(file) {
  forgetImage();
  if (!file) return;
  showFormError("");
  const form = new FormData();
  form.append("file", file, file.name);
  const chosen = { file, preview: URL.createObjectURL(file), upload: null };
  chosen.upload = api(`${API}/files`, { method: "POST", form }).then((uploaded) => {
    if (inputImage === chosen) $("image-state").textContent = `${file.name} (${formatBytes(uploaded.size)})`;
    return uploaded.uri;
  }, (error) => {
    if (inputImage === chosen) {
      removeImage();
      showFormError(`The image was not uploaded: ${describe(error)}`);
    }
    throw error;
  });
  chosen.upload.catch(() => {}); // reported above; a submit waiting on it reports it again
  inputImage = chosen;
  $("image-preview").src = chosen.preview;
  $("image-state").textContent = `${file.name}: uploading…`;
  $("image-chosen").hidden = false;
}

function acceptDrops(form) {
  const hasFiles = (event) => [...event.dataTransfer.types].includes("Files");
  form.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    form.classList.add("dropping");
  });
  form.addEventListener("dragleave", (event) => {
    if (!form.contains(event.relatedTarget)) form.classList.remove("dropping");
  });
  form.addEventListener("drop", (event) => {
    form.classList.remove("dropping");
    if (!hasFiles(event)) return;
    event.preventDefault();
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (!file) { showFormError("Drop an image file (PNG, JPEG, WebP or GIF)."); return; }
    $("image-file").value = ""; // the dropped file replaces a picked one
    chooseImage(file);
  });
}

async function submit(event) {
  event.preventDefault();
  const form = $("generate-form");
  const error = $("form-error");
  error.hidden = true;
  const prompt = $("prompt").value.trim();
  if (!prompt) {
    error.textContent = "Write a prompt first.";
    error.hidden = false;
    $("prompt").focus();
    return;
  }
  const parameters = {
    width: Number($("width").value),
    height: Number($("height").value),
    num_outputs: Number($("num_outputs").value),
    output_format: $("output_format").value,
    num_inference_steps: Number($("num_inference_steps").value || 50),
  };
  if ($("seed").value !== "") parameters.seed = Number($("seed").value);
  if ($("guidance_scale").value !== "") parameters.guidance_scale = Number($("guidance_scale").value);
  if ($("negative_prompt").value.trim()) parameters.negative_prompt = $("negative_prompt").value.trim();
  const body = { prompt, parameters };
  if ($("model").value.trim()) body.model = $("model").value.trim();
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    if (inputImage) parameters.image = await inputImage.upload;
    const created = await api(`${API}/generate`,
      { method: "POST", json: body, extraHeaders: { "Idempotency-Key": randomKey() } });
    const job = { job_id: created.job_id, status: created.status, prompt, result_url: null };
    $("gallery").prepend(cardFor(job));
    $("gallery-empty").hidden = true;
    watchLive(job);
    form.querySelector("details").open = false;
  } catch (err) {
    error.textContent = describe(err);
    error.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
  }
}

async function cancel(jobId, statusLine) {
  try {
    const job = await api(`${API}/jobs/${jobId}/cancel`, { method: "POST" });
    statusLine.textContent = statusText(job);
    updateCard(job);
    return job;
  } catch (error) {
    statusLine.textContent = error.status === 409
      ? `Not canceled: ${describe(error)}`
      : describe(error);
    return null;
  }
}

// --- the detail view ------------------------------------------------------------------------

let detailWatch = null;

async function openDetail(jobId) {
  if (location.hash !== `#job=${jobId}`) history.pushState(null, "", `#job=${jobId}`);
  const dialog = $("detail");
  if (detailWatch) detailWatch.abort();
  detailWatch = new AbortController();
  const signal = detailWatch.signal;
  $("detail-heading").textContent = "Job";
  $("detail-prompt").textContent = "";
  $("detail-status").textContent = "Loading…";
  $("detail-outputs").replaceChildren();
  $("detail-facts").replaceChildren();
  $("detail-error").hidden = true;
  $("detail-cancel").hidden = true;
  $("detail-progress").hidden = true;
  $("detail-cancel").onclick = async () => {
    const job = await cancel(jobId, $("detail-status"));
    if (job) showDetail(job);
  };
  if (!dialog.open) dialog.showModal();
  let job;
  try {
    job = await api(`${API}/jobs/${jobId}`, { signal });
  } catch (error) {
    if (!signal.aborted) $("detail-status").textContent = error.status === 404 ? "No such job." : describe(error);
    return;
  }
  showDetail(job);
  if (TERMINAL.has(job.status)) return;
  let progress = null;
  try {
    await follow(jobId, (kind, data) => {
      if (kind === "progress") progress = data;
      if (kind === "status") Object.assign(job, data);
      if (kind === "queue") Object.assign(job, { queue_position: data.queue_position, paused: data.paused });
      $("detail-status").textContent = statusText(job, progress);
      setProgress($("detail-progress"), job, progress);
    }, signal);
    if (!signal.aborted) showDetail(await api(`${API}/jobs/${jobId}`, { signal }));
  } catch { /* closed, or the status line already says why */ }
}

function showDetail(job) {
  $("detail-heading").textContent = `Job ${job.job_id.slice(0, 8)}`;
  $("detail-prompt").textContent = job.prompt || "";
  $("detail-status").textContent = statusText(job, job.progress);
  const bar = $("detail-progress");
  bar.hidden = TERMINAL.has(job.status);
  setProgress(bar, job, job.progress);
  $("detail-error").hidden = !job.error;
  $("detail-error").textContent = job.error || "";
  $("detail-cancel").hidden = TERMINAL.has(job.status);
  if (job.outputs) renderOutputs($("detail-outputs"), job);
  const facts = [
    ["Job id", job.job_id],
    ["Model", job.model || "default"],
    ["Provider", job.provider],
    ["Created", job.created_at && new Date(job.created_at).toLocaleString()],
    ["Finished", job.completed_at && new Date(job.completed_at).toLocaleString()],
    ["Took", job.duration_seconds != null ? `${job.duration_seconds.toFixed(2)} s` : null],
    ["Attempts", job.attempts != null ? `${job.attempts} of ${1 + job.max_retries}` : null],
    ["Parameters", job.parameters && Object.entries(job.parameters)
      .filter(([, value]) => value !== null).map(([k, v]) => `${k}=${v}`).join(", ")],
  ];
  $("detail-facts").replaceChildren(...facts.filter(([, value]) => value)
    .flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: String(value) })]));
  updateCard(job);
}

function closeDetail() {
  if (detailWatch) detailWatch.abort();
  if ($("detail").open) $("detail").close();
}

function route() {
  const match = /^#job=([0-9a-f-]{36})$/i.exec(location.hash);
  if (match) openDetail(match[1]); else closeDetail();
}

// --- start ----------------------------------------------------------------------------------

function fillDimensions() {
  const sizes = [256, 384, 512, 640, 768, 1024, 1536, 2048]
    .filter((size) => size >= config.minDimension && size <= config.maxDimension);
  for (const id of ["width", "height"]) {
    $(id).replaceChildren(...sizes.map((size) => el("option", { value: String(size), text: String(size) })));
    $(id).value = sizes.includes(512) ? "512" : String(sizes[0]);
  }
  $("prompt").maxLength = config.maxPromptLength;
}

async function loadModels() {
  // The models this server runs (GET /models), offered as the Model field's suggestions.
  try {
    const { data } = await api(`${API}/models`);
    $("model-list").replaceChildren(...data.map((model) => el("option", { value: model.name })));
    const fallback = data.find((model) => model.default);
    if (fallback) $("model").placeholder = `${fallback.name} (default)`;
  } catch { /* a server without the list, or no key yet: the field stays free text */ }
}

function start() {
  fillDimensions();
  loadModels();
  updateKeyButton();
  $("generate-form").addEventListener("submit", submit);
  $("image-file").addEventListener("change", () => chooseImage($("image-file").files[0]));
  $("image-remove").addEventListener("click", removeImage);
  acceptDrops($("generate-form"));
  $("live-cancel").addEventListener("click", () => live && cancel(live.jobId, $("live-status")));
  $("live-open").addEventListener("click", () => live && openDetail(live.jobId));
  $("refresh").addEventListener("click", resetGallery);
  $("more-button").addEventListener("click", loadMore);
  $("key-button").addEventListener("click", () => askForKey(""));
  $("key-form").addEventListener("submit", () => {
    setApiKey($("key-input").value.trim());
    resetGallery();
    loadModels();
  });
  $("key-forget").addEventListener("click", () => { setApiKey(""); $("key-dialog").close(); resetGallery(); });
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  $("detail").addEventListener("close", () => {
    if (detailWatch) detailWatch.abort();
    if (location.hash.startsWith("#job=")) history.replaceState(null, "", location.pathname + location.search);
  });
  window.addEventListener("popstate", route);
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadMore();
  }, { rootMargin: "400px" }).observe($("more"));
  loadMore();
  route();
}

start();
