"""The page's stylesheet and script, inlined into every report (no file, no network).

The script only zooms the flame graph and shows the hovered bar's numbers in a line under it;
the page is complete without it. It reads the bars' ``data-*`` attributes (see svg.py): a
click on a bar widens it to the full width, keeps its ancestors as full-width bars below it and
hides everything outside its subtree; clicking the root or "reset zoom" undoes it.
"""

from __future__ import annotations

CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #667; --line: #dde; --accent: #c0392b; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); margin: 0 auto; padding: 1.2em;
       max-width: 1400px; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.8em 0 .5em; border-bottom: 1px solid var(--line); }
.sub, .note, .missing { color: var(--muted); }
.missing { font-style: italic; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; margin: 1em 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .4em .8em; min-width: 9em; }
.card b { display: block; font-size: 1.25em; }
.why li { color: #8a5a00; }
table { border-collapse: collapse; width: 100%; margin: .3em 0; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; background: #f5f6fa; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.frames { font: 12px/1.35 ui-monospace, monospace; }
td.frames .py { color: #1b5e8a; }
td.frames .cut { color: var(--muted); font-style: italic; }
.share { width: 12em; }
.share div { background: #e8a87c; height: .8em; margin-top: .3em; border-radius: 2px; }
tr.waste td { color: var(--accent); }
#flame { display: block; border: 1px solid var(--line); border-radius: 4px; background: #fcfcfd; }
#flame text { font: 12px ui-monospace, monospace; fill: #111; pointer-events: none; }
#flame g.fg { cursor: pointer; }
#flame g.fg:hover rect { stroke: #222; stroke-width: 1; }
#flame g.fg-ancestor rect { opacity: .55; }
.flamebar { display: flex; gap: 1em; align-items: center; margin: .4em 0; min-height: 1.8em; }
#flame-info { font: 12px ui-monospace, monospace; white-space: pre; overflow: hidden; flex: 1; }
.legend span { display: inline-block; width: .9em; height: .9em; vertical-align: middle;
               border-radius: 2px; margin: 0 .3em 0 .8em; }
footer { margin-top: 2.5em; color: var(--muted); font-size: .9em; }
"""

JS = """
(function () {
  "use strict";
  var svg = document.getElementById("flame");
  if (!svg) { return; }
  var width = svg.viewBox.baseVal.width;
  var charWidth = parseFloat(svg.dataset.char);
  var bars = Array.prototype.slice.call(svg.querySelectorAll("g.fg"));
  var info = document.getElementById("flame-info");
  var reset = document.getElementById("flame-reset");
  var EPS = 1e-7;

  function fit(name, w) {
    var n = Math.floor((w - 6) / charWidth);
    if (n < 3) { return ""; }
    return name.length <= n ? name : name.slice(0, n - 2) + "..";
  }

  function zoom(target) {
    var x0 = +target.dataset.x, w0 = +target.dataset.w, d0 = +target.dataset.d;
    bars.forEach(function (bar) {
      var x = +bar.dataset.x, w = +bar.dataset.w, d = +bar.dataset.d;
      var ancestor = d < d0;
      var show = ancestor ? (x <= x0 + EPS && x + w >= x0 + w0 - EPS)
                          : (x >= x0 - EPS && x + w <= x0 + w0 + EPS);
      bar.style.display = show ? "" : "none";
      if (!show) { return; }
      var nx = ancestor ? 0 : (x - x0) / w0, nw = ancestor ? 1 : w / w0;
      var rect = bar.querySelector("rect"), text = bar.querySelector("text");
      rect.setAttribute("x", (nx * width).toFixed(2));
      rect.setAttribute("width", Math.max(nw * width - 0.5, 0.1).toFixed(2));
      text.setAttribute("x", (nx * width + 3).toFixed(2));
      text.textContent = fit(bar.dataset.n, nw * width);
      bar.classList.toggle("fg-ancestor", ancestor);
    });
    svg.dataset.zoom = target.dataset.i;
    reset.hidden = d0 === 0;
  }

  svg.addEventListener("click", function (event) {
    var bar = event.target.closest("g.fg");
    if (bar) { zoom(bar); }
  });
  svg.addEventListener("mouseover", function (event) {
    var bar = event.target.closest("g.fg");
    if (bar) { info.textContent = bar.querySelector("title").textContent.replace("\\n", "  "); }
  });
  reset.addEventListener("click", function () { zoom(bars[0]); });
  svg.dataset.ready = "1";
})();
"""
