// The eventstore console's page script: plots (uPlot), the time-travel slider, live updates
// over server-sent events. No build step; the page's data is in #page-data.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const page = document.body.dataset.page;
  const $ = (sel) => document.querySelector(sel);
  const pretty = (v) => JSON.stringify(v, null, 2);
  const getJSON = async (url) => {
    const sep = url.includes("?") ? "&" : "?";
    const res = await fetch(url + sep + "format=json", { headers: { Accept: "application/json" } });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    return body;
  };
  const cell = (tr, text) => {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    tr.appendChild(td);
    return td;
  };
  // An EventSource that reopens itself (from where it got to) after an error.
  function live(url, handlers, status) {
    let es = null;
    const open = () => {
      es = new EventSource(typeof url === "function" ? url() : url);
      es.onopen = () => status && status("live");
      for (const [kind, fn] of Object.entries(handlers)) {
        es.addEventListener(kind, (e) => fn(JSON.parse(e.data)));
      }
      es.addEventListener("error", () => {
        if (status) status("reconnecting…");
        es.close();
        setTimeout(open, 1000);
      });
    };
    open();
  }

  // -- overview ------------------------------------------------------------------------------
  function plot(target, labels, columns) {
    const el = $(target);
    if (!el || typeof uPlot === "undefined") return null;
    el.innerHTML = "";
    const series = [{}].concat(labels.map((l, i) => ({
      label: l, stroke: ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a"][i % 4], width: 2,
    })));
    return new uPlot({ width: 560, height: 160, series: series, scales: { x: { time: true } } },
      columns, el);
  }
  function overview(d) {
    for (const k of ["messages", "bytes", "first_seq", "last_seq", "first_time", "last_time"]) {
      const el = $("#stream-" + k);
      if (el) el.textContent = String(d.stream[k]);
    }
    $("#conflicts").textContent = d.conflicts;
    $("#quarantined").textContent = d.quarantined;
    $("#counted").textContent = d.counted_to_seq;
    const rate = d.append_rate;
    plot("#rate-plot", ["events/s"], [rate.map((r) => r[0]), rate.map((r) => r[1])]);
    const xs = Array.from(new Set(d.projections.flatMap((p) => p.series.map((s) => s[0]))))
      .sort((a, b) => a - b);
    const cols = [xs].concat(d.projections.map((p) => {
      const by = new Map(p.series.map((s) => [s[0], s[2]]));
      return xs.map((x) => (by.has(x) ? by.get(x) : null));
    }));
    plot("#lag-plot", d.projections.map((p) => p.projection + " lag"), cols);
    const services = $("#services");
    services.querySelectorAll("tr:not(:first-child)").forEach((tr) => tr.remove());
    for (const v of d.services) {
      const tr = document.createElement("tr");
      const meta = Object.keys(v.metadata).sort().map((k) => k + "=" + v.metadata[k]).join(", ");
      [v.name, v.id, v.version, meta].forEach((x) => cell(tr, x));
      services.appendChild(tr);
    }
    const rows = d.projections.map((p) => [p.projection, p.checkpoint, p.lag, p.conflicts,
      p.quarantined]);
    const table = $("#projections");
    table.querySelectorAll("tr:not(:first-child)").forEach((tr) => tr.remove());
    for (const r of rows) {
      const tr = document.createElement("tr");
      r.forEach((v, i) => (cell(tr, v).className =
        ["", "checkpoint", "lag", "conflicts", "quarantined"][i]));
      table.appendChild(tr);
    }
  }

  // -- one aggregate -------------------------------------------------------------------------
  function showPoint(p) {
    $("#slider").value = p.version;
    $("#slider-version").textContent = p.version;
    $("#point-state").textContent = pretty(p.state);
    $("#point-state").dataset.version = p.version;
    $("#point-info").textContent = "version " + p.version + ", seq " + p.seq + ", recorded " +
      p.recorded_at + (p.previous ? " — diff to version " + p.previous.version : "");
    const diff = $("#point-diff");
    diff.innerHTML = "<tr><th>path</th><th>change</th><th>before</th><th>after</th></tr>";
    for (const c of p.changes) {
      const tr = document.createElement("tr");
      tr.className = "change " + c.op;
      cell(tr, c.path.join("."));
      cell(tr, c.op);
      cell(tr, c.old === null ? "" : JSON.stringify(c.old));
      cell(tr, c.new === null ? "" : JSON.stringify(c.new));
      diff.appendChild(tr);
    }
    document.querySelectorAll("#history tr.selected").forEach((tr) => tr.classList.remove("selected"));
    const row = document.querySelector('#history tr[data-version="' + p.version + '"]');
    if (row) row.classList.add("selected");
  }
  function showError(where, err) {
    $(where).textContent = "error: " + err.message;
  }
  let wanted = 0;
  async function loadPoint(query) {
    const ticket = ++wanted;
    try {
      const p = await getJSON(data.path + "?" + query);
      if (ticket === wanted) showPoint(p);
    } catch (err) {
      if (ticket === wanted) showError("#point-info", err);
    }
  }
  async function refreshAggregate() {
    // The server renders the history and the machine: swap them in from a fresh page.
    const res = await fetch(data.path, { headers: { Accept: "text/html" } });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    for (const sel of ["#history tbody", "#machine"]) {
      const fresh = doc.querySelector(sel);
      if (fresh) $(sel).innerHTML = fresh.innerHTML;
    }
  }
  function aggregate(d) {
    const slider = $("#slider");
    if (d.point) showPoint(d.point);
    else if (d.version > 0) loadPoint("version=" + d.version);
    let timer = null;
    slider.addEventListener("input", () => {
      $("#slider-version").textContent = slider.value;
      clearTimeout(timer);
      timer = setTimeout(() => loadPoint("version=" + slider.value), 80);
    });
    slider.addEventListener("change", () => loadPoint("version=" + slider.value));
    $("#at-go").addEventListener("click", () => {
      const v = $("#at-picker").value;
      if (!v) return showError("#point-info", new Error("pick a time first"));
      loadPoint("at=" + encodeURIComponent(new Date(v).toISOString()));
    });
    live("/live" + d.path, {
      state: async (rec) => {
        if (rec.version < Number($("#version").textContent)) return;
        $("#state").textContent = pretty(rec.state);
        $("#version").textContent = rec.version;
        $("#seq").textContent = rec.seq;
        const atEnd = Number(slider.value) >= Number(slider.max);
        slider.max = Math.max(rec.version, 1);
        await refreshAggregate();
        if (atEnd && Number(slider.value) !== rec.version) loadPoint("version=" + rec.version);
      },
    });
  }

  // -- live tail -----------------------------------------------------------------------------
  function tail(d) {
    let paused = false;
    let last = d.head;
    const waiting = [];
    const status = (s) => ($("#tail-status").textContent = paused ? "paused (" + waiting.length +
      " waiting)" : s);
    const addEvent = (ev) => {
      const tr = document.createElement("tr");
      tr.dataset.seq = ev.seq;
      tr.className = "event";
      cell(tr, ev.seq);
      cell(tr, ev.recorded_at);
      const name = ev.aggregate_type + "/" + ev.aggregate_id;
      if (ev.aggregate_type.startsWith("_")) cell(tr, name); // the rules: no page of its own
      else {
        const a = document.createElement("a");
        a.href = "/aggregates/" + encodeURIComponent(ev.aggregate_type) + "/" +
          encodeURIComponent(ev.aggregate_id);
        a.textContent = name;
        cell(tr, "").appendChild(a);
      }
      cell(tr, ev.version);
      cell(tr, ev.type);
      cell(tr, ev.producer);
      cell(tr, ev.transition ? ev.transition.from + "→" + ev.transition.to : "");
      cell(tr, JSON.stringify(ev.data).slice(0, 200));
      $("#tail-rows").prepend(tr);
    };
    const addQuarantined = (q) => {
      const tr = document.createElement("tr");
      tr.className = "quarantined";
      [q.seq, q.subject, q.kind, q.reason].forEach((v) => cell(tr, v));
      $("#quarantined").appendChild(tr);
    };
    d.events.forEach(addEvent);
    d.quarantined.forEach(addQuarantined);
    $("#pause").addEventListener("click", () => {
      paused = !paused;
      $("#pause").textContent = paused ? "resume" : "pause";
      if (!paused) waiting.splice(0).forEach(addEvent);
      status("live");
    });
    const type = d.aggregate_type ? "&type=" + encodeURIComponent(d.aggregate_type) : "";
    live(() => "/live/tail?from_seq=" + (last + 1) + type, {
      event: (ev) => {
        if (ev.seq <= last) return;
        last = ev.seq;
        if (paused) { waiting.push(ev); status(""); } else addEvent(ev);
      },
      quarantined: (q) => { last = Math.max(last, q.seq); addQuarantined(q); },
    }, status);
  }

  if (page === "overview") {
    overview(data);
    setInterval(async () => { try { overview(await getJSON("/")); } catch (e) { /* next tick */ } },
      2000);
  } else if (page === "aggregate") aggregate(data);
  else if (page === "tail") tail(data);
})();
