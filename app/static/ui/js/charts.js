// Line charts of signals and scores (uPlot), with labelled point markers drawn on top.

import uPlot from "../vendor/uplot/uPlot.esm.js";

// Colour-blind-safe (Okabe-Ito), one per keypoint type in manifest order.
const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"];

export function keypointColour(index) {
  return PALETTE[index % PALETTE.length];
}

// A line's value at a fractional sample position (linear between samples), for markers.
export function valueAt(values, position) {
  const i = Math.max(0, Math.min(values.length - 1, Math.floor(position)));
  const j = Math.min(values.length - 1, i + 1);
  const t = Math.max(0, Math.min(1, position - i));
  return values[i] + t * (values[j] - values[i]);
}

// Circles (and their labels, when given) at data coordinates, after uPlot has drawn the lines.
function drawMarkers(u, markers) {
  const ctx = u.ctx;
  const ratio = uPlot.pxRatio;
  ctx.save();
  ctx.font = `${12 * ratio}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  for (const m of markers) {
    const x = u.valToPos(m.x, "x", true);
    const y = u.valToPos(m.y, "y", true);
    ctx.beginPath();
    ctx.arc(x, y, (m.label ? 5 : 3) * ratio, 0, 2 * Math.PI);
    ctx.fillStyle = m.colour;
    ctx.fill();
    if (m.label) {
      ctx.lineWidth = 3 * ratio; // a halo keeps the label readable over the lines
      ctx.strokeStyle = "#ffffff";
      ctx.strokeText(m.label, x, y - 10 * ratio);
      ctx.fillText(m.label, x, y - 10 * ratio);
    }
  }
  ctx.restore();
}

// A chart (a new element) as wide as the page gives it, following that width.
//   x: the shared x values (sample indices, or seconds since the epoch with time: true)
//   lines: [{label, values, colour, width?, dash?, points?}]; shorter lines end early
//   markers: [{x, y, colour, label?}]; band: [upperLine, lowerLine] indices, shaded between
//   yRange: [min, max] fixed (default: fitted to the data)
//   description: what it shows, for screen readers (the numbers are in the page as text)
export function chart({ id, x, lines, markers = [], band = null, time = false, yRange = null,
  xLabel = "sample", yLabel = "", legend = false, height = 300, description }) {
  const container = document.createElement("div");
  container.id = id;
  container.className = "chart";
  container.setAttribute("role", "img");
  container.setAttribute("aria-label", description);
  const padded = (values) => x.map((_, i) => (i < values.length ? values[i] : null));
  const data = [x, ...lines.map((l) => padded(l.values))];
  const series = [
    { label: xLabel },
    ...lines.map((l) => ({
      label: l.label,
      stroke: l.colour,
      width: l.width ?? 1.5,
      dash: l.dash,
      points: { show: l.points ?? false, size: 7, fill: l.colour },
    })),
  ];
  const options = {
    width: Math.max(container.clientWidth, 200),
    height,
    scales: { x: { time }, y: yRange ? { range: yRange } : {} },
    axes: [{ label: xLabel }, { label: yLabel }],
    series,
    legend: { show: legend },
    bands: band ? [{ series: [band[0] + 1, band[1] + 1], fill: "rgba(0, 114, 178, 0.15)" }] : [],
    hooks: { draw: [(u) => drawMarkers(u, markers)] },
  };
  const plot = new uPlot(options, data, container);
  // A chart made before its container is in the page takes the page's width once it is, and
  // goes when its view does.
  let shown = false;
  const resize = new ResizeObserver(() => {
    if (container.isConnected) {
      shown = true;
      if (container.clientWidth !== plot.width) {
        plot.setSize({ width: Math.max(container.clientWidth, 200), height });
      }
    } else if (shown) {
      resize.disconnect();
      plot.destroy();
    }
  });
  resize.observe(container);
  return container;
}
