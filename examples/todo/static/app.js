// The todo page: lists, adds and completes todos through `farine gateway`'s WebSocket (/ws),
// and follows the `todo.events` broadcasts so that every open page shows every change.
//
// Messages (see farine/src/gateway/ws.rs):
//   out: {"id": 1, "call": "todo.add", "args": ["buy flour"]}, {"subscribe": "todo.events"}
//   in:  {"id": 1, "result": 5}; {"id": 2, "item": {...}} ... {"id": 2, "end": true};
//        {"id": 3, "error": {"kind", "message"}}; {"subscribed": "todo.events"};
//        {"event": "todo.events", "id": "...", "data": {"op": "add" | "done", "todo": {...}}}
"use strict";

(function () {
  const EVENTS = "todo.events";
  const FIRST_RETRY_MS = 500;
  const MAX_RETRY_MS = 10000;

  const status = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const form = document.getElementById("add-form");
  const titleInput = document.getElementById("new-title");
  const addButton = document.getElementById("add-button");
  const list = document.getElementById("todos");
  const empty = document.getElementById("empty");

  // A token for a gateway with auth_tokens or auth_jwt_secret: http://host:port/#token=TOKEN.
  // Browsers cannot set headers on a WebSocket, so it goes as ?access_token=.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token") || fragment.get("access_token");

  /** id -> {id, title, done}: what the page shows. */
  let todos = new Map();
  /** While todo.list streams after a (re)connection: the todos it sent so far. */
  let listing = null;
  let socket = null;
  let attempt = 0;
  let nextCallId = 1;
  /** Call id -> {onItem, resolve, reject}. */
  const calls = new Map();
  /** Ids of the todos whose todo.done call is under way. */
  const completing = new Set();

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    addButton.disabled = state !== "live";
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  // --- The list ---------------------------------------------------------------------------

  /** Keeps `todo` in `map`: a todo once done stays done, whatever order news arrives in. */
  function merge(map, todo) {
    if (!todo || typeof todo.id !== "number") return;
    const known = map.get(todo.id);
    map.set(todo.id, {
      id: todo.id,
      title: String(todo.title),
      done: Boolean(todo.done) || Boolean(known && known.done),
    });
  }

  function learn(todo) {
    merge(todos, todo);
    if (listing) merge(listing, todo);
    render();
  }

  function itemFor(todo) {
    const item = document.createElement("li");
    item.dataset.id = String(todo.id);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = "todo-" + todo.id;
    box.addEventListener("change", () => complete(todo.id, box));
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.className = "title";
    item.append(box, label);
    return item;
  }

  /** Brings the <ul> in line with `todos`, oldest first, keeping the elements it can. */
  function render() {
    const shown = new Map();
    for (const item of Array.from(list.children)) {
      const id = Number(item.dataset.id);
      if (todos.has(id)) shown.set(id, item);
      else item.remove();
    }
    let previous = null;
    for (const todo of Array.from(todos.values()).sort((a, b) => a.id - b.id)) {
      let item = shown.get(todo.id);
      if (!item) item = itemFor(todo);
      const label = item.querySelector("label");
      if (label.textContent !== todo.title) label.textContent = todo.title;
      const box = item.querySelector("input");
      item.dataset.done = String(todo.done);
      box.checked = todo.done;
      box.disabled = todo.done || completing.has(todo.id) || status.dataset.state !== "live";
      const wanted = previous ? previous.nextSibling : list.firstChild;
      if (wanted !== item) list.insertBefore(item, wanted);
      previous = item;
    }
    empty.hidden = todos.size > 0 || status.dataset.state !== "live";
  }

  // --- Calls over the socket --------------------------------------------------------------

  /** Calls `method`; resolves with its result, or, for a stream, once it ended. */
  function call(method, args, onItem) {
    return new Promise((resolve, reject) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        reject(new Error("not connected"));
        return;
      }
      const id = nextCallId++;
      calls.set(id, { onItem, resolve, reject });
      socket.send(JSON.stringify({ id, call: method, args }));
    });
  }

  function describe(error) {
    if (error && typeof error.message === "string") {
      return error.request_id ? `${error.message} (request ${error.request_id})` : error.message;
    }
    return String(error);
  }

  function onMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (message.event === EVENTS) {
      const data = message.data || {};
      if (data.op === "add" || data.op === "done") learn(data.todo);
      return;
    }
    if (message.id !== undefined && calls.has(message.id)) {
      const pending = calls.get(message.id);
      if ("item" in message) {
        if (pending.onItem) pending.onItem(message.item);
        return;
      }
      calls.delete(message.id);
      if ("error" in message) {
        pending.reject(new Error(describe(message.error)));
      } else if ("result" in message) {
        // The gateway cannot tell a stream of exactly one item from a unary result: it sends
        // {"result": item} for it, without "end".
        if (pending.onItem) pending.onItem(message.result);
        pending.resolve(message.result);
      } else {
        pending.resolve(undefined); // {"end": true} or {"cancelled": true}
      }
      return;
    }
    if (message.error) {
      const what = message.subscribe ? `cannot follow ${message.subscribe}: ` : "";
      showError(what + describe(message.error));
    }
  }

  // --- Connection, with reconnection ------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = token ? "?access_token=" + encodeURIComponent(token) : "";
    const ws = new WebSocket(`${scheme}://${location.host}/ws${query}`);
    socket = ws;
    setStatus(attempt === 0 ? "connecting" : "reconnecting", "Connecting…");
    ws.addEventListener("open", () => {
      // Subscribe first, then list: a change made while the list streams arrives as an event
      // and is merged into it, so none falls between the two.
      ws.send(JSON.stringify({ subscribe: EVENTS }));
      listing = new Map();
      setStatus("listing", "Loading…");
      call("todo.list", [], (todo) => merge(listing, todo))
        .then(() => {
          if (socket !== ws) return;
          todos = listing;
          listing = null;
          attempt = 0;
          clearError();
          setStatus("live", "Up to date");
          render();
        })
        .catch((error) => {
          if (socket !== ws) return; // the connection was lost: the status says so
          showError("Cannot list the todos: " + error.message);
          ws.close();
        });
    });
    ws.addEventListener("message", (event) => onMessage(event.data));
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      listing = null;
      for (const pending of calls.values()) pending.reject(new Error("the connection was lost"));
      calls.clear();
      const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** attempt);
      const wait = Math.round(delay / 2 + Math.random() * (delay / 2));
      attempt += 1;
      setStatus("reconnecting", `Disconnected: trying again in ${Math.ceil(wait / 1000)} s…`);
      render();
      setTimeout(connect, wait);
    });
  }

  // --- What the user does -----------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const title = titleInput.value.trim();
    if (!title) return;
    addButton.disabled = true;
    call("todo.add", [title])
      .then((id) => {
        clearError();
        titleInput.value = "";
        learn({ id, title, done: false });
      })
      .catch((error) => showError("Cannot add the todo: " + error.message))
      .finally(() => {
        addButton.disabled = status.dataset.state !== "live";
        titleInput.focus();
      });
  });

  function complete(id, box) {
    box.disabled = true;
    completing.add(id);
    call("todo.done", [id])
      .then((found) => {
        clearError();
        const known = todos.get(id);
        if (found && known) learn({ ...known, done: true });
        if (!found) {
          showError("That todo no longer exists.");
          todos.delete(id);
          render();
        }
      })
      .catch((error) => showError("Cannot complete the todo: " + error.message))
      .finally(() => {
        completing.delete(id);
        render();
      });
  }

  connect();
})();
