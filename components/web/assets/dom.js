// Building elements. Strings always become text nodes (never HTML): whatever the server
// says — an activity's name, a problem's detail — is shown as text.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let fieldIds = 0;

// A GOV.UK-style form group: label, hint, the error beside the field, the control.
export function field({ name, label, type = 'text', hint, value, required, attrs = {}, options }) {
  const id = `f-${name}-${++fieldIds}`;
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  let control;
  const common = { id, name, 'aria-describedby': hintId, ...attrs };
  if (type === 'select') {
    control = h('select', { class: 'select', ...common },
      options.map(([v, text]) => h('option', { value: v, selected: String(v) === String(value ?? '') }, text)));
  } else if (type === 'textarea') {
    control = h('textarea', { class: 'textarea', ...common }, value ?? '');
  } else if (type === 'checkbox') {
    control = h('input', { type: 'checkbox', ...common, checked: !!value });
    const group = h('div', { class: 'form-group', 'data-field': name },
      h('span', { class: 'error-message', id: errorId, hidden: true }),
      h('div', { class: 'checkbox' }, control, h('label', { for: id }, label)));
    return group;
  } else {
    control = h('input', { class: 'input', type, ...common, required: !!required });
    if (value !== undefined && value !== null) control.value = value;
  }
  return h('div', { class: 'form-group', 'data-field': name },
    h('label', { class: 'label', for: id }, label),
    hint ? h('span', { class: 'hint', id: hintId }, hint) : null,
    h('span', { class: 'error-message', id: errorId, hidden: true }),
    control);
}

// Required fields left empty in `data`, each shown beside its field (and any earlier errors
// cleared); true when none is missing. `messages`: { fieldName: message }.
export function requireFields(form, data, messages, title) {
  const errors = Object.entries(messages).filter(([name]) => !data[name]);
  showErrors(form, errors, title);
  return errors.length === 0;
}

// Shows errors the GOV.UK way: a summary at the top linking to each field, and the message
// beside the field. `errors` is a list of [fieldName | null, message].
export function showErrors(form, errors, title) {
  form.querySelectorAll('.form-group--error').forEach((g) => g.classList.remove('form-group--error'));
  form.querySelectorAll('.error-message').forEach((m) => { m.hidden = true; m.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach((c) => c.removeAttribute('aria-invalid'));
  form.querySelector('.error-summary')?.remove();
  if (!errors.length) return;
  const items = errors.map(([name, message]) => {
    const group = name && form.querySelector(`[data-field="${name}"]`);
    if (group) {
      group.classList.add('form-group--error');
      const msg = group.querySelector('.error-message');
      msg.hidden = false;
      msg.textContent = message;
      const control = group.querySelector('input, select, textarea');
      control.setAttribute('aria-invalid', 'true');
      control.setAttribute('aria-describedby', [control.getAttribute('aria-describedby'), msg.id].filter(Boolean).join(' '));
      return h('li', {}, h('a', { href: `#${control.id}`, onclick: (e) => { e.preventDefault(); control.focus(); } }, message));
    }
    return h('li', {}, message);
  });
  const summary = h('div', { class: 'error-summary', role: 'alert', tabindex: '-1' },
    h('h2', {}, title), h('ul', {}, items));
  form.prepend(summary);
  summary.focus();
}

export function formatTime(iso, lang) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(lang === 'zh' ? 'zh-CN' : 'en-GB', { dateStyle: 'medium', timeStyle: 'medium' });
}
