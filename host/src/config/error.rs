//! The errors of settings files: [`Origin`], [`ConfigError`] and [`ConfigErrors`].
//!
//! Separate from the host settings because `plugins.toml` ([`crate::manifest`]) reports its
//! problems with the same types, so both files read the same way to an operator: origin (file
//! and line, or variable), dotted key, message, and a suggestion for unknown keys.

use std::{fmt, path::PathBuf};

use crate::error_codes;

/// Where a setting, or a problem with it, came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A file, with the 1-based line when known.
    File {
        /// The file (absolute).
        path: PathBuf,
        /// 1-based line of the key or of the error.
        line: Option<usize>,
    },
    /// An environment variable, by name.
    Env(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

impl Origin {
    fn sort_key(&self) -> (u8, String, usize) {
        match self {
            Origin::File { path, line } => (0, path.display().to_string(), line.unwrap_or(0)),
            Origin::Env(name) => (1, name.clone(), 0),
            Origin::Default => (2, String::new(), 0),
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// One problem in a settings file or the environment. [`ConfigError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConfigError {
    /// A section, key or `AIHOST_*` variable that means nothing (a typo, usually).
    #[error("{origin}: unknown key `{key}`{}", did_you_mean(.suggestion))]
    UnknownKey {
        /// Where the key was written.
        origin: Origin,
        /// The dotted key as written.
        key: String,
        /// The closest known key (or variable name), if one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong TOML type (a string where a number belongs, ...).
    #[error("{origin}: `{key}`: {message}")]
    InvalidType {
        /// Where the value was written.
        origin: Origin,
        /// The dotted key.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A value of the right type that is not acceptable (bad address, zero lease, ...).
    #[error("{origin}: `{key}`: {message}")]
    InvalidValue {
        /// Where the value was written.
        origin: Origin,
        /// The dotted key.
        key: String,
        /// Why the value is refused.
        message: String,
    },
    /// A key that another setting makes necessary is absent (`queue.url` for postgres, ...).
    #[error("{origin}: `{key}`: {message}")]
    MissingValue {
        /// Where the setting that requires it was written.
        origin: Origin,
        /// The dotted key that is missing.
        key: String,
        /// Why it is needed.
        message: String,
    },
    /// The same name given twice where names must be unique (plugin names).
    #[error("{origin}: `{key}`: {message}")]
    Duplicate {
        /// Where the second occurrence was written.
        origin: Origin,
        /// The dotted key of the second occurrence.
        key: String,
        /// Which name, and where the first one is.
        message: String,
    },
    /// The file could not be read (missing when given explicitly, permissions, not UTF-8).
    #[error("{origin}: cannot read: {message}")]
    UnreadableFile {
        /// The file.
        origin: Origin,
        /// The operating system's reason.
        message: String,
    },
    /// The file is not valid TOML.
    #[error("{origin}: TOML syntax error: {message}")]
    TomlSyntax {
        /// The file, with the line of the error.
        origin: Origin,
        /// The parser's message.
        message: String,
    },
}

impl ConfigError {
    /// Stable, machine-readable code: `unknown_key`, `invalid_type`, `invalid_value`,
    /// `missing_value`, `duplicate`, `unreadable_file`, `toml_syntax`.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ConfigError::UnknownKey { .. } => error_codes::CONFIG_UNKNOWN_KEY,
            ConfigError::InvalidType { .. } => error_codes::CONFIG_INVALID_TYPE,
            ConfigError::InvalidValue { .. } => error_codes::CONFIG_INVALID_VALUE,
            ConfigError::MissingValue { .. } => error_codes::CONFIG_MISSING_VALUE,
            ConfigError::Duplicate { .. } => error_codes::CONFIG_DUPLICATE,
            ConfigError::UnreadableFile { .. } => error_codes::CONFIG_UNREADABLE_FILE,
            ConfigError::TomlSyntax { .. } => error_codes::CONFIG_TOML_SYNTAX,
        }
    }

    /// Where the problem is (file and line, variable, or default).
    pub(crate) fn origin(&self) -> &Origin {
        match self {
            ConfigError::UnknownKey { origin, .. }
            | ConfigError::InvalidType { origin, .. }
            | ConfigError::InvalidValue { origin, .. }
            | ConfigError::MissingValue { origin, .. }
            | ConfigError::Duplicate { origin, .. }
            | ConfigError::UnreadableFile { origin, .. }
            | ConfigError::TomlSyntax { origin, .. } => origin,
        }
    }

    /// The dotted key concerned, if the problem is about one key.
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::InvalidType { key, .. }
            | ConfigError::InvalidValue { key, .. }
            | ConfigError::MissingValue { key, .. }
            | ConfigError::Duplicate { key, .. } => Some(key),
            ConfigError::UnreadableFile { .. } | ConfigError::TomlSyntax { .. } => None,
        }
    }
}

/// Every problem found while loading settings; displayed one line per problem, each ending
/// with its code in brackets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigErrors(
    /// The problems, by file and line, then variables.
    pub Vec<ConfigError>,
);

impl ConfigErrors {
    /// Orders the problems by file and line, then variables.
    pub(crate) fn sorted(mut self) -> Self {
        self.0.sort_by_key(|e| e.origin().sort_key());
        self
    }
}

impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigError];
    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e} [{}]", e.code())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
