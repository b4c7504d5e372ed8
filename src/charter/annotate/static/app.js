// charter annotate: the page. Every text from the queue is model or user text and is put on
// the page with textContent only, never parsed as HTML (the server's CSP backs this up).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NAME_KEY = "charter.annotator";
  const TOKEN_KEY = "charter.token";

  // The printed link carries the token in its fragment (never sent to the server): keep it,
  // then drop it from the address bar.
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }

  let annotator = localStorage.getItem(NAME_KEY);
  let item = null;
  let shownAt = 0;
  let busy = false;

  // Bidi overrides and isolates in model text could reorder what the annotator reads (an
  // answer that looks harmless but says something else): show them as visible marks.
  const BIDI = /[\u202A-\u202E\u2066-\u2069]/g;
  const visible = (text) =>
    String(text).replace(BIDI, (c) => "[U+" + c.charCodeAt(0).toString(16).toUpperCase() + "]");

  async function api(method, path, body) {
    const headers = {};
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || "the server answered " + response.status);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function say(text) {
    $("status").textContent = text || "";
  }

  function show(state) {
    document.body.dataset.state = state;
    for (const id of ["login", "task", "done"]) $(id).hidden = id !== state;
    $("rename").hidden = state === "login";
    $("who").textContent = annotator && state !== "login" ? "labelling as " + annotator : "";
  }

  function textBlock(cls, text) {
    const div = document.createElement("div");
    div.className = cls;
    div.textContent = visible(text);
    return div;
  }

  function render(next) {
    item = next;
    $("question").textContent = visible(next.question || "Which answer is better?");
    const conversation = $("conversation");
    conversation.replaceChildren();
    for (const message of next.messages) {
      const row = document.createElement("div");
      row.className = "message " + (message.role === "user" ? "user" : "other");
      row.append(textBlock("role", message.role), textBlock("text", message.content));
      conversation.append(row);
    }
    const right = next.left === "a" ? "b" : "a";
    $("left-text").textContent = visible(next["response_" + next.left]);
    $("right-text").textContent = visible(next["response_" + right]);
    $("left-text").scrollTop = 0;
    $("right-text").scrollTop = 0;
    $("task").dataset.pair = next.id;
    shownAt = Date.now();
    show("task");
  }

  async function refreshProgress() {
    const p = await api("GET", "/api/progress?annotator=" + encodeURIComponent(annotator));
    const you = p.you || { done: 0, left: 0 };
    $("progress").textContent =
      "you: " + you.done + " done, " + you.left + " left · pairs complete: " +
      p.pairs_complete + " / " + p.pairs;
    const open = p.pairs - p.pairs_complete;
    $("waiting").textContent =
      open > 0 && !item
        ? open + " pair(s) still need labels and are on someone else's screen or were skipped; " +
          "a pair held by someone who leaves comes back after 30 minutes."
        : "";
  }

  async function load() {
    const next = await api("GET", "/api/next?annotator=" + encodeURIComponent(annotator));
    if (next === null) {
      item = null;
      show("done");
    } else {
      render(next);
    }
    await refreshProgress();
  }

  async function act(key) {
    if (busy || !annotator) return;
    const choices = { t: "tie", s: "skip" };
    if (key !== "u" && (!item || document.body.dataset.state !== "task")) return;
    busy = true;
    try {
      if (key === "u") {
        await api("POST", "/api/undo", { annotator });
        say("took back your last label");
      } else {
        let choice = choices[key];
        if (key === "a") choice = item.left; // the answer shown on the left
        if (key === "b") choice = item.left === "a" ? "b" : "a";
        // left and seconds: what this page showed, kept should the server have restarted.
        const seconds = (Date.now() - shownAt) / 1000;
        await api("POST", "/api/label", { id: item.id, annotator, choice, left: item.left, seconds });
        say("");
      }
      await load();
    } catch (error) {
      say(error.message);
      // 409: another tab or person got there first; show what is current.
      if (error.status === 409) await load().catch(() => {});
    } finally {
      busy = false;
    }
  }

  async function start() {
    if (!annotator) {
      show("login");
      $("name").focus();
      return;
    }
    try {
      await load();
      say("");
    } catch (error) {
      say(
        error.status === 401
          ? "This server needs its token: open the link that charter annotate printed."
          : error.message,
      );
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA") return;
    const key = event.key.toLowerCase();
    if (["a", "b", "t", "s", "u"].includes(key)) {
      event.preventDefault();
      act(key);
    }
  });
  for (const button of document.querySelectorAll("button[data-key]")) {
    button.addEventListener("click", () => act(button.dataset.key));
  }
  $("name-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    if (!name) return;
    annotator = name;
    localStorage.setItem(NAME_KEY, name);
    start();
  });
  $("rename").addEventListener("click", () => {
    localStorage.removeItem(NAME_KEY);
    annotator = null;
    $("name").value = "";
    start();
  });
  $("again").addEventListener("click", () => start());
  start();
})();
