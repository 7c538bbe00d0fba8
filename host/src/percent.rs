//! The one percent codec of the host (RFC 3986 `%XX` escapes), used wherever keys and file
//! names travel in URL paths: storage's public URLs, `GET /files/{key}`, Cloudflare Images
//! account paths and the fetcher's file names.
//!
//! It is separate so that every place encodes and decodes the same way: encoding keeps only
//! the unreserved characters (`A-Za-z0-9-._~`) of one path segment, decoding is either strict
//! (a malformed escape or non-UTF-8 result is an error) or lossy (for names that are only
//! shown or used as a hint).

/// Appends `segment` to `out`, every byte except `A-Za-z0-9-._~` written as `%XX` (upper-case
/// hex). `/` is escaped too: the caller joins segments.
pub(crate) fn encode_segment_into(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

/// Decodes `%XX` escapes; `None` when an escape is malformed (not `%` and two hex digits) or
/// the result is not UTF-8.
pub(crate) fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(escape_at(bytes, i)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes `%XX` escapes, keeping malformed escapes as they are and replacing bytes that are
/// not UTF-8 with U+FFFD. Never fails.
pub(crate) fn decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], escape_at(bytes, i)) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte of the escape `%XX` starting at `bytes[i]` (which the caller knows or checks is
/// `%`), when two hex digits follow.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i + 1..i + 3)? {
        &[hi, lo] => Some((hex_value(hi)? << 4) | hex_value(lo)?),
        _ => None,
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(segment: &str) -> String {
        let mut out = String::from("prefix/");
        encode_segment_into(segment, &mut out);
        out
    }

    #[test]
    fn percent_encode_keeps_unreserved_only() {
        assert_eq!(encoded("aZ09-._~"), "prefix/aZ09-._~");
        assert_eq!(encoded("my photo.png"), "prefix/my%20photo.png");
        assert_eq!(encoded("a/b?c#d%e+f"), "prefix/a%2Fb%3Fc%23d%25e%2Bf");
        assert_eq!(encoded("été"), "prefix/%C3%A9t%C3%A9");
        assert_eq!(encoded(""), "prefix/");
    }

    #[test]
    fn percent_decode_strict() {
        assert_eq!(decode("a%20b.png").as_deref(), Some("a b.png"));
        assert_eq!(decode("%c3%A9t%C3%a9").as_deref(), Some("été"));
        assert_eq!(decode("plain+text").as_deref(), Some("plain+text"));
        assert_eq!(decode("").as_deref(), Some(""));
        for bad in ["%zz", "%2", "%", "a%", "%+1", "%-1", "%ff", "%C3"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn percent_decode_lossy_never_fails() {
        assert_eq!(decode_lossy("my%20pic.jpeg"), "my pic.jpeg");
        assert_eq!(decode_lossy("100%"), "100%");
        assert_eq!(decode_lossy("%zz%2"), "%zz%2");
        assert_eq!(decode_lossy("%+1"), "%+1");
        assert_eq!(decode_lossy("a%ffb"), "a\u{fffd}b");
        assert_eq!(decode_lossy("%E2%82%AC"), "€");
    }

    #[test]
    fn percent_round_trip() {
        for text in [
            "uploads/x y/é.png",
            "100% sure",
            "~a-b_c.d",
            "\u{1f600}",
            "%41",
        ] {
            let mut out = String::new();
            encode_segment_into(text, &mut out);
            assert!(out.bytes().all(|b| b.is_ascii_graphic()), "{out}");
            assert_eq!(decode(&out).as_deref(), Some(text));
            assert_eq!(decode_lossy(&out), text);
        }
    }
}
