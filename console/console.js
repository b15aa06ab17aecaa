/*
 * portcullis console: the API Access screen (SPEC section 9).
 *
 * Plain JavaScript over the management API (/api/v1/…), same origin. The session is
 * an HttpOnly cookie this script never sees; every request other than GET carries
 * X-CSRF-Token from the session. No inline script or style anywhere, so it runs under
 * Content-Security-Policy: default-src 'self'. The DOM is built with textContent only
 * (h() below), never innerHTML, so names and notes cannot inject markup.
 *
 * Stable data-testid values (used by tests/console_browser.py):
 *   page:      environment, actor-name, signout-button, notice, no-access
 *   sign-in:   signin, signin-form, signin-mode-key, signin-mode-client, signin-api-key,
 *              signin-client-id, signin-client-secret, signin-submit, signin-error
 *   tables:    clients-section, clients-table, add-client, client-row, clients-empty,
 *              keys-section, keys-table, add-key, key-row, keys-empty
 *              (rows carry data-name, data-kind, data-user, data-expired, data-disabled; class
 *              is-expired / is-disabled / is-expiring)
 *   in a row:  flag-expired, flag-disabled, flag-soon, roles-cell, last-used,
 *              edit-button, delete-button, rotate-button, disable-button, enable-button
 *   requests:  requests-section, requests-table, request-row (data-request-id,
 *              data-target, data-status), request-status, requests-empty,
 *              approve-button, deny-button, show-secret-button
 *   token:     token-section, token-endpoint, client-id-prefix, token-example
 *   add/edit:  cred-dialog, cred-name, cred-expires, cred-description, cred-notes,
 *              cred-user, ip-all, ip-input, ip-remove, ip-add, perm-grid,
 *              grid-change-<row id>, grid-view-<row id>, role-<custom role name>,
 *              cred-scope, cred-extra-permissions, cred-justification, cred-save,
 *              cred-cancel, cred-error, err-<field> (err-name, err-allowed_ips, …)
 *   secret:    secret-dialog, secret-warning, secret-client-id, secret-value,
 *              copy-secret, secret-copied, secret-close
 *   confirm:   confirm-dialog, confirm-yes, confirm-cancel
 *   rotate:    rotate-dialog, rotate-overlap, rotate-confirm, rotate-cancel, rotate-error
 */
'use strict';

(() => {
  const state = {
    session: null,                 // GET /api/v1/session
    creds: [],                     // Credential[]
    requests: [],                  // Request[]
    roles: { roles: [], grid: [] },// GET /api/v1/roles
    editing: null,                 // the Credential being edited, null when adding
    addKind: 'client',
    rotating: null,
    confirmAction: null,
  };
  const $ = (id) => document.getElementById(id);
  const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

  // ---------------------------------------------------------------- DOM helpers

  /** Element builder: h('td', {class: 'x'}, 'text', child). Text is always text. */
  function h(tag, attrs = {}, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  /** An icon from the sprite in index.html; always decorative. */
  function icon(name) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('class', 'icon');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const use = document.createElementNS(NS, 'use');
    use.setAttribute('href', '#i-' + name);
    svg.append(use);
    return svg;
  }

  function show(el, on) { el.hidden = !on; }

  /** The aria-live notice above the tables. kind: info | ok | warn | error. */
  function notify(text, kind = 'info') {
    const box = $('notice');
    box.replaceChildren(
      h('span', { class: 'notice-text' }, text),
      h('button', { type: 'button', class: 'btn-icon', 'aria-label': 'Dismiss', onclick: () => show(box, false) }, icon('x')));
    box.className = 'notice is-' + kind;
    show(box, true);
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error_description) || `The server answered ${status}.`);
      this.status = status;
      this.body = body || {};
    }
  }

  /** fetch() wrapper: JSON in and out, the CSRF header on every non-GET. */
  async function api(method, path, body, headers = {}) {
    const opts = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
    if (method !== 'GET' && state.session) opts.headers['X-CSRF-Token'] = state.session.csrf_token;
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(0, { error_description: 'The management API cannot be reached. Check your connection and try again.' });
    }
    let data = null;
    if (res.status !== 204) {
      try { data = await res.json(); } catch (e) { data = null; }
    }
    if (!res.ok) {
      const err = new ApiError(res.status, data);
      // A lapsed session on a signed-in screen: back to the sign-in page.
      if (res.status === 401 && state.session && path !== '/api/v1/session') sessionEnded();
      throw err;
    }
    return { status: res.status, data };
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- formatting

  function pad(n) { return String(n).padStart(2, '0'); }
  function localDate(d) { return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`; }

  /** YYYY-MM-DD: a bare date as is, a timestamp as its UTC date. */
  function fmtDate(v) {
    if (!v) return '—';
    if (/^\d{4}-\d{2}-\d{2}$/.test(v)) return v;
    const t = Date.parse(v);
    return isNaN(t) ? String(v) : new Date(t).toISOString().slice(0, 10);
  }

  /** "just now", "3 min ago", "5 h ago", "2 days ago", then the date; "never". */
  function relTime(v) {
    if (!v) return 'never';
    const t = Date.parse(v);
    if (isNaN(t)) return String(v);
    const s = Math.round((Date.now() - t) / 1000);
    if (s < 45) return 'just now';
    if (s < 3600) return `${Math.max(1, Math.round(s / 60))} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    const d = Math.round(s / 86400);
    if (d < 30) return d === 1 ? '1 day ago' : `${d} days ago`;
    return fmtDate(v);
  }

  const kindLabel = (k) => (k === 'client' ? 'OAuth client' : 'API key');

  // ---------------------------------------------------------------- permissions grid mapping

  /** "vault:change@vault/v-1" → ["vault:change", "@vault/v-1"]. */
  function splitPerm(p) {
    const i = p.indexOf('@');
    return i < 0 ? [p, ''] : [p.slice(0, i), p.slice(i)];
  }

  /** Roles the grid does not cover, offered as checkboxes (custom roles). */
  function customRoles() {
    const gridRoles = new Set(state.roles.grid.map((r) => r.role).filter(Boolean));
    return state.roles.roles.filter((r) => !r.builtin && !gridRoles.has(r.name));
  }

  /**
   * Reads roles + permissions back into the grid: per row 'change' | 'view' | null,
   * the vault scope (from the first grid permission with an @vault/… suffix), the
   * custom roles, and what the grid does not explain (kept as "other" so that an edit
   * never drops a permission).
   */
  function analyse(roles = [], permissions = []) {
    const grid = state.roles.grid;
    const gridBases = new Set(grid.flatMap((r) => [...r.change, ...r.view]));
    const parts = permissions.map(splitPerm);
    const scoped = parts.find(([b, s]) => gridBases.has(b) && s.startsWith('@vault/'));
    const scope = scoped ? scoped[1].slice('@vault/'.length) : '';
    const sfx = scope ? '@vault/' + scope : '';
    const used = new Set();
    const usedRoles = new Set();
    const rows = {};
    const present = (list) => list.length > 0 && list.every((p) => parts.some(([b, s]) => b === p && s === sfx));
    for (const r of grid) {
      let st = null;
      if (r.role && roles.includes(r.role)) { st = 'change'; usedRoles.add(r.role); }
      else if (present(r.change)) st = 'change';
      else if (present(r.view)) st = 'view';
      if (st) {
        const covered = st === 'change' ? [...r.change, ...r.view] : r.view;
        parts.forEach(([b, s], i) => { if (s === sfx && covered.includes(b)) used.add(i); });
      }
      rows[r.id] = st;
    }
    const custom = new Set(customRoles().map((r) => r.name));
    return {
      rows,
      scope,
      custom: roles.filter((r) => !usedRoles.has(r) && custom.has(r)),
      otherRoles: roles.filter((r) => !usedRoles.has(r) && !custom.has(r)),
      other: permissions.filter((_, i) => !used.has(i)),
    };
  }

  /** Table cell content: "Wallets: Change, Transactions: View", scope, roles, extras. */
  function accessSummary(roles, permissions, user) {
    const a = analyse(roles || [], permissions || []);
    const gridText = state.roles.grid
      .filter((r) => a.rows[r.id])
      .map((r) => `${r.label}: ${a.rows[r.id] === 'change' ? 'Change' : 'View'}`)
      .join(', ');
    const out = [];
    if (gridText) out.push(h('span', {}, gridText));
    if (gridText && a.scope) out.push(h('span', { class: 'chip chip-scope' }, `vault ${a.scope}`));
    for (const r of [...a.custom, ...a.otherRoles]) out.push(h('span', { class: 'chip' }, r));
    for (const p of a.other) out.push(h('span', { class: 'chip chip-perm' }, p));
    if (!out.length) out.push(h('span', { class: 'muted' }, user ? `${user}'s permissions` : 'No permissions'));
    else if (user) out.push(h('span', { class: 'muted' }, `+ ${user}'s permissions`));
    return h('div', { class: 'roles' }, out);
  }

  // ---------------------------------------------------------------- session

  async function boot() {
    wire();
    try {
      const r = await api('GET', '/api/v1/session');
      state.session = r.data;
      await enterApp();
    } catch (e) {
      showSignIn(e.status === 401 ? '' : e.message);
    }
  }

  function showSignIn(message) {
    state.session = null;
    state.creds = [];
    state.requests = [];
    for (const d of document.querySelectorAll('dialog[open]')) d.close();
    show($('app'), false);
    show($('who'), false);
    show($('env-badge'), false);
    show($('notice'), false);
    show($('signin'), true);
    $('signin-error').textContent = message || '';
    show($('signin-error'), !!message);
    setSignInMode(signInMode());
  }

  function signInMode() {
    return document.querySelector('input[name="signin-mode"]:checked').value;
  }

  function sessionEnded() { showSignIn('Your session has ended. Sign in again.'); }

  function setSignInMode(mode) {
    show($('signin-key-form'), mode === 'key');
    show($('signin-client-form'), mode === 'client');
    (mode === 'key' ? $('signin-api-key') : $('signin-client-id')).focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const mode = signInMode();
    const err = $('signin-error');
    let body;
    if (mode === 'key') body = { api_key: $('signin-api-key').value.trim() };
    else body = { client_id: $('signin-client-id').value.trim(), client_secret: $('signin-client-secret').value };
    if (Object.values(body).some((v) => !v)) {
      err.textContent = mode === 'key' ? 'Enter your API key.' : 'Enter the client ID and the client secret.';
      show(err, true);
      return;
    }
    try {
      const r = await api('POST', '/api/v1/session', body);
      state.session = r.data;
      for (const id of ['signin-api-key', 'signin-client-id', 'signin-client-secret']) $(id).value = '';
      show(err, false);
      await enterApp();
    } catch (e) {
      err.textContent = e.status === 401 ? (e.body.error_description || 'This credential was not accepted.') : e.message;
      show(err, true);
    }
  }

  async function signOut() {
    try { await api('DELETE', '/api/v1/session'); } catch (e) { /* signed out either way */ }
    showSignIn('');
  }

  async function enterApp() {
    const s = state.session;
    s.can = Object.assign({ read: false, change: false, approve: false, own_keys: false }, s.can || {});
    show($('signin'), false);
    show($('app'), true);
    show($('who'), true);
    $('actor-name').textContent = s.actor;
    $('actor-credential').textContent = s.credential && s.credential !== s.actor ? `(with ${s.credential})` : '';
    const env = $('env-badge');
    env.textContent = s.environment || 'sandbox';
    env.className = 'env-badge env-' + (s.environment || 'sandbox');
    show(env, true);
    renderToken();
    await refresh();
    $('main').focus();
  }

  // ---------------------------------------------------------------- loading and rendering

  /** Reloads credentials, requests and roles; each may be refused (403) on its own. */
  async function refresh() {
    const c = state.session.can;
    const get = (path, fallback) => api('GET', path).then((r) => r.data, (e) => {
      if (e.status === 401) throw e;
      if (e.status !== 403 && e.status !== 404) notify(e.message, 'error');
      return fallback;
    });
    try {
      const [creds, reqs, roles] = await Promise.all([
        c.read || c.change || c.own_keys ? get('/api/v1/credentials', { credentials: [] }) : { credentials: [] },
        get('/api/v1/requests', { requests: [] }),
        get('/api/v1/roles', { roles: [], grid: [] }),
      ]);
      state.creds = creds.credentials || [];
      state.requests = reqs.requests || [];
      state.roles = { roles: roles.roles || [], grid: roles.grid || [] };
    } catch (e) {
      return; // 401: already back on the sign-in page
    }
    render();
  }

  function canManage(cred) {
    const s = state.session;
    if (s.can.change) return true;
    return s.can.own_keys && cred.kind === 'api_key' && !!s.user && cred.user === s.user;
  }

  function render() {
    const s = state.session;
    const c = s.can;
    const seesClients = c.read || c.change;
    const seesKeys = c.read || c.change || c.own_keys;
    show($('no-access'), !seesKeys && !c.approve && state.requests.length === 0);
    show($('clients-section'), seesClients);
    show($('keys-section'), seesKeys);
    show($('add-client'), c.change);
    show($('add-key'), c.change || c.own_keys);

    const byName = (a, b) => a.name.localeCompare(b.name);
    const clients = state.creds.filter((x) => x.kind === 'client').sort(byName);
    // Own-key actors get only their keys from the server; filtering again costs nothing.
    const keys = state.creds.filter((x) => x.kind === 'api_key' && (seesClients || x.user === s.user)).sort(byName);
    fillTable($('clients-body'), clients, 6, 'No OAuth clients yet.', 'clients-empty');
    fillTable($('keys-body'), keys, 7, seesClients ? 'No API keys yet.' : 'You have no API keys yet.', 'keys-empty');
    renderRequests();
  }

  function fillTable(tbody, list, cols, emptyText, emptyId) {
    tbody.replaceChildren(...(list.length
      ? list.map(credRow)
      : [h('tr', {}, h('td', { colspan: cols, class: 'empty', 'data-testid': emptyId }, emptyText))]));
  }

  function flag(kind, text, iconName) {
    return h('span', { class: 'flag flag-' + kind, 'data-testid': 'flag-' + kind, title: text }, icon(iconName), h('span', {}, text));
  }

  function credRow(cred) {
    const isKey = cred.kind === 'api_key';
    const cls = [cred.expired && 'is-expired', cred.disabled && 'is-disabled', !cred.expired && cred.expires_soon && 'is-expiring']
      .filter(Boolean).join(' ');
    const flags = [];
    if (cred.expired) flags.push(flag('expired', 'Expired', 'warning'));
    else if (cred.expires_soon) flags.push(flag('soon', 'Expires soon', 'clock'));
    if (cred.disabled) flags.push(flag('disabled', 'Disabled', 'ban'));

    const nameCell = h('th', { scope: 'row', class: 'cell-name' },
      cred.name, flags.length ? h('span', { class: 'flags' }, flags) : null,
      cred.description ? h('div', { class: 'cell-sub' }, cred.description) : null);
    const ips = cred.allowed_ips == null ? 'All IP addresses' : `IPs: ${cred.allowed_ips.join(', ') || 'none'}`;
    const cells = [
      nameCell,
      isKey ? h('td', {}, cred.user || h('span', { class: 'muted' }, '—')) : null,
      h('td', { 'data-testid': 'roles-cell' }, accessSummary(cred.roles, cred.permissions, cred.user),
        h('div', { class: 'cell-sub' }, ips)),
      h('td', { class: 'nowrap', title: String(cred.expires || '') }, fmtDate(cred.expires)),
      h('td', { class: 'cell-notes' }, cred.notes || ''),
      h('td', { class: 'nowrap', 'data-testid': 'last-used', title: cred.last_used || '' }, relTime(cred.last_used)),
      h('td', { class: 'col-actions' }, canManage(cred) ? rowActions(cred) : null),
    ];
    return h('tr', {
      class: cls || null, 'data-testid': isKey ? 'key-row' : 'client-row', 'data-name': cred.name,
      'data-kind': cred.kind, 'data-user': cred.user || null, 'data-expired': String(!!cred.expired), 'data-disabled': String(!!cred.disabled),
    }, cells);
  }

  function rowActions(cred) {
    const n = cred.name;
    return h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'btn btn-secondary btn-sm', 'data-testid': 'rotate-button',
        'aria-label': `Rotate secret of ${n}`, title: 'Generate a new secret', onclick: () => openRotate(cred) }, 'Rotate'),
      cred.disabled
        ? h('button', { type: 'button', class: 'btn btn-secondary btn-sm', 'data-testid': 'enable-button',
          'aria-label': `Enable ${n}`, onclick: () => setEnabled(cred, true) }, 'Enable')
        : h('button', { type: 'button', class: 'btn btn-secondary btn-sm', 'data-testid': 'disable-button',
          'aria-label': `Disable ${n}`, title: 'Stop it from authenticating', onclick: () => setEnabled(cred, false) }, 'Disable'),
      // Editing needs api_access:change: own keys are rotated, disabled or deleted, not edited.
      state.session.can.change
        ? h('button', { type: 'button', class: 'btn-icon', 'data-testid': 'edit-button', 'aria-label': `Edit ${n}`,
          title: 'Edit', onclick: () => openCredDialog(cred.kind, cred) }, icon('pencil'))
        : null,
      h('button', { type: 'button', class: 'btn-icon danger', 'data-testid': 'delete-button', 'aria-label': `Delete ${n}`,
        title: 'Delete', onclick: () => confirmDelete(cred) }, icon('trash')));
  }

  function renderRequests() {
    const s = state.session;
    const list = [...state.requests].sort((a, b) =>
      (a.status === 'pending' ? 0 : 1) - (b.status === 'pending' ? 0 : 1) || String(b.requested_at).localeCompare(String(a.requested_at)));
    show($('requests-section'), s.can.read || s.can.approve || list.length > 0);
    const pending = list.filter((r) => r.status === 'pending').length;
    $('requests-title').textContent = pending ? `Pending requests (${pending})` : 'Pending requests';
    $('requests-body').replaceChildren(...(list.length ? list.map(requestRow)
      : [h('tr', {}, h('td', { colspan: 7, class: 'empty', 'data-testid': 'requests-empty' }, 'No pending requests.'))]));
  }

  function requestRow(r) {
    const s = state.session;
    const ch = r.change || {};
    const mine = r.requested_by === s.actor;
    const what = h('div', {},
      h('div', {}, `${r.action === 'edit' ? 'Edit' : 'Create'} ${kindLabel(r.kind)} `, h('strong', {}, r.target)),
      (ch.roles || ch.permissions) ? accessSummary(ch.roles, ch.permissions, ch.user) : null,
      'allowed_ips' in ch ? h('div', { class: 'cell-sub' }, ch.allowed_ips == null ? 'All IP addresses' : `IPs: ${ch.allowed_ips.join(', ')}`) : null);
    const decided = r.decided_by ? ` by ${r.decided_by}` : '';
    const status = h('span', { class: 'status status-' + r.status, 'data-testid': 'request-status' },
      r.status.charAt(0).toUpperCase() + r.status.slice(1) + (r.status === 'pending' ? '' : decided));
    const actions = [];
    if (r.status === 'pending' && s.can.approve && !mine) {
      actions.push(
        h('button', { type: 'button', class: 'btn btn-primary btn-sm', 'data-testid': 'approve-button',
          'aria-label': `Approve request for ${r.target}`, onclick: () => decide(r, 'approve') }, 'Approve'),
        h('button', { type: 'button', class: 'btn btn-secondary btn-sm', 'data-testid': 'deny-button',
          'aria-label': `Deny request for ${r.target}`, onclick: () => decide(r, 'deny') }, 'Deny'));
    }
    if (r.secret_ready) {
      actions.push(h('button', { type: 'button', class: 'btn btn-primary btn-sm', 'data-testid': 'show-secret-button',
        'aria-label': `Show secret of ${r.target}`, onclick: () => pickUp(r) }, 'Show secret'));
    }
    return h('tr', { 'data-testid': 'request-row', 'data-request-id': r.id, 'data-target': r.target, 'data-status': r.status },
      h('td', {}, r.requested_by, mine ? h('div', { class: 'cell-sub' }, 'you') : null),
      h('td', {}, what),
      h('td', { class: 'nowrap', title: r.requested_at || '' }, relTime(r.requested_at)),
      h('td', { class: 'nowrap', title: r.expires_at || '' }, fmtDate(r.expires_at)),
      h('td', { class: 'cell-notes' }, r.justification || ''),
      h('td', {}, status),
      h('td', { class: 'col-actions' }, h('div', { class: 'actions' }, actions)));
  }

  function renderToken() {
    const s = state.session;
    const endpoint = s.token_endpoint || '/oauth/token';
    const prefix = s.client_id_prefix || '';
    $('token-endpoint').textContent = endpoint;
    $('token-endpoint-note').textContent = endpoint.startsWith('/') ? '(on the proxy listener)' : '';
    $('client-id-prefix').textContent = prefix;
    $('token-example').textContent =
      `POST ${endpoint}\nContent-Type: application/x-www-form-urlencoded\n\n` +
      `grant_type=client_credentials&client_id=${prefix}{your-client-id}&client_secret={your-client-secret}`;
  }

  // ---------------------------------------------------------------- row actions

  async function setEnabled(cred, enable) {
    try {
      await api('POST', `/api/v1/credentials/${enc(cred.name)}/${enable ? 'enable' : 'disable'}`);
      notify(enable ? `${cred.name} is enabled again.` : `${cred.name} is disabled: it can no longer authenticate.`, 'ok');
    } catch (e) {
      if (e.status !== 401) notify(e.message, 'error');
    }
    await refresh();
  }

  function confirmDelete(cred) {
    $('confirm-title').textContent = `Delete ${cred.name}?`;
    $('confirm-text').textContent = cred.kind === 'client'
      ? `The OAuth client ${cred.name} is removed permanently. It can no longer obtain tokens, and tokens it already holds are rejected at once.`
      : `The API key ${cred.name} is removed permanently. Every request that sends it is rejected at once.`;
    state.confirmAction = async () => {
      try {
        await api('DELETE', `/api/v1/credentials/${enc(cred.name)}`);
        notify(`${cred.name} is deleted.`, 'ok');
      } catch (e) {
        if (e.status !== 401) notify(e.message, 'error');
      }
      await refresh();
    };
    $('confirm-dialog').showModal();
  }

  function openRotate(cred) {
    state.rotating = cred;
    $('rotate-title').textContent = `Rotate secret of ${cred.name}`;
    $('rotate-text').textContent = `A new ${cred.kind === 'client' ? 'client secret' : 'key value'} is generated and shown once.`;
    $('rotate-overlap').value = '';
    clearErrors($('rotate-form'));
    $('rotate-dialog').showModal();
  }

  async function rotate(ev) {
    ev.preventDefault();
    const form = $('rotate-form');
    clearErrors(form);
    if (!form.reportValidity()) return;
    const cred = state.rotating;
    const overlap = $('rotate-overlap').value.trim();
    try {
      const r = await api('POST', `/api/v1/credentials/${enc(cred.name)}/rotate`, overlap ? { overlap } : {});
      $('rotate-dialog').close();
      await refresh();
      showSecret(cred.kind, cred.name, r.data.secret);
    } catch (e) {
      if (e.status !== 401) showErrors(e, form, $('rotate-error'));
    }
  }

  async function decide(req, verdict) {
    try {
      await api('POST', `/api/v1/requests/${enc(req.id)}/${verdict}`);
      notify(verdict === 'approve'
        ? `Approved: ${req.target} is ${req.action === 'edit' ? 'changed' : 'created'}.${req.action === 'edit' ? '' : ` ${req.requested_by} can now pick up its secret.`}`
        : `Denied: the request for ${req.target} is closed.`, 'ok');
    } catch (e) {
      if (e.status !== 401) notify(e.message, 'error');
    }
    await refresh();
  }

  async function pickUp(req) {
    try {
      const r = await api('POST', `/api/v1/requests/${enc(req.id)}/secret`);
      await refresh();
      showSecret(req.kind, r.data.credential || req.target, r.data.secret);
    } catch (e) {
      if (e.status === 410) notify('This secret was already picked up, or its pickup window has passed. Rotate the credential to get a new one.', 'error');
      else if (e.status !== 401) notify(e.message, 'error');
      await refresh();
    }
  }

  // ---------------------------------------------------------------- the secret dialog

  function showSecret(kind, name, secret) {
    const isClient = kind === 'client';
    $('secret-title').textContent = isClient ? `Client secret of ${name}` : `API key ${name}`;
    $('secret-label').textContent = isClient ? 'Client secret' : 'API key value';
    show($('secret-client-field'), isClient);
    $('secret-client-id').value = isClient ? (state.session.client_id_prefix || '') + name : '';
    $('secret-value').value = secret;
    $('secret-copied').textContent = '';
    $('secret-dialog').showModal();
    $('secret-value').select();
  }

  async function copySecret() {
    const field = $('secret-value');
    try {
      await navigator.clipboard.writeText(field.value);
      $('secret-copied').textContent = 'Copied to the clipboard.';
    } catch (e) {
      // No clipboard access (permissions, plain http): select it for Ctrl+C instead.
      field.focus();
      field.select();
      $('secret-copied').textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
    }
  }

  // ---------------------------------------------------------------- add / edit dialog

  function ipRow(value = '') {
    const row = h('div', { class: 'ip-row' },
      h('input', { class: 'input mono', type: 'text', value, spellcheck: 'false', autocomplete: 'off',
        placeholder: '203.0.113.7 or 198.51.100.0/24', 'aria-describedby': 'ip-hint err-allowed_ips', 'data-testid': 'ip-input' }),
      h('button', { type: 'button', class: 'btn-icon', 'data-testid': 'ip-remove', onclick: () => removeIp(row) }, icon('x')));
    return row;
  }

  function removeIp(row) {
    const rows = $('ip-rows');
    if (rows.children.length <= 1) row.querySelector('input').value = '';
    else row.remove();
    syncIps();
    rows.querySelector('input').focus();
  }

  /** Numbers the IP inputs' labels, caps the count, hides them under "All IP addresses". */
  function syncIps() {
    const max = state.session.max_allowed_ips || 6;
    const all = !$('ip-all-wrap').hidden && $('ip-all').checked;
    const rows = [...$('ip-rows').children];
    rows.forEach((row, i) => {
      row.querySelector('input').setAttribute('aria-label', `IP address ${i + 1}`);
      row.querySelector('button').setAttribute('aria-label', `Remove IP address ${i + 1}`);
    });
    show($('ip-rows'), !all);
    show($('ip-add'), !all);
    $('ip-add').disabled = rows.length >= max;
    $('ip-hint').textContent = all
      ? 'Any address may use this credential. Fine for sandbox testing; never in production.'
      : `Up to ${max} IPv4 or IPv6 addresses or CIDR ranges.`;
  }

  function gridRow(r, st) {
    const change = h('input', { type: 'checkbox', id: 'grid-change-' + r.id, 'data-testid': 'grid-change-' + r.id,
      'aria-label': `${r.label}: Change` });
    const view = h('input', { type: 'checkbox', id: 'grid-view-' + r.id, 'data-testid': 'grid-view-' + r.id,
      'aria-label': `${r.label}: View` });
    // Change includes View: ticking it ticks and locks View; unticking unlocks it.
    const sync = () => { if (change.checked) view.checked = true; view.disabled = change.checked; };
    change.addEventListener('change', sync);
    change.checked = st === 'change';
    view.checked = st === 'change' || st === 'view';
    sync();
    return h('tr', { 'data-row': r.id }, h('th', { scope: 'row' }, r.label), h('td', {}, change), h('td', {}, view));
  }

  function openCredDialog(kind, cred) {
    const s = state.session;
    const editing = !!cred;
    const isKey = kind === 'api_key';
    const ownOnly = isKey && !s.can.change;
    state.editing = cred || null;
    state.addKind = kind;
    const form = $('cred-form');
    form.reset();
    clearErrors(form);

    $('cred-title').textContent = editing ? `Edit ${cred.name}` : (isKey ? 'Add API key' : 'Add API client');
    $('cred-name-label').textContent = isKey ? 'Name' : 'Client ID';
    const name = $('cred-name');
    name.value = editing ? cred.name : '';
    name.readOnly = editing;
    $('cred-name-hint').textContent = editing
      ? 'Fixed at creation.'
      : 'Letters, digits, ".", "_" and "-"; up to 64. Cannot be changed later.';
    const exp = $('cred-expires');
    exp.type = editing ? 'text' : 'date'; // read-only in an edit: plain YYYY-MM-DD text
    if (editing) {
      exp.value = fmtDate(cred.expires);
      exp.removeAttribute('min');
    } else {
      const d = new Date();
      exp.min = localDate(d);
      d.setDate(d.getDate() + (s.default_expiry_days || 365));
      exp.value = localDate(d);
    }
    exp.readOnly = editing;
    $('cred-description').value = editing ? cred.description || '' : '';
    $('cred-notes').value = editing ? cred.notes || '' : '';

    show($('cred-user-field'), isKey);
    const user = $('cred-user');
    user.value = editing ? cred.user || '' : (ownOnly ? s.user || '' : '');
    user.readOnly = editing || ownOnly;
    show($('cred-user-optional'), !user.readOnly);
    show($('grid-user-hint'), isKey);

    // IP allowlist: "All IP addresses" only in sandbox; production needs one entry.
    const sandbox = (s.environment || 'sandbox') === 'sandbox';
    show($('ip-all-wrap'), sandbox);
    const ips = editing ? cred.allowed_ips : null;
    $('ip-all').checked = sandbox && ips == null;
    $('ip-rows').replaceChildren(...((ips && ips.length ? ips : ['']).map((v) => ipRow(v))));
    syncIps();

    // Permissions grid, custom roles, scope and other permissions.
    const a = analyse(editing ? cred.roles : [], editing ? cred.permissions : []);
    state.otherRoles = a.otherRoles;
    $('grid-body').replaceChildren(...(state.roles.grid.length
      ? state.roles.grid.map((r) => gridRow(r, a.rows[r.id]))
      : [h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'The roles could not be loaded.'))]));
    const custom = customRoles();
    show($('custom-roles-wrap'), custom.length > 0);
    $('custom-roles').replaceChildren(...custom.map((r) => h('label', { class: 'check', title: r.permissions.join(' ') },
      h('input', { type: 'checkbox', value: r.name, 'data-testid': 'role-' + r.name, checked: a.custom.includes(r.name) }), r.name)));
    $('cred-scope').value = a.scope;
    $('cred-extra').value = a.other.join(' ');

    show($('justification-field'), !!s.approval_required);
    $('cred-justification').required = !!s.approval_required && !editing;
    $('cred-dialog').showModal();
    (editing ? $('cred-description') : name).focus();
  }

  /** The grid, roles, scope and extras as the API's {roles, permissions}. */
  function collectAccess() {
    const scope = $('cred-scope').value.trim();
    const sfx = scope ? '@vault/' + scope : '';
    const roles = [];
    const perms = [];
    for (const r of state.roles.grid) {
      if ($('grid-change-' + r.id).checked) {
        if (!scope && r.role) roles.push(r.role);
        else perms.push(...r.change.map((p) => p + sfx));
      } else if ($('grid-view-' + r.id).checked) {
        perms.push(...r.view.map((p) => p + sfx));
      }
    }
    for (const cb of $('custom-roles').querySelectorAll('input:checked')) roles.push(cb.value);
    roles.push(...(state.otherRoles || []));
    perms.push(...$('cred-extra').value.split(/[\s,]+/).filter(Boolean));
    return { roles: [...new Set(roles)], permissions: [...new Set(perms)] };
  }

  /** null = all addresses; else the entries. Returns undefined after showing an error. */
  function collectIps() {
    if (!$('ip-all-wrap').hidden && $('ip-all').checked) return null;
    const ips = [...$('ip-rows').querySelectorAll('input')].map((i) => i.value.trim()).filter(Boolean);
    if (!ips.length) {
      const sandbox = !$('ip-all-wrap').hidden;
      fieldError('allowed_ips', sandbox
        ? 'Enter at least one IP address or CIDR range, or tick "All IP addresses".'
        : 'Enter at least one IP address or CIDR range: production credentials must list their addresses.');
      $('ip-rows').querySelector('input').focus();
      return undefined;
    }
    return ips;
  }

  const sameList = (a, b) => JSON.stringify(a == null ? null : [...a].sort()) === JSON.stringify(b == null ? null : [...b].sort());

  async function saveCred(ev) {
    ev.preventDefault();
    const form = $('cred-form');
    const s = state.session;
    clearErrors(form);
    const name = $('cred-name');
    if (!state.editing && !NAME_RE.test(name.value.trim())) {
      name.setCustomValidity('Use 1–64 letters, digits, ".", "_" or "-", starting with a letter or digit.');
    } else name.setCustomValidity('');
    if (!form.reportValidity()) return;
    const ips = collectIps();
    if (ips === undefined) return;
    const access = collectAccess();
    const description = $('cred-description').value.trim();
    const notes = $('cred-notes').value.trim();
    const justification = $('cred-justification').value.trim();
    const save = $('cred-save');
    save.disabled = true;
    try {
      let r;
      const cred = state.editing;
      if (cred) {
        // Send only what changed: an unchanged field never triggers an approval.
        const patch = {};
        if (!sameList(access.roles, cred.roles || [])) patch.roles = access.roles;
        if (!sameList(access.permissions, cred.permissions || [])) patch.permissions = access.permissions;
        if (!sameList(ips, cred.allowed_ips)) patch.allowed_ips = ips;
        if (description !== (cred.description || '')) patch.description = description || null;
        if (notes !== (cred.notes || '')) patch.notes = notes || null;
        if (!Object.keys(patch).length) {
          $('cred-dialog').close();
          notify(`No changes to ${cred.name}.`);
          return;
        }
        if (s.approval_required && justification) patch.justification = justification;
        r = await api('PATCH', `/api/v1/credentials/${enc(cred.name)}`, patch, cred.etag ? { 'If-Match': cred.etag } : {});
      } else {
        const body = {
          kind: state.addKind, name: name.value.trim(), roles: access.roles, permissions: access.permissions,
          allowed_ips: ips, expires: $('cred-expires').value,
        };
        const user = $('cred-user').value.trim();
        if (state.addKind === 'api_key' && user) body.user = user;
        if (description) body.description = description;
        if (notes) body.notes = notes;
        if (s.approval_required && justification) body.justification = justification;
        r = await api('POST', '/api/v1/credentials', body);
      }
      $('cred-dialog').close();
      await refresh();
      const target = cred ? cred.name : name.value.trim();
      if (r.status === 202) {
        notify(`Waiting for approval: ${cred ? 'the change to ' : ''}${target} is pending approval by another administrator.` +
          (cred ? '' : ' Once approved, pick up its secret under Pending requests.'), 'warn');
      } else if (r.data && r.data.secret) {
        notify(`${target} is created.`, 'ok');
        showSecret(state.addKind, target, r.data.secret);
      } else {
        notify(`${target} is saved.`, 'ok');
      }
    } catch (e) {
      if (e.status === 412 || e.status === 409) {
        showErrors({ body: {}, message: `${state.editing.name} was changed by someone else meanwhile. Close this dialog and open it again to edit the current version.` }, form, $('cred-error'));
        refresh();
      } else if (e.status !== 401) {
        showErrors(e, form, $('cred-error'));
      }
    } finally {
      save.disabled = false;
    }
  }

  // ---------------------------------------------------------------- form errors

  function clearErrors(form) {
    for (const el of form.querySelectorAll('.field-error, .form-error')) { el.textContent = ''; el.hidden = true; }
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  /** Shows one field's reason next to it (err-<field>); false when there is no such place. */
  function fieldError(field, reason) {
    const key = { expires_in: 'expires', client_id: 'name', id: 'name' }[field] || field;
    const el = $('err-' + key);
    if (!el) return false;
    el.textContent = reason;
    el.hidden = false;
    const input = document.querySelector(`[aria-describedby~="err-${key}"]`);
    if (input) input.setAttribute('aria-invalid', 'true');
    return true;
  }

  /** error_description near the form; each 422 "fields" reason next to its input. */
  function showErrors(e, form, box) {
    const extra = [];
    for (const [f, reason] of Object.entries(e.body.fields || {})) {
      // "allowed_ips[2]" / "allowed_ips.2" belong to the allowlist as a whole.
      const base = f.split(/[.[]/)[0];
      if (!fieldError(base, reason)) extra.push(`${f}: ${reason}`);
    }
    box.textContent = [e.message, ...extra].join(' ');
    box.hidden = false;
    // The dialog body scrolls: bring the first reason into view.
    const first = form.querySelector('.field-error:not([hidden])') || box;
    first.scrollIntoView({ block: 'nearest' });
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $('signin-key-form').addEventListener('submit', signIn);
    $('signin-client-form').addEventListener('submit', signIn);
    for (const radio of document.querySelectorAll('input[name="signin-mode"]')) {
      radio.addEventListener('change', () => setSignInMode(radio.value));
    }
    $('signout').addEventListener('click', signOut);
    $('add-client').addEventListener('click', () => openCredDialog('client', null));
    $('add-key').addEventListener('click', () => openCredDialog('api_key', null));
    $('cred-form').addEventListener('submit', saveCred);
    $('ip-all').addEventListener('change', syncIps);
    $('ip-add').addEventListener('click', () => {
      const row = ipRow('');
      $('ip-rows').append(row);
      syncIps();
      row.querySelector('input').focus();
    });
    $('cred-name').addEventListener('input', () => $('cred-name').setCustomValidity(''));
    $('secret-copy').addEventListener('click', copySecret);
    $('secret-close').addEventListener('click', () => $('secret-dialog').close());
    // The secret leaves the page when its dialog closes (also on Escape).
    $('secret-dialog').addEventListener('close', () => { $('secret-value').value = ''; $('secret-client-id').value = ''; });
    $('rotate-form').addEventListener('submit', rotate);
    $('confirm-yes').addEventListener('click', async () => {
      $('confirm-dialog').close();
      const act = state.confirmAction;
      state.confirmAction = null;
      if (act) await act();
    });
    for (const btn of document.querySelectorAll('[data-close]')) {
      btn.addEventListener('click', () => btn.closest('dialog').close());
    }
  }

  document.addEventListener('DOMContentLoaded', boot);
})();
