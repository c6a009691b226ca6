// The dashboard's charts: uPlot line charts built from the JSON a page embeds (and, for a live run, polls).
// `leantune.charts` keeps every chart by name so a test (or a curious user's console) can read what was drawn.
window.leantune = (function () {
  "use strict";
  const charts = {};
  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7d8c", "#57606a"];

  // Exponential moving average like TensorBoard's smoothing slider; gaps (null) stay gaps.
  function ema(values, weight) {
    if (!weight) return values.slice();
    let last = null;
    return values.map(function (v) {
      if (v === null || v === undefined) return null;
      last = last === null ? v : last * weight + (1 - weight) * v;
      return last;
    });
  }

  // Several (x, y) series on one x axis: uPlot wants one shared, sorted x array with nulls where a series has no point.
  function align(list) {
    const xs = Array.from(new Set([].concat.apply([], list.map(function (s) { return s.x; })))).sort(function (a, b) { return a - b; });
    const at = new Map(xs.map(function (x, i) { return [x, i]; }));
    const ys = list.map(function (s) {
      const out = new Array(xs.length).fill(null);
      s.x.forEach(function (x, i) { out[at.get(x)] = s.y[i]; });
      return out;
    });
    return [xs].concat(ys);
  }

  // Axis labels readable at any scale: a tiny run's cost is fractions of a cent, a loss is 0.1 to 10.
  function tick(v) {
    if (v === null) return "";
    const a = Math.abs(v);
    return a === 0 ? "0" : a >= 1e4 ? v.toExponential(1) : a >= 0.01 ? +v.toPrecision(3) + "" : v.toExponential(1);
  }

  function draw(name, el, list, opts) {
    if (charts[name]) charts[name].destroy();
    const log = !!opts.log;
    const data = align(list.map(function (s) {
      let y = ema(s.y, opts.smoothing || 0);
      if (log) y = y.map(function (v) { return v === null ? null : Math.max(v, 1e-6); });
      return { x: s.x, y: y };
    }));
    const series = [{ label: "step" }].concat(list.map(function (s, i) {
      return { label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
               dash: s.dashed ? [6, 4] : undefined, points: { show: s.points || false, size: 5 } };
    }));
    const width = Math.max(280, el.clientWidth || 480);
    charts[name] = new uPlot({
      width: width, height: opts.height || 220, series: series,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: "step" }, { size: 64, values: function (u, splits) { return splits.map(tick); } }],
      legend: { live: true },
    }, data, el);
    return charts[name];
  }

  function bindControls(redraw) {
    const log = document.getElementById("log-scale");
    const smooth = document.getElementById("smoothing");
    const shown = document.getElementById("smoothing-value");
    const state = function () { return { log: log && log.checked, smoothing: smooth ? parseFloat(smooth.value) : 0 }; };
    if (log) log.addEventListener("change", function () { redraw(state()); });
    if (smooth) smooth.addEventListener("input", function () { shown.textContent = smooth.value; redraw(state()); });
    return state;
  }

  const LABELS = { loss: "loss", lr: "learning rate", tokens_per_s: "tokens / s", cost_usd: "cost so far ($)" };

  function runPage(id, curves, live) {
    let current = curves;
    const state = bindControls(function (s) { drawRun(current, s); });
    function drawRun(c, s) {
      Object.keys(LABELS).forEach(function (key) {
        const el = document.getElementById("chart-" + key);
        if (!el) return;
        if (c.step.length && c[key].every(function (v) { return v === null; })) {
          // e.g. the cost of a run without a price: say so instead of drawing empty axes
          el.textContent = key === "cost_usd" ? "No price, so the cost is unknown (set cost.usd_per_hour)." : "Not recorded.";
          el.className = "chart empty";
          return;
        }
        const list = [{ label: "training " + LABELS[key], x: c.step, y: c[key] }];
        if (key === "loss" && c.eval_step.length) list.push({ label: "eval loss", x: c.eval_step, y: c.eval_loss, dashed: true, points: true });
        draw(key, el, list, { log: key === "loss" && s.log, smoothing: key === "lr" ? 0 : s.smoothing });
      });
    }
    drawRun(current, state());
    if (!live) return;
    const timer = setInterval(function () {
      fetch("/api/runs/" + encodeURIComponent(id)).then(function (r) { return r.json(); }).then(function (d) {
        current = d.curves;
        drawRun(current, state());
        document.getElementById("status").textContent = d.run.status;
        document.getElementById("steps").textContent = (d.run.steps || 0) + (d.run.total_steps ? "/" + d.run.total_steps : "");
        if (!d.live) {
          clearInterval(timer);
          const badge = document.getElementById("live");
          if (badge) badge.textContent = "finished: " + d.run.status;
        }
      }).catch(function () { /* the server may be restarting; try again next tick */ });
    }, 2000);
  }

  function comparePage(runs) {
    const state = bindControls(function (s) { drawCompare(s); });
    function drawCompare(s) {
      const list = [];
      runs.forEach(function (r, i) {
        const color = COLORS[i % COLORS.length];
        list.push({ label: r.id, x: r.step, y: r.loss, color: color });
        if (r.eval_step.length) list.push({ label: r.id + " (eval)", x: r.eval_step, y: r.eval_loss, color: color, dashed: true, points: true });
      });
      draw("compare", document.getElementById("chart-compare"), list, { log: s.log, smoothing: s.smoothing, height: 320 });
    }
    drawCompare(state());
  }

  // The number of drawn (non-null) points of series i (1-based, as uPlot counts) of a chart.
  function points(name, i) {
    return charts[name].data[i].filter(function (v) { return v !== null && v !== undefined; }).length;
  }

  return { charts: charts, runPage: runPage, comparePage: comparePage, ema: ema, points: points };
})();
