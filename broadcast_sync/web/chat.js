// The chat page: joins /ws on this page's own origin with format=json.
//
// Every event of the room carries an id, "EPOCH.OFFSET". The page remembers
// the last one it showed; after a lost connection it reconnects by itself
// (with backoff and jitter) and asks for the events after it (since=ID), so
// nothing shows twice and nothing is skipped. When the server cannot resume
// (it restarted, or the events are gone), a marker says that some messages
// may be missing.
//
// Messages the user sent whose echo had not come back when the connection
// broke are sent again once the resume shows that they never reached the
// room. Whatever comes from the network is shown with textContent, never as
// HTML, and each name and message in an element of its own with dir="auto",
// isolated (chat.css): right-to-left text, or bidi controls, reorder nothing
// outside it.
"use strict";

(() => {
  const page = document.documentElement.dataset;
  /** Events to show on joining: the server says how many it keeps. */
  const HISTORY = Number(page.history);
  /** The longest name the server accepts. */
  const MAX_NAME = Number(page.maxName);
  /** Where the name is remembered between visits. */
  const NAME_KEY = "broadcast-sync.name";
  /** Refusals that the same request would get again: no use retrying. */
  const REFUSED_FOR_GOOD = [400, 401, 403];
  /** Reconnection delays, in seconds: doubled after each failure, jittered. */
  const FIRST_DELAY = 1;
  const MAX_DELAY = 10;
  /** Closer than this to the bottom, the list follows new messages. */
  const NEAR_BOTTOM_PX = 48;
  /** The counter shows once this close to the limit. */
  const COUNTER_FRACTION = 0.1;
  const COUNTER_MIN = 20;
  /** Characters the server refuses: in a message, they become spaces. */
  const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
  /** What a name may not hold besides: invisible and format characters,
   * private-use and unassigned code points. */
  const INVISIBLE = /[\p{Cf}\p{Co}\p{Cn}\u115f\u1160\u2800\u3164\uffa0]/u;
  const CONTROLS = new RegExp(CONTROL.source, "g");

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"),
    leave: $("leave"),
    joinForm: $("join-form"),
    name: $("name"),
    nameError: $("name-error"),
    chat: $("chat"),
    messages: $("messages"),
    newMessages: $("new-messages"),
    sendForm: $("send-form"),
    message: $("message"),
    counter: $("counter"),
    send: $("send"),
    peopleCount: $("people-count"),
    peopleList: $("people-list"),
  };

  /** Everything the page knows; only the functions below change it. */
  const chat = {
    socket: null,
    /** The name typed in the join form, and the one the server gave. */
    wanted: "",
    me: null,
    /** The last event shown, as {epoch, offset}. */
    last: null,
    /** What this connection asked to resume after, if anything. */
    since: null,
    /** Events up to this id came before the welcome: history or a replay. */
    replayEnd: null,
    /** The history marker goes after the replayed history. */
    historyShown: 0,
    historyMarker: false,
    /** Whether unconfirmed messages wait for the end of the replay. */
    resendAfterReplay: false,
    people: new Set(),
    maxChars: Infinity,
    maxBytes: Infinity,
    /** Texts sent on this connection whose echo has not come back. */
    unconfirmed: [],
    /** Failed attempts in a row, and the pending reconnection. */
    failures: 0,
    retryTimer: null,
    countdownTimer: null,
    /** Messages that arrived while the reader was scrolled up. */
    unseen: 0,
    leaving: false,
  };

  // Event ids

  function parseId(text) {
    if (typeof text !== "string") return null;
    const dot = text.lastIndexOf(".");
    return { epoch: text.slice(0, dot), offset: Number(text.slice(dot + 1)) };
  }

  function formatId(id) {
    return `${id.epoch}.${id.offset}`;
  }

  /** Whether `id` comes after everything shown: a new epoch always does. */
  function isNew(id) {
    return (
      chat.last === null ||
      id.epoch !== chat.last.epoch ||
      id.offset > chat.last.offset
    );
  }

  /** Whether `id` came before the welcome of this connection. */
  function isReplayed(id) {
    const end = chat.replayEnd;
    return end !== null && id.epoch === end.epoch && id.offset <= end.offset;
  }

  // Rendering: every entry of the list is built here, with textContent.

  function nameHue(name) {
    let hash = 2166136261; // FNV-1a: the same name, the same colour
    for (const char of name) {
      hash = Math.imul(hash ^ char.codePointAt(0), 16777619) >>> 0;
    }
    return hash % 360;
  }

  function clock(ts) {
    const date = new Date(ts * 1000);
    const element = document.createElement("time");
    element.dateTime = date.toISOString();
    const pad = (n) => String(n).padStart(2, "0");
    element.textContent = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    return element;
  }

  /** An isolated run of text: its direction is its own, whatever it holds. */
  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    element.dir = "auto";
    element.textContent = text;
    return element;
  }

  function entry(className, ...children) {
    const item = document.createElement("li");
    item.className = className;
    item.append(...children);
    return item;
  }

  function sender(name) {
    const element = span("sender", name);
    element.style.setProperty("--hue", String(nameHue(name)));
    return element;
  }

  function eventEntry(event, replayed) {
    let item;
    // Spaces between the parts: where a long line may wrap.
    if (event.type === "message") {
      const text = span("text", event.text);
      item = entry("message", clock(event.ts), " ", sender(event.user), " ", text);
      if (event.user === chat.me) item.classList.add("own");
    } else {
      const verb = event.type === "join" ? "joined" : "left";
      const text = span("text", "");
      text.append(span("name", event.user), ` ${verb}`);
      item = entry("event", clock(event.ts), " ", text);
    }
    if (replayed && chat.historyMarker) item.classList.add("history");
    item.dataset.id = event.id;
    return item;
  }

  function marker(kind, text) {
    const item = entry("marker", span("text", text));
    item.dataset.marker = kind;
    return item;
  }

  /** Add `item` to the list, following it if the reader is at the bottom. */
  function show(item) {
    const list = ui.messages;
    const following = atBottom();
    list.append(item);
    if (following) {
      list.scrollTop = list.scrollHeight;
    } else if (item.classList.contains("message")) {
      chat.unseen += 1;
      ui.newMessages.textContent = `${chat.unseen} new message${
        chat.unseen === 1 ? "" : "s"
      } ↓`;
      ui.newMessages.hidden = false;
    }
  }

  function atBottom() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToNewest() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    markAllSeen();
  }

  function markAllSeen() {
    chat.unseen = 0;
    ui.newMessages.hidden = true;
  }

  function renderPeople() {
    const names = [...chat.people].sort();
    ui.peopleCount.textContent = String(names.length);
    ui.peopleList.replaceChildren(
      ...names.map((name) => {
        const item = entry("person", sender(name));
        if (name === chat.me) item.classList.add("own");
        return item;
      }),
    );
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  // The input: enabled only while connected; its text is kept meanwhile.

  function setConnected(connected) {
    ui.message.disabled = !connected;
    updateCounter();
    // Disabling took the focus away: give it back to a keyboard user.
    if (connected && document.activeElement === document.body) {
      ui.message.focus();
    }
  }

  function cleanText(text) {
    return text.replace(CONTROLS, " ");
  }

  /** How many more characters fit, in the tighter of the server's limits. */
  function charactersLeft(text) {
    const chars = [...text].length;
    const bytes = new TextEncoder().encode(text).length;
    return Math.min(chat.maxChars - chars, chat.maxBytes - bytes);
  }

  function updateCounter() {
    const left = charactersLeft(cleanText(ui.message.value));
    const limit = Math.min(chat.maxChars, chat.maxBytes);
    const near = Math.max(COUNTER_MIN, Math.ceil(limit * COUNTER_FRACTION));
    ui.counter.hidden = !(left <= near);
    ui.counter.textContent = String(left);
    ui.counter.classList.toggle("over", left < 0);
    ui.message.setAttribute("aria-invalid", String(left < 0));
    ui.send.disabled = ui.message.disabled || left < 0;
  }

  function sendTyped() {
    const text = cleanText(ui.message.value);
    if (!text.trim() || charactersLeft(text) < 0 || !isOpen()) return;
    chat.socket.send(text);
    chat.unconfirmed.push(text);
    ui.message.value = "";
    updateCounter();
    scrollToNewest();
  }

  function isOpen() {
    return chat.socket !== null && chat.socket.readyState === WebSocket.OPEN;
  }

  // The connection

  function connect() {
    clearTimers();
    setStatus("connecting", "Connecting…");
    const query = new URLSearchParams({
      username: chat.me ?? chat.wanted,
      format: "json",
    });
    // Where the page is in the log: the last event shown, else the end of
    // the log when it last joined.
    chat.since = chat.last ?? chat.replayEnd;
    if (chat.since !== null) {
      query.set("since", formatId(chat.since));
    } else {
      query.set("history", String(HISTORY));
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws?${query}`);
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
    });
    socket.addEventListener("message", (message) => onFrame(socket, message));
    socket.addEventListener("close", (close) => {
      onClose(socket, close, opened ? null : query);
    });
    chat.socket = socket;
  }

  function onFrame(socket, message) {
    if (socket !== chat.socket) return;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return; // not ours to show
    }
    if (frame.type === "welcome") {
      onWelcome(frame);
    } else if (frame.type === "notice") {
      onNotice(frame);
    } else if (["message", "join", "leave"].includes(frame.type)) {
      onEvent(frame);
    }
  }

  function onWelcome(welcome) {
    const first = chat.me === null;
    const expected = chat.me ?? chat.wanted;
    if (welcome.user !== expected) {
      show(marker("renamed", `${expected} is taken: you are ${welcome.user}`));
    }
    chat.me = welcome.user;
    chat.failures = 0;
    chat.maxChars = welcome.max_message_chars ?? Infinity;
    chat.maxBytes = welcome.max_message_bytes ?? Infinity;
    chat.people = new Set(welcome.users);
    chat.replayEnd = parseId(welcome.last_id);
    chat.historyMarker = first && chat.replayEnd !== null;
    chat.historyShown = 0;
    if (welcome.resumed === true) {
      show(marker("reconnected", "Reconnected"));
      chat.resendAfterReplay = true;
      resendIfCaughtUp();
    } else if (welcome.resumed === false) {
      show(marker("gap", "Some messages may be missing"));
      chat.last = null; // nothing of the log as it is now was shown
      warnUnconfirmed();
    }
    renderPeople();
    setStatus("connected", `Connected as ${chat.me}`);
    setConnected(true);
  }

  function onEvent(event) {
    const id = parseId(event.id);
    if (!isNew(id)) return; // shown already
    const replayed = isReplayed(id);
    if (!replayed) placeHistoryMarker();
    chat.last = id;
    show(eventEntry(event, replayed));
    if (replayed && chat.historyMarker) chat.historyShown += 1;
    if (event.type === "message" && event.user === chat.me) confirm(event.text);
    if (!replayed) updatePeople(event);
    if (replayed && id.offset === chat.replayEnd.offset) placeHistoryMarker();
    resendIfCaughtUp();
  }

  function placeHistoryMarker() {
    if (!chat.historyMarker) return;
    chat.historyMarker = false;
    if (chat.historyShown > 0) show(marker("history", "Earlier messages above"));
  }

  function updatePeople(event) {
    if (event.type === "join") chat.people.add(event.user);
    else if (event.type === "leave") chat.people.delete(event.user);
    else return;
    renderPeople();
  }

  function onNotice(notice) {
    show(entry("notice", span("text", notice.text)));
    // It answers what was sent so far: taken, or refused and said so.
    chat.unconfirmed = [];
  }

  /** An echo of our own message: it reached the room. */
  function confirm(text) {
    const index = chat.unconfirmed.indexOf(text);
    if (index !== -1) chat.unconfirmed.splice(index, 1);
  }

  /** After a resume, send again what the replay shows never arrived. */
  function resendIfCaughtUp() {
    if (!chat.resendAfterReplay || !caughtUp()) return;
    chat.resendAfterReplay = false;
    const lost = chat.unconfirmed;
    chat.unconfirmed = [];
    for (const text of lost) {
      chat.socket.send(text);
      chat.unconfirmed.push(text);
    }
  }

  /** Whether the replay of this connection has all come. */
  function caughtUp() {
    const end = chat.replayEnd;
    const at = chat.last ?? chat.since;
    return (
      end === null ||
      (at !== null && at.epoch === end.epoch && at.offset >= end.offset)
    );
  }

  /** The server lost its log: whether these were sent cannot be known. */
  function warnUnconfirmed() {
    for (const text of chat.unconfirmed) {
      show(entry("notice", span("text", `maybe not sent: ${text}`)));
    }
    chat.unconfirmed = [];
  }

  /** `refusedQuery`: the query of a handshake that failed, else null. */
  async function onClose(socket, close, refusedQuery) {
    if (socket !== chat.socket) return;
    chat.socket = null;
    setConnected(false);
    if (chat.leaving) return;
    if (close.code === 1009) {
      show(entry("notice", span("text", "message too long: not sent")));
      chat.unconfirmed = [];
    }
    chat.failures += 1;
    const refusal = refusedQuery === null ? null : await askWhy(refusedQuery);
    if (chat.leaving || chat.socket !== null) return; // moved on meanwhile
    if (refusal !== null && REFUSED_FOR_GOOD.includes(refusal.status)) {
      refused(refusal.reason);
    } else {
      scheduleReconnect(refusal?.reason);
    }
  }

  /**
   * Why the server refused a handshake with `query`: browsers do not say.
   * The same request without the upgrade gets the handshake's answer, or
   * 426 (Upgrade Required) when nothing is wrong with it. Null when there
   * is nothing to tell: the request was fine, or the server is unreachable.
   */
  async function askWhy(query) {
    try {
      const response = await fetch(`/ws?${query}`, { cache: "no-store" });
      if (response.ok || response.status === 426) return null;
      const reason = (await response.text()).trim();
      return { status: response.status, reason };
    } catch {
      return null;
    }
  }

  /** The server refuses this page for good: back to the form, saying why. */
  function refused(reason) {
    leave();
    ui.nameError.textContent = `The server refused: ${reason}`;
    ui.nameError.hidden = false;
  }

  /** Reconnect after a delay; `reason`: why the last attempt was refused. */
  function scheduleReconnect(reason) {
    clearTimers();
    if (!navigator.onLine) {
      setStatus("offline", "Offline: waiting for the network");
      return; // the "online" event reconnects
    }
    const ceiling = Math.min(FIRST_DELAY * 2 ** (chat.failures - 1), MAX_DELAY);
    const delay = ceiling * (0.5 + Math.random() / 2);
    const due = Date.now() + delay * 1000;
    // Failing again and again: the server is down, or refuses this page.
    const what = reason
      ? `Refused: ${reason}; retrying`
      : chat.failures >= 3
        ? "Cannot reach the chat; retrying"
        : "Reconnecting";
    const tick = () => {
      const seconds = Math.max(Math.ceil((due - Date.now()) / 1000), 1);
      setStatus("reconnecting", `${what} in ${seconds} s…`);
    };
    tick();
    chat.countdownTimer = setInterval(tick, 1000);
    chat.retryTimer = setTimeout(connect, delay * 1000);
  }

  function clearTimers() {
    clearTimeout(chat.retryTimer);
    clearInterval(chat.countdownTimer);
    chat.retryTimer = null;
    chat.countdownTimer = null;
  }

  // Joining and leaving

  function checkName(name) {
    if (!name) return "Type a name first.";
    if ([...name].length > MAX_NAME) return `At most ${MAX_NAME} characters.`;
    if (CONTROL.test(name)) return "No control characters, please.";
    if (INVISIBLE.test(name)) return "No invisible characters, please.";
    if (name.includes(": ")) return "A name cannot hold “: ”.";
    return null;
  }

  function join(event) {
    event.preventDefault();
    const name = ui.name.value.trim();
    const problem = checkName(name);
    ui.nameError.hidden = problem === null;
    ui.nameError.textContent = problem ?? "";
    if (problem !== null) return;
    try {
      localStorage.setItem(NAME_KEY, name);
    } catch {
      // storage may be off; the name is only not remembered
    }
    Object.assign(chat, {
      wanted: name,
      me: null,
      last: null,
      replayEnd: null,
      unconfirmed: [],
      failures: 0,
      leaving: false,
    });
    ui.messages.replaceChildren();
    ui.joinForm.hidden = true;
    ui.chat.hidden = false;
    ui.leave.hidden = false;
    connect();
  }

  function leave() {
    chat.leaving = true;
    clearTimers();
    if (chat.socket !== null) chat.socket.close(1000);
    chat.socket = null;
    chat.people.clear();
    renderPeople();
    setConnected(false);
    setStatus("idle", "Not connected");
    ui.chat.hidden = true;
    ui.leave.hidden = true;
    ui.joinForm.hidden = false;
    ui.name.focus();
  }

  // Wiring

  ui.joinForm.addEventListener("submit", join);
  ui.leave.addEventListener("click", leave);
  ui.sendForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sendTyped();
  });
  ui.message.addEventListener("input", updateCounter);
  ui.messages.addEventListener("scroll", () => {
    if (atBottom()) markAllSeen();
  });
  ui.newMessages.addEventListener("click", () => {
    scrollToNewest();
    ui.message.focus();
  });
  window.addEventListener("offline", () => {
    // A connection across a lost network may take minutes to fail by itself.
    if (chat.socket !== null) chat.socket.close();
  });
  window.addEventListener("online", () => {
    if (!chat.leaving && chat.wanted && chat.socket === null) connect();
  });

  try {
    ui.name.value = localStorage.getItem(NAME_KEY) ?? "";
  } catch {
    // storage may be off
  }
  ui.name.focus();
})();
