//! The web console: a single page at `/` (overview, tasks, one task, submit forms) made of
//! three files embedded in the binary (`assets/`: `index.html`, `app.js`, `app.css`; plain
//! HTML, JavaScript and CSS, no build step). Everything it shows comes from the public API,
//! called by the browser with the API key the page asks for when the API answers 401 (kept in
//! the tab's `sessionStorage`, sent as `Authorization: Bearer`; no cookies, so no CSRF
//! surface). The console's own files need no key: they hold no data.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this origin
//! only, no inline code, no frames, API calls to this origin only; images and media may come
//! from the storage's public URLs, which can be on another host), `nosniff` (added for every
//! route by `api::nosniff`) and `no-cache`, so a new binary's console is loaded at once.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, header},
};

/// The page.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// The application.
const APP_JS: &str = include_str!("assets/app.js");
/// The style sheet.
const APP_CSS: &str = include_str!("assets/app.css");

/// The Content-Security-Policy of the console's files.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data: blob: http: https:; \
     media-src 'self' blob: http: https:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file with its type and the console's security headers.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .body(body);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

/// The console's file at `path`, if it is one.
fn file(path: &str) -> Option<Response> {
    match path {
        "/" | "/index.html" => Some(asset(INDEX_HTML, "text/html; charset=utf-8")),
        "/console/app.js" => Some(asset(APP_JS, "text/javascript; charset=utf-8")),
        "/console/app.css" => Some(asset(APP_CSS, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// Serves `GET`/`HEAD` of `/`, `/index.html`, `/console/app.js` and `/console/app.css`;
/// everything else goes on to the routes. (A middleware rather than routes: the OpenAPI
/// service is nested at `/`, and poem's tree gives it `/` before a route of its own.)
pub(crate) async fn serve<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(resp) = file(req.uri().path())
    {
        return Ok(resp);
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    /// The page loads only the embedded files, with nothing inline the CSP would block.
    #[test]
    fn page_has_no_inline_code() {
        let html = super::INDEX_HTML;
        assert!(html.contains(r#"<script src="/console/app.js""#));
        assert!(html.contains(r#"href="/console/app.css""#));
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(!html.contains(" onclick="));
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!super::APP_JS.contains("innerHTML"), "text goes in as text");
        assert!(!super::APP_JS.contains("eval("));
    }
}
