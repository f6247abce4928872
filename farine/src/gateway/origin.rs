//! Which pages may use the gateway: a browser names the page's origin in the `Origin` header
//! of every WebSocket handshake and cross-origin request; the gateway answers only its own
//! origin (the page it serves from `static_dir`) and those of `allowed_origins`. A request
//! without `Origin` is not from a page's script (curl, a service) and passes: authentication,
//! not origins, guards against those.

use axum::http::{header, HeaderMap};

/// Whether a request with these headers may go on.
pub(crate) fn allowed(allowed_origins: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed_origins
        .iter()
        .any(|allowed| allowed == "*" || *allowed == origin)
    {
        return true;
    }
    // Same origin: the page came from this gateway (its host as the browser addressed it).
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_ascii_lowercase);
    match (origin.split_once("://"), host) {
        (Some((scheme, authority)), Some(host)) => {
            (scheme == "http" || scheme == "https") && authority == host && origin != "null"
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn own_listed_and_absent_origins_pass_others_do_not() {
        let list = vec!["https://app.example.com".to_owned()];
        assert!(allowed(&list, &headers(None, "127.0.0.1:8080")));
        assert!(allowed(
            &list,
            &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")
        ));
        assert!(allowed(
            &list,
            &headers(Some("https://APP.example.com"), "127.0.0.1:8080")
        ));
        assert!(!allowed(
            &list,
            &headers(Some("https://evil.example"), "127.0.0.1:8080")
        ));
        assert!(!allowed(&list, &headers(Some("null"), "127.0.0.1:8080")));
        assert!(!allowed(
            &list,
            &headers(Some("http://127.0.0.1:8081"), "127.0.0.1:8080")
        ));
        assert!(allowed(
            &["*".to_owned()],
            &headers(Some("https://any.example"), "h")
        ));
    }
}
