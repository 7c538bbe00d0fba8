//! URLs of stored objects: building a URL under a base from a path ([`url_under`]), finding
//! the path a URL names below a base ([`path_under`]), and the lifetime of presigned GETs.
//!
//! Separate from the facade because the same two functions serve every backend: the `/files`
//! route, a bucket's public base, and the bucket's own (presigned) URLs.

use std::time::Duration;

use crate::percent::{decode as percent_decode, encode_segment_into as percent_encode_into};

/// Default lifetime of presigned GET URLs.
pub const DEFAULT_PRESIGN_SECS: u64 = 3600;

/// The lifetime of presigned GETs for `secs` (0: [`DEFAULT_PRESIGN_SECS`]).
pub(super) fn presign_duration(secs: u64) -> Duration {
    Duration::from_secs(if secs == 0 {
        DEFAULT_PRESIGN_SECS
    } else {
        secs
    })
}

/// The part of `url` below `base` (same scheme, host and port; query and fragment ignored),
/// percent-decoded segment by segment. `base` may also be a bare path such as `/files`.
pub(super) fn path_under(base: &str, url: &str) -> Option<String> {
    let base = base.trim_end_matches('/');
    let rest = match (url::Url::parse(base), url::Url::parse(url)) {
        (Ok(base_url), Ok(target)) => {
            if base_url.scheme() != target.scheme()
                || base_url.host() != target.host()
                || base_url.port_or_known_default() != target.port_or_known_default()
            {
                return None;
            }
            let base_path = base_url.path().trim_end_matches('/');
            let rest = target.path().strip_prefix(base_path)?.strip_prefix('/')?;
            rest.to_owned()
        }
        // A base that is not an absolute URL (e.g. "/files"): compare the text.
        (Err(_), _) => {
            let rest = url.strip_prefix(base)?.strip_prefix('/')?;
            rest.split(['?', '#']).next().unwrap_or_default().to_owned()
        }
        (Ok(_), Err(_)) => return None,
    };
    let mut path = String::with_capacity(rest.len());
    for (i, segment) in rest.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        path.push_str(&percent_decode(segment)?);
    }
    Some(path)
}

/// `base` + `/` + `path`, each path segment percent-encoded.
pub(super) fn url_under(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + path.len() + 8);
    url.push_str(base);
    for segment in path.split('/') {
        url.push('/');
        percent_encode_into(segment, &mut url);
    }
    url
}
