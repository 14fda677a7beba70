/* cimcoder — page de revue DIM. Vanilla JS, no dependency, works offline. */
(function () {
  "use strict";

  const ACTION_LABELS = { accept: "accepté", reject: "rejeté", change: "modifié", add: "ajouté" };
  const DECISION_GROUPS = [
    { key: "auto", title: "Auto (codés automatiquement)" },
    { key: "review", title: "À revoir" },
    { key: "reject", title: "Rejetés par le modèle" },
  ];
  const MAX_REJECTED_SHOWN = 10;
  const MAX_UNDECIDED_HIGHLIGHTED = 8;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      // Through the CSSOM: the Content-Security-Policy refuses style attributes.
      else if (k === "style") Object.assign(node.style, v);
      else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // available outside secure contexts too
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    let data = null;
    try { data = await response.json(); } catch (_e) { data = null; }
    return { status: response.status, data };
  }

  // ---------------------------------------------------------------- stay page
  function stayPage(stay) {
    const state = {
      version: stay.version,
      decisions: {}, // code -> {action, newCode, newLabel}
      added: [], // [{code, label}]
      dp: null,
      dr: null, // diagnostic relié: only next to a Z care DP (the server checks the rule)
      focus: 0,
      changing: null, // code being replaced through the search box
      pendingId: null, // decision id of a save not yet acknowledged (retried as is)
    };
    const suggestions = stay.suggestions;
    const byCode = Object.fromEntries(suggestions.map((s) => [s.code, s]));

    function initState() {
      state.decisions = {};
      state.added = [];
      for (const s of suggestions) {
        if (s.decision === "auto") state.decisions[s.code] = { action: "accept" };
        else if (s.decision === "review") state.decisions[s.code] = { action: null };
        else state.decisions[s.code] = { action: "reject", implicit: true };
      }
      const last = stay.last_review;
      if (last) {
        for (const c of last.codes) {
          if (c.action === "add") state.added.push({ code: c.final_code, label: "" });
          else state.decisions[c.code] = {
            action: c.action, newCode: c.action === "change" ? c.final_code : null,
            reason: c.reason || "",
          };
        }
        state.dp = last.dp;
        state.dr = last.dr || null;
      } else {
        const proposed = suggestions.find((s) => s.role === "DP" && s.decision === "auto");
        state.dp = stay.dp || (proposed ? proposed.code : null);
        const proposedDr = suggestions.find((s) => s.role === "DR" && s.decision === "auto");
        state.dr = stay.dr || (state.dp && proposedDr ? proposedDr.code : null);
      }
    }

    function finalCode(code) {
      const d = state.decisions[code];
      if (!d || d.action === null || d.action === "reject") return null;
      return d.action === "change" ? d.newCode : code;
    }

    function visibleRows() {
      const rows = [];
      for (const g of DECISION_GROUPS) {
        let list = suggestions.filter((s) => s.decision === g.key);
        if (g.key === "reject") list = list.slice(0, MAX_REJECTED_SHOWN);
        for (const s of list) rows.push({ kind: "suggestion", code: s.code, group: g.key });
      }
      for (const a of state.added) rows.push({ kind: "added", code: a.code });
      return rows;
    }

    function highlightClass(code) {
      const d = state.decisions[code];
      if (!d || d.action === null) return "hl-review";
      return "hl-" + d.action;
    }

    // Evidence offsets count code points (Python str indices); a JS string indexes UTF-16
    // units, one more for every character outside the BMP (emoji, 𝔸) before the span.
    // unitOffsets[k] is the UTF-16 index of code point k (and of the end, k = length).
    const unitOffsets = [0];
    for (const ch of stay.text) unitOffsets.push(unitOffsets[unitOffsets.length - 1] + ch.length);
    function toUnits(codePoint) {
      const k = Math.max(0, Math.min(Number(codePoint) || 0, unitOffsets.length - 1));
      return unitOffsets[k];
    }

    function renderText() {
      const text = stay.text;
      const marks = []; // [start, end, code], in UTF-16 units
      const focused0 = currentCode();
      let undecidedShown = 0;
      for (const s of suggestions) {
        const d = state.decisions[s.code];
        if (s.code !== focused0) {
          if (s.decision === "reject" && (!d || d.implicit)) continue;
          // A weak model may leave hundreds of codes to review: colour only the best
          // undecided ones (and the focused code), or the report would drown in colour.
          if (d && d.action === null && ++undecidedShown > MAX_UNDECIDED_HIGHLIGHTED) continue;
        }
        for (const ev of s.evidence || []) marks.push([toUnits(ev.start), toUnits(ev.end), s.code]);
      }
      const cuts = new Set([0, text.length]);
      for (const [a, b] of marks) { cuts.add(a); cuts.add(b); }
      const points = Array.from(cuts).sort((x, y) => x - y);
      const container = document.getElementById("report-text");
      container.textContent = "";
      const focused = currentCode();
      for (let i = 0; i < points.length - 1; i++) {
        const a = points[i], b = points[i + 1];
        const piece = text.slice(a, b);
        const codes = marks.filter(([s, e]) => s <= a && e >= b).map((m) => m[2]);
        if (!codes.length) { container.append(document.createTextNode(piece)); continue; }
        const unique = Array.from(new Set(codes));
        const mark = el("mark", {
          class: "hl " + highlightClass(unique[0]) + (unique.includes(focused) ? " hl-focus" : ""),
          title: unique.map((c) => c + " " + (byCode[c].label || "")).join("\n"),
          "data-codes": unique.join(" "),
        }, [piece]);
        mark.addEventListener("click", () => focusCode(unique[0]));
        container.append(mark);
      }
    }

    function scoreBar(score) {
      const pct = Math.round(score * 100);
      return el("span", { class: "score", title: "score calibré " + pct + " %" }, [
        el("span", { class: "bar" }, [el("span", { class: "fill", style: { width: pct + "%" } })]),
        el("span", { class: "pct", text: pct + " %" }),
      ]);
    }

    function reasonInput(code) {
      const input = el("input", {
        class: "reason", type: "text", maxlength: "500", placeholder: "Motif (facultatif)",
        "aria-label": "Motif de la correction de " + code,
      });
      input.value = state.decisions[code].reason || "";
      input.addEventListener("input", () => { state.decisions[code].reason = input.value; });
      input.addEventListener("keydown", (e) => { if (e.key === "Escape" || e.key === "Enter") input.blur(); });
      return input;
    }

    function codeRow(row, index) {
      const isFocus = index === state.focus;
      if (row.kind === "added") {
        const a = state.added.find((x) => x.code === row.code);
        return el("li", { class: "code-row action-add" + (isFocus ? " focus" : ""), "data-code": row.code }, [
          el("span", { class: "code", text: row.code }),
          el("span", { class: "label", text: a.label || "" }),
          el("span", { class: "pill pill-add", text: "ajouté" }),
          el("span", { class: "buttons" }, [
            el("button", { class: "dp-btn" + (state.dp === row.code ? " on" : ""), text: "DP", title: "Choisir comme DP (d)", onclick: () => setDp(row.code) }),
            el("button", { class: "dr-btn" + (state.dr === row.code ? " on" : ""), text: "DR", title: "Choisir comme DR, ou le retirer (Maj+d)", onclick: () => setDr(row.code) }),
            el("button", { text: "Retirer", onclick: () => removeAdded(row.code) }),
          ]),
        ]);
      }
      const s = byCode[row.code];
      const d = state.decisions[row.code];
      const action = d.action;
      const fin = finalCode(row.code);
      const status = action === null ? "à décider" : ACTION_LABELS[action];
      const flags = (s.flags || []).map((f) => el("span", { class: "flag", text: f }));
      const target = action === "change"
        ? [el("span", { class: "arrow", text: "→ " + d.newCode + (d.newLabel ? " " + d.newLabel : "") })] : [];
      return el("li", {
        class: "code-row action-" + (action || "none") + (isFocus ? " focus" : ""),
        "data-code": row.code,
        onclick: (e) => { if (e.target.tagName !== "BUTTON") focusCode(row.code); },
      }, [
        el("span", { class: "code", text: row.code }),
        el("span", { class: "label", text: s.label || "" }),
        scoreBar(s.score),
        el("span", { class: "pill pill-" + (action || "none"), text: status }),
        ...target,
        ...(action === "reject" || action === "change") && !d.implicit ? [reasonInput(row.code)] : [],
        ...flags,
        el("span", { class: "cim11", text: s.cim11 && s.cim11.length ? "CIM-11 : " + s.cim11.join(", ") : "" }),
        el("span", { class: "buttons" }, [
          el("button", { class: "accept", text: "Accepter", title: "a", onclick: () => decide(row.code, "accept") }),
          el("button", { class: "reject", text: "Rejeter", title: "r", onclick: () => decide(row.code, "reject") }),
          el("button", { class: "change", text: "Modifier", title: "c", onclick: () => startChange(row.code) }),
          el("button", { class: "dp-btn" + (fin && state.dp === fin ? " on" : ""), text: "DP", title: "Choisir comme DP (d)", onclick: () => setDp(row.code) }),
          el("button", { class: "dr-btn" + (fin && state.dr === fin ? " on" : ""), text: "DR", title: "Choisir comme DR, ou le retirer (Maj+d)", onclick: () => setDr(row.code) }),
        ]),
      ]);
    }

    function render() {
      const box = document.getElementById("suggestions");
      box.textContent = "";
      const rows = visibleRows();
      if (state.focus >= rows.length) state.focus = Math.max(0, rows.length - 1);
      let index = 0;
      for (const g of DECISION_GROUPS) {
        const list = rows.filter((r) => r.kind === "suggestion" && r.group === g.key);
        const ul = el("ul", { class: "codes" });
        for (const r of list) ul.append(codeRow(r, index++));
        const total = suggestions.filter((s) => s.decision === g.key).length;
        const undecided = g.key === "review" ? suggestions.filter((s) => s.decision === "review" && state.decisions[s.code].action === null).length : 0;
        const title = g.title + " (" + total + (undecided ? ", " + undecided + " non décidés" : "") + ")" + (g.key === "reject" && total > list.length ? " — " + list.length + " meilleurs affichés" : "");
        const group = el("div", { class: "group group-" + g.key, id: "group-" + g.key }, [el("h3", { text: title })]);
        group.append(list.length ? ul : el("p", { class: "empty", text: "Aucun code." }));
        box.append(group);
      }
      const added = document.getElementById("added-list");
      added.textContent = "";
      for (const r of rows.filter((x) => x.kind === "added")) added.append(codeRow(r, index++));
      document.getElementById("dp-value").textContent = state.dp || "— (à choisir)";
      document.getElementById("dr-value").textContent = state.dr || "aucun";
      document.getElementById("dr-clear").hidden = !state.dr;
      document.getElementById("stay-version").textContent = state.version;
      const search = document.getElementById("code-search");
      search.placeholder = state.changing
        ? "Remplacer " + state.changing + " par… (tapez un libellé ou un code)"
        : "Rechercher un code CIM-10 à ajouter (libellé ou code)… ( / )";
      renderText();
    }

    function currentCode() {
      const rows = visibleRows();
      return rows[state.focus] ? rows[state.focus].code : null;
    }

    function focusCode(code) {
      const i = visibleRows().findIndex((r) => r.code === code);
      if (i >= 0) state.focus = i;
      render();
      const node = document.querySelector('.code-row.focus');
      if (node) node.scrollIntoView({ block: "nearest" });
      const mark = document.querySelector("mark.hl-focus");
      if (mark) mark.scrollIntoView({ block: "nearest" });
    }

    function decide(code, action) {
      if (!byCode[code]) return;
      const before = finalCode(code);
      state.decisions[code] = { action };
      const after = finalCode(code);
      if (state.dp && state.dp === before) state.dp = after; // the DP follows its code
      if (state.dr && state.dr === before) state.dr = after; // and so does the DR
      render();
    }

    function rejectUndecided() {
      for (const s of suggestions) {
        if (state.decisions[s.code].action === null) state.decisions[s.code] = { action: "reject" };
      }
      render();
    }

    function setDp(code) {
      let fin = byCode[code] ? finalCode(code) : code;
      if (byCode[code] && !fin) { decide(code, "accept"); fin = code; }
      state.dp = fin;
      if (state.dr === fin) state.dr = null; // the code moves from DR to DP
      render();
    }

    function setDr(code) {
      let fin = byCode[code] ? finalCode(code) : code;
      if (fin && state.dr === fin) { state.dr = null; render(); return; } // again: no DR
      if (fin && fin === state.dp) {
        message("Le DR doit être une autre affection que le DP (" + fin + ").", "error");
        return;
      }
      if (byCode[code] && !fin) { decide(code, "accept"); fin = code; }
      state.dr = fin;
      render();
    }

    function removeAdded(code) {
      state.added = state.added.filter((a) => a.code !== code);
      if (state.dp === code) state.dp = null;
      if (state.dr === code) state.dr = null;
      render();
    }

    function startChange(code) {
      state.changing = code;
      render();
      document.getElementById("code-search").focus();
    }

    function pick(hit) {
      if (state.changing) {
        const from = state.changing;
        const wasDp = state.dp && state.dp === finalCode(from);
        const wasDr = state.dr && state.dr === finalCode(from);
        state.decisions[from] = { action: "change", newCode: hit.code, newLabel: hit.label };
        if (wasDp) state.dp = hit.code;
        if (wasDr) state.dr = hit.code;
        state.changing = null;
      } else if (byCode[hit.code] && byCode[hit.code].decision !== "reject") {
        decide(hit.code, "accept");
      } else if (byCode[hit.code]) {
        state.decisions[hit.code] = { action: "accept" };
      } else if (!state.added.some((a) => a.code === hit.code)) {
        state.added.push({ code: hit.code, label: hit.label });
      }
      const box = document.getElementById("code-search");
      box.value = "";
      document.getElementById("search-results").textContent = "";
      box.blur();
      focusCode(hit.code in byCode ? hit.code : (state.added.some((a) => a.code === hit.code) ? hit.code : currentCode()));
    }

    let searchTimer = null;
    let hits = [];
    let hitIndex = 0;
    function renderHits() {
      const list = document.getElementById("search-results");
      list.textContent = "";
      hits.forEach((h, i) => list.append(el("li", {
        class: "hit" + (i === hitIndex ? " selected" : ""), "data-code": h.code,
        onmousedown: (e) => { e.preventDefault(); pick(h); },
      }, [el("span", { class: "code", text: h.code }), el("span", { class: "label", text: h.label })])));
    }
    async function runSearch(q) {
      if (!q.trim()) { hits = []; renderHits(); return; }
      const { status, data } = await api("GET", "/v1/review/codes/search?limit=8&q=" + encodeURIComponent(q));
      hits = status === 200 && data ? data.results : [];
      hitIndex = 0;
      renderHits();
    }

    const searchBox = document.getElementById("code-search");
    searchBox.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => runSearch(searchBox.value), 150);
    });
    searchBox.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown") { hitIndex = Math.min(hitIndex + 1, hits.length - 1); renderHits(); e.preventDefault(); }
      else if (e.key === "ArrowUp") { hitIndex = Math.max(hitIndex - 1, 0); renderHits(); e.preventDefault(); }
      else if (e.key === "Enter" && hits[hitIndex]) { pick(hits[hitIndex]); e.preventDefault(); }
      else if (e.key === "Escape") { state.changing = null; searchBox.value = ""; hits = []; renderHits(); searchBox.blur(); render(); }
    });

    function message(text, kind) {
      const m = document.getElementById("save-message");
      m.textContent = text;
      m.className = kind || "";
    }

    async function save(status) {
      const codes = [];
      for (const s of suggestions) {
        const d = state.decisions[s.code];
        if (!d || d.action === null || d.implicit) continue;
        const item = { code: s.code, action: d.action };
        if (d.action === "change") item.new_code = d.newCode;
        if (d.reason && d.reason.trim()) item.reason = d.reason.trim();
        codes.push(item);
      }
      for (const a of state.added) codes.push({ code: a.code, action: "add" });
      if (!state.pendingId) state.pendingId = newId();
      const body = { decision_id: state.pendingId, base_version: state.version, codes, dp: state.dp, dr: state.dr, status };
      message("Enregistrement…", "");
      let result;
      try {
        result = await api("POST", "/v1/review/stays/" + encodeURIComponent(stay.id) + "/decisions", body);
      } catch (_e) {
        message("Réseau indisponible : réessayez (rien n'est perdu, la même saisie sera renvoyée).", "error");
        return;
      }
      if (result.status === 200) {
        state.pendingId = null;
        state.version = result.data.version;
        const label = result.data.status === "validated" ? "validé" : "en revue";
        const badge = document.getElementById("stay-status");
        badge.textContent = label;
        badge.className = "status status-" + result.data.status;
        const warnings = result.data.warnings || [];
        message("Enregistré : séjour " + label + " (version " + result.data.version + ")." +
          (warnings.length ? " Attention : " + warnings.join(" ; ") : ""), warnings.length ? "warn" : "ok");
        render();
      } else if (result.status === 409) {
        state.pendingId = null;
        const who = result.data && result.data.current ? result.data.current.validated_by : null;
        message((result.data ? result.data.detail : "Conflit") + (who ? " (par " + who + ")" : "") + " — rechargez la page.", "error");
      } else if (result.status === 401) {
        message("Session expirée : reconnectez-vous (votre saisie sera à refaire).", "error");
      } else {
        state.pendingId = null;
        message((result.data && result.data.detail) || ("Erreur " + result.status), "error");
      }
    }

    document.getElementById("save").addEventListener("click", () => save("validated"));
    document.getElementById("save-draft").addEventListener("click", () => save("in_review"));
    document.getElementById("reject-rest").addEventListener("click", rejectUndecided);
    document.getElementById("dr-clear").addEventListener("click", () => { state.dr = null; render(); });

    document.addEventListener("keydown", (e) => {
      const tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
      const rows = visibleRows();
      const code = currentCode();
      const isSuggestion = code && byCode[code] && rows[state.focus].kind === "suggestion";
      switch (e.key) {
        case "j": state.focus = Math.min(state.focus + 1, rows.length - 1); focusCode(currentCode()); break;
        case "k": state.focus = Math.max(state.focus - 1, 0); focusCode(currentCode()); break;
        case "a": if (isSuggestion) decide(code, "accept"); break;
        case "r": if (isSuggestion) decide(code, "reject"); else if (code) removeAdded(code); break;
        case "c": if (isSuggestion) startChange(code); break;
        case "d": if (code) setDp(code); break;
        case "D": if (code) setDr(code); break;
        case "/": state.changing = null; render(); searchBox.focus(); break;
        case "s": save("validated"); break;
        case "x": rejectUndecided(); break;
        default: return;
      }
      e.preventDefault();
    });

    initState();
    render();
  }

  // ---------------------------------------------------------------- monitoring page
  function monitoringPage() {
    const form = document.getElementById("qc-form");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const pct = parseFloat(document.getElementById("qc-rate").value);
      const out = document.getElementById("qc-message");
      if (!(pct >= 0 && pct <= 100)) { out.textContent = "Entrez un pourcentage entre 0 et 100."; return; }
      const { status, data } = await api("PUT", "/v1/review/settings", { qc_rate: pct / 100 });
      out.textContent = status === 200 ? "Taux enregistré : " + (data.qc_rate * 100).toFixed(1) + " %." : "Erreur : " + ((data && data.detail) || status);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const data = document.getElementById("stay-data");
    if (data) stayPage(JSON.parse(data.textContent));
    if (document.getElementById("qc-form")) monitoringPage();
  });
})();
