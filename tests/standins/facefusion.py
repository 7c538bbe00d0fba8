#!/usr/bin/env python3
"""A stand-in for FaceFusion 3.8.1's `facefusion.py`, for tests (Python standard library only).

It follows the CLI contract recorded from real runs (research/facefusion.md): the flags and
choices of `headless-run`, argparse errors with exit 2, log and tqdm progress lines on stderr in
the real format (stdout stays empty), job files under --jobs-path, the temp folder
<temp-path>/facefusion/<target stem>/, and the real exit codes including the silent ones. It
does no face work: the output is a copy of the target.

Scenario switches (environment):
  FACEFUSION_STANDIN_SCENARIO   one of: models_missing, model_corrupt, model_load_failed,
                                no_source_face, content_declined, job_collision,
                                ffmpeg_missing, silent_audio, traceback, interrupted (SIGINT
                                to itself after analysing a video: exit 0 without output)
  FACEFUSION_STANDIN_FRAME_DELAY  seconds to sleep per video frame (slow mode, for cancel tests);
                                in slow mode a helper child (standing for ffmpeg) runs in the
                                same process group. SIGTERM kills by default; SIGINT → exit 0
                                after finishing, without output (as the real one).
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

VERSION = "FaceFusion 3.8.1"
IMAGE_EXTS = {"bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp"}
VIDEO_EXTS = {"avi", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "mxf", "webm", "wmv"}
SWAPPER_MODELS = [
    "blendswap_256", "ghost_1_256", "ghost_2_256", "ghost_3_256", "hififace_unofficial_256",
    "hyperswap_1a_256", "hyperswap_1b_256", "hyperswap_1c_256", "inswapper_128",
    "inswapper_128_fp16", "simswap_256", "simswap_unofficial_512", "uniface_256",
]
ENHANCER_MODELS = [
    "codeformer", "gfpgan_1.2", "gfpgan_1.3", "gfpgan_1.4", "gpen_bfr_256", "gpen_bfr_512",
    "gpen_bfr_1024", "gpen_bfr_2048", "restoreformer_plus_plus",
]
PROCESSORS = [
    "age_modifier", "background_remover", "deep_swapper", "expression_restorer",
    "face_debugger", "face_editor", "face_enhancer", "face_swapper", "frame_colorizer",
    "frame_enhancer", "lip_syncer",
]
SCALES = [i * 0.25 for i in range(1, 33)]
STEPS_005 = [round(i * 0.05, 2) for i in range(0, 21)]
SCENARIO = os.environ.get("FACEFUSION_STANDIN_SCENARIO", "")
FRAME_DELAY = float(os.environ.get("FACEFUSION_STANDIN_FRAME_DELAY", "0") or 0)


def log(module, message):
    sys.stderr.write("[FACEFUSION.%s] %s\n" % (module, message))
    sys.stderr.flush()


def pixel_boosts(model):
    if model.startswith("inswapper_"):
        return ["128x128", "256x256", "384x384", "512x512", "768x768", "1024x1024"]
    if model == "blendswap_256":
        return ["256x256", "384x384", "512x512", "768x768", "1024x1024"]
    if model == "simswap_unofficial_512":
        return ["512x512", "768x768", "1024x1024"]
    return ["256x256", "512x512", "768x768", "1024x1024"]


def build_parser():
    parser = argparse.ArgumentParser(prog="facefusion.py")
    parser.add_argument("-v", "--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("headless-run")
    p.add_argument("--config-path", default="facefusion.ini")
    p.add_argument("--temp-path", default=None)
    p.add_argument("--jobs-path", default=".jobs")
    p.add_argument("-s", "--source-paths", nargs="+")
    p.add_argument("-t", "--target-path")
    p.add_argument("-o", "--output-path")
    p.add_argument("--face-detector-model", choices=["many", "retinaface", "scrfd", "yolo_face", "yunet"], default="yolo_face")
    p.add_argument("--face-detector-score", type=float, choices=STEPS_005, default=0.5)
    p.add_argument("--face-landmarker-model", choices=["many", "2dfan4", "peppa_wutz"], default="2dfan4")
    p.add_argument("--face-selector-mode", choices=["many", "one", "reference"], default="reference")
    p.add_argument("--face-selector-order", choices=["left-right", "right-left", "top-bottom", "bottom-top", "small-large", "large-small", "best-worst", "worst-best"], default="large-small")
    p.add_argument("--face-selector-gender", choices=["auto", "female", "male"])
    p.add_argument("--face-selector-race", choices=["auto", "white", "black", "latino", "asian", "indian", "arabic"])
    p.add_argument("--reference-face-position", type=int, default=0)
    p.add_argument("--reference-face-distance", type=float, choices=STEPS_005, default=0.3)
    p.add_argument("--reference-frame-number", type=int, default=0)
    p.add_argument("--face-mask-types", nargs="+", default=["box"])
    p.add_argument("--trim-frame-start", type=int)
    p.add_argument("--trim-frame-end", type=int)
    p.add_argument("--temp-frame-format", choices=["bmp", "jpeg", "png", "tiff"], default="png")
    p.add_argument("--output-image-quality", type=int, choices=range(0, 101), metavar="[0..100:1]", default=80)
    p.add_argument("--output-image-scale", type=float, choices=SCALES, default=1.0)
    p.add_argument("--output-audio-encoder", choices=["flac", "aac", "libmp3lame", "libopus", "libvorbis", "pcm_s16le", "pcm_s32le"], default="flac")
    p.add_argument("--output-audio-volume", type=int, choices=range(0, 101), metavar="[0..100:1]", default=100)
    p.add_argument("--output-video-encoder", choices=["libx264", "libx264rgb", "libx265", "libvpx-vp9", "h264_nvenc", "h264_qsv", "hevc_nvenc", "hevc_qsv", "rawvideo"], default="libx264")
    p.add_argument("--output-video-preset", choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"], default="veryfast")
    p.add_argument("--output-video-quality", type=int, choices=range(0, 101), metavar="[0..100:1]", default=80)
    p.add_argument("--output-video-scale", type=float, choices=SCALES, default=1.0)
    p.add_argument("--output-video-fps", type=float)
    p.add_argument("--workflow-mode", choices=["auto", "image-to-image", "image-to-video"], default="auto")
    p.add_argument("--workflow-strategy", choices=["disk", "memory"], default="memory")
    p.add_argument("--processors", nargs="+", choices=PROCESSORS, default=["face_swapper"])
    p.add_argument("--face-enhancer-model", choices=ENHANCER_MODELS, default="gfpgan_1.4")
    p.add_argument("--face-enhancer-blend", type=int, choices=range(0, 101), metavar="[0..100:1]", default=80)
    p.add_argument("--face-enhancer-weight", type=float, choices=STEPS_005, default=0.5)
    p.add_argument("--face-swapper-model", choices=SWAPPER_MODELS, default="hyperswap_1a_256")
    p.add_argument("--face-swapper-pixel-boost", choices=["128x128", "256x256", "384x384", "512x512", "768x768", "1024x1024"])
    p.add_argument("--face-swapper-weight", type=float, choices=STEPS_005, default=0.5)
    p.add_argument("--execution-device-ids", nargs="+", default=["0"])
    p.add_argument("--execution-providers", nargs="+", choices=["cpu"], default=["cpu"])
    p.add_argument("--execution-thread-count", type=int, choices=range(1, 33), metavar="[1..32:1]", default=8)
    p.add_argument("--download-providers", nargs="+", choices=["github", "huggingface"], default=["github", "huggingface"])
    p.add_argument("--video-memory-strategy", choices=["strict", "moderate", "tolerant"], default="strict")
    p.add_argument("--log-level", choices=["error", "warn", "info", "debug"], default="info")
    return parser, p


def ext_of(path):
    return os.path.splitext(path or "")[1].lower().lstrip(".")


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", head[16:24])
    return None


def probe(path):
    """(width, height, fps, frames) of a video or image, through ffprobe (as FaceFusion does)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height,r_frame_rate,nb_frames,duration", "-of", "json", path],
        capture_output=True, text=True)
    streams = json.loads(out.stdout or "{}").get("streams") or [{}]
    s = streams[0]
    num, _, den = (s.get("r_frame_rate") or "25/1").partition("/")
    fps = float(num) / float(den or 1) if float(den or 1) else 25.0
    frames = s.get("nb_frames")
    if frames and frames.isdigit():
        total = int(frames)
    else:
        total = int(round(float(s.get("duration") or 0) * fps))
    return int(s.get("width") or 0), int(s.get("height") or 0), fps, max(total, 1)


def fmt_time(seconds):
    m, s = divmod(int(seconds), 60)
    return "%02d:%02d" % (m, s)


class Bar:
    """A tqdm bar as FaceFusion draws it when stderr is not a terminal (ascii=' =', width 10)."""

    def __init__(self, desc, total, postfix):
        self.desc, self.total, self.postfix = desc, total, postfix
        self.n, self.start, self.last_len = 0, time.time(), 0
        self.draw(with_postfix=False)
        self.draw()

    def line(self, with_postfix=True):
        pct = int(self.n * 100 / self.total) if self.total else 100
        filled = int(self.n * 10 / self.total) if self.total else 10
        bar = "=" * filled + " " * (10 - filled)
        elapsed = time.time() - self.start
        if self.n == 0 or elapsed <= 0:
            rate, remaining = "?frame/s", "?"
        else:
            per_sec = self.n / elapsed
            rate = "%.2fframe/s" % per_sec if per_sec >= 1 else "%5.2fs/frame" % (1 / per_sec)
            remaining = fmt_time((self.total - self.n) / per_sec)
        extra = ", " + self.postfix if (with_postfix and self.postfix) else ""
        return "%s: %3d%%|%s| %d/%d [%s<%s, %s%s]" % (
            self.desc, pct, bar, self.n, self.total, fmt_time(elapsed), remaining, rate, extra)

    def draw(self, with_postfix=True):
        text = self.line(with_postfix)
        pad = " " * max(0, self.last_len - len(text))
        self.last_len = len(text)
        sys.stderr.write("\r" + text + pad)
        sys.stderr.flush()

    def update(self):
        self.n += 1
        self.draw()

    def close(self):
        self.draw()
        sys.stderr.write("\n")
        sys.stderr.flush()


def write_job(jobs_path, job_id, status, args):
    for folder in ("drafted", "queued", "completed", "failed"):
        os.makedirs(os.path.join(jobs_path, folder), exist_ok=True)
    for folder in ("drafted", "queued", "completed", "failed"):
        old = os.path.join(jobs_path, folder, job_id + ".json")
        if os.path.exists(old):
            os.remove(old)
    now = datetime.datetime.now().astimezone().isoformat()
    job = {"version": "1", "date_created": now, "date_updated": now,
           "steps": [{"args": args, "status": status if status != "failed" else "failed"}]}
    with open(os.path.join(jobs_path, status, job_id + ".json"), "w") as f:
        json.dump(job, f, indent=4)


def main():
    # Checked before argument parsing, like the real one (even --version exits 2).
    if SCENARIO == "ffmpeg_missing" or not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        log("CORE", "ffmpeg is not installed")
        return 2
    parser, _ = build_parser()
    if len(sys.argv) == 1:
        parser.print_help(sys.stdout)
        return 0
    args = parser.parse_args()
    if args.command != "headless-run":
        parser.print_help(sys.stdout)
        return 0
    if args.face_swapper_pixel_boost and args.face_swapper_pixel_boost not in pixel_boosts(args.face_swapper_model):
        parser.error("argument --face-swapper-pixel-boost: invalid choice: '%s' (choose from %s)" % (
            args.face_swapper_pixel_boost, ", ".join("'%s'" % c for c in pixel_boosts(args.face_swapper_model))))
    quiet = args.log_level in ("warn", "error")
    if not os.path.isdir(os.path.join("facefusion", "processors", "modules")):
        sys.stderr.write("Traceback (most recent call last):\n  File \"facefusion.py\", line 10, in <module>\n"
                         "AttributeError: 'NoneType' object has no attribute 'get'\n")
        return 1
    started = time.time()

    jobs_path = os.path.abspath(args.jobs_path)
    job_id = "headless-" + datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    for folder in ("drafted", "queued", "completed", "failed"):
        if os.path.exists(os.path.join(jobs_path, folder, job_id + ".json")) or SCENARIO == "job_collision":
            return 1  # the real one prints nothing at all
    step_args = {"source_paths": args.source_paths, "target_path": args.target_path,
                 "output_path": args.output_path, "face_swapper_model": args.face_swapper_model,
                 "processors": args.processors}
    write_job(jobs_path, job_id, "queued", step_args)

    def fail(message=None, module="CORE"):
        if message and args.log_level != "error":
            log(module, message)
        write_job(jobs_path, job_id, "failed", step_args)
        return 1

    if not quiet:
        log("CORE", "processing step 1 of 1")
    if SCENARIO == "models_missing":
        for n in (1, 2, 3):
            log("DOWNLOAD", "validating hash for nsfw_%d failed" % n)
        return fail()
    if SCENARIO == "model_corrupt":
        log("DOWNLOAD", "validating source for %s failed" % args.face_swapper_model)
        log("DOWNLOAD", "deleting corrupt source for %s" % args.face_swapper_model)
        return fail()
    sources = args.source_paths or []
    if not sources or not all(os.path.isfile(s) and ext_of(s) in IMAGE_EXTS for s in sources):
        return fail("choose an image for the source!")
    if SCENARIO == "no_source_face":
        return fail("no source face detected!")
    target = args.target_path
    target_ext = ext_of(target)
    if not target or not os.path.isfile(target) or target_ext not in IMAGE_EXTS | VIDEO_EXTS:
        return fail("choose an image or video for the target!")
    output = args.output_path
    out_dir = os.path.dirname(output or "")
    if not output or not out_dir or not os.path.isdir(out_dir) or os.path.isdir(output):
        return fail("specify the output image or video within a directory!")
    if ext_of(output) != target_ext:
        return fail("match the target and output extension!")
    if SCENARIO == "model_load_failed":
        log("INFERENCE_MANAGER", "loading model %s failed" % args.face_swapper_model)
        os._exit(1)  # hard exit, job left in queued/

    # The temp folder is per target stem: concurrent runs sharing it destroy each other.
    temp_root = args.temp_path or os.environ.get("TMPDIR") or "/tmp"
    temp_dir = os.path.join(temp_root, "facefusion", os.path.splitext(os.path.basename(target))[0])
    shutil.rmtree(temp_dir, ignore_errors=True)
    os.makedirs(temp_dir, exist_ok=True)
    marker = os.path.join(temp_dir, "temp." + target_ext)
    with open(marker, "w") as f:
        f.write(str(os.getpid()))

    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))

    def temp_intact():
        try:
            with open(marker) as f:
                return f.read() == str(os.getpid())
        except OSError:
            return False

    def crash():
        sys.stderr.write("Traceback (most recent call last):\n"
                         "  File \"facefusion/face_masker.py\", line 173, in extract_vision_mask\n"
                         "FileNotFoundError: [Errno 2] No such file or directory: '%s'\n" % marker)
        return 1

    if SCENARIO == "traceback":
        return crash()

    if target_ext in IMAGE_EXTS:
        size = png_size(target)
        if size is None:
            w, h, _, _ = probe(target)
        else:
            w, h = size
        scale = args.output_image_scale
        if not quiet:
            log("TO_IMAGE", "copying image with a resolution of %dx%d" % (w, h))
            log("TO_IMAGE", "finalizing image with a resolution of %dx%d" % (int(w * scale), int(h * scale)))
        if SCENARIO == "content_declined":
            shutil.rmtree(temp_dir, ignore_errors=True)
            return fail()
        if not temp_intact():
            return crash()
        shutil.copyfile(target, output)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not quiet:
            log("TO_IMAGE", "processing to image succeeded in %s seconds" % round(time.time() - started, 2))
        write_job(jobs_path, job_id, "completed", step_args)
        return 0

    # Video.
    w, h, fps, total = probe(target)
    start = max(0, min(args.trim_frame_start or 0, total))
    end = max(start, min(args.trim_frame_end if args.trim_frame_end is not None else total, total))
    frames = max(end - start, 1)
    helper = None
    if FRAME_DELAY > 0:
        # Stands for the ffmpeg writer: same process group, does not exit on its own.
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)",
                                   "facefusion-standin-helper", temp_dir],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    declined = SCENARIO == "content_declined"
    if not quiet:
        bar = Bar("analysing", frames, "rate=%d" % (100 if declined else 0))
        for _ in range(frames):
            bar.update()
        bar.close()
    if declined:
        shutil.rmtree(temp_dir, ignore_errors=True)
        return fail()
    if SCENARIO == "interrupted":
        os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C reached the group
    providers = "execution_providers=[%s]" % ", ".join("'%s'" % p for p in args.execution_providers)
    if args.workflow_strategy == "disk" and not quiet:
        log("TO_VIDEO", "extracting frames with a resolution of %dx%d and %s frames per second" % (w, h, fps))
        bar = Bar("extracting", frames, "")
        for _ in range(frames):
            bar.update()
        bar.close()
    bar = Bar("processing", frames, providers) if not quiet else None
    for _ in range(frames):
        if FRAME_DELAY:
            time.sleep(FRAME_DELAY)
        if bar:
            bar.update()
    if bar:
        bar.close()
    if args.workflow_strategy == "disk" and not quiet:
        ow, oh = int(w * args.output_video_scale) // 2 * 2, int(h * args.output_video_scale) // 2 * 2
        log("TO_VIDEO", "merging video with a resolution of %dx%d and %s frames per second" % (ow, oh, fps))
        bar = Bar("merging", frames, "")
        for _ in range(frames):
            bar.update()
        bar.close()
    if helper:
        helper.kill()
        helper.wait()
    if interrupted:
        shutil.rmtree(temp_dir, ignore_errors=True)
        return 0  # SIGINT: exit 0, no message, no output, job left in queued/
    if not temp_intact():
        return crash()
    shutil.copyfile(target, output)
    if SCENARIO == "silent_audio" or (target_ext in ("mp4", "mov", "m4v") and args.output_audio_encoder == "flac"):
        log("TO_VIDEO", "restoring audio skipped")
    shutil.rmtree(temp_dir, ignore_errors=True)
    if not quiet:
        log("TO_VIDEO", "processing to video succeeded in %s seconds" % round(time.time() - started, 2))
    write_job(jobs_path, job_id, "completed", step_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
