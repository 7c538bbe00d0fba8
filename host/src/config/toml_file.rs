//! Reading a TOML settings file while keeping the line of every key, and the helpers both
//! settings files use to report and resolve what they read: [`closest`] (the did-you-mean
//! suggestion, by edit distance) and [`absolute_against`].
//!
//! Separate from the host settings because [`crate::manifest`] reads `plugins.toml` with it too;
//! nothing here knows any section or key.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::error::{ConfigError, Origin};

/// A parsed TOML file, with the line of every key (dotted; array items as `key[i]`).
pub(crate) struct TomlFile {
    /// The file (absolute).
    pub path: PathBuf,
    /// Its contents.
    pub table: toml::Table,
    lines: HashMap<String, usize>,
}

impl TomlFile {
    /// Reads and parses `path` (already absolute). All syntax errors are reported.
    pub(crate) fn read(path: &Path) -> Result<TomlFile, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError::UnreadableFile {
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line: None,
                },
                message: e.to_string(),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`, read from `path`.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<TomlFile, Vec<ConfigError>> {
        let syntax = |e: &toml::de::Error| ConfigError::TomlSyntax {
            origin: Origin::File {
                path: path.to_path_buf(),
                line: e.span().map(|s| line_of(text, s.start)),
            },
            message: e.message().trim().to_owned(),
        };
        let (doc, errors) = toml::de::DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            return Err(errors.iter().map(syntax).collect());
        }
        let mut lines = HashMap::new();
        index_lines(text, doc.get_ref(), "", &mut lines);
        let table: toml::Table = toml::from_str(text).map_err(|e| vec![syntax(&e)])?;
        Ok(TomlFile {
            path: path.to_path_buf(),
            table,
            lines,
        })
    }

    /// The origin of a dotted key: this file, at the key's line (or its parent's).
    pub(crate) fn origin(&self, key: &str) -> Origin {
        let mut k = key;
        let line = loop {
            if let Some(l) = self.lines.get(k) {
                break Some(*l);
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => break None,
            }
        };
        Origin::File {
            path: self.path.clone(),
            line,
        }
    }

    /// The directory relative paths in this file are resolved against.
    pub(crate) fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn index_lines(
    text: &str,
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut HashMap<String, usize>,
) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.entry(key.clone())
            .or_insert_with(|| line_of(text, k.span().start));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => index_lines(text, t, &key, out),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    out.insert(item_key.clone(), line_of(text, item.span().start));
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        index_lines(text, t, &item_key, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word` within edit distance 2, if any.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Makes `path` absolute against `base` (itself made absolute against the working directory).
pub(crate) fn absolute_against(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    std::path::absolute(&joined).unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggestions() {
        assert_eq!(closest("bnd", ["bind", "public_url"]), Some("bind"));
        assert_eq!(closest("completely", ["bind"]), None);
    }
}
