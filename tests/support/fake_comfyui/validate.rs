//! `POST /prompt` validation as ComfyUI 0.3.64 does it (`execution.py`: `validate_prompt`,
//! `validate_inputs`), against the recorded node classes of `nodes.rs`: the top-level errors
//! (`invalid_prompt`, `prompt_no_outputs`), the per-input ones of
//! `prompt_outputs_failed_validation`, Python's exceptions (`KeyError`, `IndexError`) as
//! `exception_during_validation`, value coercion (`8.5` and `"8"` for an INT), and half-valid
//! prompts queued with their `node_errors`. Separate because it is the largest single piece
//! of ComfyUI's behaviour the fake reproduces, and pure (no server state).
//!
//! Deliberate differences: outputs are validated in node-id order (ComfyUI iterates a set, so
//! its order varies between runs); a link cycle is not followed twice (ComfyUI would recurse
//! until Python's stack runs out); `LoadImage` refuses `..` in a file name.

use std::path::Path;

use serde_json::{Map, Number, Value, json};

use super::{
    nodes::{self, InputSpec},
    state::truthy,
};

/// What `POST /prompt` answers after validation.
pub(crate) enum Verdict {
    /// Queued: the prompt with its coerced values, the outputs to run (those that validated),
    /// and the errors of those that did not.
    Queued {
        prompt: Value,
        outputs: Vec<String>,
        node_errors: Map<String, Value>,
    },
    /// 400 with this body.
    Rejected(Value),
}

/// Python raised where ComfyUI catches nothing: aiohttp answers 500.
pub(crate) struct Crash;

/// A Python exception raised inside `validate_inputs`.
struct Exc {
    kind: &'static str,
    message: String,
    traceback: Vec<String>,
}

const TB_PROMPT: &str = "  File \"execution.py\", line 1010, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n";

impl Exc {
    fn new(kind: &'static str, message: String, line: &str) -> Exc {
        Exc {
            kind,
            message,
            traceback: vec![
                TB_PROMPT.to_owned(),
                format!("  File \"execution.py\", in validate_inputs\n    {line}\n"),
            ],
        }
    }
}

type Outcome = (bool, Vec<Value>);

fn top_error(kind: &str, message: &str, details: &str) -> Verdict {
    Verdict::Rejected(json!({
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
        "node_errors": {}
    }))
}

fn reason(
    kind: &str,
    message: impl Into<String>,
    details: impl Into<String>,
    extra: Value,
) -> Value {
    json!({"type": kind, "message": message.into(), "details": details.into(), "extra_info": extra})
}

/// Node ids in a stable order (numeric ones first, by value).
pub(crate) fn sorted_ids<'a>(ids: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = ids.cloned().collect();
    v.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
    v
}

/// Validates `prompt` (the request's `prompt` value). `partial` is
/// `partial_execution_targets`.
pub(crate) fn validate_prompt(
    prompt: &Value,
    partial: Option<&Value>,
    input_dir: &Path,
    checkpoints: &[String],
) -> Result<Verdict, Crash> {
    let prompt = match prompt {
        Value::Object(m) => m.clone(),
        // `for x in prompt` over an empty list or string finds no node.
        Value::Array(a) if a.is_empty() => Map::new(),
        Value::String(s) if s.is_empty() => Map::new(),
        _ => return Err(Crash),
    };
    const MISSING: &str = "Cannot execute because a node is missing the class_type property.";
    let ids = sorted_ids(prompt.keys());
    let mut outputs = Vec::new();
    for id in &ids {
        let class_type = match &prompt[id] {
            Value::Object(o) => match o.get("class_type") {
                Some(c) => c,
                None => {
                    return Ok(top_error(
                        "invalid_prompt",
                        MISSING,
                        &format!("Node ID '#{id}'"),
                    ));
                }
            },
            // `'class_type' not in node` is a substring / element test on these.
            Value::String(_) | Value::Array(_) => {
                return Ok(top_error(
                    "invalid_prompt",
                    MISSING,
                    &format!("Node ID '#{id}'"),
                ));
            }
            _ => return Err(Crash),
        };
        let Some(entry) = class_type.as_str().and_then(nodes::class) else {
            return Ok(top_error(
                "invalid_prompt",
                &format!(
                    "Cannot execute because node {} does not exist.",
                    py_str(class_type)
                ),
                &format!("Node ID '#{id}'"),
            ));
        };
        let targeted = match partial {
            None | Some(Value::Null) => true,
            Some(Value::Array(list)) => list.iter().any(|t| t.as_str() == Some(id)),
            Some(Value::String(s)) => s.contains(id.as_str()),
            Some(_) => return Err(Crash),
        };
        if nodes::is_output(entry) && targeted {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return Ok(top_error("prompt_no_outputs", "Prompt has no outputs", ""));
    }
    let mut v = Validator {
        prompt,
        validated: Vec::new(),
        input_dir,
        checkpoints,
    };
    let mut good = Vec::new();
    let mut failed: Vec<Vec<Value>> = Vec::new();
    let mut node_errors: Vec<(String, Value)> = Vec::new();
    for o in &outputs {
        let (valid, reasons) = match v.validate_inputs(o) {
            Ok(r) => r,
            Err(ex) => {
                let reasons = vec![reason(
                    "exception_during_validation",
                    "Exception when validating node",
                    ex.message,
                    json!({"exception_type": ex.kind, "traceback": ex.traceback}),
                )];
                v.set(o, (false, reasons.clone()));
                (false, reasons)
            }
        };
        if valid {
            good.push(o.clone());
            continue;
        }
        failed.push(reasons);
        // ComfyUI charges this output to every failed node validated so far.
        for (node_id, (ok, reasons)) in &v.validated {
            if *ok || reasons.is_empty() {
                continue;
            }
            let pos = match node_errors.iter().position(|(k, _)| k == node_id) {
                Some(p) => p,
                None => {
                    node_errors.push((
                        node_id.clone(),
                        json!({"errors": reasons, "dependent_outputs": [],
                               "class_type": v.prompt[node_id]["class_type"]}),
                    ));
                    node_errors.len() - 1
                }
            };
            node_errors[pos].1["dependent_outputs"]
                .as_array_mut()
                .unwrap()
                .push(json!(o));
        }
    }
    let node_errors: Map<String, Value> = node_errors.into_iter().collect();
    if good.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}: {}",
                    r["message"].as_str().unwrap_or_default(),
                    r["details"].as_str().unwrap_or_default()
                )
            })
            .collect();
        return Ok(Verdict::Rejected(json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": details.join("\n"), "extra_info": {}},
            "node_errors": node_errors
        })));
    }
    Ok(Verdict::Queued {
        prompt: Value::Object(v.prompt),
        outputs: good,
        node_errors,
    })
}

struct Validator<'a> {
    /// The prompt; coerced values are written back, as ComfyUI does.
    prompt: Map<String, Value>,
    /// `validated` of ComfyUI: per node (in insertion order), valid and its own errors.
    validated: Vec<(String, Outcome)>,
    input_dir: &'a Path,
    /// The instance's checkpoints (`CheckpointLoaderSimple.ckpt_name`'s combo).
    checkpoints: &'a [String],
}

impl Validator<'_> {
    fn get(&self, id: &str) -> Option<&Outcome> {
        self.validated.iter().find(|(k, _)| k == id).map(|(_, r)| r)
    }

    fn set(&mut self, id: &str, r: Outcome) {
        match self.validated.iter_mut().find(|(k, _)| k == id) {
            Some(slot) => slot.1 = r,
            None => self.validated.push((id.to_owned(), r)),
        }
    }

    fn validate_inputs(&mut self, id: &str) -> Result<Outcome, Exc> {
        if let Some(r) = self.get(id) {
            return Ok(r.clone());
        }
        // Provisional, so a cycle ends here (see the module doc).
        self.set(id, (true, Vec::new()));
        let node = self.prompt[id].clone();
        let entry = nodes::class(node["class_type"].as_str().unwrap_or_default())
            .expect("class checked before");
        let Some(inputs) = node.get("inputs") else {
            self.validated.retain(|(k, _)| k != id);
            return Err(Exc::new(
                "KeyError",
                "'inputs'".into(),
                "inputs = prompt[unique_id]['inputs']",
            ));
        };
        let inputs = inputs.as_object().cloned().unwrap_or_default();
        let mut errors = Vec::new();
        let mut valid = true;
        for spec in nodes::inputs(entry) {
            let x = spec.name;
            let Some(val) = inputs.get(x) else {
                if spec.required {
                    errors.push(reason(
                        "required_input_missing",
                        "Required input is missing",
                        x,
                        json!({"input_name": x}),
                    ));
                }
                continue;
            };
            if let Value::Array(link) = val {
                match self.check_link(&spec, val, link) {
                    Ok(None) => {}
                    Ok(Some(e)) => errors.push(e),
                    Err(LinkFail::Invalid) => valid = false,
                    Err(LinkFail::Raise(ex)) => {
                        self.validated.retain(|(k, _)| k != id);
                        return Err(ex);
                    }
                }
                continue;
            }
            let mut val = val.clone();
            if let Some(inner) = val.get("__value__").cloned() {
                val = inner;
            }
            if let Some(kind) = spec.kind().as_str() {
                match convert(kind, &val) {
                    None => {}
                    Some(Ok(v)) => val = v,
                    Some(Err(msg)) => {
                        errors.push(reason(
                            "invalid_input_type",
                            format!("Failed to convert an input value to a {kind} value"),
                            format!("{x}, {}, {msg}", py_str(&val)),
                            json!({"input_name": x, "input_config": spec.config(),
                                   "received_value": val, "exception_message": msg}),
                        ));
                        continue;
                    }
                }
            }
            self.prompt[id]["inputs"][x] = val.clone();
            if custom_validated(entry, x) {
                continue;
            }
            // The checkpoint combo is the instance's own list, as `object_info` serves it.
            let patched;
            let spec = if entry["name"] == "CheckpointLoaderSimple" && x == "ckpt_name" {
                patched = json!([self.checkpoints, spec.extra()]);
                InputSpec {
                    name: x,
                    required: spec.required,
                    spec: &patched,
                }
            } else {
                spec
            };
            if let Some(e) = check_value(&spec, &val) {
                errors.push(e);
            }
        }
        // LoadImage's VALIDATE_INPUTS: the file must exist in the input folder.
        if entry["name"] == "LoadImage"
            && let Some(image) = self.prompt[id]["inputs"].get("image")
            && !image.is_array()
        {
            let name = py_str(image);
            if name.contains("..") || !self.input_dir.join(&name).exists() {
                errors.push(reason(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    format!("image - Invalid image file: {name}"),
                    json!({"input_name": "image"}),
                ));
            }
        }
        let r = (valid && errors.is_empty(), errors);
        self.set(id, r.clone());
        Ok(r)
    }

    /// A linked input: `Ok(Some(error))` for an error of this node, `Err(Invalid)` when the
    /// linked node failed, `Err(Raise)` for a Python exception in this node.
    fn check_link(
        &mut self,
        spec: &InputSpec<'_>,
        val: &Value,
        link: &[Value],
    ) -> Result<Option<Value>, LinkFail> {
        let x = spec.name;
        if link.len() != 2 {
            return Ok(Some(reason(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                x,
                json!({"input_name": x, "input_config": spec.config(), "received_value": val}),
            )));
        }
        let Some(o_id) = link[0].as_str().filter(|s| self.prompt.contains_key(*s)) else {
            return Err(LinkFail::Raise(Exc::new(
                "KeyError",
                py_repr(&link[0]),
                "o_class_type = prompt[o_id]['class_type']",
            )));
        };
        let o_id = o_id.to_owned();
        let o_entry = nodes::class(
            self.prompt[&o_id]["class_type"]
                .as_str()
                .unwrap_or_default(),
        )
        .expect("class checked before");
        let types = nodes::outputs(o_entry);
        let Some(slot) = link[1].as_i64() else {
            return Err(LinkFail::Raise(Exc::new(
                "TypeError",
                format!(
                    "tuple indices must be integers or slices, not {}",
                    py_type(&link[1])
                ),
                "received_type = r[val[1]]",
            )));
        };
        let idx = if slot < 0 {
            types.len() as i64 + slot
        } else {
            slot
        };
        let Some(received) = usize::try_from(idx).ok().and_then(|i| types.get(i)) else {
            return Err(LinkFail::Raise(Exc::new(
                "IndexError",
                "tuple index out of range".into(),
                "received_type = r[val[1]]",
            )));
        };
        if !type_matches(received, spec.kind()) {
            let want = py_str(spec.kind());
            return Ok(Some(reason(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                format!("{x}, received_type({received}) mismatch input_type({want})"),
                json!({"input_name": x, "input_config": spec.config(), "received_type": received, "linked_node": val}),
            )));
        }
        match self.validate_inputs(&o_id) {
            Ok((true, _)) => Ok(None),
            Ok((false, _)) => Err(LinkFail::Invalid),
            Err(ex) => {
                let r = reason(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    ex.message.clone(),
                    json!({"input_name": x, "input_config": spec.config(), "exception_message": ex.message,
                           "exception_type": ex.kind, "traceback": ex.traceback, "linked_node": val}),
                );
                self.set(&o_id, (false, vec![r]));
                Err(LinkFail::Invalid)
            }
        }
    }
}

enum LinkFail {
    Invalid,
    Raise(Exc),
}

/// Inputs a class checks itself (`VALIDATE_INPUTS` arguments): ComfyUI skips min/max/combo.
fn custom_validated(entry: &Value, input: &str) -> bool {
    entry["name"] == "LoadImage" && input == "image"
}

/// ComfyUI's `validate_node_input`: equal, `*` on either side, or a common member of
/// comma-separated type lists. A combo list never matches a link.
fn type_matches(received: &str, want: &Value) -> bool {
    let Some(want) = want.as_str() else {
        return false;
    };
    if received == want || received == "*" || want == "*" {
        return true;
    }
    let split = |s: &str| {
        s.split(',')
            .map(str::trim)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let w = split(want);
    split(received).iter().any(|r| w.contains(r))
}

/// min, max and combo membership of a (coerced) literal.
fn check_value(spec: &InputSpec<'_>, val: &Value) -> Option<Value> {
    let x = spec.name;
    let extra = spec.extra();
    let bound = |key: &str| extra.get(key).filter(|b| b.is_number()).cloned();
    if let (Some(min), Some(v)) = (bound("min"), val.as_f64())
        && v < min.as_f64().unwrap_or(f64::MIN)
    {
        return Some(reason(
            "value_smaller_than_min",
            format!("Value {} smaller than min of {}", py_str(val), py_str(&min)),
            x,
            json!({"input_name": x, "input_config": spec.config(), "received_value": val}),
        ));
    }
    if let (Some(max), Some(v)) = (bound("max"), val.as_f64())
        && v > max.as_f64().unwrap_or(f64::MAX)
    {
        return Some(reason(
            "value_bigger_than_max",
            format!("Value {} bigger than max of {}", py_str(val), py_str(&max)),
            x,
            json!({"input_name": x, "input_config": spec.config(), "received_value": val}),
        ));
    }
    let options = spec.combo()?;
    if options.iter().any(|o| py_eq(o, val)) {
        return None;
    }
    // Long lists (model files) are summarised, and their config left out.
    let (list_info, config) = if options.len() > 20 {
        (format!("(list of length {})", options.len()), Value::Null)
    } else {
        (py_repr(&Value::Array(options)), spec.config())
    };
    Some(reason(
        "value_not_in_list",
        "Value not in list",
        format!("{x}: '{}' not in {list_info}", py_str(val)),
        json!({"input_name": x, "input_config": config, "received_value": val}),
    ))
}

/// ComfyUI's coercion of a literal for INT, FLOAT, STRING and BOOLEAN inputs (`None` for
/// other types); `Err` holds Python's exception message.
fn convert(kind: &str, v: &Value) -> Option<Result<Value, String>> {
    let not_a =
        |f: &str, accepts: &str| format!("{f}() argument must be {accepts}, not '{}'", py_type(v));
    Some(match kind {
        "INT" => match v {
            Value::Number(n) if n.is_f64() => Ok(json!(n.as_f64().unwrap_or(0.0).trunc() as i64)),
            Value::Number(_) => Ok(v.clone()),
            Value::Bool(b) => Ok(json!(i64::from(*b))),
            Value::String(s) => s
                .trim()
                .parse::<i128>()
                .ok()
                .and_then(|i| {
                    i64::try_from(i)
                        .map(Number::from)
                        .or_else(|_| u64::try_from(i).map(Number::from))
                        .ok()
                })
                .map(Value::Number)
                .ok_or_else(|| format!("invalid literal for int() with base 10: {}", py_repr(v))),
            _ => Err(not_a(
                "int",
                "a string, a bytes-like object or a real number",
            )),
        },
        "FLOAT" => match v {
            Value::Number(n) => Ok(json!(n.as_f64().unwrap_or(0.0))),
            Value::Bool(b) => Ok(json!(if *b { 1.0 } else { 0.0 })),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| json!(f))
                .ok_or_else(|| format!("could not convert string to float: {}", py_repr(v))),
            _ => Err(not_a("float", "a string or a real number")),
        },
        "STRING" => Ok(Value::String(py_str(v))),
        "BOOLEAN" => Ok(Value::Bool(truthy(v))),
        _ => return None,
    })
}

/// Python's `==` between JSON values (numbers and booleans compare by value).
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Python's type name of a JSON value.
fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Python's `str()` of a JSON value.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr()` of a JSON value.
pub(crate) fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.contains('\'') && !s.contains('"') => format!("\"{s}\""),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(py_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}
