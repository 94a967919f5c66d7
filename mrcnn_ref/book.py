"""The chapters as a browsable HTML book: ``mrcnn-ref book --out site/``.

Each chapter notebook (``chapters/NN_topic.ipynb``) is read, executed in memory by ``nbclient``
with the chapters folder as working directory (the committed ``.ipynb`` is only read, never
written), and rendered *with its outputs* by ``nbconvert``'s ``HTMLExporter``: figures are embedded
as PNG data URIs, so each page is one file (its maths is typeset by MathJax, loaded from a CDN
unless ``mathjax_url`` names a local copy). ``OUT/index.html`` lists the chapters
(number, title from the notebook's first heading, link); every page links back to it and to its
neighbours.

    OUT/index.html
    OUT/NN_topic.html      one per chapter built

Chapters run in full mode unless ``smoke=True`` (``MRCNN_REF_SMOKE=1`` in the kernel's
environment; without it the variable is removed, so the flag alone decides). Figures are captured
with the inline matplotlib backend even where ``MPLBACKEND=Agg`` is set (CI sets it). The kernel
imports the same ``mrcnn_ref`` as the builder (its folder is put first on ``PYTHONPATH``).

A chapter gets ``timeout`` seconds for its cells in all (its kernel gets another
:data:`KERNEL_STARTUP_TIMEOUT` to start). A chapter that fails or
times out does not stop the others: its page is still written (with the traceback where the cell
failed), the index marks it, and :func:`build_book` raises :class:`ChapterFailed` at the end with
one line per failure naming the chapter, the cell and the exception. Every file is written
atomically (temp file + rename, :mod:`mrcnn_ref._io`); nothing outside ``out`` is written or
deleted.

Needs the ``book`` extra (``nbclient``, ``nbconvert``, ``ipykernel``), imported only when a book is
built.
"""
from __future__ import annotations

import dataclasses
import datetime
import html
import math
import os
import pathlib
import re
import sys
import time

from tqdm import tqdm

from . import __version__
from ._io import atomic_write

#: Seconds a chapter's cells may take in all, by default.
DEFAULT_TIMEOUT = 1800.0
#: Seconds a kernel may take to start, on top of the chapter's ``timeout``.
KERNEL_STARTUP_TIMEOUT = 120
INSTALL_HINT = 'pip install -e ".[book]"'
_CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class ChapterFailed(RuntimeError):
    """One or more chapters raised, timed out or lost their kernel; the pages were still written.
    ``results`` holds every chapter's :class:`ChapterResult`."""

    def __init__(self, message: str, results):
        super().__init__(message)
        self.results = results


@dataclasses.dataclass
class ChapterResult:
    """What happened to one chapter: ``page`` is the file name written in ``out`` (None if none),
    ``error`` a one-line description of the failure (None if it ran to the end)."""

    number: str
    stem: str
    title: str
    page: str | None
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def default_chapters_dir() -> pathlib.Path:
    """``chapters/`` of the source checkout this package was imported from."""
    return pathlib.Path(__file__).resolve().parent.parent / "chapters"


def list_chapters(chapters_dir) -> list[pathlib.Path]:
    """The chapter notebooks (``NN_topic.ipynb``) of a folder, in order."""
    d = pathlib.Path(chapters_dir)
    if not d.is_dir():
        raise ValueError(f"book: the chapters folder {str(d)!r} does not exist (pass chapters_dir / "
                         f"--chapters-dir, or run from a source checkout)")
    found = sorted(p for p in d.glob(_CHAPTER_GLOB) if p.is_file())
    if not found:
        raise ValueError(f"book: no chapter notebooks (NN_topic.ipynb) in {str(d)!r}")
    return found


def select_chapters(paths, wanted=None) -> list[pathlib.Path]:
    """The chapters named in ``wanted`` (numbers like ``"01"``, ``"3"`` or names like
    ``"03_roipool_vs_roialign"``), in book order; all of them when ``wanted`` is None."""
    paths = list(paths)
    if wanted is None:
        return paths
    if isinstance(wanted, (str, int)):
        wanted = [wanted]
    wanted = list(wanted)
    if not wanted:
        raise ValueError("book: chapters is empty (give chapter numbers such as 01 03, or none for all)")
    have = ", ".join(p.stem[:2] for p in paths)
    chosen = set()
    for w in wanted:
        key = str(w).strip()
        key = key[:-6] if key.endswith(".ipynb") else key[:-3] if key.endswith(".py") else key
        if key.isdigit():
            hits = [p for p in paths if int(p.stem[:2]) == int(key)]
        else:
            hits = [p for p in paths if p.stem == key]
        if not hits:
            raise ValueError(f"book: no chapter {str(w)!r} (chapters: {have})")
        chosen.update(hits)
    return [p for p in paths if p in chosen]


def chapter_title(nb, fallback: str) -> str:
    """The text of the notebook's first markdown heading (inline markup removed), else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            m = re.match(r"\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", line)
            if m:
                text = re.sub(r"`|\*\*?|(?<!\w)__?|__?(?!\w)", "", m.group(1))  # `code`, *em*, __b__
                text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)   # [text](link) -> text
                return text.strip() or fallback
    return fallback


def _short_title(title: str, number: str) -> str:
    """``"Chapter 01 — Boxes"`` -> ``"Boxes"`` for the index (its number column says the rest)."""
    m = re.match(rf"\s*chapter\s+0*{int(number)}\s*[—–:.-]\s*(.+)$", title, flags=re.IGNORECASE)
    return m.group(1) if m else title


def _import_book_deps():
    """nbformat, nbclient and nbconvert's HTMLExporter, or a one-line ValueError naming the extra."""
    missing = []
    mods = {}
    for name in ("nbformat", "nbclient", "nbconvert", "ipykernel"):
        try:
            mods[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(f"book: needs {', '.join(missing)} (not installed): {INSTALL_HINT}")
    from nbconvert import HTMLExporter  # noqa: PLC0415

    return mods["nbformat"], mods["nbclient"], HTMLExporter


def _kernel_env(smoke: bool) -> dict:
    env = dict(os.environ)
    env.pop("MRCNN_REF_SMOKE", None)
    if smoke:
        env["MRCNN_REF_SMOKE"] = "1"
    env["MPLBACKEND"] = _INLINE_BACKEND                 # figures as outputs, whatever the caller set
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")   # no debugger warning on the console
    pkg_parent = str(pathlib.Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    return env


def _one_line(text, limit: int = 300) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))        # ANSI colours of IPython tracebacks
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _n_code_cells(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip())


def _execute(nb, nbclient, chapters_dir, env, timeout, on_cell_done):
    """Run ``nb`` in place; returns None, or a one-line description of what went wrong."""
    state = {"cell": None, "deadline": None}

    def timeout_func(cell):    # what is left of the chapter's time, asked as each code cell starts
        if state["deadline"] is None:       # the clock starts with the first cell, kernel ready
            state["deadline"] = time.monotonic() + timeout
        return max(1, int(state["deadline"] - time.monotonic() + 0.999))

    def on_cell_start(cell, cell_index, **_):
        state["cell"] = cell_index

    def on_cell_executed(cell, cell_index, **_):
        on_cell_done()

    client = nbclient.NotebookClient(
        nb, timeout_func=timeout_func, startup_timeout=KERNEL_STARTUP_TIMEOUT,
        resources={"metadata": {"path": str(chapters_dir)}},
        on_cell_start=on_cell_start, on_cell_executed=on_cell_executed,
        # no "[IPKernelApp] WARNING | Kernel is running over TCP without encryption" on the console
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    where = lambda: "" if state["cell"] is None else f" in cell {state['cell'] + 1}"  # noqa: E731
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:
        return f"cell {state['cell'] + 1} raised {_one_line(f'{e.ename}: {e.evalue}')}"
    except nbclient.exceptions.CellTimeoutError:
        return f"timed out after {timeout:g} s{where()}"
    except nbclient.exceptions.DeadKernelError:
        return f"the kernel died{where()}"
    except Exception as e:  # noqa: BLE001 - a kernel that cannot start, a broken notebook...
        return f"{type(e).__name__}{where()}: {_one_line(e)}"
    return None


def _nav_cell(nbformat, prev_r, next_r):
    parts = ["[↑ Contents](index.html)"]
    if prev_r is not None:
        parts.append(f"[← {prev_r.number} {_md_escape(_short_title(prev_r.title, prev_r.number))}]"
                     f"({prev_r.page})")
    if next_r is not None:
        parts.append(f"[{next_r.number} {_md_escape(_short_title(next_r.title, next_r.number))} →]"
                     f"({next_r.page})")
    return nbformat.v4.new_markdown_cell(" · ".join(parts))


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def build_book(out, chapters=None, *, smoke: bool = False, timeout: float = DEFAULT_TIMEOUT,
               chapters_dir=None, progress: bool = True, mathjax_url=None) -> list[ChapterResult]:
    """Execute the chapters and write them as HTML pages, with ``OUT/index.html``.

    out: the folder to write (created if missing; its parent must exist).
    chapters: chapter numbers or names to build (default: all), see :func:`select_chapters`.
    smoke: run with ``MRCNN_REF_SMOKE=1`` (small and fast) instead of full mode.
    timeout: seconds each chapter's cells may take in all (kernel start not counted).
    chapters_dir: where the ``NN_topic.ipynb`` files are (default: the checkout's ``chapters/``).
    progress: a tqdm bar over the code cells of all the chapters.
    mathjax_url: where the pages load MathJax 2 from (default: nbconvert's, a CDN); give a local
    copy for reading offline, e.g. Debian's libjs-mathjax:
    ``file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe``.

    Returns one :class:`ChapterResult` per chapter. Raises ``ValueError`` (bad arguments, missing
    ``book`` extra) before running anything, and :class:`ChapterFailed` after writing every page
    and the index if a chapter failed.
    """
    chapters_dir = pathlib.Path(default_chapters_dir() if chapters_dir is None else chapters_dir)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f"book: timeout must be a number of seconds > 0, got {timeout!r}")
    out = pathlib.Path(out)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"book: cannot create {str(out)!r}: its parent folder {str(parent)!r} "
                         f"does not exist")
    if out.exists() and not out.is_dir():
        raise ValueError(f"book: {str(out)!r} exists and is not a folder")
    paths = select_chapters(list_chapters(chapters_dir), chapters)
    nbformat, nbclient, HTMLExporter = _import_book_deps()

    notebooks = []
    for p in paths:
        try:
            notebooks.append(nbformat.read(p, as_version=4))
        except Exception as e:  # noqa: BLE001 - not JSON, not a notebook
            raise ValueError(f"book: cannot read {str(p)!r}: {_one_line(e)}") from None
    out.mkdir(exist_ok=True)
    env = _kernel_env(smoke)
    chapters_dir = chapters_dir.resolve()

    # titles first: each page links to its neighbours and is written as soon as it has run
    results = [ChapterResult(number=p.stem[:2], stem=p.stem, title=chapter_title(nb, p.stem),
                             page=p.stem + ".html", seconds=0.0) for p, nb in zip(paths, notebooks)]
    exporter = HTMLExporter(template_name="lab",
                            **({"mathjax_url": str(mathjax_url)} if mathjax_url else {}))
    bar = None
    if progress:
        bar = tqdm(total=sum(_n_code_cells(nb) for nb in notebooks), desc="book", unit="cell",
                   dynamic_ncols=True)
    try:
        for i, (r, nb) in enumerate(zip(results, notebooks)):
            if bar is not None:
                bar.set_postfix_str(f"{r.stem} ({i + 1}/{len(results)})")
            done_before = bar.n if bar is not None else 0
            t0 = time.perf_counter()
            r.error = _execute(nb, nbclient, chapters_dir, env, float(timeout),
                               (lambda: bar.update(1)) if bar is not None else (lambda: None))
            r.seconds = time.perf_counter() - t0
            if bar is not None:     # a failed chapter's remaining cells count as done
                bar.update(done_before + _n_code_cells(nb) - bar.n)
            prev_r, next_r = results[i - 1] if i else None, results[i + 1] if i + 1 < len(results) else None
            nb.cells.insert(0, _nav_cell(nbformat, prev_r, next_r))
            nb.cells.append(_nav_cell(nbformat, None, next_r))
            body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": r.title}})
            _write_page(out / r.page, body)
    finally:
        if bar is not None:
            bar.close()
    _write_page(out / "index.html", _index_html(results, smoke))

    failed = [r for r in results if not r.ok]
    if failed:
        raise ChapterFailed("; ".join(f"chapter {r.stem}: {r.error}" for r in failed), results)
    return results


_INDEX_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 56rem; margin: 2.5rem auto; padding: 0 1.25rem; color: #222; line-height: 1.5; }
h1 { font-size: 2rem; margin-bottom: .25rem; }
p.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin-top: 1.5rem; }
th, td { text-align: left; padding: .55rem .75rem; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { font-size: .85rem; text-transform: uppercase; letter-spacing: .04em; color: #666; }
td.num { font-variant-numeric: tabular-nums; color: #555; width: 3rem; }
td.time { font-variant-numeric: tabular-nums; color: #777; white-space: nowrap; text-align: right;
          width: 5rem; }
a { color: #1a5fb4; text-decoration: none; }
a:hover { text-decoration: underline; }
.failed { color: #b00020; font-size: .9rem; }
"""


def _write_page(path, text: str) -> None:
    """Atomically, readable by all like any file the user makes (a temp file is owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    with atomic_write(path) as f:
        os.fchmod(f.fileno(), 0o666 & ~umask)
        f.write(text)


def _index_html(results, smoke: bool) -> str:
    rows = []
    for r in results:
        title = html.escape(_short_title(r.title, r.number))
        link = f'<a href="{html.escape(r.page, quote=True)}">{title}</a>' if r.page else title
        status = "" if r.ok else f'<div class="failed">failed: {html.escape(r.error)}</div>'
        rows.append(f'<tr><td class="num">{r.number}</td><td>{link}{status}</td>'
                    f'<td class="time">{r.seconds:.0f} s</td></tr>')
    n_failed = sum(not r.ok for r in results)
    built = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = (f"{len(results)} chapter{'s' if len(results) != 1 else ''}, executed in "
            f"{'smoke mode (MRCNN_REF_SMOKE=1: small sizes)' if smoke else 'full mode'} on "
            f"{built} with mrcnn_ref {__version__}, Python {sys.version.split()[0]}"
            + (f" — <span class=\"failed\">{n_failed} failed</span>" if n_failed else ""))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mrcnn_ref — Mask R-CNN from scratch in NumPy</title>
<style>{_INDEX_CSS}</style>
</head>
<body>
<h1>Mask R-CNN from scratch in NumPy</h1>
<p class="meta">{meta}</p>
<table>
<thead><tr><th>#</th><th>Chapter</th><th>Run time</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""
