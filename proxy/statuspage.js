"use strict";
// The status page's refresh (statuspage.py): polls /status.json and rebuilds each section from
// it, as the server renders it, with textContent only (no HTML is ever parsed from the data).
(function () {
  var SPARKS = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588";
  var CLASSES = {Alive: "good", ok: "good", Dead: "bad", unreachable: "bad", Close: "off",
                 Unknown: "unknown"};
  var STATES = ["busy", "idle", "starting", "queued"];
  var polls = 0;

  function el(tag, text, css) {
    var node = document.createElement(tag);
    if (text !== undefined) node.textContent = String(text);
    if (css) node.className = css;
    return node;
  }
  function table(head, rows) {
    var t = el("table"), thead = el("thead"), tr = el("tr"), tbody = el("tbody");
    head.forEach(function (h) { tr.appendChild(el("th", h)); });
    thead.appendChild(tr);
    rows.forEach(function (row) {
      var r = el("tr");
      row.forEach(function (cell) { r.appendChild(el("td", cell[0], cell[1])); });
      tbody.appendChild(r);
    });
    t.appendChild(thead);
    t.appendChild(tbody);
    return t;
  }
  function heading(tag, text, small) {
    var h = el(tag, text);
    if (small !== undefined) { h.appendChild(document.createTextNode(" ")); h.appendChild(el("small", small)); }
    return h;
  }
  function clock(epoch) { return new Date(epoch * 1000).toISOString().slice(11, 19) + " UTC"; }
  function sparkline(series) {
    var top = Math.max.apply(null, [0].concat(series));
    return series.map(function (v) {
      return SPARKS[top ? Math.min(SPARKS.length - 1, Math.ceil(v * (SPARKS.length - 1) / top)) : 0];
    }).join("");
  }
  function processText(p) {
    if (!p.workers) return "one process, pid " + p.pid;
    var serving = p.workers.filter(function (w) { return w.serving; }).length;
    return "supervisor pid " + p.pid + ", " + serving + " of " + p.workers.length +
      " workers serving (pids " + p.workers.map(function (w) { return w.pid; }).join(", ") + ")";
  }
  function flag(n, css) { return [String(n), n ? css : ""]; }

  var SECTIONS = {
    store: function (s) {
      var st = s.store;
      return [heading("h2", "Store"), table(["mode", "state", "revision", "last error"],
        [[[st.mode, ""], [st.state, CLASSES[st.state] || ""], [st.revision || "\u2014", ""],
          [st.last_error || "\u2014", ""]]])];
    },
    traffic: function (s) {
      var t = s.traffic;
      var spark = el("p", sparkline(t.series), "spark");
      spark.title = "requests per second, the last minute";
      return [heading("h2", "Traffic", "last " + t.seconds + " s"),
        table(["requests/s", "requests", "4xx", "5xx", "upstream errors", "function errors"],
          [[[t.rate.toFixed(1), ""], [String(t.requests), ""], flag(t.client_errors, "warn"),
            flag(t.server_errors, "bad"), flag(t.upstream_errors, "bad"),
            flag(t.function_errors, "bad")]]), spark];
    },
    functions: function (s) {
      var names = Object.keys(s.functions);
      if (!names.length) return [heading("h2", "Function instances"), el("p", "no local functions")];
      return [heading("h2", "Function instances"), table(["function"].concat(STATES),
        names.map(function (fn) {
          return [[fn, ""]].concat(STATES.map(function (k) { return [String(s.functions[fn][k]), ""]; }));
        }))];
    },
    listeners: function (s) {
      var out = [heading("h2", "Listeners, rules and targets")];
      if (!s.listeners.length) out.push(el("p", "no listeners"));
      s.listeners.forEach(function (l) {
        var rows = [];
        l.rules.forEach(function (r) {
          var where = [[r.domain, ""], [r.url, ""], [r.location_id, ""], [r.scheduler, ""]];
          if (!r.targets.length) rows.push(where.concat([["no targets", "off"], ["", ""], ["", ""]]));
          r.targets.forEach(function (t) {
            rows.push(where.concat([[t.type + " " + t.target, ""],
              [String(t.weight), t.weight ? "" : "off"],
              t.health === null ? ["\u2014", ""] : [t.health, CLASSES[t.health] || ""]]));
          });
        });
        out.push(heading("h3", l.name, l.protocol + " " + (l.host || "*") + ":" + l.port));
        out.push(table(["domain", "url", "rule", "scheduler", "target", "weight", "health"], rows));
      });
      return out;
    }
  };

  function show(s) {
    Object.keys(SECTIONS).forEach(function (name) {
      var fresh = el("section");
      fresh.id = name;
      SECTIONS[name](s).forEach(function (node) { fresh.appendChild(node); });
      document.getElementById(name).replaceWith(fresh);
    });
    document.getElementById("process").textContent = processText(s.process);
    var updated = document.getElementById("updated");
    updated.textContent = "updated " + clock(s.generated);
    updated.className = "";
    polls += 1;
    document.body.setAttribute("data-polls", String(polls));
  }
  function failed(err) {
    var updated = document.getElementById("updated");
    updated.textContent = "update failed (" + err.message + "); these figures are older";
    updated.className = "bad";
  }
  function poll() {
    fetch("/status.json", {cache: "no-store", credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) throw new Error("the token is needed again: open /?token=TOKEN");
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(show, failed).then(schedule);
  }
  function schedule() { setTimeout(poll, Number(document.body.getAttribute("data-poll")) || 2000); }
  schedule();
})();
