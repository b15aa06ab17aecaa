//! Edits of the credentials file as text, so that everything not edited stays byte for
//! byte. Each function returns `None` when the layout is not one it understands (the
//! caller then falls back to rewriting the parsed document).
//!
//! The model: a top-level section (`api_keys:` at column 0) holds a block sequence; an
//! item starts at a `-` line at the sequence's indent and runs to its last non-blank,
//! non-comment line before the next item. Comment lines directly above an item (no blank
//! line between) belong to it.

fn indent(l: &str) -> usize {
    l.len() - l.trim_start_matches(' ').len()
}
fn body(l: &str) -> &str {
    l.trim_end_matches('\r')
}
fn blank(l: &str) -> bool {
    body(l).trim().is_empty()
}
fn comment(l: &str) -> bool {
    l.trim_start().starts_with('#')
}
fn content(l: &str) -> bool {
    !blank(l) && !comment(l)
}
fn dash(l: &str) -> bool {
    let t = body(l).trim_start_matches(' ');
    t == "-" || t.starts_with("- ")
}

/// The file as lines (without `\n`), and how lines end.
struct Doc {
    lines: Vec<String>,
    crlf: bool,
}

impl Doc {
    fn new(text: &str) -> Doc {
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        if text.ends_with('\n') || text.is_empty() {
            lines.pop();
        }
        Doc {
            lines,
            crlf: text.contains("\r\n"),
        }
    }
    fn line(&self, s: String) -> String {
        if self.crlf {
            s + "\r"
        } else {
            s
        }
    }
    fn render(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

/// A top-level key's extent.
struct Section {
    key_line: usize,
    /// The value after `key:` on its line, comment removed (empty for a block).
    inline: String,
    /// One past the section's last content line.
    content_end: usize,
}

fn split_comment(s: &str) -> (&str, &str) {
    let (mut single, mut double, mut prev_space) = (false, false, true);
    for (i, c) in s.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => return (s[..i].trim_end(), &s[i..]),
            _ => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    (s.trim_end(), "")
}

fn section(doc: &Doc, key: &str) -> Option<Section> {
    let lines = &doc.lines;
    let key_line = lines.iter().position(|l| {
        l.strip_prefix(key).is_some_and(|r| {
            r.starts_with(':') && (r.len() == 1 || r[1..].starts_with([' ', '\r']))
        })
    })?;
    let rest = body(&lines[key_line])[key.len() + 1..].trim();
    let inline = split_comment(rest).0.to_string();
    let mut end = lines.len();
    for (j, l) in lines.iter().enumerate().skip(key_line + 1) {
        if content(l) && indent(l) == 0 && !dash(l) {
            end = j;
            break;
        }
    }
    let content_end = (key_line + 1..end)
        .rev()
        .find(|j| content(&lines[*j]))
        .map_or(key_line + 1, |j| j + 1);
    Some(Section {
        key_line,
        inline,
        content_end,
    })
}

struct Item {
    /// First comment line directly above the dash line (or the dash line).
    lead: usize,
    start: usize,
    /// One past the last content line.
    end: usize,
    seq_indent: usize,
    key_indent: usize,
}

fn items(doc: &Doc, sec: &Section) -> Option<Vec<Item>> {
    let lines = &doc.lines;
    if !sec.inline.is_empty() {
        return None;
    }
    let first = (sec.key_line + 1..sec.content_end).find(|j| content(&lines[*j]));
    let Some(first) = first else {
        return Some(Vec::new());
    };
    if !dash(&lines[first]) {
        return None;
    }
    let seq = indent(&lines[first]);
    let starts: Vec<usize> = (first..sec.content_end)
        .filter(|j| dash(&lines[*j]) && indent(&lines[*j]) == seq)
        .collect();
    // Every content line is an item start or deeper than the sequence.
    if (first..sec.content_end)
        .any(|j| content(&lines[j]) && indent(&lines[j]) <= seq && !starts.contains(&j))
    {
        return None;
    }
    let mut out = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let next = starts.get(n + 1).copied().unwrap_or(sec.content_end);
        let end = (start..next)
            .rev()
            .find(|j| content(&lines[*j]))
            .map_or(start + 1, |j| j + 1);
        let prev_end = out.last().map_or(sec.key_line + 1, |i: &Item| i.end);
        let mut lead = start;
        while lead > prev_end && comment(&lines[lead - 1]) {
            lead -= 1;
        }
        let after = &body(&lines[start])[seq + 1..];
        let key_indent = if after.trim().is_empty() {
            (start + 1..end)
                .find(|j| content(&lines[*j]))
                .map(|j| indent(&lines[j]))?
        } else {
            seq + 1 + indent(after)
        };
        out.push(Item {
            lead,
            start,
            end,
            seq_indent: seq,
            key_indent,
        });
    }
    Some(out)
}

/// The line of `key:` in `item`, and one past its value's last content line.
fn find_key(doc: &Doc, item: &Item, key: &str) -> Option<(usize, usize)> {
    let lines = &doc.lines;
    let at = (item.start..item.end).find(|j| {
        let l = body(&lines[*j]);
        let starts_ok = *j == item.start || (indent(l) == item.key_indent);
        starts_ok
            && l.len() > item.key_indent
            && l.is_char_boundary(item.key_indent)
            && l[item.key_indent..].strip_prefix(key).is_some_and(|r| {
                r.starts_with(':') && (r.len() == 1 || r[1..].starts_with(' '))
            })
    })?;
    let mut end = at + 1;
    for (j, l) in lines.iter().enumerate().take(item.end).skip(at + 1) {
        if !content(l) {
            continue;
        }
        if indent(l) > item.key_indent || (indent(l) == item.key_indent && dash(l)) {
            end = j + 1;
        } else {
            break;
        }
    }
    Some((at, end))
}

/// For tests: a flow-style section is not edited in place.
#[cfg(test)]
pub fn item_count_is_none_for_flow(text: &str) -> bool {
    let doc = Doc::new(text);
    section(&doc, "api_keys").is_some_and(|s| items(&doc, &s).is_none())
}

fn item_of(doc: &Doc, section_key: &str, idx: usize) -> Option<Item> {
    let sec = section(doc, section_key)?;
    items(doc, &sec)?.into_iter().nth(idx)
}

/// Sets `key` of item `idx` in `section_key` to `value` (one line), keeping a comment
/// at the end of the old line; adds the key at the item's end if absent.
pub fn set_key(
    text: &str,
    section_key: &str,
    idx: usize,
    key: &str,
    value: &[String],
) -> Option<String> {
    let mut doc = Doc::new(text);
    let item = item_of(&doc, section_key, idx)?;
    let v = value.first()?;
    let sep = if v.is_empty() { ":" } else { ": " };
    match find_key(&doc, &item, key) {
        Some((at, end)) => {
            let old = body(&doc.lines[at]).to_string();
            let after = &old[item.key_indent + key.len() + 1..];
            let (_, cmt) = split_comment(after);
            let cmt = if end == at + 1 && !cmt.is_empty() {
                format!(" {cmt}")
            } else {
                String::new()
            };
            let new = format!("{}{key}{sep}{v}{cmt}", &old[..item.key_indent]);
            doc.lines.splice(at..end, [doc.line(new)]);
        }
        None => {
            let new = doc.line(format!("{}{key}{sep}{v}", " ".repeat(item.key_indent)));
            doc.lines.insert(item.end, new);
        }
    }
    Some(doc.render())
}

/// Puts `lines` (indented relative to the key) under `key:` of item `idx`, replacing
/// what was there. The key must exist.
pub fn set_block(
    text: &str,
    section_key: &str,
    idx: usize,
    key: &str,
    lines: &[String],
) -> Option<String> {
    let mut doc = Doc::new(text);
    let item = item_of(&doc, section_key, idx)?;
    let (at, end) = find_key(&doc, &item, key)?;
    let pad = " ".repeat(item.key_indent);
    let new: Vec<String> = lines
        .iter()
        .map(|l| doc.line(format!("{pad}{l}")))
        .collect();
    doc.lines.splice(at + 1..end, new);
    Some(doc.render())
}

/// Removes `key` (and its value) from item `idx`; unchanged if absent. `None` when the
/// key is on the item's `-` line.
pub fn remove_key(text: &str, section_key: &str, idx: usize, key: &str) -> Option<String> {
    let mut doc = Doc::new(text);
    let item = item_of(&doc, section_key, idx)?;
    match find_key(&doc, &item, key) {
        None => Some(text.to_string()),
        Some((at, _)) if at == item.start => None,
        Some((at, end)) => {
            doc.lines.drain(at..end);
            Some(doc.render())
        }
    }
}

/// Removes item `idx` with the comments directly above it; an emptied section becomes `[]`.
pub fn remove_item(text: &str, section_key: &str, idx: usize) -> Option<String> {
    let mut doc = Doc::new(text);
    let sec = section(&doc, section_key)?;
    let all = items(&doc, &sec)?;
    let item = all.get(idx)?;
    let (lead, end) = (item.lead, item.end);
    let last = idx + 1 == all.len();
    doc.lines.drain(lead..end);
    // A blank line between items goes with the item after it: do not leave two blank
    // lines, nor one right under the section's key or before what followed the section.
    let prev_blank = lead > 0 && blank(&doc.lines[lead - 1]);
    let next_blank = lead < doc.lines.len() && blank(&doc.lines[lead]);
    if prev_blank && (next_blank || last) {
        doc.lines.remove(lead - 1);
    } else if next_blank && !last && lead - 1 == sec.key_line {
        doc.lines.remove(lead);
    }
    if all.len() == 1 {
        let l = body(&doc.lines[sec.key_line]).to_string();
        let (_, cmt) = split_comment(&l[section_key.len() + 1..]);
        let cmt = if cmt.is_empty() {
            String::new()
        } else {
            format!(" {cmt}")
        };
        doc.lines[sec.key_line] = doc.line(format!("{section_key}: []{cmt}"));
    }
    Some(doc.render())
}

/// The order of the sections in a credentials file (SPEC §4).
const ORDER: [&str; 4] = ["roles", "users", "clients", "api_keys"];

/// Appends an item with these `(key, value)` lines to `section_key`, in the style of
/// the items already there; makes the section if absent.
pub fn append_item(
    text: &str,
    section_key: &str,
    pairs: &[(String, String)],
) -> Option<String> {
    let mut doc = Doc::new(text);
    let render = |doc: &Doc, seq: usize, key_indent: usize| -> Vec<String> {
        pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let lead = if i == 0 {
                    format!(
                        "{}- {}",
                        " ".repeat(seq),
                        " ".repeat(key_indent.saturating_sub(seq + 2))
                    )
                } else {
                    " ".repeat(key_indent)
                };
                doc.line(format!("{lead}{k}: {v}"))
            })
            .collect()
    };
    match section(&doc, section_key) {
        Some(sec) if matches!(sec.inline.as_str(), "" | "[]" | "~" | "null") => {
            let all = if sec.inline.is_empty() {
                items(&doc, &sec)?
            } else {
                Vec::new()
            };
            match all.last() {
                Some(last) => {
                    // A blank line between items, if the file has them.
                    let spaced =
                        all.len() >= 2 && blank(&doc.lines[all[all.len() - 1].lead - 1]);
                    let mut new = render(&doc, last.seq_indent, last.key_indent);
                    if spaced {
                        new.insert(0, doc.line(String::new()));
                    }
                    doc.lines.splice(last.end..last.end, new);
                }
                None => {
                    let l = body(&doc.lines[sec.key_line]).to_string();
                    let (_, cmt) = split_comment(&l[section_key.len() + 1..]);
                    let cmt = if cmt.is_empty() {
                        String::new()
                    } else {
                        format!(" {cmt}")
                    };
                    doc.lines[sec.key_line] = doc.line(format!("{section_key}:{cmt}"));
                    let new = render(&doc, 2, 4);
                    doc.lines.splice(sec.key_line + 1..sec.key_line + 1, new);
                }
            }
        }
        Some(_) => return None,
        None => {
            let mut block = vec![doc.line(format!("{section_key}:"))];
            block.extend(render(&doc, 2, 4));
            // Before the first section that comes after it in SPEC order (and the
            // comments directly above that section), else at the end.
            let later = ORDER
                .iter()
                .skip_while(|k| **k != section_key)
                .skip(1)
                .filter_map(|k| section(&doc, k))
                .map(|s| s.key_line)
                .min();
            match later {
                Some(mut at) => {
                    while at > 0 && comment(&doc.lines[at - 1]) {
                        at -= 1;
                    }
                    block.push(doc.line(String::new()));
                    doc.lines.splice(at..at, block);
                }
                None => {
                    if doc.lines.last().is_some_and(|l| !blank(l)) {
                        doc.lines.push(doc.line(String::new()));
                    }
                    doc.lines.extend(block);
                }
            }
        }
    }
    Some(doc.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# head\napi_keys:\n  # about a\n  - name: a   # a's line\n    key_hash: \"h\"\n    allowed_ips:\n      - \"10.0.0.1\"\n    expires: 2099-01-01\n\n  - name: b\n    key_hash: \"h2\"\n    expires: 2099-01-01\n# tail\n";

    #[test]
    fn edits_touch_only_their_lines() {
        let t = set_key(DOC, "api_keys", 0, "disabled", &["true".into()]).unwrap();
        assert_eq!(
            t,
            DOC.replace(
                "    expires: 2099-01-01\n\n",
                "    expires: 2099-01-01\n    disabled: true\n\n"
            )
        );
        let t = set_key(
            DOC,
            "api_keys",
            0,
            "allowed_ips",
            &["[\"10.0.0.2\"]".into()],
        )
        .unwrap();
        assert_eq!(
            t,
            DOC.replace(
                "    allowed_ips:\n      - \"10.0.0.1\"\n",
                "    allowed_ips: [\"10.0.0.2\"]\n"
            )
        );
        let t = set_key(DOC, "api_keys", 0, "name", &["z".into()]).unwrap();
        assert!(t.contains("  - name: z # a's line\n"), "{t}");
        let t = remove_key(DOC, "api_keys", 0, "allowed_ips").unwrap();
        assert_eq!(
            t,
            DOC.replace("    allowed_ips:\n      - \"10.0.0.1\"\n", "")
        );
        assert!(
            remove_key(DOC, "api_keys", 0, "name").is_none(),
            "a key on the - line cannot be removed alone"
        );
        let t = remove_item(DOC, "api_keys", 0).unwrap();
        assert_eq!(t, "# head\napi_keys:\n  - name: b\n    key_hash: \"h2\"\n    expires: 2099-01-01\n# tail\n");
        let t = remove_item(DOC, "api_keys", 1).unwrap();
        assert_eq!(t, "# head\napi_keys:\n  # about a\n  - name: a   # a's line\n    key_hash: \"h\"\n    allowed_ips:\n      - \"10.0.0.1\"\n    expires: 2099-01-01\n# tail\n");
        let t = append_item(
            DOC,
            "api_keys",
            &[("name".into(), "c".into()), ("expires".into(), "x".into())],
        )
        .unwrap();
        assert!(
            t.ends_with("    expires: 2099-01-01\n\n  - name: c\n    expires: x\n# tail\n"),
            "{t}"
        );
        let t = append_item(DOC, "clients", &[("id".into(), "c".into())]).unwrap();
        assert!(
            t.starts_with("clients:\n  - id: c\n\n# head\napi_keys:\n"),
            "{t}"
        );
        assert!(item_count_is_none_for_flow("api_keys: [{name: a}]\n"));
    }
}
