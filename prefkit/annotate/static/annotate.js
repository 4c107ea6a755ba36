// prefkit annotate: the page. Plain JavaScript, no build step.
//
// A decision is sent with an id made here; the page moves on only when the server answered that it is
// saved (committed to SQLite). Until then the decision waits in localStorage and is re-sent, with the same
// id, after a network error or a reload: the server stores an id once, so nothing is lost or doubled.
// Text from the dataset (the prompt) is only ever set with textContent, never parsed as HTML.
//
// The name is bound to a secret the server hands out the first time the name is used (POST /api/claim);
// it stays in this browser's localStorage and goes with every request (header X-Prefkit-Secret), so
// nobody else can ask for pairs, vote or undo under this name. Every call that changes something is a
// POST. An error the server explains (JSON {"error": ...}) is shown under the buttons.
//
// Each vote names the question and guidelines this page showed (the id in <meta name=prefkit-instructions>):
// a server restarted with other ones refuses it (412) rather than store it under words nobody saw here.
//
// Clicking an image chooses it (a press shorter than HOLD_MS); holding the button on it, or holding z with
// the pointer on it, shows it zoomed (full size, panned by the pointer, or as large as the window when it
// is smaller); letting go comes back and chooses nothing.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NAME_KEY = "prefkit-annotator";
  const PENDING_KEY = "prefkit-pending-vote";
  const SECRETS_KEY = "prefkit-secrets"; // {name: secret} of the names this browser claimed here
  const CHOICE_KEYS = { 1: "left", 2: "right", 3: "tie", s: "skip", S: "skip" };
  const HOLD_MS = 300; // a press on an image longer than this zooms instead of choosing
  const SIDES = ["left", "right"];

  const state = {
    name: null,
    secret: null, // the server's secret for state.name
    current: null, // the pair on screen: {pair_id, prompt, left, right, left_url, right_url, ...}
    next: null, // a promise of the prefetched pair (or null)
    shownAt: 0,
    busy: false,
    lastVoteId: null, // what undo takes back
    instructions: null, // the id of the question and guidelines on this page
    press: null, // a mouse or touch press on an image: {side, pairId, pointerId, timer, held}
    zoom: null, // the zoomed image: {side, by: "hold"|"key", w, h, rect, fx, fy}
    hover: null, // the image under the pointer ("left" / "right")
    pointer: null, // where the pointer last was: {x, y}
  };

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function setStatus(text, isError = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  function newId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One POST (or a GET without body); network errors and answers without a JSON error (a proxy's 502)
  // are retried (the same body, so the same vote id) until the server answers. An answer with a JSON
  // error (4xx, or 5xx such as 507 disk full) is final: its message is shown.
  async function call(path, body) {
    let wait = 250;
    for (let attempt = 1; ; attempt++) {
      let response;
      const headers = {};
      if (body) headers["Content-Type"] = "application/json";
      if (state.secret) headers["X-Prefkit-Secret"] = state.secret;
      try {
        response = await fetch(path, {
          method: body ? "POST" : "GET",
          headers,
          body: body ? JSON.stringify(body) : undefined,
          cache: "no-store",
          credentials: "same-origin",
        });
      } catch (e) {
        response = null;
      }
      if (response && response.ok) return response.json();
      if (response) {
        let message = null;
        try {
          message = (await response.json()).error || null;
        } catch (e) {
          /* not JSON */
        }
        if (message || response.status < 500) throw new HttpError(response.status, message || `${response.status}`);
      }
      setStatus(`server unreachable, retrying (attempt ${attempt}); your choice is kept`, true);
      await sleep(wait);
      wait = Math.min(wait * 2, 5000);
    }
  }

  function loadSecrets() {
    try {
      return JSON.parse(localStorage.getItem(SECRETS_KEY)) || {};
    } catch (e) {
      return {};
    }
  }

  // The secret for state.name: the one this browser keeps, else a new one claimed from the server
  async function identify() {
    const secrets = loadSecrets();
    state.secret = secrets[state.name] || null;
    if (state.secret) return;
    const res = await call("/api/claim", { annotator: state.name });
    secrets[state.name] = res.secret;
    localStorage.setItem(SECRETS_KEY, JSON.stringify(secrets));
    state.secret = res.secret;
  }

  function showProgress(p) {
    if (!p) return;
    $("progress").textContent =
      `you: ${p.done} done, ${p.todo} to do \u00b7 everyone: ${p.votes} / ${p.target} votes ` +
      `(${p.pairs} pairs \u00d7 ${p.per_pair})`;
  }

  function setButtons(enabled) {
    for (const id of ["btn-left", "btn-right", "btn-tie", "btn-skip"]) $(id).disabled = !enabled;
    $("btn-undo").disabled = !state.lastVoteId;
  }

  function show(pair) {
    unzoom();
    state.current = pair;
    $("done").hidden = !!pair;
    document.querySelector(".pair").hidden = !pair;
    if (!pair) {
      $("prompt").textContent = "";
      setButtons(false);
      return;
    }
    $("prompt").textContent = pair.prompt; // text, never markup
    for (const side of ["left", "right"]) {
      const img = $(`img-${side}`);
      img.src = pair[`${side}_url`];
      img.dataset.key = pair[side];
    }
    document.body.dataset.pairId = pair.pair_id;
    state.shownAt = performance.now();
    setButtons(true);
  }

  function preload(pair) {
    if (pair) for (const url of [pair.left_url, pair.right_url]) new Image().src = url;
  }

  async function fetchNext(exclude) {
    const res = await call("/api/next", { annotator: state.name, exclude });
    showProgress(res.progress);
    return res;
  }

  function prefetch() {
    const exclude = state.current ? [state.current.pair_id] : [];
    state.next = fetchNext(exclude).then((res) => {
      preload(res.pair);
      return res.pair;
    });
    state.next.catch(() => {}); // reported when awaited
  }

  async function start() {
    $("annotator-name").textContent = state.name;
    state.busy = true;
    try {
      await identify();
      let res;
      try {
        await resendPending();
        res = await fetchNext([]);
      } catch (e) {
        // a secret this server does not know (its database was replaced): claim the name afresh; if the
        // name is someone else's here, that is a 409 and the name is asked again
        if (!(e instanceof HttpError && e.status === 403)) throw e;
        const secrets = loadSecrets();
        delete secrets[state.name];
        localStorage.setItem(SECRETS_KEY, JSON.stringify(secrets));
        await identify();
        res = await fetchNext([]);
      }
      state.lastVoteId = res.last_vote_id;
      show(res.pair);
      setStatus(res.pair ? "" : "nothing to label");
      if (res.pair) prefetch();
    } catch (e) {
      show(null);
      setStatus(`error: ${e.message}`, true);
      // the name is someone else's here (or this browser's secret is not known here): ask for another
      if (e instanceof HttpError && (e.status === 403 || e.status === 409)) askName();
    } finally {
      state.busy = false;
      setButtons(!!state.current);
    }
  }

  async function resendPending() {
    const raw = localStorage.getItem(PENDING_KEY);
    if (!raw) return;
    const vote = JSON.parse(raw);
    if (vote.annotator === state.name) {
      setStatus("re-sending your last choice");
      try {
        const ack = await call("/api/vote", vote);
        state.lastVoteId = ack.vote_id;
      } catch (e) {
        if (!(e instanceof HttpError)) throw e;
      }
    }
    localStorage.removeItem(PENDING_KEY);
  }

  async function decide(side) {
    if (state.busy || !state.current) return;
    unzoom();
    state.busy = true;
    setButtons(false);
    const pair = state.current;
    const vote = {
      vote_id: newId(),
      annotator: state.name,
      left: pair.left,
      right: pair.right,
      choice: side,
      time_ms: Math.max(0, Math.round(performance.now() - state.shownAt)),
      instructions: state.instructions,
    };
    localStorage.setItem(PENDING_KEY, JSON.stringify(vote));
    setStatus("saving\u2026");
    try {
      let ack;
      try {
        ack = await call("/api/vote", vote);
      } catch (e) {
        localStorage.removeItem(PENDING_KEY); // refused: re-sending the same cannot help
        setStatus(`not saved: ${e.message}`, true);
        if (e instanceof HttpError && e.status === 409) {
          // decided already (e.g. in another tab): move on rather than stay on a pair that cannot be voted
          const res = await fetchNext([pair.pair_id]);
          show(res.pair);
          if (res.pair) prefetch();
        }
        return;
      }
      localStorage.removeItem(PENDING_KEY);
      state.lastVoteId = ack.vote_id;
      showProgress(ack.progress);
      try {
        const next = state.next ? await state.next : (await fetchNext([pair.pair_id])).pair;
        show(next);
        setStatus(side === "skip" ? "skipped" : "saved");
        if (next) prefetch();
        else state.next = null;
      } catch (e) {
        state.next = null;
        show(null);
        setStatus(`saved, but no next pair: ${e.message}`, true);
      }
    } catch (e) {
      setStatus(`error: ${e.message}`, true);
    } finally {
      state.busy = false;
      setButtons(!!state.current);
    }
  }

  async function undo() {
    if (state.busy || !state.lastVoteId) return;
    state.busy = true;
    setButtons(false);
    try {
      const res = await call("/api/undo", { annotator: state.name, vote_id: state.lastVoteId });
      state.lastVoteId = res.last_vote_id;
      showProgress(res.progress);
      // the pair on screen comes back after the undone one; a prefetched pair stays leased to us and
      // is handed out again later
      const back = state.current;
      state.next = back ? Promise.resolve(back) : null;
      show(res.pair);
      setStatus("undone: choose again");
    } catch (e) {
      setStatus(`undo failed: ${e.message}`, true);
    } finally {
      state.busy = false;
      setButtons(!!state.current);
    }
  }

  // -- zoom --------------------------------------------------------------------------------------------

  const clamp01 = (x) => Math.min(1, Math.max(0, x));

  function placeZoom() {
    const z = state.zoom;
    if (!z) return;
    const W = window.innerWidth;
    const H = window.innerHeight;
    // larger than the window: the pointer's place on the page's image picks the part shown
    const left = z.w <= W ? (W - z.w) / 2 : -(z.w - W) * clamp01(z.fx);
    const top = z.h <= H ? (H - z.h) / 2 : -(z.h - H) * clamp01(z.fy);
    $("zoom-img").style.transform = `translate(${Math.round(left)}px, ${Math.round(top)}px)`;
  }

  function aim(x, y) {
    const z = state.zoom;
    if (!z || x === undefined) return;
    z.fx = (x - z.rect.left) / z.rect.width;
    z.fy = (y - z.rect.top) / z.rect.height;
    placeZoom();
  }

  function zoom(side, by, x, y) {
    const src = $(`img-${side}`);
    if (!state.current || !src.naturalWidth || !src.naturalHeight) return;
    const nw = src.naturalWidth;
    const nh = src.naturalHeight;
    const fit = Math.min(window.innerWidth / nw, window.innerHeight / nh);
    const scale = fit > 1 ? fit : 1; // smaller than the window: as large as it fits; else full size
    const img = $("zoom-img");
    img.src = src.src;
    img.style.width = `${Math.round(nw * scale)}px`;
    img.style.height = `${Math.round(nh * scale)}px`;
    img.classList.toggle("pixelated", scale >= 2);
    state.zoom = { side, by, w: nw * scale, h: nh * scale, rect: src.getBoundingClientRect(), fx: 0.5, fy: 0.5 };
    aim(x, y);
    placeZoom();
    $("zoom").hidden = false;
    document.body.dataset.zoom = side;
  }

  function unzoom() {
    if (!state.zoom) return;
    state.zoom = null;
    $("zoom").hidden = true;
    delete document.body.dataset.zoom;
  }

  function endPress(e, choose) {
    const press = state.press;
    if (!press || (e && e.pointerId !== press.pointerId)) return;
    state.press = null;
    clearTimeout(press.timer);
    if (press.held) unzoom();
    // a click: released on the image it began on, with the same pair still on screen
    else if (choose && e.target === $(`img-${press.side}`) && state.current?.pair_id === press.pairId) {
      decide(press.side);
    }
  }

  function watchImage(side) {
    const img = $(`img-${side}`);
    img.addEventListener("load", () => {
      if (!img.naturalWidth || !img.naturalHeight) return;
      img.closest("figure").style.setProperty("--ar", String(img.naturalWidth / img.naturalHeight));
      img.classList.toggle("pixelated", img.naturalWidth <= 256 && img.naturalHeight <= 256);
    });
    img.addEventListener("pointerenter", () => (state.hover = side));
    img.addEventListener("pointerleave", () => {
      if (state.hover === side) state.hover = null;
    });
    img.addEventListener("contextmenu", (e) => e.preventDefault()); // a long touch zooms, no menu
    img.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || !state.current || state.press) return;
      e.preventDefault(); // no text selection, no dragged image
      const press = { side, pairId: state.current.pair_id, pointerId: e.pointerId, held: false, timer: null };
      press.timer = setTimeout(() => {
        press.held = true;
        zoom(side, "hold", e.clientX, e.clientY);
      }, HOLD_MS);
      state.press = press;
    });
  }

  function askName() {
    $("name-input").value = state.name || "";
    $("name-overlay").hidden = false;
    $("name-input").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("name-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("name-input").value.trim();
      if (!name) return;
      const changed = name !== state.name;
      state.name = name;
      localStorage.setItem(NAME_KEY, name);
      $("name-overlay").hidden = true;
      if (changed || !state.current) {
        state.current = null;
        state.next = null;
        state.lastVoteId = null;
        state.secret = null;
        start();
      }
    });
    $("change-name").addEventListener("click", askName);
    $("check-again").addEventListener("click", start);
    for (const id of ["btn-left", "btn-right", "btn-tie", "btn-skip"]) {
      $(id).addEventListener("click", () => decide($(id).dataset.choice));
    }
    $("btn-undo").addEventListener("click", undo);
    state.instructions = document.querySelector('meta[name="prefkit-instructions"]').content;
    for (const side of SIDES) watchImage(side);
    window.addEventListener("pointerup", (e) => endPress(e, true));
    window.addEventListener("pointercancel", (e) => endPress(e, false));
    window.addEventListener("pointermove", (e) => {
      state.pointer = { x: e.clientX, y: e.clientY };
      if (state.zoom) aim(e.clientX, e.clientY);
    });
    window.addEventListener("blur", () => {
      endPress(null, false);
      unzoom();
    });
    window.addEventListener("resize", placeZoom);
    document.addEventListener("keyup", (e) => {
      if ((e.key === "z" || e.key === "Z") && state.zoom && state.zoom.by === "key") unzoom();
    });
    document.addEventListener("keydown", (e) => {
      if (!$("name-overlay").hidden || e.target instanceof HTMLInputElement) return;
      if (e.repeat || e.ctrlKey || e.altKey || e.metaKey) return; // a held key is one decision
      if (e.key === "Escape") {
        unzoom();
      } else if (e.key === "z" || e.key === "Z") {
        e.preventDefault();
        const at = state.hover && state.pointer ? [state.pointer.x, state.pointer.y] : [];
        if (!state.zoom) zoom(state.hover || "left", "key", ...at);
      } else if (e.key in CHOICE_KEYS) {
        e.preventDefault();
        decide(CHOICE_KEYS[e.key]);
      } else if (e.key === "u" || e.key === "U") {
        e.preventDefault();
        undo();
      }
    });
    window.addEventListener("beforeunload", (e) => {
      if (state.busy) e.preventDefault(); // a choice is still being saved
    });
    setButtons(false);
    state.name = localStorage.getItem(NAME_KEY);
    if (state.name) start();
    else askName();
  });
})();
