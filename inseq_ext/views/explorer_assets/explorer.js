// inseq_ext explorer: colors the input (and earlier generated text) by the attribution of the selected generated
// unit(s). All numbers come from the embedded JSON; a unit's score is the sum of its non-null token cells over the
// selected generated tokens' columns (null when every cell is null), as inseq_ext.views.span.span_attribution computes.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const [POSITIVE, NEGATIVE] = data.colors;
  const byId = (id) => document.getElementById(id);
  const state = {
    sequence: 0,
    granularity: data.granularities[0],
    axes: {}, // "layer"/"head" -> "*" (reduced) or an index
    anchor: null, // generated unit where the current selection started
    selection: null, // pinned [first, last] generated unit indices
    preview: null, // hovered generated unit when nothing is pinned
    dragging: false,
    elements: [],
  };
  const globalScales = new Map();

  const currentSequence = () => data.sequences[state.sequence];
  const currentUnits = () => currentSequence().units[state.granularity];
  const generatedUnits = () => currentUnits().filter((unit) => unit.columns);
  const viewKey = (seq) => seq.dims.map((dim) => String(state.axes[dim.name] ?? "*")).join("|");
  const currentMatrix = () => currentSequence().views[viewKey(currentSequence())] || null;

  function columnsOf(generated, first, last) {
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
      const row = matrix[r];
      for (const c of columns) {
        const value = row[c];
        if (value !== null) {
          total += value;
          seen = true;
        }
      }
    }
    return seen ? total : null;
  }

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

  const format = (value) => (value === null ? "n/a" : Number(value.toPrecision(6)).toString());

  function colorScale(matrix, scores) {
    const mode = byId("scale-select").value;
    if (mode === "fixed") return Math.abs(parseFloat(byId("scale-max").value)) || 0;
    if (mode === "map") return maxAbs(scores);
    const key = `${state.sequence}|${state.granularity}|${viewKey(currentSequence())}`;
    if (!globalScales.has(key)) {
      const units = currentUnits();
      const generated = generatedUnits();
      let largest = 0;
      for (let g = 0; g < generated.length; g++) {
        const columns = columnsOf(generated, g, g);
        largest = Math.max(largest, maxAbs(units.map((unit) => unitScore(matrix, unit, columns))));
      }
      globalScales.set(key, largest);
    }
    return globalScales.get(key);
  }

  function describe(unit) {
    return JSON.stringify(unit.text.trim() || unit.text);
  }

  function paint() {
    const seq = currentSequence();
    const units = currentUnits();
    const generated = generatedUnits();
    const matrix = currentMatrix();
    const range = state.selection || state.preview;
    const info = byId("selection-info");
    if (!matrix) {
      info.textContent = "This layer/head combination is not embedded in the file; pick one axis at a time.";
    }
    if (!range || !matrix) {
      state.elements.forEach((element, u) => {
        element.style.backgroundColor = "transparent";
        element.dataset.score = "";
        element.title = `${units[u].text.trim()} (select a generated unit)`;
        element.classList.remove("selected");
      });
      if (matrix) info.textContent = "No generated unit selected.";
      return;
    }
    const [first, last] = range;
    const columns = columnsOf(generated, first, last);
    const scores = units.map((unit) => unitScore(matrix, unit, columns));
    const scale = colorScale(matrix, scores);
    state.elements.forEach((element, u) => {
      const unit = units[u];
      const score = scores[u];
      element.dataset.score = score === null ? "" : String(score);
      element.style.backgroundColor = colorFor(score, scale);
      element.title = `${describe(unit)} score: ${format(score)}`;
      element.classList.toggle("selected", unit.columns !== undefined && unit.generated >= first && unit.generated <= last);
    });
    byId("scale-label").textContent = format(scale);
    byId("scale-negative").textContent = format(-scale);
    const text = generated.slice(first, last + 1).map((unit) => unit.text).join("");
    const steps = Object.entries(seq.stepScores)
      .filter(() => columns.length === 1)
      .map(([name, values]) => `${name}: ${format(values[columns[0]])}`);
    info.dataset.first = String(first);
    info.dataset.last = String(last);
    info.textContent =
      `Generating ${JSON.stringify(text)} (generated unit${first === last ? ` ${first}` : `s ${first}-${last}`}` +
      `${columns.length > 1 ? `, sum of ${columns.length} token maps` : ""})` +
      `${state.selection ? "" : " [hover]"}${steps.length ? ` · ${steps.join(", ")}` : ""}`;
  }

  function showHover(unit, element) {
    const score = element.dataset.score === "" ? null : Number(element.dataset.score);
    const hover = byId("hover-info");
    hover.textContent = `${describe(unit)} [${unit.axis} ${unit.index}]: ${format(score)}`;
    hover.dataset.score = element.dataset.score;
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
    state.elements = units.map((unit) => {
      const element = document.createElement("span");
      element.className = "unit";
      element.textContent = unit.text;
      element.dataset.axis = unit.axis;
      element.dataset.index = String(unit.index);
      if (unit.special) element.classList.add("special");
      if (unit.columns) {
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
      (unit.panel === "prompt" ? prompt : generation).appendChild(element);
      return element;
    });
    paint();
  }

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

  function setUpSequence() {
    const seq = currentSequence();
    state.axes = {};
    for (const name of ["layer", "head"]) {
      const dim = seq.dims.find((candidate) => candidate.name === name);
      byId(`${name}-control`).hidden = !dim;
      if (dim) {
        state.axes[name] = "*";
        fillSelect(byId(`${name}-select`), [["*", "all (method's reduction)"], ...dim.labels.map((label, i) => [i, label])], "*");
      }
    }
    byId("meta").textContent = [seq.method && `method: ${seq.method}`, seq.model && `model: ${seq.model}`]
      .filter(Boolean)
      .join(" · ");
    clearSelection();
    render();
  }

  fillSelect(byId("sequence-select"), data.sequences.map((seq, i) => [i, seq.title]), 0);
  fillSelect(byId("granularity-select"), data.granularities.map((name) => [name, name]), state.granularity);
  byId("sequence-select").addEventListener("change", (event) => {
    state.sequence = Number(event.target.value);
    setUpSequence();
  });
  byId("granularity-select").addEventListener("change", (event) => {
    state.granularity = event.target.value;
    clearSelection(); // unit indices differ between granularities
    render();
  });
  for (const name of ["layer", "head"]) {
    byId(`${name}-select`).addEventListener("change", (event) => {
      state.axes[name] = event.target.value === "*" ? "*" : Number(event.target.value);
      paint();
    });
  }
  byId("scale-select").addEventListener("change", (event) => {
    byId("scale-max").disabled = event.target.value !== "fixed";
    paint();
  });
  byId("scale-max").addEventListener("input", paint);
  document.addEventListener("mouseup", () => {
    state.dragging = false;
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      clearSelection();
      paint();
    }
  });
  window.inseqExplorer = { state, data, paint };
  setUpSequence();
})();
