// The try-it page: calls the same API as any client (/predict, /similarity, /info). No libraries.
"use strict";

// A server started with --api-key wants "Authorization: Bearer KEY" on every API call. A page load
// cannot send it, so the page is public and asks for the key when the API answers 401; the key
// stays in this tab only (sessionStorage), never in a cookie or the URL.
const KEY = "sentmtl-api-key";

class NeedsKey extends Error {}

async function api(path, body) {
  const headers = body === undefined ? {} : { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers["Authorization"] = "Bearer " + key;
  const r = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const doc = await r.json();
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey(key ? "That key was refused; try again." : "This server needs an API key.");
    throw new NeedsKey((doc.error && doc.error.message) || "an API key is needed");
  }
  if (!r.ok) throw new Error((doc.error && doc.error.message) || r.statusText);
  return doc;
}

function askForKey(why) {
  document.getElementById("key-why").textContent = why;
  document.getElementById("key-form").hidden = false;
  document.getElementById("api-key").focus();
}

document.getElementById("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("api-key");
  if (!input.value) return;
  sessionStorage.setItem(KEY, input.value);
  input.value = "";
  document.getElementById("key-form").hidden = true;
  loadInfo();
});

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// The text with each entity marked by its type, in the style of spaCy's displaCy.
function renderEntities(target, text, entities) {
  target.replaceChildren();
  let at = 0;
  for (const ent of entities) {
    if (ent.start > at) target.append(document.createTextNode(text.slice(at, ent.start)));
    const mark = el("mark", "entity " + ent.label);
    mark.dataset.label = ent.label;
    mark.title = ent.label + " " + ent.score.toFixed(2);
    mark.append(document.createTextNode(text.slice(ent.start, ent.end)), el("span", "label", ent.label));
    target.append(mark);
    at = ent.end;
  }
  if (at < text.length) target.append(document.createTextNode(text.slice(at)));
}

function renderBars(target, scores, best) {
  target.replaceChildren();
  const rows = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of rows) {
    const row = el("div", "bar-row" + (label === best ? " top" : ""));
    row.dataset.label = label;
    const track = el("div", "bar-track");
    const bar = el("div", "bar");
    bar.style.width = (100 * p).toFixed(1) + "%";
    track.append(bar);
    row.append(el("span", "bar-label", label), track, el("span", "bar-value", (100 * p).toFixed(0) + "%"));
    target.append(row);
  }
}

let heads = {};

async function loadInfo() {
  try {
    const info = await api("/info");
    heads = info.heads;
    const names = Object.entries(heads).map(([t, h]) => t + " (" + h.type.replace("_classification", "") + ")");
    document.getElementById("model").textContent =
      info.name + " · " + info.backbone.source + " · " + info.backbone.dimension + " dimensions · heads: " + names.join(", ");
  } catch (e) {
    document.getElementById("model").textContent = (e instanceof NeedsKey ? "" : "model not ready: ") + e.message;
  }
}

document.getElementById("predict-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = document.getElementById("text").value;
  const button = document.getElementById("analyse");
  const err = document.getElementById("predict-error");
  button.disabled = true;
  err.hidden = true;
  try {
    const doc = await api("/predict", { texts: [text] });
    const r = doc.results[0];
    const tokenTask = Object.keys(r).find((k) => r[k] && r[k].entities);
    const sentenceTasks = Object.keys(r).filter((k) => r[k] && r[k].scores);
    renderEntities(document.getElementById("entities"), text, tokenTask ? r[tokenTask].entities : []);
    // the shipped config's cls (topic) and sent (sentiment); any other two sentence tasks otherwise
    const topic = sentenceTasks.includes("cls") ? "cls" : sentenceTasks[0];
    const sent = sentenceTasks.includes("sent") ? "sent" : sentenceTasks.find((t) => t !== topic);
    for (const [task, id] of [[topic, "topic"], [sent, "sentiment"]]) {
      const box = document.getElementById(id);
      if (task) {
        document.getElementById(id + "-title").textContent = (heads[task] && heads[task].description) || (id === "topic" ? "Topic" : "Sentiment") + " (" + task + ")";
        renderBars(box, r[task].scores, r[task].label);
      } else box.replaceChildren();
    }
    document.getElementById("result").hidden = false;
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  } finally {
    button.disabled = false;
  }
});

document.getElementById("similarity-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("similarity");
  const err = document.getElementById("similarity-error");
  err.hidden = true;
  try {
    const doc = await api("/similarity", { texts: [document.getElementById("text-a").value, document.getElementById("text-b").value] });
    out.textContent = "cosine similarity: " + doc.score.toFixed(3);
    out.dataset.score = String(doc.score);
    out.hidden = false;
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
});

loadInfo();
