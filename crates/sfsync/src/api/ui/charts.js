// Inline SVG charts drawn from API values: a sparkline, a line chart, a usage bar and the
// integration map. Sizes are in viewBox units; CSS scales them.

import { s, num } from './dom.js';

function scale(values, height, pad) {
  const max = Math.max(1, ...values);
  return (v) => pad + (height - 2 * pad) * (1 - v / max);
}

/** A throughput sparkline: `points` per `interval` seconds, oldest first. */
export function sparkline(points, interval, what) {
  const w = 120;
  const hgt = 28;
  const pts = Array.isArray(points) ? points.map(Number) : [];
  const max = Math.max(0, ...pts);
  const total = pts.reduce((a, b) => a + b, 0);
  const label = pts.length === 0
    ? 'no data yet'
    : `${num(pts[pts.length - 1])} ${what} in the last ${interval} s; peak ${num(max)}; ${num(total)} over ${pts.length} intervals`;
  const svg = s('svg', { viewBox: `0 0 ${w} ${hgt}`, class: 'spark', role: 'img', 'aria-label': label, testid: 'sparkline', 'data-points': pts.length },
    s('title', {}, label));
  if (pts.length > 0) {
    const y = scale(pts, hgt, 2);
    const dx = pts.length > 1 ? w / (pts.length - 1) : 0;
    const coords = pts.map((v, i) => `${(i * dx).toFixed(1)},${y(v).toFixed(1)}`);
    if (pts.length === 1) coords.push(`${w},${y(pts[0]).toFixed(1)}`);
    svg.append(s('polyline', { points: coords.join(' '), class: 'spark-line' }));
  }
  return svg;
}

/** A line chart of several series over shared x positions; `series` = [{name, values, cls}]. */
export function lineChart(series, xLabels, title, testid) {
  const w = 640;
  const hgt = 220;
  const left = 64;
  const bottom = 28;
  const top = 12;
  const all = series.flatMap((x) => x.values.filter((v) => v !== null && v !== undefined).map(Number));
  const max = Math.max(1, ...all);
  const n = Math.max(...series.map((x) => x.values.length), 0);
  const px = (i) => left + (n > 1 ? ((w - left - 8) * i) / (n - 1) : 0);
  const py = (v) => top + (hgt - top - bottom) * (1 - v / max);
  const svg = s('svg', { viewBox: `0 0 ${w} ${hgt}`, class: 'chart', role: 'img', 'aria-label': title, testid },
    s('title', {}, title),
    s('line', { x1: left, y1: top, x2: left, y2: hgt - bottom, class: 'axis' }),
    s('line', { x1: left, y1: hgt - bottom, x2: w - 8, y2: hgt - bottom, class: 'axis' }),
    s('text', { x: left - 6, y: top + 10, class: 'tick end' }, num(max)),
    s('text', { x: left - 6, y: hgt - bottom, class: 'tick end' }, '0'),
    s('text', { x: left, y: hgt - 8, class: 'tick' }, xLabels[0] || ''),
    s('text', { x: w - 8, y: hgt - 8, class: 'tick end' }, xLabels[1] || ''));
  for (const x of series) {
    let d = '';
    let pen = false;
    x.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${px(i).toFixed(1)},${py(Number(v)).toFixed(1)} `;
      pen = true;
    });
    if (d) svg.append(s('path', { d: d.trim(), class: `series ${x.cls}`, testid: `series-${x.cls}` }, s('title', {}, x.name)));
  }
  return svg;
}

/** A horizontal bar: `used` against `allowance` within `max` (any may be null). */
export function usageBar(parts, max, title) {
  const w = 640;
  const hgt = 34;
  const total = Math.max(1, Number(max) || 0, ...parts.map((p) => Number(p.value) || 0));
  const svg = s('svg', { viewBox: `0 0 ${w} ${hgt}`, class: 'bar', role: 'img', 'aria-label': title, testid: 'usage-bar' },
    s('title', {}, title),
    s('rect', { x: 0, y: 6, width: w, height: 22, class: 'bar-track' }));
  for (const p of parts) {
    if (p.value === null || p.value === undefined) continue;
    const x = (w * Number(p.value)) / total;
    if (p.kind === 'fill') {
      svg.append(s('rect', { x: 0, y: 6, width: Math.min(w, x).toFixed(1), height: 22, class: `bar-fill ${p.cls}` }, s('title', {}, `${p.name}: ${num(p.value)}`)));
    } else {
      svg.append(s('line', { x1: x.toFixed(1), x2: x.toFixed(1), y1: 0, y2: hgt, class: `bar-mark ${p.cls}` }, s('title', {}, `${p.name}: ${num(p.value)}`)));
    }
  }
  return svg;
}

/** A node's name centred at (x, y), on two lines when it is long. */
function nodeLabel(x, y, text) {
  const t = s('text', { x, y: y + 4, class: 'node-label' });
  const cut = text.length > 20 ? text.lastIndexOf(' ', Math.ceil(text.length / 2) + 4) : -1;
  if (cut <= 0) {
    t.textContent = text;
    return t;
  }
  t.setAttribute('y', y - 4);
  t.append(s('tspan', { x, dy: 0 }, text.slice(0, cut)), s('tspan', { x, dy: 16 }, text.slice(cut + 1)));
  return t;
}

/** `120` → `2 min`, `90` → `90 s`, `7200` → `2 h` (as `sfsync map` writes SLAs). */
export function humanSecs(v) {
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  if (n % 3600 === 0 && n >= 3600) return `${n / 3600} h`;
  if (n % 60 === 0 && n >= 60) return `${n / 60} min`;
  return `${n} s`;
}

/**
 * The integration map as lanes: Salesforce on the left, sfsync in the middle, the warehouse
 * and other systems on the right; one arrow per flow, labelled with its object, pattern,
 * frequency, SLA and team. Nodes the API names are matched to flows by id (or label).
 */
export function mapDiagram(map) {
  const nodes = map.nodes || [];
  const flows = map.flows || [];
  const byKey = new Map();
  for (const n of nodes) {
    byKey.set(n.id, n);
    byKey.set(n.label, n);
  }
  const node = (key) => byKey.get(key) || { id: key, label: key, kind: 'system' };
  const side = (n) => (n.kind === 'salesforce' ? 'left' : n.kind === 'sfsync' ? 'middle' : 'right');
  const hub = nodes.find((n) => n.kind === 'sfsync');
  // Each flow: its left end, its right end, and which way it points.
  const lanes = flows.map((f, i) => {
    const a = node(f.source);
    const b = node(f.target);
    let left = a;
    let right = b;
    let rightward = true;
    if (side(a) === 'right' || (side(b) === 'left' && side(a) !== 'left')) {
      left = b;
      right = a;
      rightward = false;
    }
    return { f, i, left, right, rightward };
  });
  // Group the lanes by their right-hand node so each node is one box spanning its lanes.
  lanes.sort((x, y) => (x.right.id === y.right.id ? x.i - y.i : x.right.id < y.right.id ? -1 : 1));
  const laneH = 46;
  const top = 20;
  const w = 1240;
  const colL = [0, 190];
  const colM = [550, 670];
  const colR = [1030, 1240];
  const hgt = top * 2 + Math.max(1, lanes.length) * laneH;
  const laneY = (k) => top + k * laneH + laneH / 2;
  const svg = s('svg', { viewBox: `0 0 ${w} ${hgt}`, class: 'map', role: 'img', 'aria-label': `Integration map: ${flows.length} flows between ${nodes.length} systems`, testid: 'map-diagram' },
    s('defs', {},
      s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));
  const box = (x0, x1, y0, y1, n, testid) => s('g', { class: `node kind-${n.kind}`, testid, 'data-node-id': n.id },
    s('rect', { x: x0 + 2, y: y0, width: x1 - x0 - 4, height: y1 - y0, rx: 8 }),
    nodeLabel((x0 + x1) / 2, (y0 + y1) / 2, n.label),
    s('title', {}, `${n.label} (${n.kind})`));
  // Left-hand nodes (normally only Salesforce), spanning their lanes.
  const spans = (pick) => {
    const out = new Map();
    lanes.forEach((l, k) => {
      const n = pick(l);
      const sp = out.get(n.id) || { n, from: k, to: k };
      sp.from = Math.min(sp.from, k);
      sp.to = Math.max(sp.to, k);
      out.set(n.id, sp);
    });
    return [...out.values()];
  };
  for (const sp of spans((l) => l.left)) {
    svg.append(box(colL[0], colL[1], top + sp.from * laneH + 4, top + (sp.to + 1) * laneH - 4, sp.n, 'map-node'));
  }
  svg.append(box(colM[0], colM[1], top + 4, hgt - top - 4, hub || { id: 'sfsync', label: 'sfsync', kind: 'sfsync' }, 'map-hub'));
  for (const sp of spans((l) => l.right)) {
    svg.append(box(colR[0], colR[1], top + sp.from * laneH + 4, top + (sp.to + 1) * laneH - 4, sp.n, 'map-node'));
  }
  lanes.forEach((l, k) => {
    const y = laneY(k);
    const f = l.f;
    const team = f.team || 'unowned';
    const sla = f.sla_secs ?? f.sla_seconds;
    const g = s('g', { class: `edge dir-${f.direction}`, testid: 'map-edge', 'data-object': f.object, 'data-pattern': f.pattern, 'data-source': f.source, 'data-target': f.target },
      s('title', {}, `${f.object}: ${f.source} → ${f.target}; ${f.pattern}, ${f.frequency}; trigger: ${f.trigger}; ${f.transformation}; SLA ${humanSecs(sla)}; team ${team}`));
    const ends = l.rightward
      ? [[colL[1], colM[0]], [colM[1], colR[0]]]
      : [[colR[0], colM[1]], [colM[0], colL[1]]];
    for (const [x0, x1] of ends) {
      g.append(s('line', { x1: x0, y1: y, x2: x1, y2: y, 'marker-end': 'url(#arrow)' }));
    }
    g.append(
      s('text', { x: (colL[1] + colM[0]) / 2, y: y - 6, class: 'edge-label' }, `${f.object} · ${f.pattern} · ${f.frequency}`),
      s('text', { x: (colM[1] + colR[0]) / 2, y: y - 6, class: 'edge-label' }, `SLA ${humanSecs(sla)} · ${team}`),
    );
    svg.append(g);
  });
  return svg;
}
