// Live updates of a task page over server-sent events. The page is complete without
// this script; it only keeps the numbers and the iteration log current.
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
  });
  source.addEventListener("state", function (e) {
    var s = JSON.parse(e.data);
    set("status", short(s.status, "TASK_STATUS_"));
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
