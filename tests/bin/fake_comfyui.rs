//! `fake-comfyui --port N --dir FOLDER`: the fake ComfyUI of the support crate as a process
//! of its own, so the comfyui plugin can launch and supervise it as it would a real ComfyUI
//! (`tests/e2e/comfyui_supervised.rs`). It serves until killed. `FAKE_COMFYUI_HOLD=1` holds
//! every prompt at its first node boundary (a stalled ComfyUI).

fn main() {
    let mut port: Option<u16> = None;
    let mut dir: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()),
            "--dir" => dir = args.next().map(Into::into),
            other => {
                eprintln!("fake-comfyui: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let (Some(port), Some(dir)) = (port, dir) else {
        eprintln!("usage: fake-comfyui --port N --dir FOLDER");
        std::process::exit(2);
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(aihost_tests::fake_comfyui::serve_forever(
            port,
            dir,
            std::env::var("FAKE_COMFYUI_HOLD").is_ok_and(|v| v == "1"),
        ));
}
