"""``volseg batch``: many (image, clicks) cases turned into masks, resumable, locally or on Ray.

Manifest: CSV with a header ``image,clicks[,prior][,output]`` or JSON (a list of objects with those
keys, or ``{"cases": [...]}``).  Relative input paths are resolved against the manifest's folder;
``output`` is a file name (or relative path) inside ``--out``, by default ``<image stem>_mask`` with
the image's own format for NRRD/MHA/NIfTI, ``.nii.gz`` for DICOM series and ``.png`` for 2D rasters.
The manifest is checked whole before any case runs: every output (with its sidecar) lies inside
``--out``, is none of the cases' inputs, and no two cases share one.

Each case is one :func:`run_case` call -- the same function in-process, in a process pool
(``--executor local --workers N``) or as a Ray task (``--executor ray``): only paths travel; the
image, features and session are built where the case runs.  A case is

* **skipped** when its output exists and the provenance sidecar beside it records the same input,
  clicks and prior SHA-256, the same parameters and the mask's own SHA-256 (so an interrupted batch
  resumes where it stopped, and a mask left stale by a crash is not taken as done);
* **done** when it was (re)computed -- an output whose sidecar no longer matches is replaced;
* **failed** with the reason (unreadable image, bad clicks, ...) without stopping the others.

An output that exists *without* a sidecar was not written by volseg and is left alone (the case
fails) unless ``--overwrite``, which also recomputes every case.  The report goes to
``OUT/batch_report.json`` (replaced on each run), also when the batch is interrupted (Ctrl-C, or
SIGTERM, handled the same way).  A batch claims ``--out`` (``OUT/.batch_report.json.lock``), so a
second batch on the same folder stops at once.  Exit code: 0 when every case is done or skipped,
1 when any case failed, 2 for an unusable manifest or options, 130 after Ctrl-C, 143 after SIGTERM.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import ctypes
import functools
import json
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm import tqdm

from .config import GPConfig
from .errors import InputError, VolsegError
from .io import check_folder_path, check_output_path, output_files
from .io.atomic import atomic_path
from .io.claim import claim
from .provenance import file_sha256, read_sidecar, recorded_sha256, sidecar_path
from .segment import segment_file
from .session import Session
from .session_options import command_parser, gp_options, session_settings

_KEYS = ("image", "clicks", "prior", "output")


@dataclass(frozen=True)
class CaseRow:
    """One manifest row with resolved paths (strings, so it pickles and ships cheaply)."""

    name: str
    image: str
    clicks: str
    prior: str | None
    output: str  # absolute, inside --out


@dataclass(frozen=True)
class BatchOptions:
    features: str = "filterbank"
    device: str = "cpu"
    config: object = None  # a volseg.config.GPConfig (or None: the defaults), passed to segment_file
    overwrite: bool = False
    threads: int | None = None  # torch threads inside a worker; None leaves torch's default


@dataclass
class CaseResult:
    name: str
    status: str  # done | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    output: str = ""
    traceback: str | None = field(default=None, repr=False)


# -- manifest --------------------------------------------------------------------------------

def _suffix(name: str) -> str:
    n = name.lower()
    return ".nii.gz" if n.endswith(".nii.gz") else os.path.splitext(n)[1]


def default_output_name(image: str | Path) -> str:
    """``<stem>_mask`` + the image's own format where a mask can be written in it."""
    p = Path(image)
    s = _suffix(p.name)
    stem = p.name[: len(p.name) - len(s)] if s else p.name
    if p.is_dir() or s in ("", ".dcm"):
        ext = ".nii.gz"
    elif s in (".nrrd", ".nhdr"):
        ext = ".nrrd"
    elif s in (".mha", ".mhd"):
        ext = ".mha"
    elif s in (".nii", ".nii.gz"):
        ext = ".nii.gz"
    else:  # 2D rasters: a lossless label image
        ext = ".png"
    return f"{stem}_mask{ext}"


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start CSVs with a BOM
                reader = csv.DictReader(f)
                if not reader.fieldnames:
                    raise InputError(f"manifest {path} is empty")
                reader.fieldnames = [c.strip().lower() for c in reader.fieldnames]
                return [{k: (v or "").strip() for k, v in r.items() if k} for r in reader]
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"manifest {path} cannot be parsed: {e}") from None
    if isinstance(data, dict):
        data = data.get("cases")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"manifest {path}: expected a JSON list of objects with image and clicks")
    return [{str(k).strip().lower(): ("" if v is None else str(v).strip()) for k, v in r.items()} for r in data]


def check_out_folder(out_dir: str | Path) -> Path:
    """``--out`` must be a folder, or a path where one can be made."""
    if not str(out_dir).strip():
        raise InputError("--out is empty: give the folder for the masks and batch_report.json")
    out = Path(out_dir)
    check_folder_path(out, f"into --out {out}")
    return out


def read_manifest(path: str | Path, out_dir: str | Path) -> list[CaseRow]:
    """Rows of a CSV/JSON manifest with paths resolved, checked whole (see :func:`check_outputs`)."""
    p = Path(path)
    out = check_out_folder(out_dir).resolve()
    rows = _read_rows(p)
    if not rows:
        raise InputError(f"manifest {p} has no cases")
    cases = []
    for n, r in enumerate(rows, 1):
        if not r.get("image") or not r.get("clicks"):
            raise InputError(f"manifest {p} case {n}: 'image' and 'clicks' are both required "
                             f"(columns {', '.join(_KEYS)})")
        image = (p.parent / r["image"]).resolve()
        clicks = (p.parent / r["clicks"]).resolve()
        prior = (p.parent / r["prior"]).resolve() if r.get("prior") else None
        output = (out / (r.get("output") or default_output_name(image))).resolve()
        name = Path(r["image"]).name
        cases.append(CaseRow(name, str(image), str(clicks), str(prior) if prior else None, str(output)))
    check_outputs(cases, out, p)
    return cases


def check_outputs(cases: list[CaseRow], out: Path, manifest: Path) -> None:
    """Every case's files (mask, .mhd data, sidecar) inside ``out``, in a format volseg writes, none of
    them shared with another case, the batch report, or any case's input."""
    report = (out / "batch_report.json").resolve()
    writes: dict[Path, int] = {}
    for n, case in enumerate(cases, 1):
        output = Path(case.output)
        check_output_path(output, f"manifest {manifest} case {n}: output")
        if not output.is_relative_to(out):
            raise InputError(f"manifest {manifest} case {n}: output {output} is outside --out {out}")
        for f in (*output_files(output), sidecar_path(output)):
            f = f.resolve()
            if f == report:
                raise InputError(f"manifest {manifest} case {n}: output {output} would write {f}, "
                                 "the batch_report.json")
            if f in writes:
                raise InputError(f"manifest {manifest}: cases {writes[f]} and {n} both write {f}")
            writes[f] = n
    for m, case in enumerate(cases, 1):
        for src in (case.image, case.clicks, case.prior):
            if src is None:
                continue
            s = Path(src).resolve()
            for f, n in writes.items():
                if f == s or f.is_relative_to(s):
                    raise InputError(f"manifest {manifest} case {n} would write {f}, an input of case {m} ({src})")


# -- one case --------------------------------------------------------------------------------

def expected_parameters(options: BatchOptions) -> dict:
    """The part of segment_file's recorded ``parameters`` these options decide.

    The device is left out on purpose: resuming a batch on another machine should not redo the
    finished cases.  ``spatial_lengthscale_used`` is derived from the image, whose hash is compared.
    """
    cfg = options.config if isinstance(options.config, GPConfig) else GPConfig.from_dict(options.config)
    return {"features": str(options.features), **_effective_config(str(options.features), cfg, cfg.named)}


@functools.lru_cache(maxsize=8)
def _effective_config(features: str, config, named: frozenset) -> dict:
    # the Session merges a learned backbone's own GP settings into the config: ask it, as segment_file will.
    # ``named`` is part of the key: configs equal in value differ in what they make win over learned settings
    return Session(features=features, device="cpu", config=config).config.to_dict()


def up_to_date(row: CaseRow, options: BatchOptions) -> tuple[bool, str]:
    """Whether the output exists with a sidecar matching the inputs; the reason when it does not."""
    out = Path(row.output)
    if not out.exists():
        return False, "no output yet"
    try:
        record = read_sidecar(out)
    except VolsegError:
        record = None
    if record is None:
        if options.overwrite:
            return False, "overwrite"
        raise InputError(f"output {out} exists without a provenance record; remove it or use --overwrite")
    if options.overwrite:
        return False, "overwrite"
    recorded_files = recorded_sha256(record)
    for f in output_files(out):  # a crash between the sidecar's rename and the mask's leaves the old mask
        if not f.is_file() or recorded_files.get(f.resolve()) != file_sha256(f):
            return False, "mask differs from the one its provenance records"
    expected = {
        "input_sha256": file_sha256(row.image),
        "clicks_sha256": file_sha256(row.clicks),
        "prior_sha256": file_sha256(row.prior) if row.prior else None,
    }
    for key, value in expected.items():
        if record.get(key) != value:
            return False, f"{key.split('_')[0]} changed"
    expected_params = expected_parameters(options)
    recorded = record.get("parameters") or {}
    if {k: recorded.get(k) for k in expected_params} != expected_params:
        return False, "parameters changed"
    return True, "output and provenance match the inputs"


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def run_case(row: CaseRow, out_dir: str | Path, options: BatchOptions) -> CaseResult:
    """Segment one case (or skip it); never raises for a problem with the case itself."""
    t0 = time.perf_counter()
    _set_threads(options.threads)
    try:
        # a missing input must fail the case even when a stale output is still lying around
        for what, path in (("image", row.image), ("clicks file", row.clicks), ("prior mask", row.prior)):
            if path is not None and not Path(path).exists():
                raise InputError(f"{what} {path} does not exist")
        fresh, why = up_to_date(row, options)
        if fresh:
            return CaseResult(row.name, "skipped", why, time.perf_counter() - t0, row.output)
        # an existing output with its sidecar is this batch's to replace; any other file stays unless --overwrite
        segment_file(row.image, row.clicks, row.output, prior=row.prior, device=options.device,
                     overwrite=options.overwrite or Path(row.output).exists(), features=options.features,
                     config=options.config)
        return CaseResult(row.name, "done", why, time.perf_counter() - t0, row.output)
    except VolsegError as e:
        return CaseResult(row.name, "failed", str(e), time.perf_counter() - t0, row.output)
    except Exception as e:  # one broken case must not end the night's batch; keep the traceback for us
        return CaseResult(row.name, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0, row.output,
                          traceback.format_exc())


# -- executors -------------------------------------------------------------------------------

def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _run_local(rows: list[CaseRow], out_dir: str, options: BatchOptions, workers: int) -> Iterator[CaseResult]:
    if workers <= 1:
        for row in rows:
            yield run_case(row, out_dir, options)
        return
    opts = replace(options, threads=options.threads or _threads_per_worker(workers))
    # spawn, not fork: forking a process whose torch/OpenMP threads are running can deadlock
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(run_case, row, out_dir, opts) for row in rows]
        try:
            for f in cf.as_completed(futures):
                yield f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def exit_with_parent(parent: int) -> None:
    """Worker initializer: a worker ends when the batch that started it does (after a kill -9 of the
    batch it would finish its case and then wait forever).  Linux: the kernel's parent-death signal;
    elsewhere, and as a fallback, a thread that watches the parent's pid."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="volseg-parent-watch").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _run_ray(rows: list[CaseRow], out_dir: str, options: BatchOptions, workers: int,
             address: str | None) -> Iterator[CaseResult]:
    try:
        import ray  # noqa: PLC0415 -- optional dependency (volseg[ray])
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'volseg[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # only paths travel between tasks, so a small object store is plenty
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                     object_store_memory=100 * 1024 ** 2)
    try:
        opts = replace(options, threads=options.threads or 1)
        task = ray.remote(num_cpus=1, max_retries=0)(run_case)
        pending = [task.remote(row, out_dir, opts) for row in rows]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def run_batch(rows: Iterable[CaseRow], out_dir: str | Path, options: BatchOptions = BatchOptions(), *,
              workers: int = 1, executor: str = "local", ray_address: str | None = None,
              progress: bool = True) -> list[CaseResult]:
    """Run every case; results in completion order.  The report is written even when interrupted."""
    rows = list(rows)
    out = check_out_folder(out_dir)
    if executor not in ("local", "ray"):
        raise InputError(f"unknown executor {executor!r}: local or ray")
    # the report's claim is the batch's claim on --out: a second batch there stops at once
    with claim([out / "batch_report.json"]):
        return _run_claimed(rows, out, options, workers, executor, ray_address, progress)


def _run_claimed(rows: list[CaseRow], out: Path, options: BatchOptions, workers: int, executor: str,
                 ray_address: str | None, progress: bool) -> list[CaseResult]:
    if executor == "local":
        results_iter = _run_local(rows, str(out), options, workers)
    else:
        results_iter = _run_ray(rows, str(out), options, workers, ray_address)
    results: list[CaseResult] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(rows), desc="batch", unit="case", disable=None if progress else True)
    try:
        for r in results_iter:
            results.append(r)
            bar.update(1)
            bar.set_postfix(failed=sum(x.status == "failed" for x in results))
    finally:
        bar.close()
        write_report(out / "batch_report.json", rows, results, time.perf_counter() - t0)
    return results


def write_report(path: Path, rows: list[CaseRow], results: list[CaseResult], seconds: float) -> None:
    by_output = {r.output: r for r in results}  # outputs are unique (checked in read_manifest); names may not be
    cases = []
    for row in rows:  # manifest order; cases an interruption left unrun are listed as such
        r = by_output.get(row.output)
        entry = asdict(r) if r else {"name": row.name, "status": "not run", "reason": "", "seconds": 0.0,
                                     "output": row.output}
        entry.update(image=row.image, clicks=row.clicks, prior=row.prior)
        if entry.get("traceback") is None:
            entry.pop("traceback", None)
        cases.append(entry)
    counts = {s: sum(c["status"] == s for c in cases) for s in ("done", "skipped", "failed", "not run")}
    report = {"counts": counts, "seconds": seconds, "cases": cases}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1))


def format_summary(results: list[CaseResult], seconds: float) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    busy = sum(r.seconds for r in results)
    lines = [
        f"{'cases':<10}{len(results):>6}",
        *(f"{s:<10}{n:>6}" for s, n in counts.items()),
        f"{'time':<10}{seconds:>8.1f} s wall, {busy:.1f} s in cases",
    ]
    for r in results:
        if r.status == "failed":
            lines.append(f"FAILED {r.name}: {r.reason}")
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------

def _handler(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise InputError(f"--workers must be 1 or more, got {args.workers}")
    if args.ray_address and args.executor != "ray":
        raise InputError("--ray-address needs --executor ray")

    settings = session_settings(args)  # reads --config now, so a bad file stops the batch before it starts
    rows = read_manifest(args.manifest, args.out)
    options = BatchOptions(**settings, overwrite=args.overwrite)
    t0 = time.perf_counter()
    results = run_batch(rows, args.out, options, workers=args.workers, executor=args.executor,
                        ray_address=args.ray_address, progress=not args.quiet)
    print(format_summary(results, time.perf_counter() - t0))
    print(f"report: {Path(args.out) / 'batch_report.json'}")
    return 1 if any(r.status == "failed" for r in results) else 0


def register(subparsers) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "batch", "segment many cases from a manifest (resumable; local processes or Ray)",
                       __doc__)
    p.add_argument("manifest", help="CSV (image,clicks[,prior][,output]) or JSON list of cases")
    p.add_argument("--out", required=True, help="output folder for the masks and batch_report.json")
    p.add_argument("--workers", type=int, default=1, help="cases run at once (default 1: in this process)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")

    gp_options(p)
    p.add_argument("--overwrite", action="store_true", help="recompute every case, even up-to-date ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler)
    return p
