// FV2ES web page: upload (with progress), analysis (with elapsed time), then the video with its
// emotion timeline; every error the server returns is shown as it says it.
"use strict";

const $ = (id) => document.getElementById(id);
const KNOWN_COLOURS = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"];
let limits = null;
let result = null;

function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }
function fmt(seconds) { return seconds.toFixed(2) + " s"; }

function showError(code, message) {
  $("error").textContent = (code ? "[" + code + "] " : "") + message;
  $("error").hidden = false;
}

function colour(element, label) {
  if (KNOWN_COLOURS.includes(label)) { element.classList.add(label); return; }
  let hash = 0;
  for (const c of label) hash = (hash * 31 + c.charCodeAt(0)) % 360;
  element.style.background = "hsl(" + hash + ", 55%, 45%)";
}

function scoreRows(container, scores) {
  container.replaceChildren();
  for (const [label, value] of Object.entries(scores).sort((a, b) => b[1] - a[1])) {
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span"); name.className = "label"; name.textContent = label;
    const fill = document.createElement("span"); fill.className = "fill"; fill.style.width = (value * 160) + "px";
    colour(fill, label);
    const number = document.createElement("span"); number.className = "value"; number.textContent = value.toFixed(2);
    row.append(name, fill, number);
    container.append(row);
  }
}

async function loadLimits() {
  try {
    const reply = await fetch("/api/limits");
    const body = await reply.json();
    if (!reply.ok) { showError(body.error.code, body.error.message); $("limits").textContent = "server not reachable"; return; }
    limits = body;
    $("limits").textContent = "up to " + mib(body.max_input_bytes) +
      (body.max_duration_s ? ", " + Math.round(body.max_duration_s / 60) + " min" : "") + " (server " + body.server + ")";
    $("analyse").disabled = false;
  } catch (e) {
    showError("", "the page's own server does not answer: " + e);
  }
}

function upload(file) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("file", file);
    const xhr = new XMLHttpRequest();
    const started = performance.now();
    let timer = null;
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      $("bar").value = e.loaded / e.total;
      $("status").textContent = "uploading: " + mib(e.loaded) + " of " + mib(e.total);
    };
    xhr.upload.onload = () => {  // the bytes are there: the server is analysing
      $("bar").removeAttribute("value");
      const analysing = performance.now();
      const tick = () => { $("status").textContent = "analysing: " + ((performance.now() - analysing) / 1000).toFixed(0) + " s"; };
      tick();
      timer = setInterval(tick, 500);
    };
    xhr.onloadend = () => {
      clearInterval(timer);
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      resolve({ status: xhr.status, body: body, seconds: (performance.now() - started) / 1000 });
    };
    xhr.open("POST", "/api/analyze");
    xhr.send(form);
  });
}

function render(file, body) {
  result = body;
  const segments = body.segments;
  const duration = segments.length ? segments[segments.length - 1].end : 0;
  $("player").src = URL.createObjectURL(file);
  const timeline = $("timeline");
  const transcript = $("transcript");
  timeline.replaceChildren();
  transcript.replaceChildren();
  segments.forEach((s, i) => {
    const block = document.createElement("div");
    block.className = "segment";
    block.dataset.index = i;
    block.style.flex = String(Math.max(s.end - s.start, 0.01));
    block.title = fmt(s.start) + "-" + fmt(s.end) + ": " + s.emotion + " " + s.score.toFixed(2) +
      (s.transcript ? "\n" + s.transcript : "");
    block.textContent = s.emotion;
    block.style.opacity = String(0.45 + 0.55 * s.score);
    colour(block, s.emotion);
    block.onclick = () => { $("player").currentTime = s.start + 0.01; };
    timeline.append(block);
    const line = document.createElement("li");
    line.dataset.index = i;
    const time = document.createElement("span"); time.className = "time"; time.textContent = s.start.toFixed(1) + " s";
    line.append(time, s.emotion + " " + s.score.toFixed(2) + (s.transcript ? ": " + s.transcript : ""));
    line.onclick = block.onclick;
    transcript.append(line);
  });
  $("axis-end").textContent = fmt(duration);
  $("overall-emotion").textContent = body.emotion;
  $("overall-score").textContent = body.score.toFixed(2);
  scoreRows($("overall-scores"), body.scores);
  $("summary").textContent = segments.length + " segments, " + fmt(duration) + " of video, analysed in " +
    body.seconds.toFixed(1) + " s; " + (body.model_info.weights || "");
  for (const kind of ["json", "csv", "png"]) {
    $("download-" + kind).href = "/api/results/" + body.id + "." + kind;
    $("download-" + kind).setAttribute("download", "");
  }
  $("result").hidden = false;
  highlight(0);
}

function highlight(time) {
  if (!result) return;
  const segments = result.segments;
  let index = segments.findIndex((s) => time >= s.start && time < s.end);
  if (index < 0 && segments.length) index = time >= segments[segments.length - 1].end ? segments.length - 1 : 0;
  for (const element of document.querySelectorAll(".segment, #transcript li")) {
    element.classList.toggle("current", Number(element.dataset.index) === index);
  }
  if (index >= 0) {
    $("current-emotion").textContent = segments[index].emotion + " " + fmt(segments[index].start) + "-" + fmt(segments[index].end);
    scoreRows($("current-scores"), segments[index].scores);
  }
}

$("player").addEventListener("timeupdate", () => highlight($("player").currentTime));
$("player").addEventListener("seeked", () => highlight($("player").currentTime));

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  $("error").hidden = true;
  if (!file) { showError("", "choose a video first"); return; }
  if (limits && file.size > limits.max_input_bytes) {
    showError("INPUT_TOO_LARGE", file.name + " is " + mib(file.size) + ", over the server's limit of " +
      mib(limits.max_input_bytes) + ": not sent");
    return;
  }
  $("analyse").disabled = true;
  $("result").hidden = true;
  $("progress").hidden = false;
  $("bar").value = 0;
  const reply = await upload(file);
  $("progress").hidden = true;
  $("analyse").disabled = false;
  if (reply.status === 200 && reply.body) { render(file, reply.body); return; }
  if (reply.body && reply.body.error) { showError(reply.body.error.code, reply.body.error.message); return; }
  showError("HTTP_" + reply.status, reply.status ? "the page's server answered " + reply.status : "the upload failed (connection lost)");
});

loadLimits();
