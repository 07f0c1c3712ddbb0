"""Shared helpers for the benchmark scripts: run metadata, JSON output, tables and plots.

Every result file written by ``bench/*.py`` carries :func:`metadata`: the command, the git
commit (and whether the tree was dirty), seeds, package versions, the date and the machine,
including the load average at start and end, because these machines are often shared.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lopa_fed.provenance import git_state, package_versions  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PACKAGES = ("torch", "transformers", "peft", "flwr", "onnxruntime", "numpy", "lopa-fed")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def git_commit() -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout (``None`` outside git)."""
    return git_state(ROOT)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores from ``/proc/stat``, or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores are busy now: the non-idle share of CPU time over ``seconds``, times the cores."""
    t0 = _cpu_times()
    time.sleep(seconds)
    t1 = _cpu_times()
    if t0 is None or t1 is None or t1[1] <= t0[1]:
        return None
    return (t1[0] - t0[0]) / (t1[1] - t0[1]) * (os.cpu_count() or 1)


def start_load() -> list[float]:
    """The ``load_start`` for :func:`contention_note`, read before a benchmark works.

    The 1/5/15-minute load averages, with the 1-minute figure lowered to the cores busy over the
    next second when fewer are busy. A benchmark started right after another (a chain of runs)
    would otherwise count the finished one's residual 1-minute load, which takes minutes to decay,
    as another job sharing the cores.
    """
    load, busy = load_average(), busy_cores()
    if load and busy is not None:
        load[0] = round(min(load[0], busy), 2)
    return load


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, OS and the 1/5/15-minute load average right now."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_gb": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": _torch_threads(),
        "load_average": load_average(),
    }


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    import torch

    return torch.get_num_threads()


def versions() -> dict[str, str | None]:
    """Versions of the packages that shape a measurement."""
    return package_versions(PACKAGES)


def metadata(seeds: Sequence[int] | None = None, **extra: Any) -> dict[str, Any]:
    """Provenance for a result file."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cwd": str(Path.cwd()),
        **git_commit(),
        "seeds": list(seeds) if seeds is not None else [],
        "versions": versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **extra,
    }


def contention_note(load_start: Sequence[float], load_end: Sequence[float], own: float | None = None) -> str | None:
    """A plain note when jobs other than this benchmark loaded the cores during the run.

    ``load_start`` (:func:`start_load`) is read before the benchmark works and ``load_end``
    (the 1-minute load average, :func:`load_average`) as it finishes, when
    its own ``own`` busy threads or worker processes (default: torch's thread count, else 1)
    are part of the 1-minute load average. The load of other jobs is taken as
    ``max(start, end - own)``; the note is written when that exceeds 3/4 of the cores.
    """
    n = os.cpu_count() or 1
    own = float(own if own is not None else (_torch_threads() or 1))
    start, end = (load_start[:1] or [0.0])[0], (load_end[:1] or [0.0])[0]
    if max(start, end - own) > n * 0.75:
        return (f"measured while other jobs shared the {n} cores (load {start:.1f} at the start, "
                f"{end:.1f} at the end, about {own:g} of it this benchmark's own)")
    return None


PROVENANCE_KEYS = ("command", "commit", "dirty", "date", "contention")


def record_source(meta: dict[str, Any], src: Path, old: dict[str, Any], name: str) -> None:
    """Record in ``meta`` where resumed or merged results came from.

    A file of another name (``--merge``) goes under ``merged_from``; the result file itself
    (``--resume``) goes under ``earlier_invocations``, after the invocations it already lists, so
    the command, commit and date that measured every kept run stay on record.
    """
    om = old.get("meta", {})
    entry = {k: om.get(k) for k in PROVENANCE_KEYS}
    if src.name != f"{name}.json":
        meta.setdefault("merged_from", []).append({"file": src.name, **entry})
    else:
        meta["earlier_invocations"] = [*om.get("earlier_invocations", []), entry]


def read_runs(sources: Sequence[Path], key: Callable[[dict], tuple], meta: dict[str, Any], name: str) -> dict[tuple, dict]:
    """The finished runs in result files (``--resume``, ``--merge``), by ``key``; later files win.

    Each file's provenance goes into ``meta`` (:func:`record_source`). Raises ``ValueError`` (one
    line) for a file that is missing or is not a result file with runs.
    """
    runs: dict[tuple, dict] = {}
    for src in map(Path, sources):
        if not src.is_file():
            raise ValueError(f"no such result file: {src}")
        try:
            old = json.loads(src.read_text())
            runs.update({key(r): r for r in old.get("runs", [])})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{src}: not a result file with runs ({type(exc).__name__}: {exc})") from None
        record_source(meta, src, old, name)
    return runs


def add_result_args(ap, name_default: str) -> None:
    """The result-file options of a resumable benchmark: ``--resume``, ``--merge``, ``--threads``,
    ``--out-dir``, ``--name`` (default ``name_default``)."""
    ap.add_argument("--resume", action="store_true", help="keep finished runs from an earlier result file")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                    help="also take finished runs from these result files (shards run with other --tasks/--methods/--name)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--name", default=None, help=f"result file name (default {name_default})")


def write_json(name: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``data`` to ``bench/results/<name>.json`` (atomically) and return the path."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [float(x) for x in xs]
    if not xs:
        return float("nan"), float("nan")
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return m, s


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(x: Any) -> str:
        return "" if x is None else str(x)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def plt():
    """matplotlib.pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_fig(fig, name: str, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt().close(fig)
    return path


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def progress(enabled: bool = True):
    """A rich progress bar (disabled when not a TTY or when ``enabled`` is False)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not enabled, transient=False,
    )
