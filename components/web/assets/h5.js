// The H5 app: activity list, detail with the claim button on the server's clock, log in /
// register, my tickets with the server-drawn QR code, give a ticket back.

import { h, replace, field, showErrors, requireFields, formatTime } from './dom.js';
import { call, clock, Problem, randomKey, session } from './api.js';
import { t, lang, setupLanguage, duration, problemText } from './i18n.js';

const main = document.getElementById('main');
const auth = session('flashclaim.h5.session');
let timers = [];
let flash = null; // a message carried to the next screen

function every(ms, fn) { timers.push(setInterval(fn, ms)); }
// clearInterval and clearTimeout share one id space, so either clears both kinds.
function stopTimers() { timers.forEach(clearInterval); timers = []; }
function token() { return auth.get()?.token; }

// What a person sees of an activity (or of one of its ticket types, which may have a
// window of its own inside the activity's) right now, on the server's clock.
function stateOf(a, type = null) {
  const now = clock.now();
  const starts = Date.parse(type?.starts_at || a.starts_at);
  const ends = Date.parse(type?.ends_at || a.ends_at);
  if (a.status === 'closed' || now >= ends) return 'ended';
  if ((type ? type.stock_left : a.stock_left) <= 0) return 'soldout';
  if (now < starts) return 'upcoming';
  return 'open';
}

// The ticket types a person chooses between: none when the activity has just one.
function choices(a) {
  const types = a.ticket_types || [];
  return types.length > 1 ? types : [];
}

function badge(state) {
  return h('strong', { class: `badge badge--${state}` }, t(`state_${state}`));
}

function setTitle(text) {
  document.title = `${text} · flashclaim`;
}

function notice(text, kind = '') {
  return h('p', { class: `notice ${kind ? `notice--${kind}` : ''}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

function takeFlash() {
  const f = flash;
  flash = null;
  return f ? notice(f.text, f.kind) : null;
}

// ---- activity list ------------------------------------------------------------------

async function listView() {
  setTitle(t('activities_title'));
  const list = h('ul', { class: 'cards', 'aria-live': 'polite' });
  const status = h('p', { class: 'muted', role: 'status' }, t('loading'));
  const refresh = h('button', { type: 'button', class: 'button button--secondary', id: 'refresh' }, t('refresh'));
  replace(main, takeFlash(), h('h1', {}, t('activities_title')), h('div', { class: 'button-group' }, refresh), status, list);

  let activities = [];
  const draw = () => {
    replace(list, activities.map((a) => {
      const state = stateOf(a);
      return h('li', { class: 'card' },
        h('h2', {}, h('a', { href: `#/a/${a.id}` }, a.name)),
        h('div', { class: 'card__meta' },
          badge(state),
          h('span', {}, t('stock', { left: a.stock_left, total: a.stock_total })),
          state === 'upcoming'
            ? h('span', { class: 'countdown' }, t('starts_in', { time: duration(Date.parse(a.starts_at) - clock.now()) }))
            : null));
    }));
  };
  const load = async () => {
    refresh.disabled = true;
    try {
      const { body } = await call('GET', '/api/activities?limit=50');
      activities = body.activities || [];
      status.textContent = activities.length ? `${t('refreshed')} ${new Date(clock.now()).toLocaleTimeString()}` : t('activities_empty');
      draw();
    } catch (e) {
      status.textContent = problemText(e);
    } finally {
      refresh.disabled = false;
    }
  };
  refresh.addEventListener('click', load);
  pullToRefresh(load);
  every(1000, draw);
  every(5000, load);
  await load();
}

// Pull down at the top of the list to refresh (touch screens); the button does the same.
function pullToRefresh(load) {
  let startY = null;
  const onStart = (e) => { startY = window.scrollY === 0 ? e.touches[0].clientY : null; };
  const onEnd = (e) => {
    if (startY !== null && e.changedTouches[0].clientY - startY > 80) load();
    startY = null;
  };
  window.addEventListener('touchstart', onStart, { passive: true });
  window.addEventListener('touchend', onEnd, { passive: true });
  cleanups.push(() => {
    window.removeEventListener('touchstart', onStart);
    window.removeEventListener('touchend', onEnd);
  });
}
let cleanups = [];

// ---- activity detail and the claim ----------------------------------------------------

async function detailView(id) {
  setTitle(t('activities_title'));
  replace(main, h('p', { role: 'status' }, t('loading')));
  let a;
  try {
    a = (await call('GET', `/api/activities/${encodeURIComponent(id)}`, { token: token() })).body;
  } catch (e) {
    replace(main, notice(problemText(e), 'error'), h('a', { href: '#/' }, t('back_to_list')));
    return;
  }
  setTitle(a.name);
  const stateBadge = h('span');
  const stock = h('span');
  const held = h('p', { class: 'muted' });
  const countdown = h('p', { class: 'countdown', id: 'countdown' });
  const message = h('div', { id: 'claim-message', 'aria-live': 'assertive' });
  const result = h('div', { id: 'claim-result' });
  const button = h('button', { type: 'button', class: 'button button--block', id: 'claim-button' }, t('claim'));
  const loginLink = h('a', { class: 'button button--block', href: `#/login?next=${encodeURIComponent(`/a/${id}`)}` }, t('login_to_claim'));

  // One claim in flight at a time. The Idempotency-Key of a press is kept when the answer
  // was 503 with claimed: null (we cannot know whether it happened), so pressing again
  // repeats that same claim and can never claim twice.
  let inFlight = false;
  let pendingKey = null;
  let retryUntil = 0;
  let openTimer = null;
  let chosen = choices(a)[0]?.key ?? null;
  const typeOf = () => (a.ticket_types || []).find((tt) => tt.key === chosen) || null;
  const typePicker = h('div');
  const drawTypes = () => {
    const types = choices(a);
    if (!types.length) { replace(typePicker); return; }
    if (!typePicker.firstChild) {
      replace(typePicker, h('fieldset', { class: 'form-group', id: 'ticket-type' },
        h('legend', { class: 'label' }, t('choose_type')),
        types.map((tt) => {
          const id = `tt-${tt.key}`;
          const input = h('input', { type: 'radio', name: 'ticket_type', id, value: tt.key, checked: tt.key === chosen });
          input.addEventListener('change', () => { chosen = tt.key; pendingKey = null; draw(); });
          return h('div', { class: 'checkbox' }, input, h('label', { for: id, 'data-type-label': tt.key }));
        })));
    }
    types.forEach((tt) => {
      const label = typePicker.querySelector(`[data-type-label="${CSS.escape(tt.key)}"]`);
      if (label) label.textContent = `${t('type_stock', { name: tt.name, left: Math.max(0, tt.stock_left), total: tt.stock_total })} · ${t(`state_${stateOf(a, tt)}`)}`;
    });
  };

  const draw = () => {
    drawTypes();
    const type = choices(a).length ? typeOf() : null;
    const state = stateOf(a, type);
    replace(stateBadge, badge(state));
    stock.textContent = t('stock', { left: Math.max(0, a.stock_left), total: a.stock_total });
    held.textContent = a.my_claimed ? t('you_hold', { n: a.my_claimed }) : '';
    const untilStart = Date.parse(type?.starts_at || a.starts_at) - clock.now();
    countdown.textContent = state === 'upcoming' ? t('starts_in', { time: duration(untilStart) }) : '';
    const waitRetry = retryUntil - Date.now();
    if (retryUntil && waitRetry <= 0) {
      retryUntil = 0;
      replace(message, notice(t('p_rate_limited_done'), 'ok'));
    } else if (waitRetry > 0) {
      replace(message, notice(t('p_rate_limited', { n: Math.ceil(waitRetry / 1000) }), 'error'));
    }
    if (inFlight) {
      button.disabled = true;
      button.textContent = t('claiming');
    } else if (state === 'upcoming') {
      button.disabled = true;
      button.textContent = t('claim_wait', { time: duration(untilStart) });
      // In the last second, wake exactly at the opening instead of at the next tick.
      if (untilStart < 1000 && !openTimer) {
        openTimer = setTimeout(() => { openTimer = null; draw(); }, Math.max(0, untilStart) + 2);
        timers.push(openTimer);
      }
    } else if (state === 'open' && a.per_user_limit && (a.my_claimed || 0) >= a.per_user_limit) {
      // The limit is the server's to enforce; the page only spares a pointless press.
      button.disabled = true;
      button.textContent = t('limit_held');
    } else {
      button.disabled = state !== 'open' || waitRetry > 0;
      button.textContent = state === 'open' ? t('claim') : t(`state_${state}`);
    }
    button.hidden = !token();
    loginLink.hidden = !!token();
  };

  const refresh = async () => {
    try {
      a = (await call('GET', `/api/activities/${encodeURIComponent(id)}`, { token: token() })).body;
    } catch { /* keep the last view; the next refresh tries again */ }
    draw();
  };

  const showTickets = (claim) => {
    replace(result, h('section', { class: 'panel', 'aria-labelledby': 'claimed-title' },
      h('h2', { id: 'claimed-title', tabindex: '-1' }, t('claimed_title')),
      h('p', {}, t('claimed_body')),
      (claim.tickets || []).map((tk) => ticketCard(tk))));
    result.querySelector('h2').focus();
  };

  const claim = async () => {
    if (inFlight || !token()) return;
    inFlight = true;
    replace(message);
    draw();
    const key = pendingKey || randomKey();
    pendingKey = key;
    try {
      if (a.require_pass) await getPass(id);
      let response;
      try {
        response = await postClaim(id, key, chosen);
      } catch (e) {
        if (!(e instanceof Problem) || e.code !== 'pass_required') throw e;
        replace(message, notice(t('p_pass_required')));
        await getPass(id);
        response = await postClaim(id, key, chosen);
      }
      pendingKey = null;
      a.stock_left = choices(a).length ? a.stock_left - 1 : (response.body.stock_left ?? a.stock_left);
      const claimedType = typeOf();
      if (claimedType && response.body.stock_left !== undefined) claimedType.stock_left = response.body.stock_left;
      a.my_claimed = (a.my_claimed || 0) + (response.body.tickets?.length || 0);
      replace(message);
      showTickets(response.body);
    } catch (e) {
      const p = e instanceof Problem ? e : new Problem(0, null);
      // Only an answer that says the claim may or may not have happened keeps the key.
      const unknown = p.code === 'network' || (p.status === 503 && p.body.claimed === null);
      if (!unknown) pendingKey = null;
      if (p.code === 'rate_limited') {
        const after = Number(p.headers?.get('retry-after')) || 1;
        retryUntil = Date.now() + after * 1000;
      } else if (unknown) {
        // No answer, or one that cannot say: the next press repeats this claim (same key).
        replace(message, notice(t('p_unavailable_unknown'), 'error'));
      } else if (p.code === 'unavailable') {
        replace(message, notice(t('p_unavailable'), 'error'));
      } else if (p.code === 'not_started') {
        replace(message, notice(t('p_not_started', { time: formatTime(a.starts_at, lang) }), 'error'));
      } else if (p.code === 'unauthenticated') {
        auth.clear();
        updateNav();
        replace(message, notice(t('p_unauthenticated'), 'error'));
      } else {
        if (p.code === 'sold_out') {
          if (choices(a).length && typeOf()) typeOf().stock_left = 0; else a.stock_left = 0;
        }
        replace(message, notice(problemText(p), 'error'));
      }
    } finally {
      inFlight = false;
      draw();
    }
  };
  button.addEventListener('click', claim);

  replace(main,
    h('p', {}, h('a', { href: '#/' }, t('back_to_list'))),
    h('h1', {}, a.name),
    h('div', { class: 'card__meta' }, stateBadge, stock),
    a.image_url ? h('img', { src: a.image_url, alt: '', class: 'activity-image', referrerpolicy: 'no-referrer' }) : null,
    a.description ? h('p', {}, a.description) : null,
    h('dl', { class: 'summary-list' },
      h('dt', {}, t('starts_at')), h('dd', {}, formatTime(a.starts_at, lang)),
      h('dt', {}, t('ends_at')), h('dd', {}, formatTime(a.ends_at, lang))),
    h('p', { class: 'muted' }, t('per_user', { n: a.per_user_limit }), a.require_pass ? ` · ${t('pass_needed')}` : ''),
    typePicker, held, countdown, button, loginLink, message, result);
  draw();
  // The countdown ticks often so the button opens within a few hundred ms of the second.
  every(200, draw);
  every(3000, refresh);
}

async function getPass(id) {
  try {
    await call('POST', `/api/activities/${encodeURIComponent(id)}/passes`, { token: token() });
  } catch (e) {
    // `conflict`: this activity hands out no passes; the claim will say what it needs.
    if (!(e instanceof Problem) || e.code !== 'conflict') throw e;
  }
}

function postClaim(id, key, ticketType) {
  const json = { quantity: 1 };
  if (ticketType) json.ticket_type = ticketType;
  return call('POST', `/api/activities/${encodeURIComponent(id)}/claims`, {
    token: token(), json, headers: { 'idempotency-key': key },
  });
}

// ---- tickets --------------------------------------------------------------------------

function ticketRoute(tk) { return `#/t/${encodeURIComponent(tk.id || tk.code)}`; }

function ticketCard(tk) {
  const qr = h('div');
  loadQr(tk, qr);
  return h('div', { class: 'ticket' },
    h('p', {}, h('span', { class: 'muted' }, `${t('code')}: `), h('span', { class: 'ticket-code', 'data-testid': 'ticket-code' }, tk.code)),
    qr,
    h('p', {}, h('a', { href: ticketRoute(tk) }, t('view_ticket'))));
}

// The QR image is drawn by the server (owner only), so it is fetched with the token and
// shown from a blob: URL.
async function loadQr(tk, into) {
  try {
    const { body } = await call('GET', `/api/tickets/${encodeURIComponent(tk.id || tk.code)}/qr.svg`, { token: token(), raw: true, headers: { accept: 'image/svg+xml' } });
    const url = URL.createObjectURL(body);
    replace(into, h('img', { class: 'qr', src: url, alt: t('qr_alt', { code: tk.code }), width: 220, height: 220 }));
  } catch {
    replace(into);
  }
}

async function ticketsView() {
  setTitle(t('tickets_title'));
  if (!token()) {
    replace(main, h('h1', {}, t('tickets_title')), h('p', {}, h('a', { href: '#/login?next=%2Ftickets' }, t('tickets_login'))));
    return;
  }
  replace(main, takeFlash(), h('h1', {}, t('tickets_title')), h('p', { role: 'status' }, t('loading')));
  try {
    const { body } = await call('GET', '/api/tickets', { token: token() });
    const tickets = body.tickets || [];
    replace(main, takeFlash(), h('h1', {}, t('tickets_title')),
      h('p', { class: 'muted' }, t('tickets_note')),
      tickets.length
        ? h('ul', { class: 'cards' }, tickets.map((tk) => h('li', { class: 'card' },
          h('h2', {}, h('a', { href: ticketRoute(tk), class: 'mono' }, tk.code)),
          h('div', { class: 'card__meta' },
            h('strong', { class: `badge badge--${tk.status === 'active' ? 'open' : 'ended'}` }, t(`status_${tk.status}`)),
            h('span', {}, t('activity_n', { id: tk.activity_id })),
            tk.claimed_at ? h('span', { class: 'muted' }, formatTime(tk.claimed_at, lang)) : null))))
        : h('p', {}, t('tickets_empty')));
  } catch (e) {
    handleAuthProblem(e);
    replace(main, h('h1', {}, t('tickets_title')), notice(problemText(e), 'error'));
  }
}

async function ticketView(code) {
  setTitle(t('ticket_title'));
  if (!token()) { location.hash = '#/login'; return; }
  replace(main, h('p', { role: 'status' }, t('loading')));
  let tk;
  try {
    tk = (await call('GET', `/api/tickets/${encodeURIComponent(code)}`, { token: token() })).body;
  } catch (e) {
    handleAuthProblem(e);
    replace(main, notice(problemText(e), 'error'), h('a', { href: '#/tickets' }, t('back_to_tickets')));
    return;
  }
  const qr = h('div');
  loadQr(tk, qr);
  const actions = h('div', { id: 'give-back' });
  const message = h('div', { 'aria-live': 'assertive' });
  const drawActions = () => {
    if (tk.status !== 'active') { replace(actions); return; }
    replace(actions, h('button', { type: 'button', class: 'button button--warning', id: 'give-back-button', onclick: confirmStep }, t('give_back')));
  };
  const confirmStep = () => {
    const yes = h('button', { type: 'button', class: 'button button--warning', id: 'give-back-yes' }, t('give_back_yes'));
    const no = h('button', { type: 'button', class: 'button button--secondary' }, t('give_back_no'));
    const box = h('div', { class: 'notice', role: 'alertdialog', 'aria-labelledby': 'gb-q', 'aria-modal': 'false' },
      h('p', { id: 'gb-q' }, t('give_back_confirm')), h('div', { class: 'button-group' }, yes, no));
    replace(actions, box);
    no.addEventListener('click', () => { drawActions(); actions.querySelector('button')?.focus(); });
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      try {
        await call('DELETE', `/api/tickets/${encodeURIComponent(tk.id || tk.code)}`, { token: token() });
        tk.status = 'returned';
        status.textContent = t('status_returned');
        replace(message, notice(t('given_back'), 'ok'));
        drawActions();
      } catch (e) {
        yes.disabled = false;
        replace(message, notice(problemText(e), 'error'));
      }
    });
    yes.focus();
  };
  const status = h('dd', { id: 'ticket-status' }, t(`status_${tk.status}`));
  replace(main,
    h('p', {}, h('a', { href: '#/tickets' }, t('back_to_tickets'))),
    h('h1', {}, t('ticket_title')),
    h('p', { class: 'ticket-code', 'data-testid': 'ticket-code' }, tk.code),
    h('p', { class: 'muted' }, t('copy_hint')),
    qr,
    h('dl', { class: 'summary-list' },
      h('dt', {}, t('activity')), h('dd', {}, h('a', { href: `#/a/${tk.activity_id}` }, t('activity_n', { id: tk.activity_id }))),
      h('dt', {}, t('status')), status,
      tk.claimed_at ? [h('dt', {}, t('claimed_at')), h('dd', {}, formatTime(tk.claimed_at, lang))] : null,
      h('dt', {}, t('verification')), h('dd', { class: 'mono', id: 'verification' }, tk.verification)),
    actions, message);
  drawActions();
}

function handleAuthProblem(e) {
  if (e instanceof Problem && e.code === 'unauthenticated') { auth.clear(); updateNav(); }
}

// ---- log in / register ----------------------------------------------------------------

function nextRoute() {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const next = q.get('next');
  return next && next.startsWith('/') && !next.startsWith('//') ? `#${next}` : '#/';
}

function accountView(register) {
  setTitle(t(register ? 'register_title' : 'login_title'));
  const form = h('form', { novalidate: true },
    field({ name: 'username', label: t('username'), hint: register ? t('username_hint') : null, attrs: { autocomplete: 'username', autocapitalize: 'none', spellcheck: 'false' } }),
    field({ name: 'password', label: t('password'), type: 'password', hint: register ? t('password_hint') : null, attrs: { autocomplete: register ? 'new-password' : 'current-password' } }),
    register ? field({ name: 'nickname', label: t('nickname'), attrs: { autocomplete: 'nickname' } }) : null,
    h('button', { type: 'submit', class: 'button' }, t(register ? 'register_button' : 'login_button')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const required = { username: t('required_username'), password: t('required_password') };
    if (!requireFields(form, data, required, t('error_title'))) return;
    const submit = form.querySelector('button[type=submit]');
    submit.disabled = true;
    try {
      if (register) {
        const body = { username: data.username, password: data.password };
        if (data.nickname) body.nickname = data.nickname;
        await call('POST', '/api/users', { json: body });
      }
      const s = (await call('POST', '/api/sessions', { json: { username: data.username, password: data.password } })).body;
      auth.set({ token: s.token, expires_at: s.expires_at, username: data.username });
      if (register) flash = { text: t('registered'), kind: 'ok' };
      updateNav();
      location.hash = nextRoute();
    } catch (err) {
      showErrors(form, [[fieldOf(err, ['username', 'password', 'nickname']), problemText(err)]], t('error_title'));
    } finally {
      submit.disabled = false;
    }
  });
  const q = location.hash.split('?')[1];
  replace(main, h('h1', {}, t(register ? 'register_title' : 'login_title')), form,
    h('p', {}, t(register ? 'have_account' : 'no_account'), ' ',
      h('a', { href: `#/${register ? 'login' : 'register'}${q ? `?${q}` : ''}` }, t(register ? 'login_link' : 'register_link'))));
}

// The field a validation problem is about: the API's detail starts with the field's name.
export function fieldOf(problem, names) {
  const detail = problem.body?.detail || '';
  return names.find((n) => detail.startsWith(n) || detail.includes(`\`${n}\``)) || null;
}

// ---- shell --------------------------------------------------------------------------

function updateNav() {
  const s = auth.get();
  document.getElementById('nav-login').hidden = !!s;
  document.getElementById('nav-logout').hidden = !s;
}

document.getElementById('nav-logout').addEventListener('click', () => {
  auth.clear();
  updateNav();
  flash = { text: t('logged_out'), kind: 'ok' };
  if (location.hash === '#/' || location.hash === '') route(); else location.hash = '#/';
});

function route() {
  stopTimers();
  cleanups.forEach((f) => f());
  cleanups = [];
  const path = (location.hash.replace(/^#/, '') || '/').split('?')[0];
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  updateNav();
  if (parts[0] === 'a' && parts[1]) detailView(parts[1]);
  else if (parts[0] === 'tickets') ticketsView();
  else if (parts[0] === 't' && parts[1]) ticketView(parts[1]);
  else if (parts[0] === 'login') accountView(false);
  else if (parts[0] === 'register') accountView(true);
  else listView();
  if (document.activeElement && document.activeElement !== document.body && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

setupLanguage(route);
window.addEventListener('hashchange', route);
route();
