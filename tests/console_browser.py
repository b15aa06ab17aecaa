#!/usr/bin/env python3
"""Walks the API Access console (SPEC section 9) in a real headless Chromium.

    CONSOLE_URL=http://127.0.0.1:9443/ PROXY_URL=http://127.0.0.1:8080 \\
    ADMIN_KEY=… ADMIN2_KEY=… USER_KEY=… EXPIRED_KEY_NAME=… \\
    SCREENSHOT_DIR=/tmp/shots python3 tests/console_browser.py

Inputs (environment variables):
  CONSOLE_URL       the management listener, e.g. http://127.0.0.1:9443/
  PROXY_URL         the proxy listener, e.g. http://127.0.0.1:8080
  ADMIN_KEY         API key of an administrator holding api_access:change and :read
  ADMIN2_KEY        API key of a second administrator holding api_access:change, :read
                    and :approve
  USER_KEY          API key linked to a user (bob) holding no api_access permission
  EXPIRED_KEY_NAME  name of an API key in the store that is already expired
  SCREENSHOT_DIR    optional: console.png goes there (and failure.png on a failure)
  CLIENT_IPS        optional, comma-separated: the allowlist given to the credentials
                    the test creates (default "127.0.0.1,::1": where this script's
                    requests come from)
  CHROMIUM, CHROMEDRIVER  optional: default /usr/bin/chromium, /usr/bin/chromedriver

Needs the Python packages selenium and requests, and Debian's chromium and
chromium-driver. Prints one line per step with the elapsed time; exits 0 when every
step passed, 1 at the first failure (with what failed), 2 on missing inputs.

Steps: (a) sign in as ADMIN, both tables; (b) add the client browser-client through
the dialog (Wallets = Change, Transactions = View), read its secret once; (c) get a
token at the token endpoint the console shows, use it on the proxy (200 and 403);
(d) the expired key's row is flagged; (e) screenshot; (f) USER_KEY sees only its own
keys and creates bob-browser-key; (g) the approval flow, when the session says
approval_required (then (b) and (f) go through it: pending notice, no Approve button
on one's own request and a 403 from the API, ADMIN2 approves in the list, the
requester picks the secret up once); (h) delete browser-client through the trash
icon and its confirmation.
"""
import base64
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 15  # seconds any one explicit wait may take
T0 = time.monotonic()
CLIENT = "browser-client"
BOB_KEY = "bob-browser-key"


class Failure(Exception):
    pass


def env(name, required=True):
    v = os.environ.get(name, "")
    if required and not v:
        print(f"missing environment variable {name} (see the docstring of {sys.argv[0]})", file=sys.stderr)
        sys.exit(2)
    return v


CONSOLE_URL = env("CONSOLE_URL")
PROXY_URL = env("PROXY_URL").rstrip("/")
ADMIN_KEY = env("ADMIN_KEY")
ADMIN2_KEY = env("ADMIN2_KEY")
USER_KEY = env("USER_KEY")
EXPIRED_KEY_NAME = env("EXPIRED_KEY_NAME")
SCREENSHOT_DIR = env("SCREENSHOT_DIR", required=False)
CLIENT_IPS = [i.strip() for i in (env("CLIENT_IPS", required=False) or "127.0.0.1,::1").split(",") if i.strip()]
CURRENT = ["setup"]


@contextlib.contextmanager
def step(label):
    """One printed line per step: its elapsed time, and what it saw."""
    CURRENT[0] = label
    notes = []
    yield notes
    detail = f" ({'; '.join(notes)})" if notes else ""
    print(f"[{time.monotonic() - T0:7.2f}s] {label}: ok{detail}", flush=True)


def check(cond, what):
    if not cond:
        raise Failure(what)


# ------------------------------------------------------------------ browser helpers

def start_browser(profile):
    opts = Options()
    opts.binary_location = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER") or "/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=opts)


def css_tid(testid):
    return f'[data-testid="{testid}"]'


def row_css(kind, name):
    return f'tr[data-testid="{"client-row" if kind == "client" else "key-row"}"][data-name="{name}"]'


def wait(driver, cond, what, timeout=WAIT):
    try:
        # The console redraws its tables after every change: an element found a moment
        # ago may be gone, so a stale reference only means "look again".
        return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: cond(d))
    except TimeoutException:
        raise Failure(f"timed out after {timeout}s waiting for {what}") from None


def visible(driver, css, what=None, root=None):
    """Waits until an element matching css is displayed and returns it."""
    def find(d):
        for el in (root or d).find_elements(By.CSS_SELECTOR, css):
            if el.is_displayed():
                return el
        return None
    return wait(driver, find, what or css)


def gone(driver, css, what=None):
    wait(driver, lambda d: not any(e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, css)), what or f"{css} to go away")


def shown(driver, css, root=None):
    return any(e.is_displayed() for e in (root or driver).find_elements(By.CSS_SELECTOR, css))


def text_of(el):
    return (el.get_attribute("textContent") or "").strip()


def typed(driver, testid, value, root=None):
    el = visible(driver, css_tid(testid), root=root)
    el.clear()
    el.send_keys(value)
    return el


def api_url(path):
    return urllib.parse.urljoin(CONSOLE_URL, path)


def browser_api(driver):
    """A requests.Session with the browser's session cookie, and the session's JSON."""
    s = requests.Session()
    for c in driver.get_cookies():
        s.cookies.set(c["name"], c["value"])
    r = s.get(api_url("/api/v1/session"), timeout=10)
    check(r.status_code == 200, f"GET /api/v1/session with the browser's cookie: {r.status_code} {r.text[:200]}")
    sess = r.json()
    s.headers["X-CSRF-Token"] = sess["csrf_token"]
    return s, sess


def sign_in(driver, key, who):
    """Signs in on the sign-in page by pasting an API key; returns the session JSON."""
    if not shown(driver, css_tid("signin-form")):
        if shown(driver, css_tid("signout-button")):
            sign_out(driver)
        else:
            driver.get(CONSOLE_URL)
    visible(driver, css_tid("signin-form"), "the sign-in form")
    mode = driver.find_element(By.CSS_SELECTOR, css_tid("signin-mode-key"))
    if not mode.is_selected():
        mode.find_element(By.XPATH, "./..").click()  # the radio is styled away; its label is the control
    typed(driver, "signin-api-key", key)
    visible(driver, css_tid("signin-submit")).click()
    actor = visible(driver, css_tid("actor-name"), f"the signed-in actor ({who})")
    wait(driver, lambda d: text_of(actor), "the actor's name")
    _, sess = browser_api(driver)
    check(text_of(actor) == sess["actor"], f"header shows {text_of(actor)!r}, session actor is {sess['actor']!r}")
    # The screen has loaded once the tables (or the no-access note) are drawn.
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#keys-body tr") or shown(d, css_tid("no-access")),
         "the credential tables")
    return sess


def sign_out(driver):
    visible(driver, css_tid("signout-button")).click()
    visible(driver, css_tid("signin-form"), "the sign-in form after signing out")


def set_grid(driver, dialog, grid):
    """grid: {row id: 'change' | 'view'}; checks that Change selects and locks View."""
    for row, level in grid.items():
        change = visible(driver, css_tid(f"grid-change-{row}"), root=dialog)
        view = visible(driver, css_tid(f"grid-view-{row}"), root=dialog)
        if level == "change":
            change.click()
            check(view.is_selected() and not view.is_enabled(), f"ticking {row}: Change did not tick and lock View")
            change.click()
            check(view.is_enabled(), f"unticking {row}: Change did not unlock View")
            change.click()
            check(change.is_selected() and view.is_selected(), f"{row}: Change and View not both ticked")
        else:
            view.click()
            check(view.is_selected() and not change.is_selected(), f"{row}: View alone not ticked")


def set_ips(driver, dialog):
    box = dialog.find_elements(By.CSS_SELECTOR, css_tid("ip-all"))
    if box and box[0].is_displayed() and box[0].is_selected():
        box[0].click()
    for i, ip in enumerate(CLIENT_IPS):
        inputs = [e for e in dialog.find_elements(By.CSS_SELECTOR, css_tid("ip-input")) if e.is_displayed()]
        if i >= len(inputs):
            visible(driver, css_tid("ip-add"), root=dialog).click()
            wait(driver, lambda d: len(dialog.find_elements(By.CSS_SELECTOR, css_tid("ip-input"))) > i, "a new IP row")
            inputs = dialog.find_elements(By.CSS_SELECTOR, css_tid("ip-input"))
        inputs[i].clear()
        inputs[i].send_keys(ip)


def read_secret(driver, kind, name, notes):
    """The one-time secret dialog: warning, Copy, read the value, close. Returns (secret, client id)."""
    dlg = visible(driver, css_tid("secret-dialog"), f"the secret dialog of {name}")
    warning = text_of(visible(driver, css_tid("secret-warning"), root=dlg))
    check("shown only once" in warning and "cannot be retrieved" in warning, f"secret warning says {warning!r}")
    field = visible(driver, css_tid("secret-value"), root=dlg)
    secret = wait(driver, lambda d: field.get_attribute("value"), "the secret's value")
    check(field.get_attribute("readonly") is not None, "the secret field is not read-only")
    visible(driver, css_tid("copy-secret"), root=dlg).click()
    copied = visible(driver, css_tid("secret-copied"), root=dlg)
    wait(driver, lambda d: text_of(copied), "the Copy button's feedback")
    notes.append(f"copy: {text_of(copied)!r}")
    client_id = None
    if kind == "client":
        client_id = visible(driver, css_tid("secret-client-id"), root=dlg).get_attribute("value")
        check(client_id.endswith(name), f"secret dialog's client id {client_id!r} does not end with {name!r}")
    visible(driver, css_tid("secret-close"), root=dlg).click()
    gone(driver, css_tid("secret-dialog"), "the secret dialog to close")
    check(not driver.find_element(By.CSS_SELECTOR, css_tid("secret-value")).get_attribute("value"),
          "the secret stayed in the page after its dialog closed")
    return secret, client_id


def request_row(driver, name):
    return visible(driver, f'tr[data-testid="request-row"][data-target="{name}"]', f"the request for {name}")


def create(driver, sess, kind, name, grid, notes, key, approval_notes):
    """Adds a credential through the dialog and returns (secret, client id).

    With approval required the create waits: the requester sees it pending without an
    Approve button (and the API refuses the requester's approval), ADMIN2 approves it
    in the list, the requester picks the secret up once.
    """
    visible(driver, css_tid("add-client" if kind == "client" else "add-key")).click()
    dlg = visible(driver, css_tid("cred-dialog"), "the add dialog")
    title = text_of(dlg.find_element(By.CSS_SELECTOR, "h2"))
    check(title == ("Add API client" if kind == "client" else "Add API key"), f"dialog title {title!r}")
    typed(driver, "cred-name", name, root=dlg)
    expires = dlg.find_element(By.CSS_SELECTOR, css_tid("cred-expires")).get_attribute("value")
    want = (dt.date.today() + dt.timedelta(days=sess.get("default_expiry_days") or 365)).isoformat()
    check(expires == want, f"default expiry {expires!r}, expected {want}")
    if kind == "client":
        typed(driver, "cred-description", "Browser test client", root=dlg)
        typed(driver, "cred-notes", "created by tests/console_browser.py", root=dlg)
    else:
        user = visible(driver, css_tid("cred-user"), root=dlg)
        if not sess["can"].get("change"):
            check(user.get_attribute("value") == sess["user"] and user.get_attribute("readonly") is not None,
                  f"own-key dialog: User field is {user.get_attribute('value')!r}, not fixed to {sess['user']!r}")
    set_ips(driver, dlg)
    set_grid(driver, dlg, grid)
    if sess.get("approval_required"):
        typed(driver, "cred-justification", "Needed by the browser test of the console", root=dlg)
    visible(driver, css_tid("cred-save"), root=dlg).click()

    # Either the secret dialog (201) or the pending notice (202).
    def outcome(d):
        if shown(d, css_tid("secret-dialog")):
            return "secret"
        if "approval" in text_of(d.find_element(By.CSS_SELECTOR, css_tid("notice"))).lower() and not shown(d, css_tid("cred-dialog")):
            return "pending"
        errs = [text_of(e) for e in d.find_elements(By.CSS_SELECTOR, f'{css_tid("cred-dialog")} .form-error, {css_tid("cred-dialog")} .field-error') if e.is_displayed()]
        if errs:
            raise Failure(f"saving {name} failed in the dialog: {' | '.join(errs)}")
        return None
    got = wait(driver, outcome, f"the secret dialog or the pending notice after saving {name}")
    if got == "secret":
        check(not sess.get("approval_required"), f"{name} was created at once although approval is required")
        return read_secret(driver, kind, name, notes)

    check(sess.get("approval_required"), f"{name} went pending although the session says approval_required: false")
    notice = text_of(driver.find_element(By.CSS_SELECTOR, css_tid("notice")))
    check("pending approval" in notice.lower(), f"notice after a pending create says {notice!r}")
    row = request_row(driver, name)
    check(row.get_attribute("data-status") == "pending", f"request for {name} is {row.get_attribute('data-status')}")
    check(not shown(driver, css_tid("approve-button"), root=row), "the requester's own request shows an Approve button")
    rid = row.get_attribute("data-request-id")
    s, _ = browser_api(driver)
    r = s.post(api_url(f"/api/v1/requests/{urllib.parse.quote(rid)}/approve"), timeout=10)
    check(r.status_code == 403, f"the requester approving their own request got {r.status_code}, expected 403")
    approval_notes.append(f"{name}: pending, no Approve for the requester, API 403")

    sign_in(driver, ADMIN2_KEY, "ADMIN2")
    row = request_row(driver, name)
    visible(driver, css_tid("approve-button"), f"the Approve button on {name}'s request", root=row).click()
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-testid="request-row"][data-target="{name}"]')
         .get_attribute("data-status") == "approved", f"{name}'s request to be approved")
    approval_notes.append(f"{name}: approved by ADMIN2 in the list")

    sign_in(driver, key, "the requester")
    row = request_row(driver, name)
    visible(driver, css_tid("show-secret-button"), f"Show secret on {name}'s approved request", root=row).click()
    got = read_secret(driver, kind, name, notes)
    gone(driver, f'tr[data-testid="request-row"][data-target="{name}"] {css_tid("show-secret-button")}',
         "Show secret to disappear after the pickup")
    s, _ = browser_api(driver)
    r = s.post(api_url(f"/api/v1/requests/{urllib.parse.quote(rid)}/secret"), timeout=10)
    check(r.status_code == 410, f"a second pickup of {name}'s secret got {r.status_code}, expected 410")
    approval_notes.append(f"{name}: secret picked up once (second pickup 410)")
    return got


def token_url_from(shown_url):
    """The console's token endpoint: a path is on the proxy listener. A full URL is the
    advertised one (often a public name); its path is asked of PROXY_URL unless it already
    points there."""
    u = urllib.parse.urlsplit(shown_url)
    if not u.scheme:
        return PROXY_URL + shown_url
    if shown_url.startswith(PROXY_URL):
        return shown_url
    return PROXY_URL + (u.path or "/") + (f"?{u.query}" if u.query else "")


def full_screenshot(driver, path):
    """The whole page, beyond the 1400x1000 viewport."""
    try:
        dims = driver.execute_script("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": dims[0], "height": dims[1], "scale": 1}})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    except WebDriverException:
        driver.save_screenshot(path)


def check_browser_log(driver):
    """No CSP violation and no uncaught script error in the page's console."""
    bad = []
    for entry in driver.get_log("browser"):
        msg = entry.get("message", "")
        if "Content Security Policy" in msg or "Content-Security-Policy" in msg or "Uncaught" in msg:
            bad.append(msg)
    check(not bad, "browser console: " + " | ".join(bad))


# ------------------------------------------------------------------ the story

def story(driver):
    approval_notes = []
    with step("a. sign in as ADMIN, both tables") as n:
        driver.get(CONSOLE_URL)
        sess = sign_in(driver, ADMIN_KEY, "ADMIN")
        check(sess["can"].get("change") and sess["can"].get("read"), f"ADMIN's session lacks change/read: {sess['can']}")
        for t in ("clients-table", "keys-table", "token-endpoint"):
            visible(driver, css_tid(t))
        check(shown(driver, css_tid("add-client")) and shown(driver, css_tid("add-key")), "ADMIN sees no Add buttons")
        clients = driver.find_elements(By.CSS_SELECTOR, 'tr[data-testid="client-row"]')
        keys = driver.find_elements(By.CSS_SELECTOR, 'tr[data-testid="key-row"]')
        all_keys = {k.get_attribute("data-name"): k.get_attribute("data-user") for k in keys}
        check(not driver.find_elements(By.CSS_SELECTOR, row_css("client", CLIENT)),
              f"{CLIENT} exists already: run against a fresh store")
        check_browser_log(driver)
        n.append(f"actor {sess['actor']}, {len(clients)} clients, {len(keys)} keys, "
                 f"environment {sess.get('environment')}, approval_required {sess.get('approval_required')}")

    with step(f"b. add API client {CLIENT} (Wallets = Change, Transactions = View)") as n:
        secret, client_id_shown = create(driver, sess, "client", CLIENT, {"wallets": "change", "transactions": "view"},
                                         n, ADMIN_KEY, approval_notes)
        row = visible(driver, row_css("client", CLIENT), f"the row of {CLIENT}")
        roles = text_of(row.find_element(By.CSS_SELECTOR, css_tid("roles-cell")))
        check("Wallets: Change" in roles and "Transactions: View" in roles, f"roles cell says {roles!r}")
        n.append(f"secret of {len(secret)} characters, roles {roles!r}")

    with step("c. token from the endpoint the console shows, used on the proxy") as n:
        shown_url = text_of(visible(driver, css_tid("token-endpoint")))
        prefix = text_of(driver.find_element(By.CSS_SELECTOR, css_tid("client-id-prefix")))
        client_id = prefix + CLIENT
        check(client_id == client_id_shown, f"token section gives {client_id!r}, secret dialog gave {client_id_shown!r}")
        example = text_of(driver.find_element(By.CSS_SELECTOR, css_tid("token-example")))
        check("grant_type=client_credentials" in example and f"client_id={prefix}" in example, f"example request {example!r}")
        url = token_url_from(shown_url)
        r = requests.post(url, data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}, timeout=10)
        check(r.status_code == 200, f"POST {url} as {client_id}: {r.status_code} {r.text[:300]}")
        token = r.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = requests.get(f"{PROXY_URL}/v1/vaults/v-1/balances", headers=auth, timeout=10)
        check(r.status_code == 200, f"GET /v1/vaults/v-1/balances with the token: {r.status_code} {r.text[:300]}")
        r = requests.post(f"{PROXY_URL}/v1/transactions", headers=auth, json={}, timeout=10)
        check(r.status_code == 403, f"POST /v1/transactions with the token: {r.status_code}, expected 403")
        n.append(f"token endpoint {shown_url!r} -> {url}, client_id {client_id!r}, balances 200, transactions 403")

    with step(f"d. expired key {EXPIRED_KEY_NAME} greyed and flagged") as n:
        row = visible(driver, row_css("api_key", EXPIRED_KEY_NAME), f"the row of {EXPIRED_KEY_NAME}")
        check("is-expired" in (row.get_attribute("class") or "").split() and row.get_attribute("data-expired") == "true",
              f"row class {row.get_attribute('class')!r}, data-expired {row.get_attribute('data-expired')!r}")
        flag = visible(driver, css_tid("flag-expired"), f"the Expired flag of {EXPIRED_KEY_NAME}", root=row)
        check(flag.find_elements(By.CSS_SELECTOR, "svg"), "the Expired flag has no icon")
        label = " ".join(filter(None, [text_of(flag), flag.get_attribute("aria-label"), flag.get_attribute("title")]))
        check("Expired" in label, f"the flag's accessible text is {label!r}")
        color = row.find_element(By.CSS_SELECTOR, "td").value_of_css_property("color")
        n.append(f"class is-expired, flag {text_of(flag)!r}, cell colour {color}")

    with step("e. screenshot") as n:
        if SCREENSHOT_DIR:
            os.makedirs(SCREENSHOT_DIR, exist_ok=True)
            path = os.path.join(SCREENSHOT_DIR, "console.png")
            full_screenshot(driver, path)
            n.append(path)
        else:
            n.append("skipped: no SCREENSHOT_DIR")

    with step("f. USER_KEY sees only its own keys and adds one") as n:
        sign_out(driver)
        bob = sign_in(driver, USER_KEY, "USER")
        check(not bob["can"].get("change") and not bob["can"].get("read"), f"USER's session can {bob['can']}")
        user = bob.get("user")
        check(user, "USER_KEY's session has no user")
        rows = [r for r in driver.find_elements(By.CSS_SELECTOR, 'tr[data-testid="key-row"]') if r.is_displayed()]
        names = {r.get_attribute("data-name"): r.get_attribute("data-user") for r in rows}
        others = [k for k, u in names.items() if u != user]
        check(not others, f"{user} sees keys of others: {others}")
        want = sorted(k for k, u in all_keys.items() if u == user)
        check(sorted(names) == want, f"{user} sees {sorted(names)}, holds {want}")
        check(not shown(driver, 'tr[data-testid="client-row"]'), f"{user} sees OAuth clients")
        check(not shown(driver, css_tid("add-client")), f"{user} sees an Add API client button")
        check(not shown(driver, row_css("api_key", EXPIRED_KEY_NAME)) or all_keys.get(EXPIRED_KEY_NAME) == user,
              f"{user} sees {EXPIRED_KEY_NAME}")
        visible(driver, css_tid("add-key"), "the Add API key button")
        secret, _ = create(driver, bob, "api_key", BOB_KEY, {}, n, USER_KEY, approval_notes)
        row = visible(driver, row_css("api_key", BOB_KEY), f"the row of {BOB_KEY}")
        check(row.get_attribute("data-user") == user, f"{BOB_KEY} is linked to {row.get_attribute('data-user')!r}")
        for b in ("delete-button", "rotate-button", "disable-button"):
            check(shown(driver, css_tid(b), root=row), f"{user} has no {b} on their own key")
        # Own keys are listed, created, rotated, disabled, enabled and deleted, "and nothing
        # else" (SPEC section 9): no edit without api_access:change.
        check(not shown(driver, css_tid("edit-button"), root=row), f"{user} is offered an edit of their own key")
        check_browser_log(driver)
        sign_out(driver)
        n.append(f"{user} sees {len(names)} own keys, no clients, no Add API client; {BOB_KEY} created, "
                 f"secret of {len(secret)} characters")

    with step("g. approval") as n:
        if sess.get("approval_required"):
            check(len(approval_notes) >= 3, f"the approval flow did not run: {approval_notes}")
            n.extend(approval_notes)
        else:
            print("approval: skipped (approval not required by this config)", flush=True)
            n.append("skipped")

    with step(f"h. delete {CLIENT} through the trash icon") as n:
        sign_in(driver, ADMIN_KEY, "ADMIN")
        row = visible(driver, row_css("client", CLIENT), f"the row of {CLIENT}")
        trash = visible(driver, css_tid("delete-button"), root=row)
        check(trash.get_attribute("aria-label") == f"Delete {CLIENT}", f"trash aria-label {trash.get_attribute('aria-label')!r}")
        trash.click()
        dlg = visible(driver, css_tid("confirm-dialog"), "the delete confirmation")
        yes = visible(driver, css_tid("confirm-yes"), root=dlg)
        check(text_of(yes) == "Yes, delete", f"confirm button says {text_of(yes)!r}")
        yes.click()
        gone(driver, css_tid("confirm-dialog"), "the confirmation to close")
        gone(driver, row_css("client", CLIENT), f"the row of {CLIENT} to disappear")
        # Deleted: its tokens are rejected at once (in force within a second).
        last = {}

        def token_refused(_):
            last["status"] = requests.get(f"{PROXY_URL}/v1/vaults/v-1/balances", headers=auth, timeout=10).status_code
            return last["status"] == 401
        wait(driver, token_refused, "the deleted client's token to be refused with 401", timeout=5)
        check_browser_log(driver)
        n.append("confirmed with 'Yes, delete', row gone, its token now 401")


def main():
    profile = tempfile.mkdtemp(prefix="portcullis-console-")
    driver = None
    try:
        driver = start_browser(profile)
        story(driver)
        print(f"[{time.monotonic() - T0:7.2f}s] all steps passed", flush=True)
        return 0
    except (Failure, TimeoutException, WebDriverException, requests.RequestException, KeyError, ValueError) as e:
        print(f"FAIL in step {CURRENT[0]!r}: {e}", file=sys.stderr, flush=True)
        if driver and SCREENSHOT_DIR:
            with contextlib.suppress(Exception):
                os.makedirs(SCREENSHOT_DIR, exist_ok=True)
                driver.save_screenshot(os.path.join(SCREENSHOT_DIR, "failure.png"))
                print(f"screenshot of the failure: {os.path.join(SCREENSHOT_DIR, 'failure.png')}", file=sys.stderr)
        return 1
    finally:
        if driver:
            with contextlib.suppress(Exception):
                driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
