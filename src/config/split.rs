//! The fast first read of a credentials file: without places ([`Unplaced`]) and, when the
//! file is large, with its long lists (`clients:`, `api_keys:`) cut into pieces that are
//! read on every core at once. [`super::credentials_from_text`] keeps what this reads only
//! when the file is valid; whatever is refused here, fails or is found wrong is read again
//! the placed way, whole and in order, so no error is ever reported from this read.
//!
//! Why the pieces mean what the whole file means. A block sequence's entry starts at a line
//! holding exactly the sequence's indentation and `-` (then a space or the line's end); a
//! cut list's every other line must be blank, a comment, or indented deeper than that `-`
//! (else the list is left whole), as nested nodes, block scalar content and the
//! continuation lines of multi-line scalars are (YAML 1.2 §8.2.1): a line at the entries'
//! indentation ends a block scalar or a plain scalar rather than belonging to it. So a run
//! of whole entries, parsed alone as a document that is a bare sequence, reads as it does in
//! place, starting from the same state, as long as nothing in it refers outside it: anchors
//! and aliases, tags, tabs, carriage returns (a lone `\r` ends a line for YAML) and NULs
//! refuse the cut before anything is read. serde-saphyr is lenient with the indentation of
//! quoted and flow scalars' continuation lines, so such a scalar can hold a line that looks
//! like an entry or a key: left open at a piece's end it makes the piece fail (the end of a
//! document inside it), and taking in an entry-like line it leaves a piece with fewer
//! entries than entry starts (refused: each piece's count is checked). Left open above a
//! cut list's key, in the rest of the document, it would take in the list's lines in the
//! whole file: the rest therefore holds, where each list was, a marker list of one entry,
//! and the rest is used only if the marker is that list's one entry (its line was read as
//! the top-level key it looks like). The rest's top level must be plain `key:` lines at
//! column 0 (and the column-0 entries of a list under a bare `key:`), each key once:
//! anything else at column 0 (a quoted, complex or flow key, a directive, `---`, `...`, a
//! byte-order mark) or a key given twice refuses the cut.
use std::path::Path;
use std::sync::mpsc;
use std::thread::{self, ScopedJoinHandle};

use serde::de::DeserializeOwned;

use super::raw::{ApiKeyRaw, ClientRaw, CredentialsRaw, Unplaced};

/// Below this a file is read whole, on one thread.
const SPLIT_MIN_BYTES: usize = 1 << 20;
/// A list shorter than this is left in the rest of the document; a longer one is cut into
/// pieces of at least this much.
const PIECE_MIN_BYTES: usize = 256 << 10;
/// At most this many pieces of one list (and threads reading them).
const MAX_THREADS: usize = 8;
/// The name, hash and expiry of the marker entry standing for a cut list in the rest.
const MARK: &str = "cut";
/// The stack of a thread reading a piece: that of a process's main thread, where a whole
/// file is read.
const STACK_BYTES: usize = 8 << 20;
/// The name of a thread reading a piece (as `top -H` shows it).
const READER_NAME: &str = "cred-read";

/// The credentials file `text` read without places, cut over the cores when it is large,
/// and handed to `then`; `None` where it does not parse (the caller reads it again placed,
/// for the errors). The threads that read the pieces wait until `then` has returned (and
/// dropped what it was given), then hand back the heap the pieces were read into (issue 15:
/// RSS at 100,000 keys; see [`super::return_this_threads_heap`]).
pub fn credentials_unplaced<R>(text: &str, then: impl FnOnce(CredentialsRaw) -> R) -> Option<R> {
    let threads = thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    let threads = if text.len() >= SPLIT_MIN_BYTES { threads } else { 1 };
    read_unplaced_then(text, threads, PIECE_MIN_BYTES, then)
}

/// [`credentials_unplaced`] with the cut's figures given: up to `threads` pieces of a list
/// of at least `piece_min` bytes each (no cut for one thread).
fn read_unplaced_then<R>(
    text: &str,
    threads: usize,
    piece_min: usize,
    then: impl FnOnce(CredentialsRaw) -> R,
) -> Option<R> {
    match (threads >= 2).then(|| plan(text, threads, piece_min)).flatten() {
        Some(plan) => read_pieces(plan, then),
        // `then` runs placed as ever: only the reading skips places.
        None => read_without_places(text).map(then),
    }
}

/// [`read_unplaced_then`] that keeps what it read.
#[cfg(test)]
fn read_unplaced(text: &str, threads: usize, piece_min: usize) -> Option<CredentialsRaw> {
    read_unplaced_then(text, threads, piece_min, |raw| raw)
}

/// One document, parsed as every file is (an empty one refused).
fn read<T: DeserializeOwned>(text: &str) -> Option<T> {
    super::parse(Path::new(""), text).ok()
}

/// [`read`] without places ([`Unplaced`], on this thread while it reads).
fn read_without_places<T: DeserializeOwned>(text: &str) -> Option<T> {
    let _unplaced = Unplaced::enter();
    read(text)
}

/// How a file is cut: the rest of the document, and the pieces of each cut list in order
/// (none: the list, if any, is in the rest).
#[derive(Debug)]
struct Plan<'a> {
    rest: String,
    clients: Vec<Piece<'a>>,
    api_keys: Vec<Piece<'a>>,
}

/// A run of whole entries of one list, and how many entries start in it.
#[derive(Debug)]
struct Piece<'a> {
    text: &'a str,
    entries: usize,
}

/// A `clients:` or `api_keys:` list under a bare key, as the scan finds it.
struct List {
    key: &'static str,
    /// Where its key's line starts.
    key_at: usize,
    /// The indentation of its entries, once the first is seen.
    indent: Option<usize>,
    /// Where each entry's line starts.
    starts: Vec<usize>,
    /// Where the list's lines end: the next top-level line, or the end of the text.
    end: usize,
}

fn read_pieces<R>(plan: Plan<'_>, then: impl FnOnce(CredentialsRaw) -> R) -> Option<R> {
    let Plan { rest, clients, api_keys } = plan;
    thread::scope(|s| {
        let clients = spawn_pieces::<ClientRaw>(s, clients);
        let api_keys = spawn_pieces::<ApiKeyRaw>(s, api_keys);
        let raw = read_without_places::<CredentialsRaw>(&rest);
        drop(rest);
        let (client_list, api_key_list) = (joined(&clients), joined(&api_keys));
        let assembled = (|| {
            let mut raw = raw?;
            if let Some(list) = client_list {
                if !matches!(raw.clients.as_slice(), [c] if c.id == MARK) {
                    return None;
                }
                raw.clients = list?;
            }
            if let Some(list) = api_key_list {
                if !matches!(raw.api_keys.as_slice(), [k] if k.name == MARK) {
                    return None;
                }
                raw.api_keys = list?;
            }
            Some(raw)
        })();
        // Whatever the pieces' threads allocated is freed by now (used by `then`, or
        // dropped here): let them go, each to hand its heap back, then see how they ended.
        let out = assembled.map(then);
        clients.into_iter().flatten().for_each(Reader::finish);
        api_keys.into_iter().flatten().for_each(Reader::finish);
        out
    })
}

/// A piece read on a thread of its own, which stays until it is let go. glibc trims a
/// thread's heap only on that thread (when it frees a large block there); the entries are
/// freed elsewhere, after they have been used, so the thread waits for that first.
struct Reader<'scope, T> {
    entries: mpsc::Receiver<Option<Vec<T>>>,
    go: mpsc::Sender<()>,
    thread: ScopedJoinHandle<'scope, ()>,
}

impl<T> Reader<'_, T> {
    /// Lets the thread go and waits for it; a panic on it goes on here.
    fn finish(self) {
        drop(self.go);
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }
}

/// Starts reading each piece on a thread of its own (`None` where one could not start).
fn spawn_pieces<'scope, T: DeserializeOwned + Send + 'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    pieces: Vec<Piece<'scope>>,
) -> Vec<Option<Reader<'scope, T>>> {
    let spawn = |p| {
        let (sent, entries) = mpsc::sync_channel(1);
        let (go, let_go) = mpsc::channel::<()>();
        let thread = thread::Builder::new().name(READER_NAME.into()).stack_size(STACK_BYTES).spawn_scoped(s, move || {
            let _ = sent.send(read_piece::<T>(p));
            drop(sent);
            // Until the reader is let go (its sender dropped): the entries are freed by then.
            let _ = let_go.recv();
            super::return_this_threads_heap();
        });
        // A thread that could not start reads nothing: its piece fails.
        thread.ok().map(|thread| Reader { entries, go, thread })
    };
    pieces.into_iter().map(spawn).collect()
}

/// One piece's entries, or `None` when it fails or holds other than its count of entries.
fn read_piece<T: DeserializeOwned>(piece: Piece<'_>) -> Option<Vec<T>> {
    let list: Vec<T> = read_without_places(piece.text)?;
    (list.len() == piece.entries).then_some(list)
}

/// The pieces' entries end to end: `None` for a list not cut, `Some(None)` if a piece failed
/// (or its thread could not start, or panicked: [`Reader::finish`] says so).
fn joined<T>(pieces: &[Option<Reader<'_, T>>]) -> Option<Option<Vec<T>>> {
    if pieces.is_empty() {
        return None;
    }
    let mut all: Option<Vec<T>> = Some(Vec::new());
    for piece in pieces {
        let piece = piece.as_ref().and_then(|r| r.entries.recv().ok().flatten());
        all = match (all, piece) {
            (Some(a), Some(p)) if a.is_empty() => Some(p),
            (Some(mut a), Some(mut p)) => {
                a.append(&mut p);
                Some(a)
            }
            _ => None,
        };
    }
    Some(all)
}

/// How to cut `text` into up to `threads` pieces a list, each of at least `piece_min`
/// bytes; `None` when it must be read whole (see the module's comment), or nothing is
/// worth cutting.
fn plan(text: &str, threads: usize, piece_min: usize) -> Option<Plan<'_>> {
    // The characters are checked on a thread of their own while the lines are scanned.
    thread::scope(|s| {
        let plain = s.spawn(|| plain(text));
        let plan = scan(text, threads, piece_min);
        let plain = plain.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        plan.filter(|_| plain)
    })
}

/// [`plan`] but for the characters' check.
fn scan(text: &str, threads: usize, piece_min: usize) -> Option<Plan<'_>> {
    let mut keys: Vec<&str> = Vec::new();
    let mut lists: Vec<List> = Vec::new();
    let mut open: Option<List> = None;
    // Whether a column-0 entry may stand here: under a bare `key:` or after another.
    let mut compact = false;
    let mut at = 0;
    for line in text.split('\n') {
        let start = at;
        at += line.len() + 1;
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        let entry = body == "-" || body.starts_with("- ");
        if indent == 0 && !entry {
            if let Some(mut list) = open.take() {
                list.end = start;
                lists.push(list);
            }
            let (key, bare) = top_key(line)?;
            if keys.contains(&key) {
                return None;
            }
            keys.push(key);
            compact = bare;
            if let (true, Some(key)) = (bare, ["clients", "api_keys"].into_iter().find(|k| *k == key)) {
                open = Some(List { key, key_at: start, indent: None, starts: Vec::new(), end: text.len() });
            }
            continue;
        }
        if indent == 0 && !compact {
            return None;
        }
        if let Some(list) = &mut open {
            match list.indent {
                None if entry => {
                    list.indent = Some(indent);
                    list.starts.push(start);
                }
                Some(n) if indent == n && entry => list.starts.push(start),
                Some(n) if indent > n => {}
                // Not a block sequence of entries, or a line at or left of the entries'
                // `-` that starts none: the list is left whole, in the rest.
                _ => open = None,
            }
        }
    }
    lists.extend(open);
    lists.retain(|l| !l.starts.is_empty() && l.end - l.starts[0] >= piece_min);
    if lists.is_empty() {
        return None;
    }
    let removed: usize = lists.iter().map(|l| l.end - l.key_at).sum();
    let mut plan = Plan {
        rest: String::with_capacity(text.len() - removed + lists.len() * 64),
        clients: Vec::new(),
        api_keys: Vec::new(),
    };
    let mut copied = 0;
    for list in &lists {
        let (name, hash) = if list.key == "clients" { ("id", "secret_hash") } else { ("name", "key_hash") };
        plan.rest.push_str(&text[copied..list.key_at]);
        plan.rest.push_str(&format!("{}: [{{{name}: {MARK}, {hash}: {MARK}, expires: {MARK}}}]\n", list.key));
        copied = list.end;
        let pieces = cut(text, list, threads, piece_min);
        if list.key == "clients" {
            plan.clients = pieces;
        } else {
            plan.api_keys = pieces;
        }
    }
    plan.rest.push_str(&text[copied..]);
    Some(plan)
}

/// `list` cut at entry starts into up to `threads` pieces of about the same size, each of
/// at least `piece_min` bytes.
fn cut<'a>(text: &'a str, list: &List, threads: usize, piece_min: usize) -> Vec<Piece<'a>> {
    let first = list.starts[0];
    let len = list.end - first;
    let n = (len / piece_min.max(1)).clamp(1, threads.max(1));
    let mut pieces = Vec::with_capacity(n);
    let mut from = 0;
    for j in 1..=n {
        let to = if j == n {
            list.starts.len()
        } else {
            let target = first + len / n * j;
            list.starts.partition_point(|&s| s < target)
        };
        if to > from {
            let end = list.starts.get(to).copied().unwrap_or(list.end);
            pieces.push(Piece { text: &text[list.starts[from]..end], entries: to - from });
            from = to;
        }
    }
    pieces
}

/// A top-level `key:` line's key, and whether it is bare (nothing after the colon but a
/// comment); `None` for any other line.
fn top_key(line: &str) -> Option<(&str, bool)> {
    let b = line.as_bytes();
    let n = b.iter().take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-').count();
    if n == 0 || b[0] == b'-' || b.get(n) != Some(&b':') {
        return None;
    }
    let after = &line[n + 1..];
    if !(after.is_empty() || after.starts_with(' ')) {
        return None;
    }
    let value = after.trim_start_matches(' ');
    Some((&line[..n], value.is_empty() || value.starts_with('#')))
}

/// Whether `text` holds nothing a cut could misjudge: no tab, carriage return or NUL, and
/// no `&`, `*` or `!` where a node may start (an anchor, an alias, a tag). A node starts at
/// a line's start, after a space, after a flow indicator (`[`, `{`, `,`), or right after
/// the `:` of a quoted or flow key (`{"a":*b}`); elsewhere (`transactions:*`, `R&D`,
/// `"*:read"`) those characters are a scalar's own.
fn plain(text: &str) -> bool {
    if text.contains('\t') || text.contains('\r') || text.contains('\0') {
        return false;
    }
    let b = text.as_bytes();
    let node_start = |i: usize| match i.checked_sub(1).map(|j| b[j]) {
        None | Some(b' ' | b'\n' | b'[' | b'{' | b',') => true,
        Some(b':') => i >= 2 && matches!(b[i - 2], b'"' | b'\'' | b']' | b'}'),
        Some(_) => false,
    };
    ['&', '*', '!'].into_iter().all(|c| !text.match_indices(c).any(|(i, _)| node_start(i)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{credentials_from_text, credentials_placed, Environment};

    /// The file read placed and whole, the way errors are reported.
    fn whole(text: &str) -> String {
        let raw = crate::config::parse::<CredentialsRaw>(Path::new("c.yaml"), text);
        format!("{raw:?}")
    }

    /// The file cut into as many pieces as it has entries (up to 64), read unplaced.
    fn cut_small(text: &str) -> Option<CredentialsRaw> {
        read_unplaced(text, 64, 1)
    }

    /// What `credentials_from_text` makes of the file is what the placed read alone makes.
    fn assert_loads_as_placed(text: &str) {
        let path = Path::new("c.yaml");
        let fast = credentials_from_text(path, text, Environment::Sandbox, 0).map(|(s, w)| (s.all.len(), w));
        let placed = credentials_placed(path, text, Environment::Sandbox, 0).map(|(s, w)| (s.all.len(), w));
        assert_eq!(fast, placed, "{text}");
    }

    fn assert_cut_reads_as_whole(text: &str) {
        let plan = plan(text, 64, 1).unwrap_or_else(|| panic!("no cut of:\n{text}"));
        assert!(plan.clients.len() + plan.api_keys.len() >= 2, "{plan:?}");
        let raw = cut_small(text).unwrap_or_else(|| panic!("the cut failed for:\n{text}\n{plan:?}"));
        assert_eq!(format!("Ok({raw:?})"), whole(text), "{text}");
        assert_loads_as_placed(text);
    }

    fn key(name: &str, n: u32) -> String {
        format!(
            "  - name: {name}\n    key_hash: \"sha256:{}\"\n    roles: [reporting]\n    expires: 2099-01-01\n",
            format!("{n:02x}").repeat(32)
        )
    }

    /// A valid file of `n` keys, the `i`th key's lines as `edit` makes them.
    fn keys(n: u32, edit: impl Fn(u32, String) -> String) -> String {
        let mut text = String::from("roles:\n  reporting: [\"balances:read\"]\napi_keys:\n");
        for i in 0..n {
            text.push_str(&edit(i, key(&format!("k{i}"), i)));
        }
        text
    }

    #[test]
    fn cuts_read_as_the_whole_file() {
        let h = "ab".repeat(32);
        let files = [
            // Comments and blank lines between entries, another key after the list.
            format!(
                "roles:\n  reporting: [\"balances:read\"]\napi_keys:\n# first\n{}\n\n  # second\n{}{}\nusers: []\n",
                key("a", 1),
                key("b", 2),
                key("c", 3)
            ),
            // Entries at column 0, one with its mapping on the next lines.
            format!(
                "roles:\n  reporting: []\napi_keys:\n- name: a\n  key_hash: \"sha256:{h}\"\n  expires: 2099-01-01\n# c\n\
                 - name: b\n  key_hash: \"sha256:{}\"\n  expires: 2099-01-01\n  roles:\n  - reporting\n-\n  name: c\n  \
                 key_hash: \"sha256:{}\"\n  expires: 2099-01-01\n",
                "cd".repeat(32),
                "ef".repeat(32)
            ),
            // Block scalars in notes, holding lines that look like entries and keys.
            format!(
                "roles:\n  reporting: []\napi_keys:\n{}    notes: |\n      - name: fake\n      api_keys:\n\n      tail\n\
                 {}    notes: >-\n      folded\n      - text\n{}    notes: |2\n       x\n",
                key("a", 1),
                key("b", 2),
                key("c", 3)
            ),
            // Quoted strings holding `- ` and `: `, a flow list over several lines.
            format!(
                "roles:\n  reporting: []\napi_keys:\n{}    description: \"a - b: c\"\n    notes: 'x\n      - y'\n{}    \
                 allowed_ips: [\n      \"10.0.0.0/8\",\n      \"192.0.2.1\"\n      ]\n{}",
                key("a", 1),
                key("b", 2),
                key("c", 3)
            ),
            // Clients and api_keys both cut, the keys first, roles last; `*`, `&` and `!`
            // inside scalars.
            format!(
                "api_keys:\n{}{}clients:\n  - id: c1\n    secret_hash: \"sha256:{h}\"\n    expires: 2099-01-01\n    \
                 permissions: [\"transactions:*\", \"*:read\", balances:*]\n    description: R&D tool!\n  - id: c2\n    \
                 secret_hash: \"sha256:{h}\"\n    expires: 2099-01-01\nroles:\n  reporting: [balances:read]\n",
                key("a", 1),
                key("b", 2)
            ),
            // A key that carries a comment, deeper entries, nested sequences.
            format!(
                "api_keys:   # the keys\n\n    - name: a\n      key_hash: \"sha256:{h}\"\n      \
                 expires: 2099-01-01\n      permissions:\n      - balances:read\n      - \"*:read\"\n    \
                 - name: b\n      key_hash: \"sha256:{}\"\n      expires: 2099-01-01\n      \
                 previous_key_hashes:\n        - hash: \"sha256:{}\"\n          until: 2099-01-01\n",
                "01".repeat(32),
                "02".repeat(32)
            ),
        ];
        for f in &files {
            assert_cut_reads_as_whole(f);
        }
    }

    /// The threads that read the pieces are still there while the entries are used (so
    /// that they free their heap after).
    #[test]
    #[cfg(target_os = "linux")]
    fn the_pieces_threads_wait_for_the_entries_to_be_used() {
        fn readers() -> usize {
            let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim_end() == READER_NAME)
                .count()
        }
        let text = format!("api_keys:\n{}{}{}{}", key("a", 1), key("b", 2), key("c", 3), key("d", 4));
        let seen = read_unplaced_then(&text, 4, 1, |raw| {
            // Long enough for a thread that did not wait to have ended.
            std::thread::sleep(std::time::Duration::from_millis(100));
            (raw.api_keys.len(), readers())
        });
        let (entries, readers_then) = seen.expect("the file reads");
        assert_eq!(entries, 4);
        // Other tests may be reading too: at least this read's four.
        assert!(readers_then >= 4, "{readers_then} piece threads while the entries were used");
    }

    #[test]
    fn a_bare_sequence_piece_reads_at_any_indentation() {
        for text in ["- name: a\n  key_hash: x\n  expires: e\n", "    - name: a\n      key_hash: x\n      expires: e\n"]
        {
            let list: Vec<ApiKeyRaw> = read(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(list.len(), 1);
        }
    }

    #[test]
    fn refuses_to_cut_what_could_read_otherwise() {
        let entries = format!("{}{}", key("a", 1), key("b", 2));
        let files = [
            format!("roles:\n  reporting: &r [\"balances:read\"]\napi_keys:\n{entries}"),
            format!("api_keys:\n{entries}  - name: c\n    roles: *r\n"),
            format!("api_keys:\n{entries}  - name: !!str c\n"),
            format!("api_keys:\n{entries}  - {{name: c, roles: [*r]}}\n"),
            format!("api_keys:\n{entries}  - {{\"name\":*r}}\n"),
            format!("api_keys:\n{entries}\t- name: c\n"),
            format!("api_keys:\n{entries}    notes: \"a\tb\"\n"),
            format!("api_keys:\r\n{entries}"),
            format!("api_keys:\n{entries}api_keys:\n{entries}"),
            format!("roles: {{}}\napi_keys:\n{entries}roles: {{}}\n"),
            format!("---\napi_keys:\n{entries}"),
            format!("%YAML 1.2\n---\napi_keys:\n{entries}"),
            format!("api_keys:\n{entries}...\n"),
            format!("\u{feff}api_keys:\n{entries}"),
            format!("\"api_keys\":\n{entries}"),
            format!("? api_keys\n:\n{entries}"),
            format!("{{api_keys: [\n{entries}]}}\n"),
            format!("- api_keys:\n{entries}"),
            format!("roles: {{}}\nx\napi_keys:\n{entries}"),
        ];
        for f in &files {
            assert!(plan(f, 64, 1).is_none(), "cut:\n{f}");
            // Read whole (unplaced), it means what the placed read means.
            match read_unplaced(f, 64, 1) {
                Some(fast) => assert_eq!(format!("Ok({fast:?})"), whole(f), "{f}"),
                None => assert!(whole(f).starts_with("Err"), "{f}"),
            }
            assert_loads_as_placed(f);
        }
        // Lists that are not cut (the rest of the file is): flow, empty, under-indented.
        let files = [
            format!("api_keys: [\n{entries}]\n"),
            format!("api_keys:\n  [\n{entries}]\n"),
            "api_keys:\nusers: []\n".to_string(),
            format!("api_keys:\n{entries} oops\n"),
            format!("api_keys:\n{entries}  oops\n"),
        ];
        for f in &files {
            assert!(plan(f, 64, 1).is_none(), "cut:\n{f}");
            assert_loads_as_placed(f);
        }
    }

    #[test]
    fn a_quoted_scalar_taking_in_entry_or_key_lines_gives_up_the_cut() {
        let path = Path::new("c.yaml");
        // An entry-like line inside a quoted scalar (serde-saphyr reads it, though YAML
        // wants continuation lines deeper than the entry's `-`).
        let text = keys(4, |i, k| if i == 1 { k + "    notes: \"x\n  - y\"\n" } else { k });
        assert!(plan(&text, 64, 1).is_some());
        assert!(cut_small(&text).is_none());
        assert!(read_unplaced(&text, 2, 1).is_none());
        assert!(credentials_from_text(path, &text, Environment::Sandbox, 0).is_ok());
        assert_loads_as_placed(&text);
        // A quoted scalar left open above the list takes in all its lines and the next key:
        // the whole file has one client (with long notes) and no key.
        let h = "ab".repeat(32);
        let mut text = format!("clients:\n  - id: c\n    secret_hash: sha256:{h}\n    expires: 2099-01-01\n");
        text.push_str("    notes: \"x\napi_keys:\n");
        for i in 0..4 {
            let hash = format!("{i:02x}").repeat(32);
            text.push_str(&format!("  - name: k{i}\n    key_hash: sha256:{hash}\n    expires: 2099-01-01\n"));
        }
        text.push_str("users: []\"\n");
        assert!(whole(&text).contains("api_keys: []"), "{}", whole(&text));
        let plan = plan(&text, 64, 200).expect("the keys are cut, the client is in the rest");
        assert!(plan.clients.is_empty() && plan.api_keys.len() >= 2, "{plan:?}");
        assert!(read_unplaced(&text, 64, 200).is_none());
        let (store, _) = credentials_from_text(path, &text, Environment::Sandbox, 0).unwrap();
        assert_eq!(store.all.len(), 1);
        assert_loads_as_placed(&text);
    }

    #[test]
    fn errors_deep_in_a_cut_list_are_placed_as_before() {
        let path = Path::new("c.yaml");
        assert!(credentials_from_text(path, &keys(40, |_, k| k), Environment::Sandbox, 0).is_ok());
        let edit = |at: u32, from: &'static str, to: &'static str| {
            keys(40, move |i, k| if i == at { k.replace(from, to) } else { k })
        };
        let broken = [
            // Validation's errors: a bad expiry, a name used twice, an unknown role.
            edit(33, "2099-01-01", "someday"),
            edit(37, "name: k37", "name: k2"),
            edit(30, "[reporting]", "[nope]"),
            // The parser's: an unknown field, a wrong type, broken syntax (the last one
            // leaves the list whole).
            edit(25, "    roles", "    colour: red\n    roles"),
            edit(12, "name: k12", "name: [k12]"),
            edit(38, "name: k38", "name: \"k38"),
            edit(20, "    roles", "  oops\n    roles"),
        ];
        for (i, b) in broken.iter().enumerate() {
            assert_eq!(plan(b, 64, 1).is_some(), i < broken.len() - 1);
            let got = credentials_from_text(path, b, Environment::Sandbox, 0).unwrap_err();
            let want = credentials_placed(path, b, Environment::Sandbox, 0).unwrap_err();
            assert_eq!(got, want);
            assert!(got.0.iter().all(|e| e.line.is_some_and(|l| l > 40)), "{got}");
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        /// One entry of a list, as lines at `indent`, in a few of the forms a file takes, now and
        /// then with an error.
        fn entry(kind: &'static str, indent: usize) -> impl Strategy<Value = String> {
            (
                "[a-z][a-z0-9-]{0,8}",
                0u8..4,
                proptest::collection::vec(prop_oneof![Just("reporting"), Just("wallets")], 0..3),
                0u8..6,
                any::<bool>(),
                0u8..64,
                0u8..24,
            )
                .prop_map(move |(name, form, roles, extra, comment, hash, broken)| {
                    let p = " ".repeat(indent);
                    let (name_key, hash_key) =
                        if kind == "clients" { ("id", "secret_hash") } else { ("name", "key_hash") };
                    let hash = format!("\"sha256:{}\"", format!("{hash:02x}").repeat(32));
                    // The entry's keys stand at `q`.
                    let (mut e, q) = match form {
                        0 => (format!("{p}- {name_key}: {name}\n"), format!("{p}  ")),
                        1 => (format!("{p}-   {name_key}: \"{name}\"\n"), format!("{p}    ")),
                        2 => (format!("{p}-\n{p}  {name_key}: '{name}'\n"), format!("{p}  ")),
                        _ => {
                            let e = format!("{p}- {{{name_key}: {name}, {hash_key}: {hash},\n");
                            return e + &format!("{p}    expires: 2099-01-01}}\n");
                        }
                    };
                    e.push_str(&format!("{q}{hash_key}: {hash}\n"));
                    if comment {
                        e.push_str(&format!("# a comment\n\n{q}# another - here\n"));
                    }
                    e.push_str(&format!("{q}roles: [{}]\n", roles.join(", ")));
                    match extra {
                        0 => {}
                        1 => e.push_str(&format!("{q}notes: |\n{q}  - a: b\n\n{q}  c\n")),
                        2 => e.push_str(&format!("{q}notes: \"a\n{q}  - b\"\n")),
                        3 => e.push_str(&format!("{q}notes: >\n{q}  x\n{q}    y\n")),
                        4 => e.push_str(&format!("{q}description: \"x - y: z\"\n")),
                        _ => e.push_str(&format!("{q}permissions:\n{q}- \"balances:read\"\n{q}- '*:read'\n")),
                    }
                    // Now and then an error: the parser's, or validation's.
                    match broken {
                        0 => e.push_str(&format!("{q}colour: red\n{q}expires: 2099-01-01\n")),
                        1 => e.push_str(&format!("{q}expires: someday\n")),
                        _ => e.push_str(&format!("{q}expires: 2099-01-01\n")),
                    }
                    e
                })
        }

        fn list(kind: &'static str) -> impl Strategy<Value = String> {
            prop_oneof![Just(0usize), Just(2), Just(4)].prop_flat_map(move |indent| {
                proptest::collection::vec(entry(kind, indent), 0..12)
                    .prop_map(move |entries| match entries.is_empty() {
                        true => format!("{kind}: []\n"),
                        false => format!("{kind}:\n{}", entries.concat()),
                    })
            })
        }

        fn file() -> impl Strategy<Value = String> {
            (list("clients"), list("api_keys"), any::<bool>(), any::<bool>()).prop_map(|(c, k, keys_first, users)| {
                let roles = "roles:\n  reporting: [\"balances:read\"]\n";
                let users = if users { "users:\n- name: u\n  roles: [reporting]\n" } else { "" };
                if keys_first {
                    format!("{k}{roles}{c}{users}")
                } else {
                    format!("{users}{roles}{c}\n# between\n{k}")
                }
            })
        }

        proptest! {
            #[test]
            fn a_cut_file_reads_as_the_whole(text in file(), threads in 2usize..6, piece_min in 1usize..400) {
                let placed = whole(&text);
                match read_unplaced(&text, threads, piece_min) {
                    Some(cut) => prop_assert_eq!(format!("Ok({cut:?})"), placed),
                    None => prop_assert!(placed.starts_with("Err"), "{}\n{}", text, placed),
                }
                let path = Path::new("c.yaml");
                let fast = credentials_from_text(path, &text, Environment::Sandbox, 0).map(|(s, w)| (s.all.len(), w));
                let placed = credentials_placed(path, &text, Environment::Sandbox, 0).map(|(s, w)| (s.all.len(), w));
                prop_assert_eq!(fast, placed);
            }
        }
    }
}
