//! Each client command: `submit`, `run`, `tasks list|show|cancel|retry|delete|watch`. Results
//! go to stdout (JSON, or one line per task for `tasks list`), progress and notes to stderr.

use std::{path::Path, process::ExitCode};

use serde_json::{Map, Value, json};

use super::{
    Client, ClientError, ClientResult, ConnArgs, EXIT_CANCELLED, EXIT_FAILED, RunArgs, SubmitArgs,
    TasksCommand, WaitArgs, follow,
};

/// What a client command was asked to do.
pub(crate) enum Request {
    /// `aihost submit`.
    Submit(SubmitArgs),
    /// `aihost run`.
    Run(RunArgs),
    /// `aihost tasks ...`.
    Tasks(TasksCommand),
}

/// Runs one client command against `default_url` unless `--url` is given; answers the exit
/// code (see the module docs of `client`).
pub(crate) async fn run(request: Request, default_url: String) -> ExitCode {
    match dispatch(request, default_url).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("aihost: {e} [{}]", e.code());
            ExitCode::from(e.exit_code())
        }
    }
}

fn connect(conn: &ConnArgs, default_url: &str) -> ClientResult<Client> {
    Client::new(
        conn.url.as_deref().unwrap_or(default_url),
        conn.api_key.clone(),
    )
}

async fn dispatch(request: Request, default_url: String) -> ClientResult<u8> {
    match request {
        Request::Submit(args) => {
            let client = connect(&args.conn, &default_url)?;
            let mut input = read_input(args.input.as_deref())?;
            for (name, path) in pairs(&args.upload, "--upload")? {
                let key = upload(&client, Path::new(&path)).await?;
                set_path(&mut input, &name, Value::String(key))?;
            }
            let mut body = json!({"type": args.task_type, "input": input});
            if let Some(p) = args.priority {
                body["priority"] = json!(p);
            }
            if let Some(n) = args.max_attempts {
                body["max_attempts"] = json!(n);
            }
            let task = client.post("/api/tasks", Some(body)).await?;
            finish(&client, task, &args.wait).await
        }
        Request::Run(args) => {
            let client = connect(&args.conn, &default_url)?;
            let mut params = Map::new();
            for (name, value) in pairs(&args.param, "--param")? {
                let v = serde_json::from_str(&value).unwrap_or(Value::String(value));
                params.insert(name, v);
            }
            for (name, path) in pairs(&args.upload, "--upload")? {
                let key = upload(&client, Path::new(&path)).await?;
                params.insert(name, Value::String(key));
            }
            let path = format!("/api/workflows/{}", url_segment(&args.workflow));
            let task = client.post(&path, Some(Value::Object(params))).await?;
            finish(&client, task, &args.wait).await
        }
        Request::Tasks(command) => tasks(command, &default_url).await,
    }
}

async fn tasks(command: TasksCommand, default_url: &str) -> ClientResult<u8> {
    match command {
        TasksCommand::List {
            status,
            task_type,
            limit,
            cursor,
            json,
            conn,
        } => {
            let client = connect(&conn, default_url)?;
            let mut query = vec![format!("limit={limit}")];
            if let Some(s) = status {
                query.push(format!("status={}", url_segment(&s.to_uppercase())));
            }
            if let Some(t) = task_type {
                query.push(format!("type={}", url_segment(&t)));
            }
            if let Some(c) = cursor {
                query.push(format!("cursor={}", url_segment(&c)));
            }
            let page = client
                .get(&format!("/api/tasks?{}", query.join("&")))
                .await?;
            if json {
                print_json(&page);
            } else {
                for t in page["tasks"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<10}  {:<24}  {}/{}  {}",
                        t["task_id"].as_str().unwrap_or("?"),
                        t["status"].as_str().unwrap_or("?"),
                        t["type"].as_str().unwrap_or("?"),
                        t["attempts"],
                        t["max_attempts"],
                        t["created_at"].as_str().unwrap_or(""),
                    );
                }
                if let Some(next) = page["next_cursor"].as_str() {
                    eprintln!("more: --cursor {next}");
                }
            }
            Ok(0)
        }
        TasksCommand::Show { id, conn } => {
            let client = connect(&conn, default_url)?;
            print_json(&client.get(&task_path(&id, "")).await?);
            Ok(0)
        }
        TasksCommand::Cancel { id, conn } => {
            let client = connect(&conn, default_url)?;
            print_json(&client.post(&task_path(&id, "/cancel"), None).await?);
            Ok(0)
        }
        TasksCommand::Retry {
            id,
            max_attempts,
            wait,
            conn,
        } => {
            let client = connect(&conn, default_url)?;
            let query = max_attempts.map_or(String::new(), |n| format!("?max_attempts={n}"));
            let task = client
                .post(&format!("{}{query}", task_path(&id, "/retry")), None)
                .await?;
            finish(&client, task, &wait).await
        }
        TasksCommand::Delete { id, conn } => {
            let client = connect(&conn, default_url)?;
            client.delete(&task_path(&id, "")).await?;
            eprintln!("deleted {id}");
            Ok(0)
        }
        TasksCommand::Watch { id, out, conn } => {
            let client = connect(&conn, default_url)?;
            let wait = WaitArgs { wait: true, out };
            let task = client.get(&task_path(&id, "")).await?;
            finish(&client, task, &wait).await
        }
    }
}

/// After a submit: print the task, or follow it to its end, download its outputs and answer
/// the exit code of its status.
async fn finish(client: &Client, task: Value, wait: &WaitArgs) -> ClientResult<u8> {
    if !wait.wait && wait.out.is_none() {
        print_json(&task);
        return Ok(0);
    }
    let id = task["task_id"]
        .as_str()
        .ok_or_else(|| ClientError::Unreachable(format!("the answer has no task_id: {task}")))?
        .to_owned();
    eprintln!("task {id} ({})", client.base());
    let task = if task["status"].as_str().is_some_and(follow::is_terminal) {
        task
    } else {
        follow::until_done(client, &id).await?
    };
    let status = task["status"].as_str().unwrap_or("").to_owned();
    if let Some(dir) = &wait.out
        && status == "COMPLETED"
    {
        download_outputs(client, &task, dir).await?;
    }
    print_json(&task);
    Ok(match status.as_str() {
        "COMPLETED" => 0,
        "CANCELLED" => {
            eprintln!("aihost: task {id} was cancelled");
            EXIT_CANCELLED
        }
        _ => {
            let code = task.pointer("/error/code").and_then(Value::as_str);
            let message = task.pointer("/error/message").and_then(Value::as_str);
            eprintln!(
                "aihost: task {id} failed: {} [{}]",
                message.unwrap_or("no message"),
                code.unwrap_or("unknown")
            );
            EXIT_FAILED
        }
    })
}

/// Downloads every output of a finished task into `dir` (created if needed), each under the
/// last part of its storage key.
async fn download_outputs(client: &Client, task: &Value, dir: &Path) -> ClientResult<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ClientError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let outputs = task
        .pointer("/result/outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, output) in outputs.iter().enumerate() {
        let Some(url) = output["url"].as_str() else {
            continue;
        };
        let name = output["key"]
            .as_str()
            .and_then(|k| k.rsplit('/').next())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .map_or_else(|| format!("output-{i}"), str::to_owned);
        let file = dir.join(&name);
        let n = client.download(url, &file).await?;
        eprintln!("saved {} ({n} bytes)", file.display());
    }
    Ok(())
}

async fn upload(client: &Client, path: &Path) -> ClientResult<String> {
    let key = client.upload(path).await?;
    eprintln!("uploaded {} as {key}", path.display());
    Ok(key)
}

/// The input given with `--input`: JSON, or `@file` holding JSON; `{}` when absent.
fn read_input(arg: Option<&str>) -> ClientResult<Value> {
    let Some(arg) = arg else {
        return Ok(json!({}));
    };
    let (text, from) = match arg.strip_prefix('@') {
        Some(file) => (
            std::fs::read_to_string(file)
                .map_err(|e| ClientError::Usage(format!("--input: cannot read {file}: {e}")))?,
            file.to_owned(),
        ),
        None => (arg.to_owned(), "--input".to_owned()),
    };
    serde_json::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("{from} is not valid JSON: {e}")))
}

/// `NAME=VALUE` arguments, split at the first `=` (an `--upload` needs a file after it).
fn pairs(args: &[String], flag: &str) -> ClientResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for a in args {
        let Some((k, v)) = a.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(ClientError::Usage(format!(
                "{flag} {a:?}: expected NAME=VALUE"
            )));
        };
        if flag == "--upload" && v.is_empty() {
            return Err(ClientError::Usage(format!("{flag} {k}=: no file given")));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Sets `value` at the dotted `path` of the object `input`, creating objects on the way.
fn set_path(input: &mut Value, path: &str, value: Value) -> ClientResult<()> {
    let mut at = input;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(obj) = at.as_object_mut() else {
            return Err(ClientError::Usage(format!(
                "--upload {path}: the input at {:?} is not an object",
                parts[..i].join(".")
            )));
        };
        if i + 1 == parts.len() {
            obj.insert((*part).to_owned(), value);
            return Ok(());
        }
        at = obj.entry((*part).to_owned()).or_insert_with(|| json!({}));
    }
    Ok(())
}

/// `/api/tasks/{id}{suffix}`, the id checked to be a UUID so that nothing else reaches the
/// path.
fn task_path(id: &str, suffix: &str) -> String {
    format!("/api/tasks/{}{suffix}", url_segment(id))
}

/// Percent-encodes one path segment or query value.
fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{pairs, read_input, set_path};

    #[test]
    fn inputs_params_and_paths() {
        assert_eq!(read_input(None).unwrap(), json!({}));
        assert_eq!(read_input(Some(r#"{"a":1}"#)).unwrap(), json!({"a": 1}));
        let bad = read_input(Some("{nope")).unwrap_err().to_string();
        assert!(bad.contains("not valid JSON"), "{bad}");
        assert!(read_input(Some("@/no/such/file.json")).is_err());
        let p = pairs(&["a=b=c".into()], "--param").unwrap();
        assert_eq!(p, vec![("a".to_owned(), "b=c".to_owned())]);
        assert!(pairs(&["nokey".into()], "--param").is_err());
        assert!(pairs(&["x=".into()], "--upload").is_err());
        let mut v = json!({"a": {"k": 1}});
        set_path(&mut v, "a.b", json!("key")).unwrap();
        set_path(&mut v, "c", json!(2)).unwrap();
        assert_eq!(v, json!({"a": {"k": 1, "b": "key"}, "c": 2}));
        assert!(set_path(&mut json!({"a": 1}), "a.b", json!(0)).is_err());
    }
}
