//! The subscriber portal at `/portal/`: three static files embedded in the
//! binary (plain HTML, CSS and one JavaScript module, no build step), which
//! talk to the public API only. Served with a strict Content Security
//! Policy: scripts, styles and requests from this origin only, no inline
//! code, forms that cannot submit anywhere, and framing only by the
//! configured `portal.frame_ancestors`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use super::resource;

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// Its validator, hashed at compile time.
    hash: u64,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            hash: fnv1a(body.as_bytes()),
        }
    }

    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

const INDEX: Asset = Asset::new(
    include_str!("portal/index.html"),
    "text/html; charset=utf-8",
);
const SCRIPT: Asset = Asset::new(
    include_str!("portal/app.js"),
    "text/javascript; charset=utf-8",
);
const STYLE: Asset = Asset::new(include_str!("portal/app.css"), "text/css; charset=utf-8");

/// The security headers every portal response carries, built once from
/// the configuration.
#[derive(Debug, Clone)]
pub struct PortalHeaders {
    csp: HeaderValue,
    /// `X-Frame-Options` for browsers without CSP `frame-ancestors`, when
    /// the allowed ancestors can be said in it.
    frame_options: Option<HeaderValue>,
}

impl PortalHeaders {
    /// `frame_ancestors` is a CSP source list, checked by the configuration.
    pub fn new(frame_ancestors: &str) -> Self {
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'none'; base-uri 'none'; \
             frame-ancestors {frame_ancestors}"
        );
        let frame_options = match frame_ancestors {
            "'none'" => Some(HeaderValue::from_static("DENY")),
            "'self'" => Some(HeaderValue::from_static("SAMEORIGIN")),
            _ => None,
        };
        Self {
            csp: HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static(
                "default-src 'none'; frame-ancestors 'none'",
            )),
            frame_options,
        }
    }
}

pub fn routes(headers: PortalHeaders) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(headers))
            .service(resource("/portal", "GET").route(web::get().to(to_index)))
            .service(resource("/portal/", "GET").route(web::get().to(|r| serve(r, &INDEX))))
            .service(resource("/portal/app.js", "GET").route(web::get().to(|r| serve(r, &SCRIPT))))
            .service(resource("/portal/app.css", "GET").route(web::get().to(|r| serve(r, &STYLE))));
    }
}

/// Relative links in the page resolve under `/portal/`, not `/`.
async fn to_index() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "portal/"))
        .finish()
}

async fn serve(req: HttpRequest, asset: &'static Asset) -> HttpResponse {
    let etag = asset.etag();
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|value| value.as_bytes() == etag.as_bytes());
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .insert_header((header::ETAG, etag))
        // Revalidated each time: a new binary serves new files at once.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header(("cross-origin-opener-policy", "same-origin"))
        .insert_header(("cross-origin-resource-policy", "same-origin"));
    if let Some(headers) = req.app_data::<web::Data<PortalHeaders>>() {
        response.insert_header((header::CONTENT_SECURITY_POLICY, headers.csp.clone()));
        if let Some(frame_options) = &headers.frame_options {
            response.insert_header((header::X_FRAME_OPTIONS, frame_options.clone()));
        }
    }
    if unchanged {
        response.finish()
    } else {
        response.body(asset.body)
    }
}

/// A strong validator of the file's bytes (FNV-1a: not a defence, only a
/// change detector).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i] as u64).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_frames_only_where_configured() {
        let none = PortalHeaders::new("'none'");
        assert!(
            none.csp
                .to_str()
                .unwrap()
                .ends_with("frame-ancestors 'none'")
        );
        assert_eq!(none.frame_options, Some(HeaderValue::from_static("DENY")));
        let embedded = PortalHeaders::new("'self' https://app.example.com");
        assert!(
            embedded
                .csp
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'self' https://app.example.com")
        );
        assert_eq!(embedded.frame_options, None);
    }

    #[test]
    fn the_etag_changes_with_the_file() {
        assert_eq!(fnv1a(b"a"), fnv1a(b"a"));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
