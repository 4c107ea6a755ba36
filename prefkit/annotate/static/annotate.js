// prefkit annotate: the page. Plain JavaScript, no build step.
//
// A decision is sent with an id made here; the page moves on only when the server answered that it is
// saved (committed to SQLite). Until then the decision waits in localStorage and is re-sent, with the same
// id, after a network error or a reload: the server stores an id once, so nothing is lost or doubled.
// Text from the dataset (the prompt) is only ever set with textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NAME_KEY = "prefkit-annotator";
  const PENDING_KEY = "prefkit-pending-vote";
  const CHOICE_KEYS = { 1: "left", 2: "right", 3: "tie", s: "skip", S: "skip" };

  const state = {
    name: null,
    current: null, // the pair on screen: {pair_id, prompt, left, right, left_url, right_url, ...}
    next: null, // a promise of the prefetched pair (or null)
    shownAt: 0,
    busy: false,
    lastVoteId: null, // what undo takes back
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

  // One request; network errors and 5xx are retried (the same body, so the same vote id) until the
  // server answers. A 4xx is final: its message is shown.
  async function call(method, path, body) {
    let wait = 250;
    for (let attempt = 1; ; attempt++) {
      let response;
      try {
        response = await fetch(path, {
          method,
          headers: body ? { "Content-Type": "application/json" } : {},
          body: body ? JSON.stringify(body) : undefined,
          cache: "no-store",
        });
      } catch (e) {
        response = null;
      }
      if (response && response.ok) return response.json();
      if (response && response.status < 500) {
        let message = `${response.status}`;
        try {
          message = (await response.json()).error || message;
        } catch (e) {
          /* not JSON */
        }
        throw new HttpError(response.status, message);
      }
      setStatus(`server unreachable, retrying (attempt ${attempt}); your choice is kept`, true);
      await sleep(wait);
      wait = Math.min(wait * 2, 5000);
    }
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
    const q = new URLSearchParams({ annotator: state.name });
    for (const id of exclude) q.append("exclude", id);
    const res = await call("GET", `/api/next?${q}`);
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
      await resendPending();
      const res = await fetchNext([]);
      state.lastVoteId = res.last_vote_id;
      show(res.pair);
      setStatus(res.pair ? "" : "nothing to label");
      if (res.pair) prefetch();
    } catch (e) {
      setStatus(`error: ${e.message}`, true);
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
        const ack = await call("POST", "/api/vote", vote);
        state.lastVoteId = ack.vote_id;
      } catch (e) {
        if (!(e instanceof HttpError)) throw e;
      }
    }
    localStorage.removeItem(PENDING_KEY);
  }

  async function decide(side) {
    if (state.busy || !state.current) return;
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
    };
    localStorage.setItem(PENDING_KEY, JSON.stringify(vote));
    setStatus("saving\u2026");
    try {
      const ack = await call("POST", "/api/vote", vote);
      localStorage.removeItem(PENDING_KEY);
      state.lastVoteId = ack.vote_id;
      showProgress(ack.progress);
      const next = state.next ? await state.next : (await fetchNext([pair.pair_id])).pair;
      show(next);
      setStatus(side === "skip" ? "skipped" : "saved");
      if (next) prefetch();
      else state.next = null;
    } catch (e) {
      localStorage.removeItem(PENDING_KEY); // refused (4xx): re-sending cannot help
      setStatus(`not saved: ${e.message}`, true);
      if (e instanceof HttpError && e.status === 409) {
        // decided already (e.g. in another tab): move on rather than stay on a pair that cannot be voted
        try {
          const res = await fetchNext([pair.pair_id]);
          show(res.pair);
          if (res.pair) prefetch();
        } catch (e2) {
          setStatus(`error: ${e2.message}`, true);
        }
      }
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
      const res = await call("POST", "/api/undo", { annotator: state.name, vote_id: state.lastVoteId });
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
      if (changed) {
        state.current = null;
        state.next = null;
        state.lastVoteId = null;
        start();
      }
    });
    $("change-name").addEventListener("click", askName);
    $("check-again").addEventListener("click", start);
    for (const id of ["btn-left", "btn-right", "btn-tie", "btn-skip"]) {
      $(id).addEventListener("click", () => decide($(id).dataset.choice));
    }
    $("btn-undo").addEventListener("click", undo);
    document.addEventListener("keydown", (e) => {
      if (!$("name-overlay").hidden || e.target instanceof HTMLInputElement) return;
      if (e.repeat || e.ctrlKey || e.altKey || e.metaKey) return; // a held key is one decision
      if (e.key in CHOICE_KEYS) {
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
