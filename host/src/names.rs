//! Safe file names for anything a client, a URL or a plugin names: one rule everywhere
//! (fetched inputs, uploads, stored outputs).

/// Longest name kept, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 150;

/// The last segment of a `/` or `\` separated path.
pub(crate) fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or("")
}

/// Reduces a name to `[A-Za-z0-9._-]` (other characters become `_`), without leading dots, at
/// most [`MAX_NAME_LEN`] bytes (keeping a short extension); `fallback` when nothing usable is
/// left.
pub(crate) fn sanitize(name: &str, fallback: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = mapped.trim_start_matches('.').to_owned();
    if name.len() > MAX_NAME_LEN {
        let (stem, ext) = split_ext(&name);
        let ext = if ext.len() <= 16 { ext } else { "" };
        name = format!("{}{ext}", &stem[..MAX_NAME_LEN - ext.len()]);
    }
    if name.chars().all(|c| c == '_' || c == '.' || c == '-') {
        return fallback.to_owned();
    }
    name
}

/// Most folders kept in front of a name by [`sanitize_path`].
pub(crate) const MAX_FOLDERS: usize = 4;

/// A relative path under the same rule: each `/` or `\` separated segment reduced by
/// [`sanitize`], empty, `.` and `..` segments dropped, at most [`MAX_FOLDERS`] folders (the
/// last ones) before the file name; `fallback` when no file name is left. Never absolute, never
/// leaves its folder.
pub(crate) fn sanitize_path(path: &str, fallback: &str) -> String {
    let segments: Vec<&str> = path
        .split(['/', '\\'])
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect();
    let Some((file, folders)) = segments.split_last() else {
        return fallback.to_owned();
    };
    let mut out: Vec<String> = folders
        .iter()
        .map(|f| sanitize(f, ""))
        .filter(|f| !f.is_empty())
        .collect();
    out.drain(..out.len().saturating_sub(MAX_FOLDERS));
    out.push(sanitize(file, fallback));
    out.join("/")
}

/// Splits `name` into stem and extension (with its dot; empty when there is none).
pub(crate) fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reduced_and_never_paths() {
        assert_eq!(sanitize(base_name("../../etc/passwd"), "output"), "passwd");
        assert_eq!(sanitize("a b/c?.png", "input"), "a_b_c_.png");
        assert_eq!(sanitize("..", "output"), "output");
        assert_eq!(sanitize("", "upload"), "upload");
        let long = format!("{}.png", "x".repeat(400));
        let short = sanitize(&long, "input");
        assert_eq!(short.len(), MAX_NAME_LEN);
        assert!(short.ends_with(".png"));
    }

    #[test]
    fn paths_keep_their_folders_inside() {
        assert_eq!(sanitize_path("../../etc/passwd", "output"), "etc/passwd");
        assert_eq!(sanitize_path("/a b\\c/x?.png", "output"), "a_b/c/x_.png");
        assert_eq!(sanitize_path("a/..", "output"), "a");
        assert_eq!(sanitize_path("../..", "output"), "output");
        assert_eq!(
            sanitize_path("1/2/3/4/5/6/x.png", "output"),
            "3/4/5/6/x.png"
        );
        assert_eq!(sanitize_path(".../x.png", "output"), "x.png");
    }
}
