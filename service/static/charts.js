// Line charts on uPlot (vendored, global `uPlot`) and the one colour per policy used everywhere.

import { finite } from "./api.js";

const POLICY_COLOURS = {
  fixed: "#5b6472",
  step: "#8c564b",
  multistep: "#bc6c25",
  piecewise: "#9467bd",
  exponential: "#d62728",
  natural_exp: "#e377c2",
  inverse_time: "#7f7f00",
  polynomial: "#17becf",
  cosine: "#1f77b4",
  linear_cosine: "#4a90e2",
  noisy_linear_cosine: "#6baed6",
  clr: "#2ca02c",
  sgdr: "#ff7f0e",
  one_cycle: "#b8860b",
};

export function policyColour(policy) {
  return POLICY_COLOURS[policy] || "#888888";
}

export function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

const charts = new WeakMap();

// series: [{label, x: [...], y: [...], colour, width}] - each with its own x; they are merged onto
// one sorted x axis (missing points are gaps that lines span). A series with `hollow: true` is
// drawn as open circles without a line; with `linkTo: i` each of its points is joined by a dashed
// line to series i's point at the same x (e.g. a probe to the curve it branched from).
export function lineChart(element, series, options = {}) {
  const { xLabel = "", yLabel = "", logX = false, logY = false, height = 260, marks = [], bare = false } = options;
  const old = charts.get(element);
  if (old) old.destroy();
  element.replaceChildren();
  const xs = [...new Set(series.flatMap((s) => s.x.map(Number)))].sort((a, b) => a - b);
  const position = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  for (const s of series) {
    const ys = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => {
      let y = finite(s.y[i]);
      if (logY && y !== null && y <= 0) y = null;
      ys[position.get(Number(x))] = y;
    });
    data.push(ys);
  }
  const width = Math.max(240, element.clientWidth || element.parentElement.clientWidth || 600);
  const opts = {
    width,
    height,
    legend: { show: false },
    cursor: bare ? { show: false } : { drag: { x: true, y: false }, points: { show: false } },
    scales: {
      x: logX ? { time: false, distr: 3 } : { time: false },
      y: logY ? { distr: 3 } : {},
    },
    axes: bare ? [{ show: false }, { show: false }] : [
      { label: xLabel, stroke: "#6b7380", grid: { stroke: "#eef0f3" }, size: 40 },
      { label: yLabel, stroke: "#6b7380", grid: { stroke: "#eef0f3" }, size: 60 },
    ],
    series: [
      { label: xLabel },
      ...series.map((s) => (s.hollow
        ? {
          label: s.label,
          stroke: s.colour,
          paths: () => null,
          points: { show: true, size: 10, width: 2, stroke: s.colour, fill: "#ffffff" },
        }
        : {
          label: s.label,
          stroke: s.colour,
          width: s.width || 1.25,
          spanGaps: true,
          points: { show: s.x.length < 3 },
        })),
    ],
    hooks: {
      // Links go under the series, marks over them.
      drawAxes: [(u) => drawLinks(u, series)],
      draw: [(u) => drawMarks(u, marks)],
    },
  };
  const chart = new uPlot(opts, data, element);
  charts.set(element, chart);
  element.dataset.series = String(series.length);
  element.dataset.points = String(xs.length);
  return chart;
}

function drawLinks(u, series) {
  const { ctx } = u;
  series.forEach((s, index) => {
    if (s.linkTo === undefined) return;
    const from = u.data[index + 1];
    const to = u.data[s.linkTo + 1];
    ctx.save();
    ctx.strokeStyle = s.colour;
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.setLineDash([3 * devicePixelRatio, 2 * devicePixelRatio]);
    ctx.beginPath();
    u.data[0].forEach((x, i) => {
      if (from[i] === null || to[i] === null) return;
      const px = u.valToPos(x, "x", true);
      ctx.moveTo(px, u.valToPos(to[i], "y", true));
      ctx.lineTo(px, u.valToPos(from[i], "y", true));
    });
    ctx.stroke();
    ctx.restore();
  });
}

// Vertical dashed lines at x values, labelled (e.g. the suggested bounds of a range test).
function drawMarks(u, marks) {
  const { ctx } = u;
  for (const mark of marks) {
    const x = Math.round(u.valToPos(mark.x, "x", true));
    ctx.save();
    ctx.strokeStyle = mark.colour || "#d0392b";
    ctx.fillStyle = mark.colour || "#d0392b";
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
    ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
    ctx.fillText(mark.label, x + 4 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    ctx.restore();
  }
}
