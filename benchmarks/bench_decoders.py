"""Video decoders side by side: decord 0.6.0, decord2 3.4.0 (its maintained fork) and PyAV.

Both decord releases install the same ``decord`` module, so they cannot share one environment:
each is installed once with ``pip install --no-deps --target`` into its own folder under
``benchmarks/results/tmp/decoders/`` and run in a subprocess with that folder first on
``sys.path`` (PyAV and numpy come from the venv). Each worker records, per video:

- every video the test fixtures make (``tests/unit/video_fixtures.make_video_files``, the hostile
  and corrupt inputs of ``tests/reliability``, a shard sample) plus a few codecs our datasets hold
  that no fixture makes (cinepak, MPEG-4 part 2 AVI, VP9 WebM, HEVC, AV1, variable frame rate);
- whether it opens (else the error), the frame count and size it states, and the frames at a fixed
  set of indices, read from the path and from the bytes (as the loader reads shard samples);
  frames are compared with PyAV's (our ``open_video(..., "pyav")``): bit-identical, else the
  max abs difference and the fraction of differing values (the same frames rotated for display
  are reported as such);
- a worker that crashes (a signal) or hangs (``--timeout``) on a video is recorded as such and
  restarted on the next one.

Speed: frames/s on one thread on synthetic 426x320 clips (bench_data's set, 96 frames, H.264),
each clip opened from its bytes and read with one ``get_batch`` of 16 frames at stride 4 as the
loader does (open included); decoders run in turn within each round (interleaved rounds, the
first dropped), all on the same indices per round; medians and per-round ratios
decord2 / decord 0.6 and decord2 / PyAV.

    python -m benchmarks.bench_decoders            # ~30 s on 2 cores; -> benchmarks/results/decoders.json
    python -m benchmarks.bench_decoders --quick    # smoke test: tiny clips, one round
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE,
    RESULTS,
    ROOT,
    command,
    figure,
    interleaved,
    load_avg,
    medians,
    paired_ratio,
    write_result,
)

OUT = RESULTS / "decoders.json"
# name -> pip requirement (None: PyAV from the venv, through our reader)
DECODERS: dict[str, str | None] = {"pyav": None, "decord0.6": "decord==0.6.0", "decord2": "decord2==3.4.0"}
# Fixture files that are not videos one should get frames from: the handling of bad input.
BAD = {"missing", "zero", "random", "text", "truncated", "audio", "front_moov_cut", "bomb_avi", "bomb_y4m",
       "undecodable"}
EXTRA = "not a test fixture: a codec/container our datasets hold"


# ------------------------------------------------------------------------------------------------
# The decoders, installed side by side


def install(spec: str, cache: Path) -> Path:
    """``pip install --no-deps --target`` once per requirement (cached); returns the folder."""
    target = cache / "decoders" / spec.replace("==", "-")
    if (target / ".installed").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))  # a concurrent run has its own
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--target", str(partial), spec], check=True)
    (partial / ".installed").write_text(spec + "\n")
    shutil.rmtree(target, ignore_errors=True)  # an unfinished earlier install (no .installed)
    try:
        partial.rename(target)
    except OSError:  # another run finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def ffmpeg_libs(target: Path) -> list[str]:
    """The libavcodec/libavformat a wheel bundles (their sonames give the FFmpeg major version)."""
    return sorted(p.name for p in target.glob("*.libs/libav[cf]o*.so*"))


# ------------------------------------------------------------------------------------------------
# Every video the tests make, plus a few codecs no fixture makes


QUIET = {"libx265": {"x265-params": "log-level=error"}}


def _write_frames(path: Path, frames: Any, codec: str, pix_fmt: str, fps: int = 25, fmt: str | None = None,
                  pts: list[int] | None = None, time_base: Fraction | None = None) -> Path:
    import av
    import numpy as np

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps), options=QUIET.get(codec, {}))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if time_base is not None:
            stream.time_base = time_base
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def render_videos(root: Path) -> dict[str, dict[str, Any]]:
    """name -> {"path", "source"}: the test fixtures' videos (bad ones included) and the extras."""
    from pipeline.video.encode import encode_h264
    from tests.unit.shard_fixtures import tiny_mp4
    from tests.unit.video_fixtures import make_video_files, mjpeg_claiming, moving_frames

    root.mkdir(parents=True, exist_ok=True)
    vf = make_video_files(root / "video_fixtures")
    videos: dict[str, dict[str, Any]] = {}
    for name in ("h264", "mjpeg_avi", "ffv1_odd_mkv", "fps60", "short", "rotated", "front_moov_cut", "truncated",
                 "missing", "zero", "random", "text", "audio"):
        videos[name] = {"path": getattr(vf, name), "source": f"tests/unit/video_fixtures.py: {name}"}
    d = root / "other_fixtures"
    d.mkdir(exist_ok=True)
    (d / "shard_sample.mp4").write_bytes(tiny_mp4(0))
    videos["shard_sample"] = {"path": d / "shard_sample.mp4", "source": "tests/unit/shard_fixtures.py: tiny_mp4"}
    (d / "wrong_ext.avi").write_bytes(tiny_mp4(2))
    videos["wrong_ext"] = {"path": d / "wrong_ext.avi", "source": "tests/reliability/test_corrupt_data.py: an mp4 named .avi"}
    (d / "undecodable.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 3000)
    videos["undecodable"] = {"path": d / "undecodable.mp4", "source": "tests/reliability/test_corrupt_data.py: undecodable"}
    videos["bomb_avi"] = {"path": mjpeg_claiming(d / "bomb.avi", 60000),
                          "source": "tests/reliability/test_hostile_input.py: MJPEG claiming 60000x60000"}
    (d / "bomb.y4m").write_bytes(b"YUV4MPEG2 W9000 H9000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1024))
    videos["bomb_y4m"] = {"path": d / "bomb.y4m", "source": "tests/reliability/test_hostile_input.py: y4m claiming 9000x9000"}
    (d / "long.mp4").write_bytes(encode_h264(moving_frames(40), 12))
    videos["long_12fps"] = {"path": d / "long.mp4", "source": "tests/reliability/test_hostile_input.py: long.mp4"}
    e = root / "extras"
    e.mkdir(exist_ok=True)
    frames = moving_frames(30)
    for name, file, codec, pix_fmt in (("cinepak_avi", "cinepak.avi", "cinepak", "rgb24"),
                                       ("mpeg4_avi", "mpeg4.avi", "mpeg4", "yuv420p"),
                                       ("vp9_webm", "vp9.webm", "libvpx-vp9", "yuv420p"),
                                       ("hevc_mp4", "hevc.mp4", "libx265", "yuv420p"),
                                       ("av1_mp4", "av1.mp4", "libsvtav1", "yuv420p")):
        try:
            videos[name] = {"path": _write_frames(e / file, frames, codec, pix_fmt), "source": EXTRA}
        except Exception as exc:  # an encoder this PyAV build lacks: say so, go on
            print(f"  extra {name} not rendered: {exc}", flush=True)
    # variable frame rate: 30 frames whose gaps alternate 1/50 s and 3/50 s (ms timestamps)
    pts = [0]
    for i in range(1, 30):
        pts.append(pts[-1] + (20 if i % 2 else 60))
    videos["vfr_mp4"] = {"path": _write_frames(e / "vfr.mp4", frames, "libx264", "yuv420p", fmt="mp4", pts=pts,
                                               time_base=Fraction(1, 1000)), "source": EXTRA + " (variable frame rate)"}
    return videos


# ------------------------------------------------------------------------------------------------
# The worker: one decoder, in its own process


def _detail(exc: BaseException, path: Path) -> str:
    """One line: the error type and message, without decord's ``[time] file.cc:line:`` prefixes,
    its C++ stack trace or the (long) video path."""
    text = " ".join(str(exc).split()).split(" Stack trace")[0] or type(exc).__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+?\.(?:cc|h):\d+: ", "", text).replace(str(path), "<path>")
    return f"{type(exc).__name__}: {text[:160]}"


class _Decord:
    def __init__(self, source: Path | bytes) -> None:
        import decord

        file: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        self.vr = decord.VideoReader(file, ctx=decord.cpu(0), num_threads=1)

    def __len__(self) -> int:
        return len(self.vr)

    def get(self, idx: list[int]) -> Any:
        return self.vr.get_batch(idx).asnumpy()


class _PyAV:
    def __init__(self, source: Path | bytes) -> None:
        from pipeline.video.decode import open_video

        self.reader = open_video(source, "pyav", threads=1)

    def __len__(self) -> int:
        return self.reader.num_frames

    def get(self, idx: list[int]) -> Any:
        return self.reader.get(idx)


def _check(open_: Any, name: str, path: Path, indices: list[int], frames_dir: Path, repeats: int) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    try:
        reader = open_(path)
    except Exception as exc:
        return {"opens": False, "error": _detail(exc, path)}
    out.update(opens=True, frames=len(reader))
    idx = [i for i in indices if i < len(reader)]
    out["indices"] = idx
    try:
        frames = reader.get(idx)
    except Exception as exc:
        out["decode_error"] = _detail(exc, path)
        return out
    out["shape"] = list(frames.shape)
    np.save(frames_dir / f"{name}.npy", frames)
    try:  # the loader reads shard samples from bytes
        again = open_(path.read_bytes()).get(idx)
        out["bytes_same_as_path"] = bool(again.shape == frames.shape and (again == frames).all())
    except Exception as exc:
        out["bytes_error"] = _detail(exc, path)
    # the same read again (a new reader each time, from the path and from bytes in turn): same frames?
    errors, different, first_error = 0, 0, ""
    for i in range(repeats):
        try:
            again = open_(path if i % 2 else path.read_bytes()).get(idx)
        except Exception as exc:
            errors += 1
            first_error = first_error or _detail(exc, path)
            continue
        different += int(not (again.shape == frames.shape and (again == frames).all()))
    out["repeats"] = {"n": repeats, "errors": errors, "different": different, "first_error": first_error}
    return out


def _speed(open_: Any, clips: list[dict[str, Any]]) -> float:
    data = [Path(c["path"]).read_bytes() for c in clips]
    n = 0
    start = time.perf_counter()
    for blob, c in zip(data, clips):
        frames = open_(blob).get(c["indices"])
        n += len(frames)
    return n / (time.perf_counter() - start)


def worker(name: str, target: str, job_file: str) -> int:
    """Run a job (check or speed) for one decoder; one ``RESULT`` JSON line per item on stdout."""
    if target:
        sys.path.insert(0, target)
        import decord

        assert Path(decord.__file__).resolve().is_relative_to(Path(target).resolve()), decord.__file__
        open_: Any = _Decord
        info = {"version": decord.__version__, "module": str(Path(decord.__file__).parent)}
    else:
        import av

        open_ = _PyAV
        info = {"version": f"av {av.__version__}", "module": str(Path(av.__file__).parent),
                "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"]))}
    job = json.loads(Path(job_file).read_text())
    print("INFO " + json.dumps(info), flush=True)
    if job["mode"] == "speed":
        print("RESULT " + json.dumps({"fps": _speed(open_, job["clips"])}), flush=True)
        return 0
    frames_dir = Path(job["frames_dir"])
    frames_dir.mkdir(parents=True, exist_ok=True)
    for video in job["videos"]:
        print("BEGIN " + video["name"], flush=True)
        result = _check(open_, video["name"], Path(video["path"]), video["indices"], frames_dir, job["repeats"])
        print("RESULT " + json.dumps({"name": video["name"], **result}), flush=True)
    return 0


def run_worker(name: str, target: Path | None, job: dict[str, Any], tmp: Path, timeout: float) -> tuple[dict, list, str]:
    """(info, results, how it ended): one worker process; returns what it printed before it ended."""
    job_file = tmp / f"job_{name}.json"
    job_file.write_text(json.dumps(job, default=str))
    cmd = [sys.executable, "-m", "benchmarks.bench_decoders", "--worker", name, "--target", str(target or ""),
           "--job", str(job_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        stdout, ended = proc.stdout, ("ok" if proc.returncode == 0 else
                                      f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else
                                      f"exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        stdout, ended = (out.decode() if isinstance(out, bytes) else out), f"hung (killed after {timeout:.0f} s)"
    info, results, begun = {}, [], ""
    for line in stdout.splitlines():
        if line.startswith("INFO "):
            info = json.loads(line[5:])
        elif line.startswith("BEGIN "):
            begun = line[6:]
        elif line.startswith("RESULT "):
            results.append(json.loads(line[7:]))
            begun = ""
    return info, results, (ended if ended == "ok" else f"{ended} on {begun}" if begun else ended)


# ------------------------------------------------------------------------------------------------
# Comparison


def fixed_indices(n: int) -> list[int]:
    return sorted({i for i in (0, 1, 2, n // 4, n // 2, (3 * n) // 4, n - 2, n - 1) if 0 <= i < n})


def compare(a: Any, b: Any) -> dict[str, Any]:
    """``b`` (a decord) against ``a`` (PyAV), same indices."""
    import numpy as np

    if a.shape != b.shape:
        rotated = [k for k in (1, 3, 2) if np.rot90(a, k=k, axes=(1, 2)).shape == b.shape]
        for k in rotated:
            r = np.rot90(a, k=k, axes=(1, 2))
            if (r == b).all() or np.abs(r.astype(int) - b.astype(int)).max() <= 2:
                return {"vs_pyav": f"rotated for display by {90 * k} degrees ccw (shape {list(b.shape[1:3])} vs "
                                   f"{list(a.shape[1:3])}), max abs diff {int(np.abs(r.astype(int) - b.astype(int)).max())}"}
        return {"vs_pyav": f"shape {list(b.shape)} vs {list(a.shape)}"}
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if diff.max() == 0:
        return {"vs_pyav": "bit-identical"}
    return {"vs_pyav": "differs", "max_abs_diff": int(diff.max()), "frac_differing": round(float((diff > 0).mean()), 4)}


def summary(r: dict[str, Any]) -> str:
    if r.get("worker"):
        return r["worker"]
    if not r.get("opens"):
        return "refused: " + r.get("error", "")[:70]
    text = f"{r['frames']} frames"
    if "decode_error" in r:
        return text + ", decode failed: " + r["decode_error"][:60]
    if "vs_pyav" in r:
        text += ", " + r["vs_pyav"] + (f" (max {r['max_abs_diff']}, {r['frac_differing']:.1%})" if "max_abs_diff" in r else "")
    if r.get("bytes_same_as_path") is False or "bytes_error" in r:
        text += ", from bytes: " + r.get("bytes_error", "other frames")[:50]
    rep = r.get("repeats", {})
    if rep.get("errors") or rep.get("different"):
        text += f", read again {rep['n']}x: {rep['errors']} failed, {rep['different']} other frames"
    return text


def check_all(videos: dict[str, dict[str, Any]], targets: dict[str, Path | None], tmp: Path,
              timeout: float, repeats: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every decoder on every video. Returns (per video, per decoder info)."""
    import numpy as np

    from pipeline.core.errors import VideoError
    from pipeline.video.probe import probe

    table: dict[str, dict[str, Any]] = {}
    for name, v in videos.items():
        if "indices" in v:  # chosen by the caller
            table[name] = {"probe": f"{probe(v['path']).num_frames} frames"}
            continue
        try:
            n = probe(v["path"]).num_frames
        except VideoError as exc:
            n, table[name] = 0, {"probe": f"VideoError: {exc}"}
        else:
            table[name] = {"probe": f"{n} frames"}
        v["indices"] = fixed_indices(n) if n else [0, 1]
    for name, v in videos.items():
        table[name]["source"] = v["source"]
    infos: dict[str, dict] = {}
    for dec, target in targets.items():
        todo = [{"name": k, "path": str(v["path"]), "indices": v["indices"]} for k, v in videos.items()]
        while todo:
            info, results, ended = run_worker(dec, target, {"mode": "check", "videos": todo, "repeats": repeats,
                                                            "frames_dir": str(tmp / "frames" / dec)}, tmp,
                                              timeout * len(todo))
            infos[dec] = info or infos.get(dec, {})
            for r in results:
                table[r.pop("name")][dec] = r
            done = {r["name"] for r in todo[: len(results)]}
            todo = [t for t in todo if t["name"] not in done]
            if ended != "ok" and todo:  # the video it died on is recorded; go on with the next ones
                table[todo[0]["name"]][dec] = {"opens": False, "worker": ended}
                todo = todo[1:]
            elif ended != "ok":
                break
    for name, row in table.items():
        ref = tmp / "frames" / "pyav" / f"{name}.npy"
        for dec in targets:
            r = row.get(dec, {})
            mine = tmp / "frames" / dec / f"{name}.npy"
            if dec != "pyav" and ref.exists() and mine.exists() and r.get("indices") == row.get("pyav", {}).get("indices"):
                r.update(compare(np.load(ref), np.load(mine)))
            elif dec != "pyav" and ref.exists() and mine.exists():
                r["vs_pyav"] = f"other indices (count {r.get('frames')} vs pyav {row['pyav'].get('frames')})"
            row.setdefault("summary", {})[dec] = summary(r) if r else "not run"
    return table, infos


# ------------------------------------------------------------------------------------------------
# Speed


def speed_clips(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The 426x320 synthetic clips (bench_data's, cached) or, with --quick, three tiny H.264 clips."""
    from pipeline.video.probe import probe

    if args.quick:
        from pipeline.video.encode import encode_h264
        from tests.unit.video_fixtures import moving_frames

        d = args.tmp / "quick_clips"
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(3):
            p = d / f"clip{i}.mp4"
            p.write_bytes(encode_h264(moving_frames(48, 96, 128, seed=i), 30))
            paths.append(p)
    else:
        from benchmarks.common import synthetic_videos

        h, w = args.video_size
        root = CACHE / f"data_{args.videos}v_{args.video_frames}f_{w}x{h}" / "videos"  # shared with bench_data
        synthetic_videos(root, args.videos // 6, args.video_frames, (h, w))
        paths = sorted((root / "videos").rglob("*.mp4"))
    return [{"path": str(p), "num_frames": probe(p).num_frames} for p in paths]


def main(argv: list[str] | None = None) -> dict[str, Any] | int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny clips, one round")
    p.add_argument("--reps", type=int, default=7, help="speed rounds after one warm-up round")
    p.add_argument("--videos", type=int, default=24, help="synthetic speed clips (a multiple of 6)")
    p.add_argument("--video-frames", type=int, default=96)
    p.add_argument("--video-size", type=int, nargs=2, default=(320, 426), metavar=("H", "W"))
    p.add_argument("--num-frames", type=int, default=16, help="frames per get_batch")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20, help="reads of each video's frames again, to catch flaky decodes")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per video before a worker counts as hung")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--keep", action="store_true", help="keep the rendered videos and decoded frames (printed)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--target", default="", help=argparse.SUPPRESS)
    p.add_argument("--job", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.target, args.job)
    started, load_before = time.time(), load_avg()
    CACHE.mkdir(parents=True, exist_ok=True)
    # rendered videos, frames, job files: a folder of this run's own, removed at the end unless --keep
    args.tmp = Path(tempfile.mkdtemp(prefix="decoders_quick_" if args.quick else "decoders_", dir=CACHE))
    try:
        return run(args, argv, started, load_before)
    finally:
        if not args.keep:
            shutil.rmtree(args.tmp, ignore_errors=True)


def run(args: argparse.Namespace, argv: list[str] | None, started: float, load_before: list[float]) -> dict[str, Any]:
    import numpy as np

    from pipeline.video.sampling import train_clip_indices

    targets = {name: (install(spec, CACHE) if spec else None) for name, spec in DECODERS.items()}
    videos = render_videos(args.tmp / "videos")
    clips = speed_clips(args)
    for i, c in enumerate(clips[:2]):  # two speed clips, read as the loader does: 16 frames at stride 4
        videos[f"speed_clip_{i}"] = {"path": Path(c["path"]), "source": "the speed clips (bench_data's synthetic set)",
                                     "indices": list(range(3 + i, c["num_frames"], args.stride))[: args.num_frames]}
    print(f"decoders: {', '.join(DECODERS)}; {len(videos)} videos", flush=True)
    table, infos = check_all(videos, targets, args.tmp, args.timeout, 2 if args.quick else args.repeats)
    for name, t in targets.items():
        infos[name]["requirement"] = DECODERS[name] or "av (the venv's)"
        if t is not None:
            infos[name]["bundled_ffmpeg_libs"] = ffmpeg_libs(t)
    width = max(map(len, table))
    for name, row in table.items():
        print(f"{name:<{width}}  probe: {row['probe']}")
        for dec in DECODERS:
            print(f"{'':<{width}}  {dec:>9}: {row['summary'][dec]}")

    reps, warmup = (1, 0) if args.quick else (args.reps, 1)

    def case(dec: str) -> Any:
        calls = iter(range(10**6))  # the i-th call of every decoder is round i: same seed, same frames

        def measure() -> float:
            rng = np.random.default_rng(next(calls))
            job = [{**c, "indices": train_clip_indices(c["num_frames"], args.num_frames, args.stride, rng).tolist()}
                   for c in clips]
            _, results, ended = run_worker(dec, targets[dec], {"mode": "speed", "clips": job}, args.tmp, 600)
            if ended != "ok" or not results:
                raise RuntimeError(f"{dec} speed worker: {ended}")
            return results[0]["fps"]
        return measure

    print(f"speed: {len(clips)} clips, get_batch of {args.num_frames} frames at stride {args.stride}, 1 thread, "
          f"{reps} rounds after {warmup} warm-up", flush=True)
    values = interleaved({dec: case(dec) for dec in DECODERS}, reps=reps, warmup=warmup)
    med = medians(values)
    clip_desc = (f"{len(clips)} H.264 clips {'128x96 (quick)' if args.quick else f'{args.video_size[1]}x{args.video_size[0]}'}"
                 f", get_batch of {args.num_frames} frames at stride {args.stride} from bytes, open included, 1 thread")
    figures = [
        figure("decode speed: decord2 3.4.0 / decord 0.6.0", med["decord2"], med["decord0.6"], "frames/s, 1 thread",
               "decord 0.6.0 (2021, FFmpeg 4.1)", clip_desc, ratio=paired_ratio(values, "decord2", "decord0.6")),
        figure("decode speed: decord2 3.4.0 / PyAV", med["decord2"], med["pyav"], "frames/s, 1 thread",
               "PyAV through our reader (open_video 'pyav')", clip_desc, ratio=paired_ratio(values, "decord2", "pyav")),
    ]
    good = [n for n in table if n not in BAD]
    body = {
        "decoders": infos,
        "videos": table,
        "agreement": {dec: {"bit_identical": [n for n in good if table[n].get(dec, {}).get("vs_pyav") == "bit-identical"],
                            "other": {n: table[n]["summary"][dec] for n in good
                                      if table[n].get(dec, {}).get("vs_pyav") != "bit-identical"},
                            "bad_inputs": {n: table[n]["summary"][dec] for n in table if n in BAD}}
                      for dec in DECODERS if dec != "pyav"},
        "speed": {"clips": len(clips), "num_frames": args.num_frames, "stride": args.stride, "rounds": reps,
                  "warmup": warmup, "values": values, "medians": med},
        "medians": med,
        "figures": figures,
    }
    result = write_result(args.out, "decoders", command("benchmarks.bench_decoders", argv), started, load_before, body)
    for f in figures:
        print(f"{f['name']}: {f['ratio']:.3f} ({f['ours']:.0f} vs {f['baseline']:.0f} {f['unit']})")
    print(f"-> {args.out}" + (f"; videos and frames kept in {args.tmp}" if args.keep else ""))
    return result


if __name__ == "__main__":
    out = main()
    sys.exit(out if isinstance(out, int) else 0)
