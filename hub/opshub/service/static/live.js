// Every page of the opshub service: times in the viewer's zone, and the parts of the page marked
// `data-live` following runs as they change, in place (no reload: the reader's scroll position and
// open <details> stay). A run's page also shows its notebook whole (the frame tells its height) and
// swaps in the new one as cells arrive, following the end while the reader is at the end.
//
// How it learns of changes: `api/changes?after=<n>` (service/live.py) answers once a run this person
// may see changed after the page's number (one run's page: that run), or after a while with nothing
// new. Then the page fetches itself again and replaces the `data-live` parts that differ.
"use strict";
(function () {
  const body = document.body;
  // The hub's cookie authenticates only requests that carry the page's XSRF token (JupyterHub >= 4.1
  // checks it on every request that is not a navigation): each fetch sends it.
  const headers = { "X-XSRFToken": body.getAttribute("data-xsrf") || "" };

  // Times: <time datetime="...Z"> in the viewer's zone; relative ("3 h ago") unless data-exact.

  const exactFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    timeZoneName: "short",
  });
  const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
  const UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];

  function relative(date) {
    const seconds = (date.getTime() - Date.now()) / 1000;
    for (const [unit, size] of UNITS) {
      if (Math.abs(seconds) >= size || unit === "second") {
        return Math.abs(seconds) < 10 ? "just now" : relativeFormat.format(Math.round(seconds / size), unit);
      }
    }
    return "";
  }

  function elapsed(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s).padStart(2, "0")}s` : `${s}s`;
  }

  function showTimes(root) {
    for (const node of root.querySelectorAll("time[datetime]")) {
      const date = new Date(node.getAttribute("datetime"));
      if (isNaN(date)) continue;
      const exact = exactFormat.format(date);
      const utc = node.getAttribute("datetime").replace("T", " ").replace("Z", " UTC");
      if (node.hasAttribute("data-exact")) {
        node.textContent = exact;
        node.title = `${relative(date)} (${utc})`;
      } else {
        node.textContent = relative(date);
        node.title = `${exact} (${utc})`;
      }
    }
    for (const node of root.querySelectorAll("[data-since]")) {
      const since = new Date(node.getAttribute("data-since"));
      if (!isNaN(since)) node.textContent = elapsed((Date.now() - since.getTime()) / 1000);
    }
  }

  // The notebook frame (a run's page): its height, its failing cell, a new one swapped in whole.

  const output = document.getElementById("run-output");
  let failedTop = null;
  let scrolledToFailed = false;

  function atEnd() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 48;
  }
  // Whether the reader follows the end: where the reader last scrolled to (the page growing under the
  // reader fires no scroll event, so it does not change this).
  let following = atEnd();
  window.addEventListener("scroll", () => { following = atEnd(); }, { passive: true });
  function toTheEnd() {
    if (following) window.scrollTo({ top: document.documentElement.scrollHeight, behavior: "instant" });
  }

  function landOnFailedCell() {
    const frame = output && output.querySelector("iframe.notebook");
    if (location.hash !== "#failed-cell" || failedTop === null || !frame || scrolledToFailed) return;
    scrolledToFailed = true;
    const top = frame.getBoundingClientRect().top + window.scrollY + failedTop - 16;
    window.scrollTo({ top: Math.max(0, top), behavior: "instant" });
  }

  window.addEventListener("message", (event) => {
    if (!output || !event.data || !event.data.opshubFrame) return;
    const frame = [...output.querySelectorAll("iframe")].find((f) => f.contentWindow === event.source);
    if (!frame) return; // only our own frames tell their height
    const { height, failedTop: top } = event.data.opshubFrame;
    if (Number.isFinite(height) && height > 0) frame.style.height = `${height + 2}px`;
    if (!frame.hasAttribute("data-incoming")) toTheEnd();
    if (frame.hasAttribute("data-incoming")) {
      frame.dispatchEvent(new CustomEvent("opshub-ready"));
      return;
    }
    failedTop = Number.isFinite(top) ? top : null;
    landOnFailedCell();
  });

  // A link to the failing cell lands on the cell inside the notebook (the page alone knows only where
  // the notebook starts: #failed-cell, its fallback without this script).
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest('a[href="#failed-cell"]');
    if (!link || failedTop === null) return;
    event.preventDefault();
    history.replaceState(null, "", "#failed-cell");
    scrolledToFailed = false;
    landOnFailedCell();
  });

  function swapFrame(src) {
    // The new notebook loads hidden under the old one and takes its place once it knows its height,
    // so the page never shrinks under the reader.
    // It is not `iframe.notebook` until it takes the old one's place: the page always has one notebook.
    const old = output.querySelector("iframe.notebook");
    for (const stale of output.querySelectorAll("iframe[data-incoming]")) stale.remove();
    const incoming = old.cloneNode(false);
    incoming.setAttribute("data-incoming", "");
    incoming.className = "";
    incoming.style.cssText = `position:absolute; left:0; top:${old.offsetTop}px; width:100%; border:0; visibility:hidden; height:${old.style.height || "80vh"}`;
    incoming.src = src;
    return new Promise((resolve) => {
      const done = () => {
        if (!incoming.isConnected) return resolve();
        incoming.removeAttribute("data-incoming");
        incoming.className = "notebook";
        incoming.style.position = incoming.style.left = incoming.style.top = incoming.style.visibility = "";
        incoming.style.width = incoming.style.border = "";
        old.remove();
        toTheEnd();
        resolve();
      };
      incoming.addEventListener("opshub-ready", done, { once: true });
      setTimeout(done, 10000); // a frame that never tells its height still replaces the old one
      old.after(incoming);
    });
  }

  async function updateOutput(fresh) {
    const version = fresh.getAttribute("data-output-version");
    if (!output || version === output.getAttribute("data-output-version")) return;
    const oldFrame = output.querySelector("iframe.notebook");
    const newFrame = fresh.querySelector("iframe.notebook");
    output.setAttribute("data-output-version", version);
    if (oldFrame && newFrame) {
      await swapFrame(newFrame.getAttribute("src"));
    } else {
      output.innerHTML = fresh.innerHTML;
      toTheEnd();
    }
  }

  // The `data-live` parts.

  function replaceRegion(region, fresh) {
    if (region.innerHTML === fresh.innerHTML) return;
    const open = new Set([...region.querySelectorAll("details[id]")].filter((d) => d.open).map((d) => d.id));
    const closed = new Set([...region.querySelectorAll("details[id]")].filter((d) => !d.open).map((d) => d.id));
    region.innerHTML = fresh.innerHTML;
    for (const details of region.querySelectorAll("details[id]")) {
      if (open.has(details.id)) details.open = true; // the reader opened it: it stays open
      if (closed.has(details.id)) details.open = false; // and what the reader closed stays closed
    }
    showTimes(region);
  }

  async function refresh() {
    const answer = await fetch(location.href, { credentials: "same-origin", headers: { ...headers, Accept: "text/html" } });
    if (!answer.ok) throw new Error(`the page answered ${answer.status}`);
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    for (const region of document.querySelectorAll("[data-live][id]")) {
      const twin = fresh.getElementById(region.id);
      if (twin) replaceRegion(region, twin);
    }
    const freshOutput = fresh.getElementById("run-output");
    if (freshOutput) await updateOutput(freshOutput);
    toTheEnd();
    document.title = fresh.title;
  }

  async function follow() {
    const api = body.getAttribute("data-live-api");
    const run = body.getAttribute("data-live-run");
    let seq = Number(body.getAttribute("data-live-seq") || 0);
    let pause = 0;
    for (;;) {
      try {
        const query = `after=${seq}` + (run ? `&run=${encodeURIComponent(run)}` : "");
        const answer = await fetch(`${api}?${query}`, { credentials: "same-origin", headers: { ...headers, Accept: "application/json" } });
        if (answer.status === 404 || answer.status === 403) return; // the run is gone, or the login: stop
        if (!answer.ok) throw new Error(`api/changes answered ${answer.status}`);
        const next = (await answer.json()).seq;
        if (next !== seq) {
          await refresh();
          seq = next;
        }
        pause = 0;
      } catch (error) {
        pause = Math.min((pause || 1000) * 2, 30000); // the service restarts, the network drops: try again
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
    }
  }

  showTimes(document);
  setInterval(() => showTimes(document), 1000);
  if (document.querySelector("[data-live][id]") || output) follow();
})();
