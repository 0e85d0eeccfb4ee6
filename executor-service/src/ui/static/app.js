// Live updates. Every page is complete without this script; it only keeps them current:
// the task list by fetching its changing part again every few seconds, a task page over
// server-sent events (numbers, iteration log) plus a refetch of its governance and
// workspace sections when those change.

// Swaps the element `id` of the current page for the one in `html` (a page or fragment
// rendered by the server, every value already escaped there). Returns whether it did.
function taskrouterSwap(id, html) {
  "use strict";
  var doc = new DOMParser().parseFromString(html, "text/html");
  var fresh = doc.getElementById(id);
  var current = document.getElementById(id);
  if (!fresh || !current) {
    return false;
  }
  current.replaceWith(document.importNode(fresh, true));
  return true;
}

// The task list: refetch /fragment/tasks (same query) every 2 s while the tab is visible.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var live = document.getElementById("list-live");
  if (!live || !window.fetch || !window.DOMParser) {
    return;
  }
  var state = document.getElementById("list-state");
  function mark(text) {
    if (state) {
      state.textContent = text;
    }
  }
  function tick() {
    var section = document.getElementById("list-live");
    var url = section && section.getAttribute("data-refresh");
    if (!url || document.hidden) {
      window.setTimeout(tick, PERIOD_MS);
      return;
    }
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) {
          // The session ended: stop, and say so; a reload leads to the login form.
          mark("logged out");
          return null;
        }
        if (!resp.ok) {
          mark("retrying");
          window.setTimeout(tick, PERIOD_MS * 2);
          return null;
        }
        return resp.text().then(function (html) {
          if (taskrouterSwap("list-live", html)) {
            mark("live " + new Date().toISOString().slice(11, 19));
          }
          window.setTimeout(tick, PERIOD_MS);
        });
      })
      .catch(function () {
        mark("retrying");
        window.setTimeout(tick, PERIOD_MS * 2);
      });
  }
  mark("live");
  window.setTimeout(tick, PERIOD_MS);
})();

// A task page.
(function () {
  "use strict";
  var root = document.querySelector("[data-live-task]");
  if (!root || !window.EventSource) {
    return;
  }
  var id = root.getAttribute("data-live-task");
  var lastAt = Number(root.getAttribute("data-last-at") || "0");
  var source = new EventSource("/tasks/" + encodeURIComponent(id) + "/events");
  function set(elementId, text) {
    var el = document.getElementById(elementId);
    if (el) {
      el.textContent = text;
    }
  }
  function short(name, prefix) {
    return name.indexOf(prefix) === 0 ? name.slice(prefix.length) : name;
  }
  // Approvals, budget and branches are rendered by the server: refetch the page and swap
  // that part, at most every 2 s (branches move with every iteration). An event that
  // arrives while a refetch is in flight asks for one more afterwards: the page fetched
  // may predate that event's change (the last one of a task, say), and nothing else
  // would bring it.
  var extrasTimer = null;
  var extrasInFlight = false;
  var extrasAgain = false;
  var extrasAt = 0;
  function refreshExtras() {
    if (!window.fetch || !window.DOMParser) {
      return;
    }
    if (extrasInFlight) {
      extrasAgain = true;
      return;
    }
    if (extrasTimer !== null) {
      return;
    }
    var wait = Math.max(0, extrasAt + 2000 - Date.now());
    extrasTimer = window.setTimeout(function () {
      extrasTimer = null;
      extrasInFlight = true;
      extrasAt = Date.now();
      fetch(location.pathname, { credentials: "same-origin", cache: "no-store" })
        .then(function (resp) {
          return resp.ok ? resp.text() : null;
        })
        .then(function (html) {
          if (html) {
            taskrouterSwap("task-extras", html);
          }
        })
        .catch(function () {})
        .then(function () {
          extrasInFlight = false;
          if (extrasAgain) {
            extrasAgain = false;
            refreshExtras();
          }
        });
    }, wait);
  }
  ["approval", "budget", "routed", "finished"].forEach(function (kind) {
    source.addEventListener(kind, refreshExtras);
  });
  source.addEventListener("iteration", function (e) {
    var r = JSON.parse(e.data);
    if (r.at_ms <= lastAt) {
      return;
    }
    lastAt = r.at_ms;
    var rows = document.getElementById("iteration-rows");
    if (!rows) {
      return;
    }
    var tr = document.createElement("tr");
    var cells = [
      r.iteration,
      r.role,
      r.done ? "yes" : "no",
      "$" + r.cost_usd.toFixed(4),
      r.tokens_in,
      r.tokens_out,
      new Date(r.at_ms).toISOString(),
      r.worker_id
    ];
    cells.forEach(function (v, i) {
      var td = document.createElement("td");
      if (i === 0 || (i >= 3 && i <= 5)) {
        td.className = "num";
      }
      td.textContent = String(v);
      tr.appendChild(td);
    });
    rows.appendChild(tr);
    if (document.querySelector("#task-extras #workspace")) {
      refreshExtras();
    }
  });
  source.addEventListener("state", function (e) {
    var s = JSON.parse(e.data);
    var status = short(s.status, "TASK_STATUS_");
    set("status", status);
    var statusEl = document.getElementById("status");
    if (statusEl) {
      statusEl.className = "status-" + status;
    }
    set("iteration-count", String(s.iteration_count));
    set("max-iterations", String(s.max_iterations));
    set("team-iterations", String(s.team_iterations));
    set("phase", short(s.phase, "TEAM_PHASE_"));
    set("cost", "$" + s.cost_usd.toFixed(4));
    set("tokens", s.tokens_in + " in / " + s.tokens_out + " out");
    set("live", "live");
  });
  source.addEventListener("end", function () {
    source.close();
    set("live", "finished");
  });
})();
