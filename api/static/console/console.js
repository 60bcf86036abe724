// Draws every <figure class="chart"> of a page with Chart.js from the JSON the server
// embedded beside it (api/console/charts.py). The numbers come only from that JSON, so
// the drawing, the data table and the REST API agree. Each drawn chart is kept in
// window.reckonCharts[id] (the browser tests read the datasets back from it).
"use strict";
(function () {
  // Okabe-Ito colours, ordered so neighbours differ in lightness, plus a pattern per
  // series: the series stay apart in greyscale and for colour-blind readers.
  var COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
  var PATTERNS = [null, "diagonal", "dots", "cross", "vertical", "horizontal"];
  var HIDDEN = "#3b2a5a"; // hidden reasoning: dark, hatched, always the same

  function pattern(kind, colour) {
    if (!kind) return colour;
    var c = document.createElement("canvas");
    c.width = c.height = 8;
    var g = c.getContext("2d");
    g.fillStyle = colour; g.fillRect(0, 0, 8, 8);
    g.strokeStyle = "rgba(255,255,255,0.85)"; g.fillStyle = "rgba(255,255,255,0.85)"; g.lineWidth = 1.5;
    g.beginPath();
    if (kind === "diagonal") { g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6); }
    if (kind === "cross") { g.moveTo(0, 0); g.lineTo(8, 8); g.moveTo(0, 8); g.lineTo(8, 0); }
    if (kind === "vertical") { g.moveTo(4, 0); g.lineTo(4, 8); }
    if (kind === "horizontal") { g.moveTo(0, 4); g.lineTo(8, 4); }
    g.stroke();
    if (kind === "dots") { g.beginPath(); g.arc(4, 4, 1.5, 0, 2 * Math.PI); g.fill(); }
    return g.createPattern(c, "repeat");
  }

  function dataset(series, index, kind) {
    var hidden = series.style === "hidden";
    var colour = hidden ? HIDDEN : COLOURS[index % COLOURS.length];
    var fill = kind === "line" || series.style === "line" ? colour
      : pattern(hidden ? "diagonal" : PATTERNS[index % PATTERNS.length], colour);
    return {
      label: series.label,
      // Drawn as numbers; the exact values (decimal strings for money) stay beside them.
      data: series.values.map(function (v) { return v === null ? null : Number(v); }),
      reckonKey: series.key,
      reckonValues: series.values,
      type: series.style === "line" ? "line" : undefined,
      backgroundColor: fill,
      borderColor: colour,
      borderWidth: kind === "line" || series.style === "line" ? 2 : 1,
      borderDash: series.style === "line" && index % 2 ? [6, 3] : undefined,
      pointStyle: ["circle", "rect", "triangle", "rectRot", "star", "cross"][index % 6],
      spanGaps: true,
    };
  }

  function draw(figure) {
    var data = JSON.parse(document.getElementById(figure.dataset.chartData).textContent);
    window.reckonCharts = window.reckonCharts || {};
    var canvas = figure.querySelector("canvas");
    if (!canvas || typeof Chart === "undefined") { window.reckonCharts[data.id] = null; return; }
    var stacked = !!data.stacked;
    window.reckonCharts[data.id] = new Chart(canvas, {
      type: data.kind,
      data: {
        labels: data.labels,
        datasets: data.series.map(function (s, i) { return dataset(s, i, data.kind); }),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: stacked },
          y: { stacked: stacked, beginAtZero: true, title: { display: true, text: data.unit } },
        },
        plugins: { legend: { position: "bottom", labels: { usePointStyle: data.kind === "line" } } },
      },
    });
  }

  function drawAll() {
    document.querySelectorAll("figure.chart").forEach(draw);
    document.documentElement.dataset.chartsReady = "true";
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
