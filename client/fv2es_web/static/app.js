// FV2ES web page: upload (with progress), analysis (with elapsed time), then the video with its
// emotion timeline, one lane per person under it, and the people table; every error the server
// returns is shown as it says it.
"use strict";

const $ = (id) => document.getElementById(id);
const KNOWN_COLOURS = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"];
let limits = null;
let result = null;

function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }
function fmt(seconds) { return seconds.toFixed(2) + " s"; }
function personName(id) { return "person " + id; }
function hasSpeaker(s) { return s.speaker !== undefined && s.speaker !== null && s.speaker >= 0; }

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

// A result whose top score is below the server's unsure_below: a guess, not an answer.
function unsureText(result) {
  return result.unsure ? " (unsure)" : "";
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
    block.className = s.unsure ? "segment unsure" : "segment";
    block.dataset.index = i;
    block.style.flex = String(Math.max(s.end - s.start, 0.01));
    block.title = fmt(s.start) + "-" + fmt(s.end) + ": " + s.emotion + " " + s.score.toFixed(2) + unsureText(s) +
      (s.transcript ? "\n" + s.transcript : "");
    block.textContent = s.emotion + (s.unsure ? "?" : "");
    block.style.opacity = String(0.45 + 0.55 * s.score);
    colour(block, s.emotion);
    block.onclick = () => { $("player").currentTime = s.start + 0.01; };
    timeline.append(block);
    const line = document.createElement("li");
    line.dataset.index = i;
    const time = document.createElement("span"); time.className = "time"; time.textContent = s.start.toFixed(1) + " s";
    line.append(time);
    if (hasSpeaker(s)) {
      const speaker = document.createElement("span"); speaker.className = "speaker"; speaker.textContent = personName(s.speaker) + ":";
      line.append(speaker);
      block.title += "\nspeaking: " + personName(s.speaker);
    }
    line.append(s.emotion + " " + s.score.toFixed(2) + unsureText(s) + (s.transcript ? ": " + s.transcript : ""));
    line.onclick = block.onclick;
    transcript.append(line);
  });
  renderGroup(body.group, segments);
  renderPeople(body.people || [], segments);
  $("axis-end").textContent = fmt(duration);
  $("overall-emotion").textContent = body.emotion + unsureText(body);
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

// The group's lane under the timeline (everyone in view at once): a cell per segment coloured by the
// group's valence, and the whole video's group emotion; hidden for a server without group outputs.
function renderGroup(group, segments) {
  const lane = $("group-lane");
  lane.replaceChildren();
  const label = document.createElement("span"); label.className = "lane-label"; label.textContent = "group";
  lane.append(label);
  segments.forEach((s, i) => {
    const cell = document.createElement("div");
    cell.className = "lane-cell";
    cell.dataset.index = i;
    cell.style.flex = String(Math.max(s.end - s.start, 0.01));
    if (s.group) {
      cell.classList.add("group-" + s.group.emotion);
      cell.style.opacity = String(0.45 + 0.55 * s.group.score);
      cell.title = "group, " + fmt(s.start) + "-" + fmt(s.end) + ": " + s.group.emotion + " " + s.group.score.toFixed(2);
    }
    cell.onclick = () => { $("player").currentTime = s.start + 0.01; };
    lane.append(cell);
  });
  lane.hidden = !group;
  $("group-overall").hidden = !group;
  if (group) {
    $("group-emotion").textContent = group.emotion;
    $("group-score").textContent = group.score.toFixed(2);
  }
}

// One lane per person under the timeline: a cell per segment, coloured by that person's emotion
// there (empty where they are not seen), hatched and outlined where they are the speaker.
function renderPeople(people, segments) {
  const lanes = $("people-lanes");
  const rows = $("people-table").tBodies[0];
  lanes.replaceChildren();
  rows.replaceChildren();
  for (const person of people) {
    const lane = document.createElement("div");
    lane.className = "lane";
    lane.dataset.person = person.person;
    const label = document.createElement("span"); label.className = "lane-label"; label.textContent = personName(person.person);
    lane.append(label);
    segments.forEach((s, i) => {
      const cell = document.createElement("div");
      cell.className = "lane-cell";
      cell.dataset.index = i;
      cell.style.flex = String(Math.max(s.end - s.start, 0.01));
      const seen = (s.people || {})[String(person.person)];
      const speaking = s.speaker === person.person;
      if (seen) {
        colour(cell, seen.emotion);
        cell.style.opacity = String(0.45 + 0.55 * seen.score);
        cell.title = personName(person.person) + ", " + fmt(s.start) + "-" + fmt(s.end) + ": " + seen.emotion + " " + seen.score.toFixed(2);
      } else {
        cell.classList.add("absent");
        cell.title = personName(person.person) + " not seen, " + fmt(s.start) + "-" + fmt(s.end);
      }
      if (speaking) { cell.classList.add("speaking"); cell.title += " (speaking)"; }
      cell.onclick = () => { $("player").currentTime = s.start + 0.01; };
      lane.append(cell);
    });
    lanes.append(lane);

    const row = document.createElement("tr");
    row.dataset.person = person.person;
    const speakingSeconds = person.speaking_segments.reduce((sum, i) => sum + segments[i].end - segments[i].start, 0);
    const emotion = document.createElement("td"); emotion.className = "emotion";
    const swatch = document.createElement("span"); colour(swatch, person.emotion);
    emotion.append(swatch, person.emotion);
    const cells = [personName(person.person), null, person.score.toFixed(2), fmt(person.seconds),
      person.speaking_segments.length ? person.speaking_segments.length + " segment" +
        (person.speaking_segments.length === 1 ? "" : "s") + " (" + fmt(speakingSeconds) + ")" : "-"];
    for (const text of cells) {
      if (text === null) { row.append(emotion); continue; }
      const cell = document.createElement("td"); cell.textContent = text; row.append(cell);
    }
    rows.append(row);
  }
  lanes.hidden = people.length === 0;
  $("people").hidden = people.length === 0;
}

function highlight(time) {
  if (!result) return;
  const segments = result.segments;
  let index = segments.findIndex((s) => time >= s.start && time < s.end);
  if (index < 0 && segments.length) index = time >= segments[segments.length - 1].end ? segments.length - 1 : 0;
  for (const element of document.querySelectorAll(".segment, #transcript li, .lane-cell")) {
    element.classList.toggle("current", Number(element.dataset.index) === index);
  }
  if (index >= 0) {
    const s = segments[index];
    $("current-emotion").textContent = s.emotion + unsureText(s) + " " + fmt(s.start) + "-" + fmt(s.end);
    scoreRows($("current-scores"), s.scores);
    const list = $("current-people");
    list.replaceChildren();
    for (const [id, seen] of Object.entries(s.people || {})) {
      const item = document.createElement("li");
      const speaking = s.speaker === Number(id);
      item.className = speaking ? "speaking" : "";
      item.textContent = personName(id) + (speaking ? " (speaking)" : "") + ": " + seen.emotion + " " + seen.score.toFixed(2);
      list.append(item);
    }
    list.hidden = list.children.length === 0;
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
