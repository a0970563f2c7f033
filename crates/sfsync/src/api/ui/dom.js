// DOM helpers: every value from the API goes in as text (never as HTML), so nothing the API
// returns can inject markup or script.

const SVG_NS = 'http://www.w3.org/2000/svg';

function apply(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'text') {
      el.textContent = String(v);
    } else if (k === 'testid') {
      el.setAttribute('data-testid', v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('td', {class: 'num', testid: 'x'}, 'text', child). */
export function h(tag, attrs, ...children) {
  return apply(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return apply(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A table with a caption, header cells and rows (arrays of cells or <tr>s). */
export function table(caption, heads, rows, testid) {
  return h('table', { testid },
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.length === 0
      ? h('tr', {}, h('td', { colspan: heads.length, class: 'empty' }, 'None.'))
      : rows.map((r) => (r instanceof Node ? r : h('tr', {}, r.map((c) => (c instanceof Node && c.tagName === 'TD' ? c : h('td', {}, c))))))));
}

/** A definition list of [term, value] pairs (null values show as —). */
export function dl(pairs, testid) {
  return h('dl', { testid, class: 'facts' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, show(v))]));
}

/** A value for display: — for null, JSON for objects, the text otherwise. */
export function show(v) {
  if (v === null || v === undefined) return '—';
  if (v instanceof Node) return v;
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** Seconds as `850 ms`, `12.3 s`, `4 min 10 s`, `2 h 5 min`. */
export function secs(v) {
  if (v === null || v === undefined) return '—';
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  if (n < 1) return `${Math.round(n * 1000)} ms`;
  if (n < 60) return `${n.toFixed(n < 10 ? 1 : 0)} s`;
  if (n < 3600) return `${Math.floor(n / 60)} min ${Math.round(n % 60)} s`;
  if (n < 172800) return `${Math.floor(n / 3600)} h ${Math.round((n % 3600) / 60)} min`;
  return `${Math.round(n / 86400)} d`;
}

/** A number with thousands separators (— for null). */
export function num(v) {
  if (v === null || v === undefined) return '—';
  const n = Number(v);
  return Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: 2 }) : String(v);
}

/** An RFC 3339 timestamp as local `YYYY-MM-DD HH:MM:SS` (the raw value in the title). */
export function when(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  const p = (x) => String(x).padStart(2, '0');
  const text = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return h('time', { datetime: ts, title: ts }, text);
}
