"use strict";
// tlsinspector report: draws the ladders from the JSON block #data.
// Every value from the log is peer-controlled: it reaches the page through
// textContent / setAttribute of href on our own links only, never as markup.
(function () {
  const dataBlock = document.getElementById("data");
  const DATA = JSON.parse(dataBlock.textContent);
  dataBlock.textContent = "";  // parsed once; a 10,000-connection log need not stay twice
  const LANES = DATA.lanes || [];
  const PAGE = 200;            // lanes in the DOM at once; "show more" adds the next
  const PX_PER_MS = 0.2;       // gaps to scale: 1 s of silence is 200 px
  const MAX_GAP = 400;         // longer gaps are capped and labelled
  const X = { client: 4, inspector: 50, server: 96 };
  const opened = {};           // lane id -> true/false once the user toggled it
  let shown = PAGE;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function str(v) { return typeof v === "string" ? v : JSON.stringify(v); }
  function ms(t) { return (t * 1000).toFixed(1) + " ms"; }

  // ---- header, verdicts, filters ---------------------------------------------
  const sub = document.getElementById("sub");
  let subtext = LANES.length + " connection" + (LANES.length === 1 ? "" : "s");
  if (DATA.bad_count) subtext += "; " + DATA.bad_count + " unreadable log lines skipped (lines " +
      DATA.bad_lines.join(", ") + ")";
  sub.textContent = subtext;

  if (DATA.scenario) drawScenario(DATA.scenario, document.getElementById("verdicts"));
  if (DATA.verdicts) drawVerdicts(DATA.verdicts, document.getElementById("verdicts"));

  function drawScenario(s, into) {
    const box = el("div", "scenario");
    box.appendChild(el("h2", null, "scenario " + s.name));
    if (s.reproduces) box.appendChild(el("p", "reproduces", "reproduces: " + s.reproduces));
    if (s.classes && s.classes.length) box.appendChild(el("p", "fclass", "fault class: " + s.classes.join(", ")));
    const d = el("details");
    d.appendChild(el("summary", null, "description"));
    d.appendChild(el("pre", "desc", s.description || ""));
    box.appendChild(d);
    into.appendChild(box);
  }

  function drawVerdicts(vs, into) {
    const t = el("table", "verdicts");
    const head = el("tr");
    ["client", "connection", "expected outcome", "actual outcome", "expected error text",
     "client's error text", "verdict"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    vs.forEach(function (v) {
      const tr = el("tr", v.reproduced ? "ok" : "bad");
      tr.appendChild(el("td", "client", v.client));
      const c = el("td");
      (v.conns || []).forEach(function (id) {
        const a = el("a", null, id.replace(/^conn-/, "#"));
        a.setAttribute("href", "#" + id);
        a.addEventListener("click", function (e) { e.preventDefault(); reveal(id); });
        c.appendChild(a); c.appendChild(document.createTextNode(" "));
      });
      tr.appendChild(c);
      tr.appendChild(el("td", "outcome " + (v.expected_outcome || ""), v.expected_outcome || "-"));
      tr.appendChild(el("td", "outcome " + v.outcome, v.outcome));
      tr.appendChild(el("td", "errtext", v.expected_error || ""));
      const said = el("td", "errtext client-error");
      said.appendChild(el("span", null, v.error_text || ""));
      if (v.client_output) {
        const d = el("details"); d.appendChild(el("summary", null, "full output"));
        d.appendChild(el("pre", null, v.client_output)); said.appendChild(d);
      }
      tr.appendChild(said);
      const vd = el("td", "verdict");
      vd.appendChild(el("b", null, v.reproduced ? "REPRODUCED" : "NOT REPRODUCED"));
      (v.differences || []).forEach(function (d) { vd.appendChild(el("div", "diff-line", d)); });
      tr.appendChild(vd);
      t.appendChild(tr);
    });
    into.appendChild(t);
  }

  const F = { sni: "", outcome: "", fault: "", code: "" };
  const nav = document.getElementById("filters");
  function options(key, values) {
    const s = el("select"); s.setAttribute("aria-label", key);
    s.appendChild(el("option", null, "any " + key)).value = "";
    Array.from(new Set(values)).sort().forEach(function (v) { s.appendChild(el("option", null, v)).value = v; });
    s.addEventListener("change", function () { F[key] = s.value; shown = PAGE; drawLanes(); });
    return s;
  }
  const sniBox = el("input"); sniBox.setAttribute("placeholder", "SNI contains"); sniBox.id = "f-sni";
  sniBox.addEventListener("input", function () { F.sni = sniBox.value.toLowerCase(); shown = PAGE; drawLanes(); });
  nav.appendChild(sniBox);
  const pick = {
    outcome: function (l) { return [l.outcome]; },
    fault: function (l) { return l.fault_names; },
    code: function (l) { return l.codes; },
  };
  function refreshOptions() {
    ["outcome", "fault", "code"].forEach(function (k) {
      const old = nav.querySelector("select[aria-label=" + k + "]");
      const s = options(k, [].concat.apply([], LANES.map(pick[k])).concat(F[k] ? [F[k]] : []));
      s.value = F[k];
      if (old) nav.replaceChild(s, old); else nav.insertBefore(s, count);
    });
  }
  const count = el("span", "count"); count.id = "count"; nav.appendChild(count);
  refreshOptions();

  function matches(l) {
    if (F.sni && (l.sni || "").toLowerCase().indexOf(F.sni) < 0) return false;
    if (F.outcome && l.outcome !== F.outcome) return false;
    if (F.fault && l.fault_names.indexOf(F.fault) < 0) return false;
    if (F.code && l.codes.indexOf(F.code) < 0) return false;
    return true;
  }

  // ---- lanes ------------------------------------------------------------------
  const main = document.getElementById("lanes");
  function drawLanes() {
    main.textContent = "";
    const hit = LANES.filter(matches);
    count.textContent = "showing " + Math.min(shown, hit.length) + " of " + hit.length +
        " matching (" + LANES.length + " connections)";
    const collapsed = LANES.length > 20;
    hit.slice(0, shown).forEach(function (l) {
      main.appendChild(lane(l, l.id in opened ? opened[l.id] : !collapsed));
    });
    if (hit.length > shown) {
      const more = el("button", "more", "show " + Math.min(PAGE, hit.length - shown) + " more");
      more.addEventListener("click", function () { shown += PAGE; drawLanes(); });
      main.appendChild(more);
    }
  }

  function lane(l, open) {
    const box = el("section", "lane"); box.id = l.id;
    const head = el("div", "head");
    const c = l.connect || {};
    head.appendChild(el("span", "cid", "connection " + l.conn));
    head.appendChild(el("span", "peers", (c.client || "?") + " \u2192 " + (c.server || "?") +
        (c.mode ? " (" + c.mode + ")" : "")));
    head.appendChild(el("span", "sni", l.sni ? "SNI " + l.sni : "no SNI"));
    head.appendChild(el("span", "oc oc-" + l.outcome.split(" ")[0], l.outcome));
    l.fault_names.forEach(function (f) { head.appendChild(el("span", "tag fault", f)); });
    l.codes.forEach(function (f) { head.appendChild(el("span", "tag code", f)); });
    box.appendChild(head);
    let body = null;
    function toggle(force) {
      if (!body) { body = laneBody(l); box.appendChild(body); box.classList.add("open"); return; }
      const now = force === undefined ? !box.classList.contains("open") : force;
      box.classList.toggle("open", now);
    }
    head.addEventListener("click", function () {
      toggle(); opened[l.id] = box.classList.contains("open");
    });
    box.openLane = function () { toggle(true); };
    if (open) toggle(true);
    return box;
  }

  function laneBody(l) {
    const body = el("div", "body");
    const ladder = el("div", "ladder");
    const cols = el("div", "cols");
    ["client", "inspector", "server"].forEach(function (n) { cols.appendChild(el("span", "col col-" + n, n)); });
    ladder.appendChild(cols);
    // prev: the time the ladder has reached so far. A delay fault draws its hold
    // as a gap, so what arrived meanwhile (and left after it) adds no second gap.
    let prev = l.t0;
    l.items.forEach(function (it) {
      if (typeof it.ts === "number" && typeof prev === "number") {
        const gap = (it.ts - prev) * 1000 * PX_PER_MS;
        if (gap >= 6) ladder.appendChild(gapRow(gap, it.ts - prev));
        prev = Math.max(prev, it.ts);
      } else if (typeof it.ts === "number") prev = it.ts;
      drawItem(ladder, l, it);
      (it.faults || []).forEach(function (f) {
        if (f.kind === "delay" && f.ms && typeof prev === "number") {
          prev = Math.max(prev, it.ts + f.ms / 1000);
        }
      });
    });
    body.appendChild(ladder);
    body.appendChild(findings(l));
    return body;
  }

  function gapRow(px, secs) {
    const g = el("div", "gap" + (px > MAX_GAP ? " capped" : ""));
    g.style.height = Math.min(px, MAX_GAP) + "px";
    g.appendChild(el("span", "gaplabel", (px > MAX_GAP ? "\u2248 " : "") + ms(secs) +
        (px > MAX_GAP ? " (shortened)" : "")));
    return g;
  }

  function row(l, it, cls) {
    const r = el("div", "row " + (cls || ""));
    r.appendChild(el("span", "t", typeof it.ts === "number" && typeof l.t0 === "number" ? "+" + ms(it.ts - l.t0) : ""));
    const track = el("div", "track");
    r.appendChild(track);
    return { row: r, track: track };
  }

  function arrow(track, from, to, cls, label, title) {
    const a = el("div", "arrow " + (X[to] > X[from] ? "dir-r " : "dir-l ") + (cls || ""));
    const left = Math.min(X[from], X[to]), w = Math.abs(X[to] - X[from]);
    a.style.left = left + "%"; a.style.width = w + "%";
    const lb = el("div", "lbl", label);
    lb.style.left = left + "%"; lb.style.width = w + "%";
    if (title) lb.setAttribute("title", title);
    track.appendChild(lb); track.appendChild(a);
    return lb;
  }

  function mark(track, at, cls, text) {
    const m = el("div", "mark " + cls, text);
    m.style.left = X[at] + "%";
    track.appendChild(m);
    return m;
  }

  function recLabel(it) {
    return it.content_type + " " + it.version + " len " + it.length +
        (it.sum ? " \u2014 " + it.sum : "");
  }

  function drawItem(ladder, l, it) {
    const ev = it.event;
    const from = it.from === "server" ? "server" : "client";
    const to = from === "client" ? "server" : "client";
    if (ev === "record") {
      const faults = it.faults || [];
      const r = row(l, it, "rec" + (faults.length ? " faulted" : "") + (it.encrypted ? " enc" : ""));
      r.row.id = l.id + "-" + from + "-" + it.index;
      const idx = (from === "client" ? "C" : "S") + it.index + " ";
      if (it.undelivered) {
        arrow(r.track, from, "inspector", "undelivered", idx + recLabel(it), recLabel(it));
        mark(r.track, "inspector", "drop nd-" + to, "\u2715 not delivered")
            .setAttribute("title", typeof it.undelivered === "string" ? it.undelivered
                : "the inspector had closed the connection toward the " + to);
        clickable(ladder, r.row, it);
        ladder.appendChild(r.row);
        return;
      }
      if (!faults.length) {
        arrow(r.track, from, to, "", idx + recLabel(it), recLabel(it));
        clickable(ladder, r.row, it);
        ladder.appendChild(r.row);
        return;
      }
      // A faulted record twice: as it arrived, and as it left the inspector.
      arrow(r.track, from, "inspector", "arrived", idx + "as it arrived: " + recLabel(it), recLabel(it));
      clickable(ladder, r.row, it);
      ladder.appendChild(r.row);
      faults.forEach(function (f) { drawFault(ladder, l, it, f, from, to); });
      return;
    }
    const r = row(l, it, "ev ev-" + ev);
    if (ev === "close") {
      const by = it.by === "proxy" ? "inspector" : (it.by === "server" ? "server" : "client");
      const rst = (l.fault_names.join(" ").indexOf(": close") >= 0 && hasRst(l)) ? "RST" : "FIN";
      mark(r.track, by, "close", "\u22a3 closed by " + (it.by || "?") + (by === "inspector" ? " (" + rst + ")" : ""));
      const b = it.bytes || {};
      r.row.appendChild(el("span", "bytes", "client sent " + str(b.client) + " B, server sent " + str(b.server) + " B"));
    } else if (ev === "non_tls") {
      arrow(r.track, from, to, "nontls", "non-TLS " + it.length + " bytes (" + str(it.reason) + "): " + str(it.preview));
    } else if (ev === "plaintext") {
      const pf = it.faults || [];
      const label = "plaintext " + str(it.sum);
      if (!pf.length) {
        arrow(r.track, from, to, "", label);
      } else {
        r.row.className += " faulted";
        arrow(r.track, from, "inspector", "arrived", "as it arrived: " + label);
        pf.forEach(function (f) {
          mark(r.track, "inspector", "fault", f.scenario + ": " + f.action +
              (f.after ? " (" + str(f.after) + ")" : ""));
        });
      }
    } else if (ev === "timer") {
      mark(r.track, "inspector", "fault", "timer: " + str(it.sum || "a fault fired"));
    } else if (ev === "decrypted") {
      arrow(r.track, from, to, "dec", it.sum || "decrypted");
    } else if (ev === "gap") {
      // analyze: bytes the capture lost on one side (its fields carry no message).
      mark(r.track, "inspector", "err", "gap: " + (it.missing === null || it.missing === undefined
          ? "an unknown number of" : str(it.missing)) + " bytes from the " + from +
          " missing from the capture at offset " + str(it.offset) + ", not decoded past it");
    } else {
      mark(r.track, "inspector", "err", ev + ": " + str(it.message || it.error || it.note || it.verb || it.status || ""));
    }
    clickable(ladder, r.row, it);
    ladder.appendChild(r.row);
  }

  function hasRst(l) {
    return l.items.some(function (it) {
      return (it.faults || []).some(function (f) { return f.kind === "close" && f.after.indexOf("rst") === 0; });
    });
  }

  function drawFault(ladder, l, it, f, from, to) {
    if (f.kind === "delay" && f.ms) {
      const g = el("div", "gap held");
      g.style.height = Math.min(f.ms * PX_PER_MS, MAX_GAP) + "px";
      g.appendChild(el("span", "gaplabel", "held " + f.ms + " ms at the inspector"));
      ladder.appendChild(g);
    }
    // The departure's time: the arrival, or the end of the hold for a delay.
    const r = row(l, f.kind === "delay" ? Object.assign({}, it, { ts: it.ts + f.ms / 1000 }) : it, "left");
    if (f.kind === "drop" || f.kind === "reply") {
      mark(r.track, "inspector", "drop", "\u2715 dropped");
    } else {
      arrow(r.track, "inspector", to, "departed", "as it left: " + f.left);
    }
    const d = el("div", "diff");
    d.appendChild(el("span", "who", f.scenario + " / " + f.action + (f["class"] ? " (" + f["class"] + ")" : "") + ": "));
    d.appendChild(el("span", "before", f.before));
    d.appendChild(el("span", "arrowtext", " \u2192 "));
    d.appendChild(el("span", "after", f.after));
    r.row.appendChild(d);
    ladder.appendChild(r.row);
    if (f.kind === "reply") {
      const b = row(l, it, "left");
      arrow(b.track, "inspector", from, "departed", f.left + " (answer to the sender)");
      ladder.appendChild(b.row);
    }
    if (f.closes) {
      const c = row(l, it, "ev");
      const how = f.kind === "close" ? f.after.split(" ")[0].toUpperCase() : "FIN";
      const toward = f.closes;
      ["client", "server"].forEach(function (side) {
        if (toward === "both" || toward === side) mark(c.track, side, "reset", "\u26a1 " + how + " from inspector");
      });
      ladder.appendChild(c.row);
    }
  }

  function clickable(ladder, r, it) {
    r.classList.add("click");
    r.setAttribute("title", "click for the decoded fields");
    let panel = null;
    r.addEventListener("click", function () {
      if (panel) { panel.remove(); panel = null; return; }
      panel = el("div", "fields");
      const shown = {};
      Object.keys(it).forEach(function (k) { if (k !== "sum" && k !== "faults") shown[k] = it[k]; });
      panel.appendChild(table(shown));
      r.after(panel);
    });
  }

  function table(obj) {
    const t = el("table", "kv");
    Object.keys(obj).forEach(function (k) {
      const tr = el("tr");
      tr.appendChild(el("th", null, k));
      const td = el("td"); value(td, obj[k]);
      tr.appendChild(td); t.appendChild(tr);
    });
    return t;
  }

  function value(td, v) {
    if (Array.isArray(v)) {
      if (v.every(function (x) { return x === null || typeof x !== "object"; })) {
        td.textContent = v.map(str).join(", ");
        if (v.length > 3) td.appendChild(el("span", "n", " (" + v.length + ")"));
      } else v.forEach(function (x) { const d = el("div", "item"); value(d, x); td.appendChild(d); });
    } else if (v !== null && typeof v === "object") td.appendChild(table(v));
    else td.textContent = str(v);
  }

  function findings(l) {
    const side = el("aside", "findings");
    const close = (l.items.filter(function (i) { return i.event === "close"; })[0]) || {};
    const diag = close.diagnosis || [];
    side.appendChild(el("h3", null, diag.length ? "diagnosis" : "no diagnosis findings"));
    diag.forEach(function (d) {
      const f = el("div", "finding");
      f.appendChild(el("div", "code", d.code));
      f.appendChild(el("p", "summary", d.summary));
      const refs = el("div", "refs");
      (d.links || []).forEach(function (ln) {
        if (ln.url && /^https:\/\/www\.rfc-editor\.org\//.test(ln.url)) {
          const a = el("a", null, ln.text); a.setAttribute("href", ln.url);
          a.setAttribute("rel", "noreferrer noopener"); a.setAttribute("target", "_blank");
          refs.appendChild(a);
        } else refs.appendChild(el("span", null, ln.text));
      });
      f.appendChild(refs);
      const ul = el("ul", "evidence");
      (d.evidence || []).forEach(function (e, i) {
        const li = el("li");
        const p = (d.points || [])[i];
        if (p) {
          const a = el("a", null, str(e)); const target = l.id + "-" + p[0] + "-" + p[1];
          a.setAttribute("href", "#" + target);
          a.addEventListener("click", function (ev) { ev.preventDefault(); flash(target); });
          li.appendChild(a);
        } else li.textContent = str(e);
        ul.appendChild(li);
      });
      f.appendChild(ul);
      side.appendChild(f);
    });
    return side;
  }

  function flash(id) {
    const r = document.getElementById(id);
    if (!r) return;
    r.classList.remove("hl"); void r.offsetWidth; r.classList.add("hl");
    r.scrollIntoView({ block: "center" });
  }

  function reveal(id) {
    let box = document.getElementById(id);
    if (!box) {
      const i = LANES.findIndex(function (l) { return l.id === id; });
      if (i < 0) return;
      F.sni = F.outcome = F.fault = F.code = ""; shown = Math.max(shown, i + 1); drawLanes();
      box = document.getElementById(id);
    }
    if (box) { box.openLane(); box.scrollIntoView(); }
  }

  // report.html?code=X&sni=Y opens filtered; #conn-N opens a lane, #conn-N-server-2
  // opens that record's decoded fields (links from the matrix and from tickets).
  const q = new URLSearchParams(location.search);
  ["sni", "outcome", "fault", "code"].forEach(function (k) {
    if (!q.get(k)) return;
    F[k] = k === "sni" ? q.get(k).toLowerCase() : q.get(k);
    const ctl = k === "sni" ? sniBox : nav.querySelector("select[aria-label=" + k + "]");
    if (k === "sni") ctl.value = q.get(k);
    else if (ctl && !Array.from(ctl.options).some(function (o) { return o.value === F[k]; })) {
      ctl.appendChild(el("option", null, F[k])).value = F[k];
    }
    if (ctl) ctl.value = q.get(k);
  });
  drawLanes();
  if (location.hash.length > 1) {
    const id = decodeURIComponent(location.hash.slice(1));
    const m = /^(.*)-(client|server)-(\d+)$/.exec(id);
    if (m && LANES.some(function (l) { return l.id === m[1]; })) {
      reveal(m[1]);
      const r = document.getElementById(id);
      if (r) { r.click(); r.scrollIntoView({ block: "center" }); }
    } else reveal(id);
  }
  if (DATA.live) live(DATA.live.max || 1000);

  // run --web: lanes arrive as server-sent events; each message holds whole
  // lanes (new or changed), the oldest go once there are more than max.
  function live(max) {
    const src = new EventSource("events");
    src.onmessage = function (m) {
      const msg = JSON.parse(m.data);
      if (msg.reset) LANES.length = 0;
      const at = {};
      LANES.forEach(function (l, i) { at[l.id] = i; });
      msg.lanes.forEach(function (l) {
        if (l.id in at) LANES[at[l.id]] = l; else { at[l.id] = LANES.length; LANES.push(l); }
      });
      if (LANES.length > max) LANES.splice(0, LANES.length - max);
      sub.textContent = "live: " + LANES.length + " connections" +
          (msg.dropped ? " (" + msg.dropped + " older ones dropped)" : "");
      refreshOptions();
      drawLanes();
      document.body.setAttribute("data-lanes", String(LANES.length));
    };
    src.onerror = function () { sub.textContent = "live: disconnected, retrying"; };
  }
  document.body.setAttribute("data-ready", "1");
})();
