// The chat page: the conversation lives in this page (and sessionStorage, so a reload keeps it); replies stream
// from /v1/chat/completions as server-sent events. Stop aborts the request, which frees the server's slot.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "vicuna_jax.chat";
let conversation = [];       // [{role: "user"|"assistant", content, stopped?}]
let controller = null;       // AbortController of the reply in flight
let modelName = null;

function save() {
  try {
    sessionStorage.setItem(STORE, JSON.stringify(conversation));
  } catch (e) { /* storage full or disabled: the page still works */ }
}

function load() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE) || "[]");
    if (Array.isArray(saved)) conversation = saved.filter((m) => m && typeof m.content === "string");
  } catch (e) { conversation = []; }
}

function bubble(message) {
  const div = document.createElement("div");
  div.className = "msg " + message.role + (message.stopped ? " stopped" : "");
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = message.role === "user" ? "You" : "Assistant";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.content;  // textContent: model output is never interpreted as HTML
  div.append(role, text);
  return div;
}

function render() {
  const box = $("messages");
  box.replaceChildren(...conversation.map(bubble));
  box.scrollTop = box.scrollHeight;
  updateButtons();
}

function setStatus(text) { $("status").textContent = text || ""; }

function busy() { return controller !== null; }

function updateButtons() {
  document.body.dataset.state = busy() ? "generating" : "idle";
  $("send").disabled = busy();
  $("stop").hidden = !busy();
  const last = conversation[conversation.length - 1];
  $("regenerate").hidden = busy() || !last || last.role !== "assistant";
  $("new-chat").disabled = busy();
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status;
}

async function fetchModel() {
  const response = await fetch("/v1/models", {headers: headers()});
  if (response.status === 401) {
    $("settings").open = true;
    throw new Error("this server needs an API key: enter it under Settings");
  }
  if (!response.ok) throw new Error(await errorText(response));
  const body = await response.json();
  modelName = body.data[0].id;
  $("model-name").textContent = modelName;
  const context = body.data[0].max_model_len;
  if (context) {  // the server refuses max_tokens above the model's context
    $("max-tokens").max = context;
    if (readNumber("max-tokens", 0) > context) $("max-tokens").value = context;
  }
  return modelName;
}

function requestMessages() {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({role: "system", content: system});
  for (const m of conversation) out.push({role: m.role, content: m.content});
  return out;
}

function readNumber(id, fallback) {
  const v = parseFloat($(id).value);
  return Number.isFinite(v) ? v : fallback;
}

// Streams one assistant reply for the conversation as it stands (its last message is the user's).
async function reply() {
  setStatus("");
  const message = {role: "assistant", content: ""};
  const payload = {
    messages: requestMessages(),
    stream: true,
    temperature: Math.min(Math.max(readNumber("temperature", 0.7), 0), 2),
    max_tokens: Math.max(1, Math.round(readNumber("max-tokens", 512))),
  };
  conversation.push(message);
  controller = new AbortController();
  render();
  const view = $("messages").lastElementChild;
  view.classList.add("streaming");
  const textNode = view.querySelector(".text");
  try {
    payload.model = modelName || await fetchModel();
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(payload), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            message.content += delta.content;
            textNode.textContent = message.content;
            $("messages").scrollTop = $("messages").scrollHeight;
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      message.stopped = true;
    } else {
      setStatus(e.message || String(e));
      if (!message.content) conversation.pop();  // nothing to keep; the user can resend
    }
  } finally {
    controller = null;
    save();
    render();
  }
}

function send(event) {
  if (event) event.preventDefault();
  const text = $("input").value;
  if (busy() || !text.trim()) return;
  const last = conversation[conversation.length - 1];
  if (last && last.role === "user") conversation.pop();  // a failed turn is replaced, not doubled
  conversation.push({role: "user", content: text});
  $("input").value = "";
  reply();
}

function regenerate() {
  if (busy()) return;
  const last = conversation[conversation.length - 1];
  if (!last || last.role !== "assistant") return;
  conversation.pop();
  reply();
}

function stop() {
  if (controller) controller.abort();
}

function newChat() {
  if (busy()) return;
  conversation = [];
  save();
  setStatus("");
  render();
}

$("composer").addEventListener("submit", send);
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
});
$("stop").addEventListener("click", stop);
$("regenerate").addEventListener("click", regenerate);
$("new-chat").addEventListener("click", newChat);
$("api-key").addEventListener("change", () => { modelName = null; fetchModel().catch((e) => setStatus(e.message)); });

load();
render();
fetchModel().catch((e) => setStatus(e.message));
