// inseq_ext explorer: colors the prompt (and the text generated earlier) by the attribution of the selected generated
// unit(s), and lists every score in a table. All numbers come from the embedded JSON, laid out as described in
// inseq_ext/views/explorer_data.py. A unit's score is the sum of its non-null token cells over the selected generated
// tokens' columns (null when every cell is null), as inseq_ext.views.span.span_attribution computes it.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const POSITIVE = data.colors.positive;
  const NEGATIVE = data.colors.negative;
  const MAX_TABLE_CELLS = 20000; // a larger table is left out (pick a coarser granularity)
  const byId = (id) => document.getElementById(id);
  const state = {
    sequence: 0,
    method: 0, // index into the sequence's methods
    methodLabel: null, // kept when another sequence is picked
    granularity: data.granularities[0],
    axes: {}, // "layer"/"head" -> "*" (reduced) or an index
    anchor: null, // generated unit where the current selection started
    selection: null, // pinned [first, last] generated unit indices
    preview: null, // hovered generated unit when nothing is pinned
    dragging: false,
    elements: [], // one span per unit of the current granularity
    hovered: null, // {unit, element} under the mouse
    tableColumns: new Map(), // generated unit index -> its table cells
  };
  const sequenceScales = new Map();

  // ---------------------------------------------------------------------------------------------------------------
  // Data access
  // ---------------------------------------------------------------------------------------------------------------
  const currentSequence = () => data.sequences[state.sequence];
  const currentMethod = () => currentSequence().methods[state.method];
  const currentUnits = () => currentSequence().units[state.granularity];
  // Units on the generated axis, indexed by unit.generated (the index span_attribution uses).
  const generatedUnits = () => currentUnits().filter((unit) => unit.columns);
  // Decoder start tokens of an encoder-decoder (</s> <s>) are on the generated axis but not the model's choice.
  const selectable = (unit) => unit.columns !== undefined && unit.role === "generated";
  const viewKey = () => currentMethod().dims.map((dim) => String(state.axes[dim.name] ?? "*")).join("|");
  const currentMatrix = () => currentMethod().views[viewKey()] || null;
  const currentRange = () => state.selection || state.preview;

  function columnsOf(first, last) {
    const generated = generatedUnits();
    const columns = [];
    for (let g = first; g <= last; g++) {
      for (let c = generated[g].columns[0]; c < generated[g].columns[1]; c++) columns.push(c);
    }
    return columns;
  }

  function unitScore(matrix, unit, columns) {
    let total = 0;
    let seen = false;
    for (let r = unit.rows[0]; r < unit.rows[1]; r++) {
      for (const c of columns) {
        const value = matrix[r][c];
        if (value !== null) {
          total += value;
          seen = true;
        }
      }
    }
    return seen ? total : null;
  }

  // Step scores (probability, ...) of several generated tokens: probabilities multiply (the joint probability, by
  // the chain rule) and log-probabilities add; any other score is listed token by token.
  function stepScoreText(name, columns) {
    const values = columns.map((c) => currentSequence().stepScores[name][c]);
    if (values.length === 1 || values.some((value) => value === null)) {
      return values.map((value) => (value === null ? "-" : format(value))).join(" / ");
    }
    if (name === "probability") return format(values.reduce((product, value) => product * value, 1));
    if (name === "logprob") return format(values.reduce((sum, value) => sum + value, 0));
    return values.map(format).join(" / ");
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Numbers and colors
  // ---------------------------------------------------------------------------------------------------------------
  const format = (value) => Number(value.toPrecision(6)).toString();
  const compact = (value) => (value === null ? "" : Number(value.toPrecision(2)).toString());
  const describe = (unit) => JSON.stringify(unit.text.trim() || unit.text);
  const shortText = (unit) => {
    const text = unit.text.trim() || JSON.stringify(unit.text);
    return text.length > 24 ? `${text.slice(0, 23)}…` : text;
  };
  // "prompt word 4", "generated token 2", "decoder start token 0": plain words, numbered within their part.
  const unitName = (unit) =>
    `${unit.role === "start" ? "decoder start" : unit.role} ${state.granularity} ${unit.position}`;

  function maxAbs(values) {
    let largest = 0;
    for (const value of values) if (value !== null && Math.abs(value) > largest) largest = Math.abs(value);
    return largest;
  }

  // Same formula as inseq_ext.views.explorer.score_color.
  function colorFor(value, scale) {
    if (value === null || !(scale > 0)) return "transparent";
    const [red, green, blue] = value >= 0 ? POSITIVE : NEGATIVE;
    const alpha = Math.round(Math.min(1, Math.abs(value) / scale) * 1000) / 1000;
    return `rgba(${red}, ${green}, ${blue}, ${alpha})`;
  }

  // The largest |score| over every single-unit map of the sequence: the "whole sequence" scale, and the table's.
  function sequenceScale(matrix) {
    const key = `${state.sequence}|${state.method}|${state.granularity}|${viewKey()}`;
    if (!sequenceScales.has(key)) {
      const units = currentUnits();
      let largest = 0;
      for (const step of generatedUnits().filter(selectable)) {
        const columns = columnsOf(step.generated, step.generated);
        largest = Math.max(largest, maxAbs(units.map((unit) => unitScore(matrix, unit, columns))));
      }
      sequenceScales.set(key, largest);
    }
    return sequenceScales.get(key);
  }

  const fixedScale = () => Math.abs(parseFloat(byId("scale-max").value)) || 0;

  // Score shown at full color; null when it depends on a map and no map is shown.
  function colorScale(matrix, scores) {
    const mode = byId("scale-select").value;
    if (mode === "fixed") return fixedScale();
    if (!matrix) return null;
    if (mode === "map") return scores ? maxAbs(scores) : null;
    return sequenceScale(matrix);
  }

  // Sequential legend (white to red, from 0) for methods whose scores are never negative; diverging otherwise.
  function paintLegend(scale) {
    const signed = currentMethod().signed;
    const rgb = (color) => `rgb(${color.join(", ")})`;
    byId("legend").dataset.scale = signed ? "diverging" : "sequential";
    byId("legend-bar").style.background = signed
      ? `linear-gradient(to right, ${rgb(NEGATIVE)}, #fff, ${rgb(POSITIVE)})`
      : `linear-gradient(to right, #fff, ${rgb(POSITIVE)})`;
    const top = scale === null ? "max |score|" : format(scale);
    byId("scale-label").textContent = top;
    byId("scale-low").textContent = signed ? (scale === null ? `-${top}` : format(-scale)) : "0";
    byId("scale-kind").textContent = signed
      ? "signed scores: blue negative, red positive"
      : "scores are never negative: white 0 to red";
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Painting the text
  // ---------------------------------------------------------------------------------------------------------------
  function paint() {
    const seq = currentSequence();
    const units = currentUnits();
    const matrix = currentMatrix();
    const range = currentRange();
    const info = byId("selection-info");
    if (!range || !matrix) {
      state.elements.forEach((element, u) => {
        element.style.backgroundColor = "transparent";
        element.dataset.score = "";
        element.title = `${units[u].text.trim()} (select a generated unit)`;
        element.classList.remove("selected", "span-start", "span-end");
      });
      info.textContent = matrix
        ? "No generated unit selected."
        : "This layer/head combination is not embedded in the file; pick one axis at a time.";
      delete info.dataset.first;
      delete info.dataset.last;
      paintLegend(colorScale(matrix, null));
      paintTableSelection(null);
      refreshHover();
      return;
    }
    const [first, last] = range;
    const columns = columnsOf(first, last);
    const scores = units.map((unit) => unitScore(matrix, unit, columns));
    const scale = colorScale(matrix, scores);
    state.elements.forEach((element, u) => {
      const unit = units[u];
      const score = scores[u];
      const inSpan = selectable(unit) && unit.generated >= first && unit.generated <= last;
      element.dataset.score = score === null ? "" : String(score);
      element.style.backgroundColor = colorFor(score, scale);
      element.title = `${describe(unit)} score: ${score === null ? "none" : format(score)}`;
      element.classList.toggle("selected", inSpan);
      element.classList.toggle("span-start", inSpan && unit.generated === first);
      element.classList.toggle("span-end", inSpan && unit.generated === last);
    });
    paintLegend(scale);
    const text = generatedUnits()
      .slice(first, last + 1)
      .map((unit) => unit.text)
      .join("");
    const steps = Object.keys(seq.stepScores).map((name) => `${name}: ${stepScoreText(name, columns)}`);
    info.dataset.first = String(first);
    info.dataset.last = String(last);
    info.textContent =
      `Generating ${JSON.stringify(text)} (generated ${state.granularity}` +
      `${first === last ? ` ${first}` : `s ${first}-${last}`}` +
      `${columns.length > 1 ? `, sum of ${columns.length} token maps` : ""})` +
      `${state.selection ? "" : " [hover]"}${steps.length ? ` · ${steps.join(", ")}` : ""}`;
    paintTableSelection(range);
    refreshHover();
  }

  // What the hovered unit's badge (short) and the status bar (long) say.
  function hoverTexts(unit, element) {
    const name = `${unitName(unit)} ${describe(unit)}`;
    const range = currentRange();
    if (!currentMatrix()) return ["not embedded", `${name}: this layer/head combination is not in the file`];
    if (!range) {
      return ["select a generated unit", `${name}: no score yet; hover or click a generated unit to see its map`];
    }
    if (selectable(unit) && unit.generated >= range[0] && unit.generated <= range[1]) {
      const probability = currentSequence().stepScores.probability;
      const p = probability ? `p ${stepScoreText("probability", columnsOf(unit.generated, unit.generated))}` : "";
      return [p || "explained", `${name}: the unit being explained${p ? ` (${p})` : ""}`];
    }
    if (element.dataset.score !== "") {
      const score = format(Number(element.dataset.score));
      return [score, `${name}: ${score}`];
    }
    if (unit.columns && unit.generated > range[1]) {
      return ["after the selection", `${name}: generated after the selection, so not attributed there`];
    }
    return ["no score", `${name}: no score in this map (this method did not attribute it)`];
  }

  function showHover(unit, element) {
    state.hovered = { unit, element };
    const [short, long] = hoverTexts(unit, element);
    const hover = byId("hover-info");
    hover.textContent = long;
    hover.dataset.score = element.dataset.score;
    // The badge sits just above the unit's first line box (below it when there is no room above).
    const badge = byId("score-badge");
    badge.textContent = short;
    badge.hidden = false;
    const box = element.getClientRects()[0] || element.getBoundingClientRect();
    const above = box.top - badge.offsetHeight - 2;
    badge.style.left = `${Math.max(0, Math.min(box.left, window.innerWidth - badge.offsetWidth)) + window.scrollX}px`;
    badge.style.top = `${(above > 0 ? above : box.bottom + 2) + window.scrollY}px`;
  }

  function hideHover() {
    state.hovered = null;
    byId("score-badge").hidden = true;
  }

  function refreshHover() {
    if (state.hovered) showHover(state.hovered.unit, state.hovered.element);
  }

  function select(first, last) {
    state.selection = [Math.min(first, last), Math.max(first, last)];
    paint();
  }

  function render() {
    const units = currentUnits();
    const prompt = byId("prompt");
    const generation = byId("generation");
    prompt.replaceChildren();
    generation.replaceChildren();
    hideHover();
    state.elements = units.map((unit) => {
      const element = document.createElement("span");
      element.className = "unit";
      element.textContent = unit.text;
      element.dataset.axis = unit.axis;
      element.dataset.index = String(unit.index);
      element.dataset.role = unit.role;
      if (unit.special) element.classList.add("special");
      if (unit.role === "start") element.classList.add("start");
      if (unit.columns) element.dataset.step = String(unit.generated);
      if (selectable(unit)) {
        element.classList.add("generated");
        element.dataset.generated = String(unit.generated);
        element.addEventListener("mousedown", (event) => {
          if (event.button !== 0) return;
          event.preventDefault(); // no text selection while dragging
          if (event.shiftKey && state.anchor !== null) {
            select(state.anchor, unit.generated);
          } else {
            state.anchor = unit.generated;
            select(unit.generated, unit.generated);
          }
          state.dragging = true;
        });
        element.addEventListener("mouseenter", () => {
          if (state.dragging && state.anchor !== null) {
            select(state.anchor, unit.generated);
          } else if (!state.selection) {
            state.preview = [unit.generated, unit.generated];
            paint();
          }
        });
        element.addEventListener("mouseleave", () => {
          if (!state.selection && state.preview) {
            state.preview = null;
            paint();
          }
        });
      }
      element.addEventListener("mouseenter", () => showHover(unit, element));
      element.addEventListener("mouseleave", hideHover);
      (unit.role === "prompt" ? prompt : generation).appendChild(element);
      return element;
    });
    // Say so when this granularity's units are the tokens themselves (e.g. a vocabulary of whole words).
    const note = byId("granularity-note");
    note.hidden = state.granularity === "token" || units.length !== currentSequence().rows.length;
    note.textContent = `Every ${state.granularity} of this text is a single token here, so this view equals the token view.`;
    renderTable();
    paint();
  }

  // ---------------------------------------------------------------------------------------------------------------
  // The table: every unit's score for every generated unit, like inseq's out.show(), with step scores below
  // ---------------------------------------------------------------------------------------------------------------
  function cell(tag, text, attributes = {}) {
    const element = document.createElement(tag);
    element.textContent = text;
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    return element;
  }

  function renderTable() {
    const table = byId("score-table");
    const note = byId("table-note");
    const seq = currentSequence();
    const units = currentUnits();
    const matrix = currentMatrix();
    const steps = generatedUnits().filter(selectable);
    table.replaceChildren();
    state.tableColumns = new Map(steps.map((step) => [step.generated, []]));
    const tooLarge = units.length * steps.length > MAX_TABLE_CELLS;
    note.hidden = Boolean(matrix) && !tooLarge;
    if (!matrix) {
      note.textContent = "This layer/head combination is not embedded in the file; pick one axis at a time.";
      return;
    }
    if (tooLarge) {
      note.textContent = `${units.length} x ${steps.length} scores: too many for a table; pick a coarser granularity.`;
      return;
    }
    const scale = byId("scale-select").value === "fixed" ? fixedScale() : sequenceScale(matrix);
    const head = document.createElement("thead");
    const headRow = head.insertRow();
    headRow.appendChild(cell("th", ""));
    for (const step of steps) {
      const th = cell("th", shortText(step), { "data-generated": step.generated, title: `generated ${describe(step)}` });
      th.addEventListener("click", () => {
        state.anchor = step.generated;
        select(step.generated, step.generated);
      });
      headRow.appendChild(th);
      state.tableColumns.get(step.generated).push(th);
    }
    const body = document.createElement("tbody");
    const parts = [
      ["prompt", units.filter((unit) => unit.role === "prompt")],
      ["generated", units.filter((unit) => unit.role !== "prompt")],
    ];
    for (const [part, members] of parts) {
      const divider = body.insertRow();
      divider.className = "divider";
      divider.appendChild(cell("th", part, { colspan: steps.length + 1 }));
      for (const unit of members) {
        const row = body.insertRow();
        row.dataset.axis = unit.axis;
        row.dataset.index = String(unit.index);
        row.appendChild(cell("th", shortText(unit), { title: `${unitName(unit)} ${describe(unit)}` }));
        for (const step of steps) {
          const score = unitScore(matrix, unit, columnsOf(step.generated, step.generated));
          const td = cell("td", compact(score), {
            "data-generated": step.generated,
            "data-score": score === null ? "" : String(score),
            title: `${unitName(unit)} ${describe(unit)} for generated ${describe(step)}: ${score === null ? "none" : format(score)}`,
          });
          td.style.backgroundColor = colorFor(score, scale);
          row.appendChild(td);
          state.tableColumns.get(step.generated).push(td);
        }
      }
    }
    table.append(head, body);
    const names = Object.keys(seq.stepScores);
    if (names.length) {
      const foot = document.createElement("tfoot");
      for (const name of names) {
        const row = foot.insertRow();
        row.dataset.stepScore = name;
        row.appendChild(cell("th", name));
        for (const step of steps) {
          const text = stepScoreText(name, columnsOf(step.generated, step.generated));
          row.appendChild(cell("td", text, { "data-generated": step.generated }));
        }
      }
      table.appendChild(foot);
    }
  }

  function paintTableSelection(range) {
    for (const [generated, cells] of state.tableColumns) {
      const inRange = range !== null && generated >= range[0] && generated <= range[1];
      for (const element of cells) element.classList.toggle("selected", inRange);
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Controls
  // ---------------------------------------------------------------------------------------------------------------
  function clearSelection() {
    state.anchor = null;
    state.selection = null;
    state.preview = null;
  }

  function fillSelect(select, options, value) {
    select.replaceChildren(
      ...options.map(([optionValue, label]) => {
        const option = document.createElement("option");
        option.value = String(optionValue);
        option.textContent = label;
        return option;
      }),
    );
    select.value = String(value);
  }

  const metricsText = (method) =>
    Object.entries(method.metrics || {})
      .map(([name, value]) => `${name} ${value === null ? "n/a" : format(value)}`)
      .join(" · ");

  function setUpMethod() {
    const seq = currentSequence();
    const method = currentMethod();
    state.axes = {};
    for (const name of ["layer", "head"]) {
      const dim = method.dims.find((candidate) => candidate.name === name);
      byId(`${name}-control`).hidden = !dim;
      if (dim) {
        state.axes[name] = "*";
        const options = [["*", "all (method's reduction)"], ...dim.labels.map((label, i) => [i, label])];
        fillSelect(byId(`${name}-select`), options, "*");
      }
    }
    byId("meta").textContent = [`method: ${method.label}`, seq.model && `model: ${seq.model}`]
      .filter(Boolean)
      .join(" · ");
    const metrics = metricsText(method);
    byId("metrics").hidden = !metrics;
    byId("metrics").textContent = metrics;
  }

  function setUpSequence() {
    const seq = currentSequence();
    // Keep the method when the new sequence has it too.
    const kept = seq.methods.findIndex((method) => method.label === state.methodLabel);
    state.method = kept >= 0 ? kept : 0;
    state.methodLabel = currentMethod().label;
    byId("method-control").hidden = seq.methods.length < 2;
    const options = seq.methods.map((method, i) => {
      const metrics = metricsText(method);
      return [i, metrics ? `${method.label} (${metrics})` : method.label];
    });
    fillSelect(byId("method-select"), options, state.method);
    setUpMethod();
    clearSelection();
    render();
  }

  fillSelect(byId("sequence-select"), data.sequences.map((seq, i) => [i, seq.title]), 0);
  fillSelect(byId("granularity-select"), data.granularities.map((name) => [name, name]), state.granularity);
  byId("sequence-select").addEventListener("change", (event) => {
    state.sequence = Number(event.target.value);
    setUpSequence();
  });
  byId("method-select").addEventListener("change", (event) => {
    state.method = Number(event.target.value);
    state.methodLabel = currentMethod().label;
    setUpMethod(); // same generation and units: the selection stays
    renderTable();
    paint();
  });
  byId("granularity-select").addEventListener("change", (event) => {
    state.granularity = event.target.value;
    clearSelection(); // unit indices differ between granularities
    render();
  });
  for (const name of ["layer", "head"]) {
    byId(`${name}-select`).addEventListener("change", (event) => {
      state.axes[name] = event.target.value === "*" ? "*" : Number(event.target.value);
      renderTable();
      paint();
    });
  }
  byId("scale-select").addEventListener("change", (event) => {
    byId("scale-max").disabled = event.target.value !== "fixed";
    renderTable();
    paint();
  });
  byId("scale-max").addEventListener("input", () => {
    renderTable();
    paint();
  });
  document.addEventListener("mouseup", () => {
    state.dragging = false;
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      clearSelection();
      paint();
    }
  });

  // Shown by inseq_ext.explore in a notebook, the page is the srcdoc of its own iframe: fit the frame to the
  // content when the notebook lets the frame reach its element (same origin); otherwise the frame scrolls.
  function fitFrame() {
    let frame = null;
    try {
      frame = window.frameElement;
    } catch (error) {
      frame = null;
    }
    if (!frame || !frame.hasAttribute("data-inseq-ext-explorer")) return;
    const fit = () => {
      frame.style.height = `${Math.ceil(document.body.getBoundingClientRect().height) + 4}px`;
    };
    new ResizeObserver(fit).observe(document.body);
    fit();
  }

  window.inseqExplorer = { state, data, paint };
  setUpSequence();
  fitFrame();
})();
