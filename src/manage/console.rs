//! The console's files, built into the binary: it works offline and cannot drift from the
//! API it was shipped with.
use http::Method;

const INDEX: &[u8] = include_bytes!("../../console/index.html");
const JS: &[u8] = include_bytes!("../../console/console.js");
const CSS: &[u8] = include_bytes!("../../console/console.css");
const ICON: &[u8] = include_bytes!("../../console/favicon.svg");

/// (status, content type, body) for a request outside `/api/`.
pub fn answer(method: &Method, path: &str) -> (u16, &'static str, Vec<u8>) {
    let file = match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX)),
        "/assets/console.js" => Some(("text/javascript; charset=utf-8", JS)),
        "/assets/console.css" => Some(("text/css; charset=utf-8", CSS)),
        "/assets/favicon.svg" | "/favicon.ico" => Some(("image/svg+xml", ICON)),
        _ => None,
    };
    match (file, method == Method::GET || method == Method::HEAD) {
        (Some((ct, body)), true) => (200, ct, if method == Method::HEAD { Vec::new() } else { body.to_vec() }),
        (Some(_), false) => (405, "text/plain; charset=utf-8", b"method not allowed: use GET\n".to_vec()),
        (None, _) => (404, "text/plain; charset=utf-8", b"not found\n".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_its_assets_from_this_origin_only() {
        let (status, ct, body) = answer(&Method::GET, "/");
        assert_eq!((status, ct), (200, "text/html; charset=utf-8"));
        let page = String::from_utf8(body).unwrap();
        assert!(page.contains("/assets/console.js") && page.contains("/assets/console.css"));
        for text in [page.as_str(), std::str::from_utf8(JS).unwrap(), std::str::from_utf8(CSS).unwrap()] {
            for from_elsewhere in ["src=\"http", "href=\"http", "url(http", "@import", "fetch('http", "fetch(\"http", "//cdn"] {
                assert!(!text.contains(from_elsewhere), "nothing from elsewhere: {from_elsewhere}");
            }
        }
        assert!(!page.contains("style=\"") && !page.contains(" onclick="), "no inline style or handler (CSP default-src 'self')");
    }

    #[test]
    fn denies_other_paths_and_writes() {
        assert_eq!(answer(&Method::GET, "/etc/passwd").0, 404);
        assert_eq!(answer(&Method::POST, "/").0, 405);
    }
}
