// The operator console: activities of every status, create / edit drafts, upload codes,
// publish, close, a live view per activity, export, reconcile, blacklist, redeem, health.

import { h, replace, field, showErrors, requireFields, formatTime } from './dom.js';
import { call, Problem, session, tokenClaims } from './api.js';
import { t, lang, setupLanguage, problemText } from './i18n.js';

const main = document.getElementById('main');
const auth = session('flashclaim.console.session');
let timers = [];
let cleanups = [];
let flash = null;

function token() { return auth.get()?.token; }
function every(ms, fn) { timers.push(setInterval(fn, ms)); }
function setTitle(text) { document.title = `${text} · flashclaim console`; }
function notice(text, kind = '') {
  return h('p', { class: `notice ${kind ? `notice--${kind}` : ''}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}
function takeFlash() { const f = flash; flash = null; return f ? notice(f.text, f.kind) : null; }
function api(method, path, opts = {}) { return call(method, path, { token: token(), ...opts }); }
function fail(into, e) {
  if (e instanceof Problem && (e.code === 'unauthenticated' || e.status === 401)) {
    // The session expired or was refused: back to the log-in form, saying why.
    auth.clear();
    flash = { text: t('p_unauthenticated'), kind: 'error' };
    route();
    return;
  }
  replace(into, notice(problemText(e), 'error'));
}

// A two-step confirmation in the page (no window.confirm): the question, then Yes / Cancel.
function confirmStep(into, question, onYes) {
  const yes = h('button', { type: 'button', class: 'button button--warning', 'data-confirm': 'yes' }, t('confirm_yes'));
  const no = h('button', { type: 'button', class: 'button button--secondary' }, t('confirm_no'));
  const previous = Array.from(into.childNodes);
  replace(into, h('div', { class: 'notice', role: 'alertdialog', 'aria-label': question },
    h('p', {}, question), h('div', { class: 'button-group' }, yes, no)));
  no.addEventListener('click', () => replace(into, ...previous));
  yes.addEventListener('click', async () => { yes.disabled = true; await onYes(); });
  yes.focus();
}

// ---- log in ---------------------------------------------------------------------------

function loginView() {
  setTitle(t('console_login_title'));
  const form = h('form', { novalidate: true },
    field({ name: 'username', label: t('username'), attrs: { autocomplete: 'username', autocapitalize: 'none' } }),
    field({ name: 'password', label: t('password'), type: 'password', attrs: { autocomplete: 'current-password' } }),
    h('button', { type: 'submit', class: 'button' }, t('login_button')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const required = { username: t('required_username'), password: t('required_password') };
    if (!requireFields(form, data, required, t('error_title'))) return;
    try {
      const s = (await call('POST', '/api/sessions', { json: { username: data.username, password: data.password } })).body;
      if (tokenClaims(s.token).role !== 'admin') {
        showErrors(form, [['username', t('not_admin')]], t('error_title'));
        return;
      }
      auth.set({ token: s.token, expires_at: s.expires_at, username: data.username });
      updateNav();
      route();
    } catch (err) {
      showErrors(form, [[null, problemText(err)]], t('error_title'));
    }
  });
  replace(main, takeFlash(), h('h1', {}, t('console_login_title')), form);
}

// ---- activities -----------------------------------------------------------------------

function statusBadge(status) { return h('strong', { class: `badge badge--${status}` }, t(`status_${status}`)); }

async function listView() {
  setTitle(t('nav_activities'));
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const filter = h('form', { class: 'filter' },
    field({ name: 'status', label: t('filter_status'), type: 'select', value: params.get('status') || '',
      options: [['', t('status_all')], ['draft', t('status_draft')], ['published', t('status_published')], ['closed', t('status_closed')]] }),
    h('button', { type: 'submit', class: 'button button--secondary' }, t('apply')));
  filter.addEventListener('submit', (e) => {
    e.preventDefault();
    const s = new FormData(filter).get('status');
    location.hash = s ? `#/?status=${encodeURIComponent(s)}` : '#/';
  });
  const body = h('div', {}, h('p', { role: 'status' }, t('loading')));
  replace(main, takeFlash(), h('h1', {}, t('nav_activities')),
    h('div', { class: 'button-group' }, h('a', { class: 'button', href: '#/new' }, t('nav_new'))), filter, body);
  const query = new URLSearchParams({ limit: '50' });
  if (params.get('status')) query.set('status', params.get('status'));
  if (params.get('cursor')) query.set('cursor', params.get('cursor'));
  try {
    const page = (await api('GET', `/admin/activities?${query}`)).body;
    const rows = page.activities || [];
    if (!rows.length) { replace(body, h('p', {}, t('none_found'))); return; }
    let next = null;
    if (page.next_cursor) {
      const q = new URLSearchParams(params);
      q.set('cursor', page.next_cursor);
      next = h('a', { href: `#/?${q}` }, t('next_page'));
    }
    replace(body, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['col_id', 'col_name', 'col_status', 'col_window', 'col_stock', 'col_kind'].map((k) => h('th', { scope: 'col' }, t(k))))),
      h('tbody', {}, rows.map((a) => h('tr', {},
        h('td', {}, String(a.id)),
        h('td', {}, h('a', { href: `#/a/${a.id}` }, a.name)),
        h('td', {}, statusBadge(a.status)),
        h('td', {}, formatTime(a.starts_at, lang), ' – ', formatTime(a.ends_at, lang)),
        h('td', {}, `${a.stock_left ?? a.stock_total} / ${a.stock_total}`),
        h('td', {}, t(`kind_${a.kind}`))))))), next);
  } catch (e) { fail(body, e); }
}

// datetime-local works in the operator's local time; the API takes RFC 3339 UTC.
function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
function fromLocalInput(value) {
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? value : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const FORM_FIELDS = ['name', 'description', 'image_url', 'starts_at', 'ends_at', 'stock_total', 'per_user_limit', 'kind', 'require_pass', 'stock_buckets'];

async function editView(id) {
  setTitle(t(id ? 'edit_title' : 'new_title'));
  let a = { per_user_limit: 1, kind: 'counter', require_pass: false, stock_buckets: 1 };
  if (id) {
    try { a = (await api('GET', `/admin/activities/${encodeURIComponent(id)}`)).body; } catch (e) { fail(main, e); return; }
  }
  const now = new Date(Date.now() + 10 * 60000);
  const form = h('form', { novalidate: true, id: 'activity-form' },
    field({ name: 'name', label: t('f_name'), value: a.name ?? '' }),
    field({ name: 'description', label: t('f_description'), type: 'textarea', value: a.description ?? '' }),
    field({ name: 'image_url', label: t('f_image_url'), type: 'url', value: a.image_url ?? '' }),
    field({ name: 'starts_at', label: t('f_starts_at'), hint: t('f_time_hint'), type: 'datetime-local', value: toLocalInput(a.starts_at || now.toISOString()), attrs: { step: 1 } }),
    field({ name: 'ends_at', label: t('f_ends_at'), hint: t('f_time_hint'), type: 'datetime-local', value: toLocalInput(a.ends_at || new Date(now.getTime() + 86400000).toISOString()), attrs: { step: 1 } }),
    field({ name: 'stock_total', label: t('f_stock_total'), type: 'number', value: a.stock_total ?? 100, attrs: { inputmode: 'numeric' } }),
    field({ name: 'per_user_limit', label: t('f_per_user_limit'), type: 'number', value: a.per_user_limit ?? 1, attrs: { inputmode: 'numeric' } }),
    field({ name: 'kind', label: t('f_kind'), type: 'select', value: a.kind, options: [['counter', t('kind_counter')], ['codes', t('kind_codes')]] }),
    field({ name: 'require_pass', label: t('f_require_pass'), type: 'checkbox', value: a.require_pass }),
    field({ name: 'stock_buckets', label: t('f_stock_buckets'), hint: t('f_stock_buckets_hint'), type: 'number', value: a.stock_buckets ?? 1, attrs: { inputmode: 'numeric', min: 1, max: 16 } }),
    typesEditor(a),
    h('button', { type: 'submit', class: 'button' }, t('save_draft')));
  const syncSingle = () => {
    // With ticket types the stock and kind are each type's; the activity's limit is optional.
    const typed = form.querySelectorAll('[data-type-row]').length > 0;
    ['stock_total', 'kind'].forEach((n) => { form.querySelector(`[data-field=${n}]`).hidden = typed; });
  };
  form.addEventListener('types-changed', syncSingle);
  syncSingle();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const body = {
      name: data.get('name'),
      description: data.get('description'),
      starts_at: fromLocalInput(data.get('starts_at')),
      ends_at: fromLocalInput(data.get('ends_at')),
      require_pass: data.get('require_pass') === 'on',
      stock_buckets: Number(data.get('stock_buckets') || 1),
    };
    const rows = Array.from(form.querySelectorAll('[data-type-row]'));
    if (rows.length) {
      body.ticket_types = rows.map((row) => {
        const v = (n) => row.querySelector(`[name=${n}]`).value;
        return { key: v('tt_key'), name: v('tt_name'), stock_total: Number(v('tt_stock')), per_user_limit: Number(v('tt_limit')), kind: v('tt_kind') };
      });
      if (data.get('per_user_limit')) body.per_user_limit = Number(data.get('per_user_limit'));
    } else {
      body.stock_total = Number(data.get('stock_total'));
      body.per_user_limit = Number(data.get('per_user_limit'));
      body.kind = data.get('kind');
    }
    if (data.get('image_url')) body.image_url = data.get('image_url');
    try {
      const saved = id
        ? (await api('PATCH', `/admin/activities/${encodeURIComponent(id)}`, { json: body })).body
        : (await api('POST', '/admin/activities', { json: body })).body;
      flash = { text: t('saved'), kind: 'ok' };
      location.hash = `#/a/${saved.id ?? id}`;
    } catch (err) {
      const detail = err.body?.detail || '';
      const row = detail.match(/^ticket_types\[(\d+)\]/);
      const name = row ? `type-${row[1]}` : FORM_FIELDS.find((n) => detail.startsWith(n)) || null;
      showErrors(form, [[name, problemText(err)]], t('error_title'));
    }
  });
  replace(main, h('h1', {}, t(id ? 'edit_title' : 'new_title')), form);
}

// Ticket types (seat classes, coupon tiers): each its own key, stock, per-person limit and
// kind. None: the activity has one stock (the fields above).
function typesEditor(a) {
  const rows = h('div');
  const box = h('fieldset', { class: 'form-group', id: 'ticket-types' },
    h('legend', { class: 'label' }, t('types_title')),
    h('span', { class: 'hint' }, t('types_hint')), rows);
  const addRow = (tt = {}) => {
    const index = rows.children.length;
    const remove = h('button', { type: 'button', class: 'button button--secondary' }, t('type_remove'));
    const row = h('fieldset', { class: 'form-group', 'data-type-row': true, 'data-field': `type-${index}` },
      h('legend', {}, t('type_n', { n: index + 1 })),
      h('span', { class: 'error-message', id: `type-${index}-error`, hidden: true }),
      field({ name: 'tt_key', label: t('type_key'), hint: t('type_key_hint'), value: tt.key ?? '', attrs: { autocapitalize: 'none', spellcheck: 'false' } }),
      field({ name: 'tt_name', label: t('type_name'), value: tt.name ?? '' }),
      field({ name: 'tt_stock', label: t('f_stock_total'), type: 'number', value: tt.stock_total ?? 10, attrs: { inputmode: 'numeric' } }),
      field({ name: 'tt_limit', label: t('f_per_user_limit'), type: 'number', value: tt.per_user_limit ?? 1, attrs: { inputmode: 'numeric' } }),
      field({ name: 'tt_kind', label: t('f_kind'), type: 'select', value: tt.kind ?? 'counter', options: [['counter', t('kind_counter')], ['codes', t('kind_codes')]] }),
      remove);
    remove.addEventListener('click', () => { row.remove(); box.dispatchEvent(new Event('types-changed', { bubbles: true })); });
    rows.append(row);
    box.dispatchEvent(new Event('types-changed', { bubbles: true }));
  };
  const add = h('button', { type: 'button', class: 'button button--secondary', id: 'add-type' }, t('type_add'));
  add.addEventListener('click', () => addRow());
  box.append(add);
  const existing = a.ticket_types || [];
  // One type called `default` is what an activity made without types has: show none.
  if (!(existing.length === 1 && existing[0].key === 'default')) existing.forEach(addRow);
  return box;
}

async function detailView(id) {
  setTitle(t('activity_n', { id }));
  let a;
  try { a = (await api('GET', `/admin/activities/${encodeURIComponent(id)}`)).body; } catch (e) { fail(main, e); return; }
  setTitle(a.name);
  const actions = h('div', { class: 'button-group', id: 'actions' });
  const message = h('div', { 'aria-live': 'polite', id: 'action-message' });
  const reload = async () => {
    try { a = (await api('GET', `/admin/activities/${encodeURIComponent(id)}`)).body; } catch (e) { fail(message, e); }
  };
  const drawActions = () => {
    replace(actions,
      a.status === 'draft' ? h('a', { class: 'button button--secondary', href: `#/a/${id}/edit` }, t('edit')) : null,
      a.status === 'draft' ? h('button', { type: 'button', class: 'button', id: 'publish' }, t('publish')) : null,
      a.status === 'published' ? h('button', { type: 'button', class: 'button button--warning', id: 'close' }, t('close')) : null);
    actions.querySelector('#publish')?.addEventListener('click', () => confirmStep(actions, t('publish_confirm'), async () => {
      try { await api('POST', `/admin/activities/${id}/publish`); replace(message, notice(t('published'), 'ok')); } catch (e) { fail(message, e); }
      await reload();
      refreshHeader(); drawActions();
    }));
    actions.querySelector('#close')?.addEventListener('click', () => confirmStep(actions, t('close_confirm'), async () => {
      try { await api('POST', `/admin/activities/${id}/close`); replace(message, notice(t('closed'), 'ok')); } catch (e) { fail(message, e); }
      await reload();
      refreshHeader(); drawActions();
    }));
  };
  const header = h('div');
  const refreshHeader = () => replace(header,
    h('h1', {}, a.name),
    h('div', { class: 'card__meta' }, statusBadge(a.status), h('span', {}, `#${a.id}`), h('span', {}, t(`kind_${a.kind}`))),
    h('dl', { class: 'summary-list' },
      h('dt', {}, t('f_starts_at')), h('dd', {}, formatTime(a.starts_at, lang)),
      h('dt', {}, t('f_ends_at')), h('dd', {}, formatTime(a.ends_at, lang)),
      h('dt', {}, t('f_stock_total')), h('dd', {}, String(a.stock_total)),
      h('dt', {}, t('f_per_user_limit')), h('dd', {}, String(a.per_user_limit))));
  refreshHeader();
  drawActions();

  replace(main, takeFlash(), header, actions, message,
    liveSection(id),
    a.kind === 'codes' || a.kind === 'mixed' ? codesSection(id, a) : null,
    exportSection(id, a));
}

// ---- live view --------------------------------------------------------------------------

function liveSection(id) {
  const stats = h('div', { class: 'stats', id: 'live-stats' });
  const soldOut = h('p', { id: 'sold-out' });
  const perType = h('div', { id: 'live-types' });
  const chartBox = h('div', { class: 'chart', id: 'cpm-chart', role: 'img', 'aria-label': t('cpm_title') });
  const status = h('p', { class: 'muted', role: 'status' });
  let chart = null;
  let soldOutAt = null;
  const draw = (s) => {
    replace(stats, [
      ['s_stock_left', s.stock_left], ['s_sold', s.sold], ['s_returned', s.returned], ['s_redeemed', s.redeemed],
      ['s_backlog', s.backlog], ['s_pool_left', s.pool_left], ['s_passes', s.passes_issued],
    ].filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => h('div', { class: 'stat', 'data-stat': k.slice(2) },
      h('span', { class: 'stat__value' }, String(v)), h('span', {}, t(k)))));
    const types = s.ticket_types || [];
    replace(perType, types.length > 1 ? h('div', { class: 'table-wrap' }, h('table', {},
      h('caption', { class: 'label' }, t('types_live')),
      h('thead', {}, h('tr', {}, ['type_key', 's_stock_left', 's_sold', 's_returned', 's_redeemed'].map((k) => h('th', { scope: 'col' }, t(k))))),
      h('tbody', {}, types.map((tt) => h('tr', { 'data-type': tt.key },
        h('td', { class: 'mono' }, tt.key), h('td', {}, `${tt.stock_left} / ${tt.stock_total}`),
        h('td', {}, String(tt.sold ?? '')), h('td', {}, String(tt.returned ?? '')), h('td', {}, String(tt.redeemed ?? ''))))))) : null);
    if (s.stock_left === 0 && s.stock_total > 0 && !soldOutAt) soldOutAt = s.sold_out_at ? new Date(s.sold_out_at) : new Date();
    soldOut.textContent = soldOutAt ? t('sold_out_at', { time: soldOutAt.toLocaleTimeString(lang === 'zh' ? 'zh-CN' : 'en-GB') }) : t('not_sold_out');
    // The last 30 minutes, a point per minute (minutes without claims are 0), so the
    // time axis reads the same whether one minute or thirty had claims.
    const points = s.claims_per_minute || [];
    const byMinute = new Map(points.map((p) => [Math.floor((typeof p.minute === 'number' ? p.minute : Date.parse(p.minute)) / 60000), p.claims]));
    const lastMinute = Math.max(Math.floor(Date.now() / 60000), ...byMinute.keys());
    const xs = [];
    const ys = [];
    for (let m = lastMinute - 29; m <= lastMinute; m++) { xs.push(m * 60); ys.push(byMinute.get(m) || 0); }
    chartBox.dataset.points = String(points.length);
    chartBox.dataset.total = String(points.reduce((x, p) => x + p.claims, 0));
    if (typeof window.uPlot !== 'function') return;
    const width = Math.max(280, Math.min(main.clientWidth || 600, 1000));
    if (!chart) {
      chart = new window.uPlot({
        width, height: 200, title: t('cpm_title'),
        series: [{}, { label: t('cpm_title'), stroke: '#1d70b8', fill: 'rgba(29,112,184,.15)', points: { show: false } }],
        scales: { y: { range: (u, min, max) => [0, Math.max(5, max)] } },
        axes: [{}, { label: '' }],
      }, [xs, ys], chartBox);
    } else {
      chart.setData([xs, ys]);
    }
  };
  const load = async () => {
    try {
      const s = (await api('GET', `/admin/activities/${encodeURIComponent(id)}/stats`)).body;
      draw(s);
      status.textContent = `${t('refreshed')} ${new Date().toLocaleTimeString()}`;
    } catch (e) { status.textContent = problemText(e); }
  };
  load();
  every(2000, load);
  const resize = () => chart?.setSize({ width: Math.max(280, Math.min(main.clientWidth || 600, 1000)), height: 200 });
  window.addEventListener('resize', resize);
  cleanups.push(() => { window.removeEventListener('resize', resize); chart?.destroy(); });
  return h('section', { 'aria-labelledby': 'live-h' }, h('h2', { id: 'live-h' }, t('live_title')),
    h('p', { class: 'muted' }, t('live_note')), stats, perType, soldOut, chartBox, status);
}

// ---- codes, export, reconcile -------------------------------------------------------------

function codesSection(id, a) {
  const pools = (a.ticket_types || []).filter((tt) => tt.kind === 'codes');
  const typed = pools.length > 1 || (pools.length === 1 && pools[0].key !== 'default');
  const form = h('form', { novalidate: true, id: 'codes-form' },
    typed ? field({ name: 'type', label: t('type_for_codes'), type: 'select', options: pools.map((tt) => [tt.key, `${tt.name} (${tt.key})`]) }) : null,
    field({ name: 'file', label: t('codes_file'), hint: t('codes_hint'), type: 'file', attrs: { accept: '.csv,text/csv,text/plain' } }),
    h('button', { type: 'submit', class: 'button button--secondary' }, t('upload')));
  const result = h('div', { id: 'codes-result', 'aria-live': 'polite' });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const file = form.querySelector('input[type=file]').files[0];
    if (!file) { showErrors(form, [['file', t('choose_file')]], t('error_title')); return; }
    showErrors(form, [], '');
    try {
      const key = typed ? new FormData(form).get('type') : null;
      const path = key
        ? `/admin/activities/${encodeURIComponent(id)}/ticket_types/${encodeURIComponent(key)}/codes`
        : `/admin/activities/${encodeURIComponent(id)}/codes`;
      const r = (await api('POST', path, { body: await file.text(), headers: { 'content-type': 'text/csv' } })).body;
      replace(result, notice(t('uploaded', { n: r.added ?? r.accepted ?? r.count ?? '' }), 'ok'));
    } catch (err) {
      const b = err.body || {};
      const lists = [];
      if (Array.isArray(b.bad) && b.bad.length) lists.push(h('h3', {}, t('bad_lines')), h('ul', { id: 'codes-bad' }, b.bad.map((x) => h('li', { class: 'mono' }, typeof x === 'string' ? x : JSON.stringify(x)))));
      if (Array.isArray(b.duplicates) && b.duplicates.length) lists.push(h('h3', {}, t('duplicate_lines')), h('ul', { id: 'codes-duplicates' }, b.duplicates.map((x) => h('li', { class: 'mono' }, typeof x === 'string' ? x : JSON.stringify(x)))));
      replace(result, notice(problemText(err), 'error'), lists.length ? h('section', { 'aria-label': t('rejected_title') }, h('h2', {}, t('rejected_title')), lists) : null);
    }
  });
  return h('section', { 'aria-labelledby': 'codes-h' }, h('h2', { id: 'codes-h' }, t('codes_title')), form, result);
}

function exportSection(id, a) {
  const message = h('div', { 'aria-live': 'polite', id: 'export-message' });
  const report = h('div', { id: 'reconcile-report' });
  const exportButton = h('button', { type: 'button', class: 'button button--secondary', id: 'export' }, t('export_csv'));
  const reconcileButton = h('button', { type: 'button', class: 'button button--secondary', id: 'reconcile' }, t('reconcile'));
  exportButton.addEventListener('click', async () => {
    try {
      const { body } = await api('GET', `/admin/activities/${encodeURIComponent(id)}/claims.csv`, { raw: true, headers: { accept: 'text/csv' } });
      const name = `activity-${a.id}-claims.csv`;
      const link = h('a', { href: URL.createObjectURL(body), download: name });
      document.body.appendChild(link);
      link.click();
      link.remove();
      replace(message, notice(t('exported', { name }), 'ok'));
    } catch (e) { fail(message, e); }
  });
  reconcileButton.addEventListener('click', async () => {
    try {
      const r = (await api('GET', `/admin/activities/${encodeURIComponent(id)}/reconcile`)).body;
      replace(report, notice(t(r.ok ? 'reconcile_ok' : 'reconcile_drift'), r.ok ? 'ok' : 'error'),
        h('dl', { class: 'summary-list' }, Object.entries(r).filter(([k]) => k !== 'ok').map(([k, v]) => [
          h('dt', {}, k), h('dd', { class: 'mono' }, Array.isArray(v) ? (v.join(', ') || '—') : String(v))])));
    } catch (e) { fail(report, e); }
  });
  return h('section', { 'aria-labelledby': 'export-h' }, h('h2', { id: 'export-h' }, t('export_title')),
    h('div', { class: 'button-group' }, exportButton, reconcileButton), message, report);
}

// ---- blacklist ------------------------------------------------------------------------------

async function blacklistView() {
  setTitle(t('blacklist_title'));
  const list = h('div', { id: 'blacklist' }, h('p', { role: 'status' }, t('loading')));
  const message = h('div', { 'aria-live': 'polite' });
  const form = h('form', { novalidate: true, id: 'blacklist-form' },
    field({ name: 'user_id', label: t('user_id') }),
    field({ name: 'reason', label: t('reason') }),
    h('button', { type: 'submit', class: 'button button--warning' }, t('add')));
  const load = async () => {
    try {
      const r = (await api('GET', '/admin/blacklist')).body;
      const entries = r.users || r.blacklist || r.entries || [];
      if (!entries.length) { replace(list, h('p', {}, t('blacklist_empty'))); return; }
      replace(list, h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, t('user_id')), h('th', { scope: 'col' }, t('reason')), h('th', { scope: 'col' }, h('span', { class: 'skip-link' }, t('remove'))))),
        h('tbody', {}, entries.map((entry) => {
          const user = entry.user_id ?? entry;
          const remove = h('button', { type: 'button', class: 'button button--secondary', 'aria-label': `${t('remove')} ${user}` }, t('remove'));
          remove.addEventListener('click', async () => {
            try { await api('DELETE', `/admin/blacklist/${encodeURIComponent(user)}`); replace(message, notice(t('removed'), 'ok')); load(); } catch (e) { fail(message, e); }
          });
          return h('tr', {}, h('td', { class: 'mono' }, user), h('td', {}, entry.reason || ''), h('td', {}, remove));
        })))));
    } catch (e) { fail(list, e); }
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    if (!requireFields(form, data, { user_id: t('required_user') }, t('error_title'))) return;
    try {
      await api('PUT', `/admin/blacklist/${encodeURIComponent(data.user_id)}`, data.reason ? { json: { reason: data.reason } } : {});
      replace(message, notice(t('added'), 'ok'));
      form.reset();
      load();
    } catch (err) { showErrors(form, [[err.body?.detail?.startsWith('reason') ? 'reason' : 'user_id', problemText(err)]], t('error_title')); }
  });
  replace(main, h('h1', {}, t('blacklist_title')), form, message, list);
  load();
}

// ---- redeem ------------------------------------------------------------------------------------

function redeemView() {
  setTitle(t('redeem_title'));
  const form = h('form', { novalidate: true, id: 'redeem-form' },
    field({ name: 'qr', label: t('qr_payload'), hint: t('qr_hint'), type: 'textarea', attrs: { spellcheck: 'false', autocapitalize: 'none' } }),
    h('div', { class: 'button-group' }, h('button', { type: 'submit', class: 'button' }, t('redeem_button'))));
  const message = h('div', { id: 'redeem-message', 'aria-live': 'assertive' });
  const redeem = async (payload) => {
    const qr = payload.trim();
    if (!requireFields(form, { qr }, { qr: t('required_payload') }, t('error_title'))) return;
    // The payload is FC1.<ticket id>.<tag>: the id names the route, the server checks the rest.
    const rest = qr.startsWith('FC1.') ? qr.slice(4) : qr;
    const code = rest.includes('.') ? rest.slice(0, rest.lastIndexOf('.')) : rest;
    try {
      const r = (await api('POST', `/admin/tickets/${encodeURIComponent(code)}/redeem`, { json: { qr } })).body;
      replace(message, notice(t('redeemed', { code: r.code ?? code }), 'ok'));
      form.reset();
    } catch (e) {
      showErrors(form, [['qr', problemText(e)]], t('error_title'));
      replace(message);
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); redeem(new FormData(form).get('qr')); });
  let camera = null;
  if ('BarcodeDetector' in window && navigator.mediaDevices?.getUserMedia) {
    const button = h('button', { type: 'button', class: 'button button--secondary' }, t('scan'));
    const video = h('video', { playsinline: true, muted: true, hidden: true });
    button.addEventListener('click', async () => {
      if (camera) { stopCamera(); return; }
      try {
        camera = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' } });
        video.srcObject = camera;
        video.hidden = false;
        await video.play();
        button.textContent = t('scan_stop');
        const detector = new window.BarcodeDetector({ formats: ['qr_code'] });
        const scan = async () => {
          if (!camera) return;
          const codes = await detector.detect(video).catch(() => []);
          if (codes.length) { form.querySelector('textarea').value = codes[0].rawValue; stopCamera(); redeem(codes[0].rawValue); return; }
          requestAnimationFrame(scan);
        };
        scan();
      } catch (e) { replace(message, notice(String(e.message || e), 'error')); }
    });
    const stopCamera = () => {
      camera?.getTracks().forEach((track) => track.stop());
      camera = null;
      video.hidden = true;
      button.textContent = t('scan');
    };
    cleanups.push(stopCamera);
    form.querySelector('.button-group').append(button);
    form.append(video);
  }
  replace(main, h('h1', {}, t('redeem_title')), form, message);
}

// ---- health --------------------------------------------------------------------------------------

async function healthView() {
  setTitle(t('health_title'));
  const box = h('div', { id: 'health' }, h('p', { role: 'status' }, t('loading')));
  replace(main, h('h1', {}, t('health_title')), box);
  const load = async () => {
    let s;
    try { s = (await call('GET', '/healthz')).body; } catch (e) { s = e.body; if (!s || s.status === undefined) { fail(box, e); return; } }
    replace(box, h('dl', { class: 'summary-list' },
      h('dt', {}, t('h_status')), h('dd', {}, h('strong', { class: `badge badge--${s.status === 'ok' ? 'open' : 'soldout'}` }, s.status)),
      h('dt', {}, t('h_redis')), h('dd', {}, t(s.redis ? 'yes' : 'no')),
      h('dt', {}, t('h_postgres')), h('dd', {}, t(s.postgres ? 'yes' : 'no')),
      h('dt', {}, t('h_backlog')), h('dd', {}, String(s.backlog ?? '')),
      h('dt', {}, t('h_oldest')), h('dd', {}, String(s.oldest_entry_age_ms ?? '—')),
      ...((s.redis_down || []).length ? [h('dt', {}, t('h_down')), h('dd', {}, s.redis_down.join(', '))] : []),
      // A Sentinel group: the primary its sentinels name now, so an operator watching a
      // failover sees the switch and when the replicas have caught up.
      ...(s.redis_groups || []).flatMap((g) => [
        h('dt', {}, t('h_group', { shard: g.shard })),
        h('dd', {}, t('h_primary', { primary: g.primary, replicas: String(g.replicas),
          sync: t(g.replicas_in_sync ? 'h_in_sync' : 'h_not_in_sync') }))])));
  };
  load();
  every(5000, load);
}

// ---- shell ------------------------------------------------------------------------------------

function updateNav() {
  const s = auth.get();
  document.getElementById('nav-logout').hidden = !s;
  document.querySelectorAll('.header__nav a').forEach((a) => { a.hidden = !s; });
}

document.getElementById('nav-logout').addEventListener('click', () => {
  auth.clear();
  flash = { text: t('logged_out'), kind: 'ok' };
  updateNav();
  route();
});

function route() {
  timers.forEach(clearInterval);
  timers = [];
  cleanups.forEach((f) => f());
  cleanups = [];
  updateNav();
  if (!token()) { loginView(); return; }
  const path = (location.hash.replace(/^#/, '') || '/').split('?')[0];
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'new') editView(null);
  else if (parts[0] === 'a' && parts[1] && parts[2] === 'edit') editView(parts[1]);
  else if (parts[0] === 'a' && parts[1]) detailView(parts[1]);
  else if (parts[0] === 'blacklist') blacklistView();
  else if (parts[0] === 'redeem') redeemView();
  else if (parts[0] === 'health') healthView();
  else listView();
}

setupLanguage(route);
window.addEventListener('hashchange', route);
route();
