//! The check of a task input against its type's JSON Schema, and the words of its refusal.
//!
//! A failure is reported as `{at}: {message}`, `at` being the failing value's place in the
//! input (`input/workflow/3`). Two schema annotations, which validators ignore, let a plugin
//! say more than the validator's own text (documented for plugin authors in
//! `plugins/README.md`):
//!
//! - `x-error-code` on a subschema: failures under it are refused with that code instead of
//!   `invalid_input` (the deepest annotated subschema wins; a code outside `[a-z0-9_]{1,64}` is
//!   ignored);
//! - `x-error-message` on a subschema: failures under it are described with that text instead
//!   of the validator's, which may quote the whole failing value (the deepest one wins).
//!
//! Failures that carry a code are reported first, and only those with the first one's code.
//! Validator texts are cut at [`MAX_TEXT`] characters, so no large input is echoed back.

use serde_json::Value;

/// The longest validator text kept in a message, in characters.
const MAX_TEXT: usize = 200;

/// How many failures one answer names.
const MAX_FAILURES: usize = 5;

/// A refused input: the code (`None`: `invalid_input`) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The `x-error-code` the failures carry, if any.
    pub code: Option<String>,
    /// One `{at}: {what}` per failure, joined with `; `.
    pub message: String,
}

/// Checks `input` with `validator`, compiled from `schema`.
pub(crate) fn check(
    schema: &Value,
    validator: &jsonschema::Validator,
    input: &Value,
) -> Result<(), Refusal> {
    let mut failures: Vec<(Option<String>, String)> = Vec::new();
    for e in validator.iter_errors(input).take(50) {
        let path = e.instance_path().to_string();
        let at = format!("input{path}");
        let (code, message) = annotations(schema, &e.schema_path().to_string());
        let what = message.unwrap_or_else(|| cut(&e.to_string()));
        let line = format!("{at}: {what}");
        if !failures.iter().any(|(_, l)| *l == line) {
            failures.push((code, line));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let code = failures.iter().find_map(|(c, _)| c.clone());
    let lines: Vec<String> = failures
        .into_iter()
        .filter(|(c, _)| code.is_none() || *c == code)
        .take(MAX_FAILURES)
        .map(|(_, l)| l)
        .collect();
    Err(Refusal {
        code,
        message: lines.join("; "),
    })
}

/// The `x-error-code` and `x-error-message` of the deepest subschemas on the way to the
/// keyword at `pointer` (a JSON pointer into `schema`, the keyword itself last).
fn annotations(schema: &Value, pointer: &str) -> (Option<String>, Option<String>) {
    let mut code = None;
    let mut message = None;
    let mut at = schema;
    let mut note = |v: &Value| {
        if let Some(c) = v.get("x-error-code").and_then(Value::as_str)
            && valid_code(c)
        {
            code = Some(c.to_owned());
        }
        if let Some(m) = v.get("x-error-message").and_then(Value::as_str) {
            message = Some(m.to_owned());
        }
    };
    note(at);
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    // The last segment is the failing keyword, not a subschema.
    for seg in segments.iter().take(segments.len().saturating_sub(1)) {
        let next = match at {
            Value::Object(m) => m.get(seg.as_str()),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        let Some(next) = next else { break };
        at = next;
        note(at);
    }
    (code, message)
}

/// Whether a plugin's code has the shape of a code.
fn valid_code(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `text` cut to [`MAX_TEXT`] characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::registry::compile_schema;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "graph": {
                    "if": {"type": "string"},
                    "then": {"minLength": 1},
                    "else": {
                        "type": "object",
                        "x-error-code": "invalid_graph",
                        "x-error-message": "must be a graph",
                        "if": {"type": "object", "required": ["nodes"]},
                        "then": {"not": {}, "x-error-message": "a UI export"},
                        "else": {"additionalProperties": {
                            "type": "object", "required": ["kind"],
                            "x-error-message": "each node needs a kind"
                        }}
                    }
                }
            }
        })
    }

    fn run(input: Value) -> Result<(), Refusal> {
        let s = schema();
        let v = compile_schema(&s).unwrap();
        check(&s, &v, &input)
    }

    #[test]
    fn annotated_failures_carry_their_code_and_message() {
        assert!(run(json!({"graph": {"1": {"kind": "x"}}})).is_ok());
        assert!(run(json!({"graph": "name"})).is_ok());
        let r = run(json!({"graph": {"1": {"kind": "x"}, "2": {"size": 3}}})).unwrap_err();
        assert_eq!(r.code.as_deref(), Some("invalid_graph"));
        assert_eq!(r.message, "input/graph/2: each node needs a kind");
        let r = run(json!({"graph": {"nodes": [], "links": []}})).unwrap_err();
        assert_eq!(r.code.as_deref(), Some("invalid_graph"));
        assert_eq!(r.message, "input/graph: a UI export");
        let r = run(json!({"graph": 5})).unwrap_err();
        assert_eq!(r.message, "input/graph: must be a graph");
    }

    #[test]
    fn plain_failures_are_invalid_input_and_cut() {
        let long = "x".repeat(1000);
        let r = run(json!({"name": [long]})).unwrap_err();
        assert_eq!(r.code, None);
        assert!(r.message.starts_with("input/name: "), "{}", r.message);
        assert!(r.message.chars().count() < MAX_TEXT + 20, "{}", r.message);
    }

    #[test]
    fn codes_failures_come_first_and_bad_codes_are_ignored() {
        let r = run(json!({"name": 1, "graph": {"1": 2}})).unwrap_err();
        assert_eq!(r.code.as_deref(), Some("invalid_graph"));
        assert!(!r.message.contains("input/name"), "{}", r.message);
        let s = json!({"type": "object", "x-error-code": "Not A Code", "required": ["a"]});
        let v = compile_schema(&s).unwrap();
        assert_eq!(check(&s, &v, &json!({})).unwrap_err().code, None);
    }
}
