//! How an output file ComfyUI lists is named and classed in the task's result.
//!
//! Two nodes may save files of the same name in different subfolders (`filename_prefix`
//! `a/x` and `b/x`): the name returned to the host keeps the subfolder (`a/x_00001_.png`), and
//! the host stores it under the attempt's folder with the same subfolder. The `kind` of a
//! listed file is what the file is, from its content type (`image`, `video`, `audio`, `text`,
//! else `file`), not the key ComfyUI listed it under (videos come under `images` or `gifs`).

/// The name of an output: `subfolder/filename` (`\` as `/`, empty, `.` and `..` segments
/// dropped), or `filename` when there is no subfolder.
pub(crate) fn name(subfolder: &str, filename: &str) -> String {
    format!("{subfolder}/{filename}")
        .split(['/', '\\'])
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect::<Vec<_>>()
        .join("/")
}

/// `name` made unique among `taken`: `2_base`, `3_base`, ... in the same subfolder.
pub(crate) fn unique(name: &str, taken: &mut std::collections::HashSet<String>) -> String {
    let (dir, base) = match name.rsplit_once('/') {
        Some((d, b)) => (format!("{d}/"), b),
        None => (String::new(), name),
    };
    let mut candidate = name.to_owned();
    let mut n = 1;
    while !taken.insert(candidate.clone()) {
        n += 1;
        candidate = format!("{dir}{n}_{base}");
    }
    candidate
}

/// What a file of `content_type` is: `image`, `video`, `audio`, `text` or `file`.
pub(crate) fn kind(content_type: &str) -> &'static str {
    match content_type.split('/').next().unwrap_or_default() {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        "text" => "text",
        _ if content_type == "application/json" => "text",
        _ => "file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_subfolder_and_stay_unique() {
        assert_eq!(name("", "x.png"), "x.png");
        assert_eq!(name("a/b", "x.png"), "a/b/x.png");
        assert_eq!(name("../a\\.", "x.png"), "a/x.png");
        let mut taken = std::collections::HashSet::new();
        assert_eq!(unique("a/x.png", &mut taken), "a/x.png");
        assert_eq!(unique("b/x.png", &mut taken), "b/x.png");
        assert_eq!(unique("a/x.png", &mut taken), "a/2_x.png");
    }

    #[test]
    fn kinds_follow_the_content_type() {
        assert_eq!(kind("image/png"), "image");
        assert_eq!(kind("video/webm"), "video");
        assert_eq!(kind("audio/flac"), "audio");
        assert_eq!(kind("text/plain"), "text");
        assert_eq!(kind("application/octet-stream"), "file");
    }
}
