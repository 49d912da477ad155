// The page: sign in, prepare an expansion, list the account's tasks. It uses the public Kling
// routes only (SPEC 1), as any client would.

import { bearer } from "/assets/jwt.js";
import { checkExpansion, checkFile, padding, plan } from "/assets/geometry.js";

const config = JSON.parse(document.getElementById("config").textContent);
const SIMPLE = "/v1/images/expand";
const OFFICIAL = "/v1/images/editing/expand";
const KEYS = "outpaint.keys";
const BOXES = "outpaint.boxes";
const MAX_BOXES = 500;
const MAX_SEED = 2n ** 64n - 1n;
const SIDES = ["up", "down", "left", "right"];

const $ = (id) => document.getElementById(id);

/** A failed API call: the HTTP status (0 when there was no answer) and the server's message. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const state = {
  keys: JSON.parse(sessionStorage.getItem(KEYS) || "null"),
  authRequired: true,
  photo: null, // {file, url, width, height}; width null when the browser cannot show it
  problem: null, // why the server would refuse the current form, in its words
  drag: null, // {side, start, startRatio, scale} while an edge is dragged
  scale: 1,
  page: 1,
  poll: null,
  loads: 0, // the latest list request; an older one's answer is dropped
  cards: new Map(), // task_id -> <li>
};

// ---------------------------------------------------------------------------------------------
// The API

/** Parses an envelope, keeping `seed` exact (u64 does not fit a JS number). */
function parseEnvelope(text) {
  return JSON.parse(text, (key, value, context) =>
    key === "seed" && context?.source ? context.source : value);
}

async function api(method, path, body) {
  const headers = {};
  if (state.keys) headers.Authorization = await bearer(state.keys.access, state.keys.secret);
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  let envelope;
  try {
    envelope = parseEnvelope(text);
  } catch {
    throw new ApiError(response.status, `the server answered HTTP ${response.status} without an envelope`);
  }
  if (envelope.code !== 0) throw new ApiError(response.status, envelope.message);
  return envelope.data;
}

// ---------------------------------------------------------------------------------------------
// Signing in

function show(id, visible) {
  $(id).hidden = !visible;
}

async function start() {
  // A server without accounts answers an unsigned list call; one with accounts says 401.
  const saved = state.keys;
  state.keys = null;
  try {
    await api("GET", `${OFFICIAL}?pageNum=1&pageSize=1`);
    state.authRequired = false;
  } catch (err) {
    if (err.status !== 401) {
      $("loading").textContent = `Cannot load: ${err.message}. Reload to try again.`;
      return;
    }
  }
  show("loading", false);
  if (!state.authRequired) return enterApp();
  state.keys = saved;
  if (!saved) return showSignIn("");
  try {
    await api("GET", `${OFFICIAL}?pageNum=1&pageSize=1`);
    enterApp();
  } catch (err) {
    signOut(err.message);
  }
}

function showSignIn(message) {
  show("app", false);
  show("account", false);
  show("sign-in", true);
  $("sign-in-error").textContent = message;
  $("access-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const access = $("access-key").value.trim();
  const secret = $("secret-key").value;
  if (!access || !secret) {
    $("sign-in-error").textContent = "Enter both the access key and the secret key.";
    return;
  }
  state.keys = { access, secret };
  try {
    await api("GET", `${OFFICIAL}?pageNum=1&pageSize=1`);
  } catch (err) {
    state.keys = null;
    $("sign-in-error").textContent = err.message;
    return;
  }
  sessionStorage.setItem(KEYS, JSON.stringify(state.keys));
  $("secret-key").value = "";
  enterApp();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEYS);
  state.keys = null;
  clearTimeout(state.poll);
  state.loads += 1;
  state.cards.clear();
  $("tasks").replaceChildren();
  showSignIn(message);
}

function enterApp() {
  show("sign-in", false);
  show("app", true);
  show("account", true);
  $("account-name").textContent = state.authRequired
    ? `Signed in as ${state.keys.access}`
    : "Authentication is off on this server";
  show("sign-out", state.authRequired);
  state.page = 1;
  loadTasks();
}

/** A 401 means the keys stopped working (changed on the server, or the clock is off). */
function handleAuthError(err) {
  if (err.status === 401 && state.authRequired) {
    signOut(err.message);
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// The form: photo, geometry, options

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

/** A number field's value; NaN when empty or not a number (the checks then say so). */
function number(id) {
  const text = $(id).value.trim();
  return text === "" ? NaN : Number(text);
}

function expansion() {
  if (mode() === "uniform") {
    const sides = {};
    for (const box of document.querySelectorAll("input[name=side]")) {
      sides[box.value] = box.checked;
    }
    return { form: "uniform", sides, ratio: number("ratio") };
  }
  return { form: "per_side", up: number("up"), down: number("down"), left: number("left"), right: number("right") };
}

async function setPhoto(file) {
  if (!file) return;
  if (state.photo) URL.revokeObjectURL(state.photo.url);
  const url = URL.createObjectURL(file);
  state.photo = { file, url, width: null, height: null };
  const preview = $("preview");
  preview.src = url;
  try {
    await preview.decode();
    if (state.photo?.file !== file) return; // another photo came meanwhile
    state.photo.width = preview.naturalWidth;
    state.photo.height = preview.naturalHeight;
    $("drop-text").textContent = `${file.name}: ${state.photo.width} × ${state.photo.height} px. Drop or choose another to replace it.`;
  } catch {
    $("drop-text").textContent = `${file.name}: this browser cannot show it; the server will check it.`;
  }
  update();
}

/** Recomputes the canvas, the outline and the refusal message from the form. */
function update() {
  const uniform = mode() === "uniform";
  show("uniform", uniform);
  show("per-side", !uniform);
  const e = expansion();
  const photo = state.photo;
  const known = photo && photo.width !== null;
  let problem = checkExpansion(e, config);
  if (!problem && known) problem = checkFile(photo.file.size, photo.width, photo.height, config);
  if (!problem && known) {
    const planned = plan(photo.width, photo.height, e, config);
    if (!planned.ok) problem = planned.message;
  }
  state.problem = problem;
  $("create-error").textContent = problem ?? "";

  const pad = known && !checkExpansion(e, config) ? padding(photo.width, photo.height, e) : null;
  for (const side of SIDES) {
    const key = { up: "top", down: "bottom", left: "left", right: "right" }[side];
    $(`${side}-px`).textContent = pad ? `+${pad[key]} px` : "";
    const handle = document.querySelector(`.handle[data-side=${side}]`);
    handle.hidden = uniform;
    handle.setAttribute("aria-valuenow", String(number(side)));
    handle.setAttribute("aria-valuetext", pad ? `${number(side)}, ${pad[key]} pixels` : String(number(side)));
  }
  show("stage", Boolean(known));
  if (!known) {
    $("size").textContent = photo ? "" : "No photo yet.";
    return;
  }
  if (!pad) {
    $("size").textContent = `${photo.width} × ${photo.height} px`;
    return;
  }
  const width = photo.width + pad.left + pad.right;
  const height = photo.height + pad.top + pad.bottom;
  const area = (width * height) / (photo.width * photo.height);
  $("size").textContent = `${photo.width} × ${photo.height} px → canvas ${width} × ${height} px (${area.toFixed(2)}× the area)`;
  draw(pad, width, height);
  $("canvas-box").classList.toggle("invalid", Boolean(problem));
}

/** The canvas outline with the photo in its box, scaled to the stage (frozen while dragging). */
function draw(pad, width, height) {
  const stage = $("stage");
  if (!state.drag) {
    const room = Math.max(stage.clientWidth - 28, 100); // less the stage's padding
    const tall = Math.max(200, Math.min(window.innerHeight * 0.5, 480));
    state.scale = Math.min(room / width, tall / height);
  }
  const s = state.scale;
  const box = $("canvas-box");
  box.style.width = `${width * s}px`;
  box.style.height = `${height * s}px`;
  const preview = $("preview");
  preview.style.left = `${pad.left * s}px`;
  preview.style.top = `${pad.top * s}px`;
  preview.style.width = `${state.photo.width * s}px`;
  preview.style.height = `${state.photo.height * s}px`;
}

/** Sets a per-side ratio (rounded to 3 decimals, within [0, 2]) and redraws. */
function setRatio(side, ratio) {
  const clamped = Math.min(2, Math.max(0, Math.round(ratio * 1000) / 1000));
  $(side).value = String(clamped);
  update();
}

function sideLength(side) {
  return side === "up" || side === "down" ? state.photo.height : state.photo.width;
}

/** Pointer position along the side's outward direction, in screen pixels. */
function outward(side, event) {
  return { up: -event.clientY, down: event.clientY, left: -event.clientX, right: event.clientX }[side];
}

function dragStart(event) {
  const side = event.target.dataset.side;
  if (!side || !state.photo?.width) return;
  event.preventDefault();
  event.target.setPointerCapture(event.pointerId);
  event.target.focus();
  const startRatio = Number.isFinite(number(side)) ? number(side) : 0;
  state.drag = { side, start: outward(side, event), startRatio, scale: state.scale };
}

function dragMove(event) {
  const drag = state.drag;
  if (!drag) return;
  const moved = (outward(drag.side, event) - drag.start) / drag.scale;
  setRatio(drag.side, drag.startRatio + moved / sideLength(drag.side));
}

function dragEnd() {
  if (!state.drag) return;
  state.drag = null;
  update();
}

/** Arrow keys on an edge: +1 grows the side, -1 shrinks it (the arrow pointing away from the
 * photo grows it, and Up / Right grow it as on any slider). Shift: ten times the step. */
const EDGE_KEYS = {
  up: { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1 },
  down: { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 },
  left: { ArrowLeft: 1, ArrowUp: 1, ArrowRight: -1, ArrowDown: -1 },
  right: { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 },
};

function handleKey(event) {
  const side = event.target.dataset.side;
  const current = Number.isFinite(number(side)) ? number(side) : 0;
  const direction = EDGE_KEYS[side]?.[event.key];
  let next;
  if (direction) next = current + direction * (event.shiftKey ? 0.1 : 0.01);
  else if (event.key === "PageUp") next = current + 0.1;
  else if (event.key === "PageDown") next = current - 0.1;
  else if (event.key === "Home") next = 0;
  else return;
  event.preventDefault();
  setRatio(side, next);
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** Where the original sits in each task's canvas, for the before/after view (this browser only). */
function boxes() {
  try {
    return JSON.parse(localStorage.getItem(BOXES) || "{}");
  } catch {
    return {};
  }
}

function rememberBox(taskId, box) {
  const all = boxes();
  all[taskId] = box;
  const ids = Object.keys(all);
  for (const id of ids.slice(0, Math.max(0, ids.length - MAX_BOXES))) delete all[id];
  try {
    localStorage.setItem(BOXES, JSON.stringify(all));
  } catch {
    // Storage full or disabled: the view falls back to the result alone.
  }
}

async function submit(event) {
  event.preventDefault();
  const error = $("create-error");
  update();
  if (!state.photo) {
    error.textContent = "Choose a photo first.";
    return;
  }
  if (state.problem) {
    error.textContent = state.problem;
    return;
  }
  const seed = $("seed").value.trim();
  if (seed && !(/^\d+$/.test(seed) && BigInt(seed) <= MAX_SEED)) {
    error.textContent = `seed must be a whole number from 0 to ${MAX_SEED}`;
    return;
  }
  const e = expansion();
  const { file, width, height } = state.photo;
  const box = width === null ? null : { width, height, ...padding(width, height, e) };
  const body = { n: Number($("n").value) };
  const prompt = $("prompt").value.trim();
  if (prompt) body.prompt = prompt;
  if (!$("model-field").hidden) body.model = $("model").value;
  let path;
  if (e.form === "per_side") {
    path = OFFICIAL;
    for (const side of SIDES) body[`${side}_expansion_ratio`] = e[side];
  } else {
    path = SIMPLE;
    const named = ["left", "right", "top", "bottom"].filter((side) => e.sides[side]);
    body.direction = named.length === 4 ? "all" : named.join(",");
    body.expansion_ratio = e.ratio;
  }
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Sending…";
  try {
    body.image = await readDataUrl(file);
    // The seed is written out as digits: a u64 does not survive a JS number.
    let json = JSON.stringify(body);
    if (seed) json = `${json.slice(0, -1)},"seed":${BigInt(seed)}}`;
    const task = await api("POST", path, json);
    if (box) rememberBox(task.task_id, box);
    error.textContent = "";
    state.page = 1;
    await loadTasks();
  } catch (err) {
    if (!handleAuthError(err)) error.textContent = err.message;
  } finally {
    button.disabled = false;
    button.textContent = "Expand";
  }
}

// ---------------------------------------------------------------------------------------------
// The task list

function pageSize() {
  return Number($("page-size").value);
}

async function loadTasks() {
  clearTimeout(state.poll);
  const ticket = ++state.loads;
  let tasks;
  try {
    tasks = await api("GET", `${OFFICIAL}?pageNum=${state.page}&pageSize=${pageSize()}`);
    if (ticket !== state.loads) return;
    $("tasks-error").textContent = "";
  } catch (err) {
    if (ticket !== state.loads) return;
    if (handleAuthError(err)) return;
    $("tasks-error").textContent = err.message;
    state.poll = setTimeout(loadTasks, 5000);
    return;
  }
  render(tasks);
  if (tasks.some((t) => t.task_status === "submitted" || t.task_status === "processing")) {
    state.poll = setTimeout(loadTasks, document.hidden ? 5000 : 1000);
  }
}

function render(tasks) {
  const list = $("tasks");
  const seen = new Set();
  for (const task of tasks) {
    seen.add(task.task_id);
    let card = state.cards.get(task.task_id);
    if (!card) {
      card = $("task-template").content.firstElementChild.cloneNode(true);
      card.dataset.taskId = task.task_id;
      state.cards.set(task.task_id, card);
    }
    fill(card, task);
    list.append(card);
  }
  for (const [id, card] of state.cards) {
    if (!seen.has(id)) {
      card.remove();
      state.cards.delete(id);
    }
  }
  show("no-tasks", tasks.length === 0 && state.page === 1);
  $("page").textContent = `Page ${state.page}`;
  $("prev").disabled = state.page === 1;
  $("next").disabled = tasks.length < pageSize();
}

function fill(card, task) {
  const status = card.querySelector(".status");
  status.textContent = task.task_status;
  status.className = `status ${task.task_status}`;
  card.dataset.status = task.task_status;
  const progress = card.querySelector("progress");
  const progressing = task.task_status === "processing" && typeof task.task_info.progress === "number";
  progress.hidden = !progressing;
  if (progressing) {
    progress.value = task.task_info.progress;
    progress.textContent = `${Math.round(task.task_info.progress * 100)} %`;
  }
  const when = card.querySelector(".when");
  when.dateTime = new Date(task.created_at).toISOString();
  when.textContent = new Date(task.created_at).toLocaleString();
  const info = task.task_info;
  const meta = [`task ${task.task_id}`];
  if (info.external_task_id) meta.push(`your id ${info.external_task_id}`);
  if (info.model) meta.push(info.model);
  if (info.seed !== undefined) meta.push(`seed ${info.seed}`);
  card.querySelector(".meta").textContent = meta.join(" · ");
  card.querySelector(".reason").textContent = task.task_status === "failed" ? task.task_status_msg : "";
  const results = card.querySelector(".results");
  if (task.task_status === "succeed" && results.childElementCount === 0) {
    const box = boxes()[task.task_id];
    for (const image of task.task_result.images) results.append(result(task, image, box));
  }
}

/** One result: the image, a before/after slider when the original's box is known, a download. */
function result(task, image, box) {
  const figure = $("result-template").content.firstElementChild.cloneNode(true);
  const after = figure.querySelector(".after");
  after.src = image.url;
  after.alt = `Result ${image.index + 1} of task ${task.task_id}`;
  after.addEventListener("load", () => {
    figure.querySelector(".dims").textContent = `${after.naturalWidth} × ${after.naturalHeight} px`;
  });
  const link = figure.querySelector(".download");
  const extension = image.url.split(".").pop();
  link.href = image.url;
  link.download = `outpaint-${task.task_id}-${image.index}.${extension}`;
  link.textContent = `Download ${image.index + 1}`;
  if (box) {
    const canvasWidth = box.width + box.left + box.right;
    const canvasHeight = box.height + box.top + box.bottom;
    const before = figure.querySelector(".before");
    const hole = figure.querySelector(".hole");
    hole.style.left = `${(100 * box.left) / canvasWidth}%`;
    hole.style.top = `${(100 * box.top) / canvasHeight}%`;
    hole.style.width = `${(100 * box.width) / canvasWidth}%`;
    hole.style.height = `${(100 * box.height) / canvasHeight}%`;
    before.hidden = false;
    const slider = figure.querySelector(".slider");
    slider.hidden = false;
    const range = slider.querySelector("input");
    range.value = "50";
    const reveal = () => {
      before.style.clipPath = `inset(0 ${100 - Number(range.value)}% 0 0)`;
      range.setAttribute("aria-valuetext", `${range.value} % original`);
    };
    range.addEventListener("input", reveal);
    reveal();
  }
  return figure;
}

// ---------------------------------------------------------------------------------------------
// Wiring

function init() {
  for (let i = 1; i <= config.max_variations; i++) $("n").add(new Option(String(i)));
  $("prompt").maxLength = config.max_prompt_chars;
  if (config.models.length > 1) {
    for (const name of config.models) {
      const label = name === config.default_model ? `${name} (default)` : name;
      $("model").add(new Option(label, name, false, name === config.default_model));
    }
    show("model-field", true);
  }

  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("create-form").addEventListener("submit", submit);
  $("create-form").addEventListener("input", (event) => {
    if (event.target.id !== "file") update();
  });
  $("file").addEventListener("change", (event) => setPhoto(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setPhoto(event.dataTransfer.files[0]);
  });
  for (const handle of document.querySelectorAll(".handle")) {
    handle.addEventListener("pointerdown", dragStart);
    handle.addEventListener("pointermove", dragMove);
    handle.addEventListener("pointerup", dragEnd);
    handle.addEventListener("pointercancel", dragEnd);
    handle.addEventListener("keydown", handleKey);
  }
  // Redraw the outline whenever the form's width changes (window, layout, the app appearing).
  new ResizeObserver(() => update()).observe($("drop"));
  $("refresh").addEventListener("click", loadTasks);
  $("prev").addEventListener("click", () => {
    state.page = Math.max(1, state.page - 1);
    loadTasks();
  });
  $("next").addEventListener("click", () => {
    state.page += 1;
    loadTasks();
  });
  $("page-size").addEventListener("change", () => {
    state.page = 1;
    loadTasks();
  });
  update();
  start();
}

init();
