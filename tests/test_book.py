"""``mrcnn-ref book``: executed chapters rendered as HTML with their outputs, an index that links
them, one-line errors for a failing chapter, a timeout, a missing extra and bad arguments."""
import hashlib
import html
import pathlib
import re
import sys

import pytest

from mrcnn_ref import book
from mrcnn_ref.book import ChapterFailed, build_book
from mrcnn_ref.cli import main

CHAPTERS = pathlib.Path(__file__).resolve().parent.parent / "chapters"
REAL = ["01", "3"]      # two fast chapters; "3" checks that a number needs no leading zero


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_notebook(path, title, *sources):
    """A notebook with a ``# title`` markdown cell and one code cell per source."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSome prose.")]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def real_book(tmp_path_factory):
    """Chapters 01 and 03 in smoke mode, built with MPLBACKEND=Agg set as CI does."""
    pytest.importorskip("nbclient")
    pytest.importorskip("nbconvert")
    out = tmp_path_factory.mktemp("book") / "site"
    notebooks = [next(CHAPTERS.glob(f"{n:0>2}_*.ipynb")) for n in REAL]
    before = {p: _digest(p) for p in notebooks}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLBACKEND", "Agg")
        results = build_book(out, REAL, smoke=True, progress=False)
    assert {p: _digest(p) for p in notebooks} == before, "the committed notebooks were modified"
    return out, results, notebooks


def test_index_links_the_chapters_with_their_titles(real_book):
    out, results, notebooks = real_book
    assert [r.stem for r in results] == [p.stem for p in notebooks]
    assert all(r.ok for r in results)
    index = (out / "index.html").read_text()
    pages = sorted(["index.html"] + [p.stem + ".html" for p in notebooks])
    assert sorted(p.name for p in out.iterdir()) == pages
    for r, nb_path in zip(results, notebooks):
        assert f'href="{nb_path.stem}.html"' in index
        assert r.title.startswith(f"Chapter {r.number}")       # from the notebook's first heading
        assert html.escape(r.title.split("—", 1)[1].strip()) in index


def test_chapter_pages_hold_their_outputs(real_book):
    out, results, _ = real_book
    ch01 = (out / results[0].page).read_text()
    ch03 = (out / results[1].page).read_text()
    for page in (ch01, ch03):
        assert re.search(r'<img [^>]*src="data:image/png;base64,', page)   # a figure, inline
        assert 'href="index.html"' in page                          # back to the contents
    assert "IoU = 0.14285714285714285" in ch01                      # printed values
    assert "all checks passed" in ch01
    assert "RoI on the map: 665 / 32 = 20.78" in ch03
    assert f'href="{results[1].page}"' in ch01                      # next chapter
    assert f"<title>{html.escape(results[0].title)}</title>" in ch01


def test_failing_chapter_is_one_line_naming_it_and_other_pages_are_written(tmp_path, capsys,
                                                                           monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("nbconvert")
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _write_notebook(chapters / "01_fine.ipynb", "Chapter 01 — A fine chapter",
                    "import os\nprint('smoke =', os.environ.get('MRCNN_REF_SMOKE'))\n"
                    "print('cwd =', os.getcwd())")
    broken = _write_notebook(chapters / "02_broken.ipynb", "Broken",
                             "x = 1", "raise KeyError('the missing key')", "print('never')")
    before = _digest(broken)
    monkeypatch.setenv("MRCNN_REF_SMOKE", "1")     # without --smoke the chapters run in full mode
    out = tmp_path / "site"
    assert main(["book", "--out", str(out), "--chapters-dir", str(chapters), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err == "mrcnn-ref book: error: chapter 02_broken: cell 3 raised KeyError: 'the missing key'"
    assert _digest(broken) == before

    fine = (out / "01_fine.html").read_text()
    assert "smoke = None" in fine
    assert f"cwd = {chapters.resolve()}" in fine
    index = (out / "index.html").read_text()
    assert 'href="01_fine.html"' in index and ">A fine chapter<" in index
    assert 'href="02_broken.html"' in index and "failed: cell 3 raised KeyError" in index
    assert re.search(r'KeyError</span> +Traceback \(most recent call last\)',
                     (out / "02_broken.html").read_text())                 # the traceback is shown
    assert sorted(p.name for p in out.iterdir()) == ["01_fine.html", "02_broken.html", "index.html"]
    assert sorted(p.name for p in chapters.iterdir()) == ["01_fine.ipynb", "02_broken.ipynb"]


def test_chapter_timeout(tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("nbconvert")
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _write_notebook(chapters / "07_slow.ipynb", "Slow", "x = 1", "import time\ntime.sleep(60)")
    with pytest.raises(ChapterFailed, match=r"^chapter 07_slow: timed out after 2 s in cell 3$") as e:
        build_book(tmp_path / "site", smoke=True, timeout=2, chapters_dir=chapters, progress=False)
    assert [r.ok for r in e.value.results] == [False]
    assert e.value.results[0].seconds < 30


def test_kernel_environment():
    env = book._kernel_env(smoke=True)
    assert env["MRCNN_REF_SMOKE"] == "1"
    assert env["MPLBACKEND"] == "module://matplotlib_inline.backend_inline"
    assert env["PYTHONPATH"].split(":")[0] == str(pathlib.Path(book.__file__).resolve().parent.parent)
    assert "MRCNN_REF_SMOKE" not in book._kernel_env(smoke=False)


def test_first_heading_is_the_title():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# a comment, not a heading"),
        nbformat.v4.new_markdown_cell("Intro text.\n\n## The `box_iou` [function](x.html) ##\n# Later"),
    ])
    assert book.chapter_title(nb, "fallback") == "The box_iou function"
    assert book.chapter_title(nbformat.v4.new_notebook(), "fallback") == "fallback"
    assert book._short_title("Chapter 03 — RoIPool vs RoIAlign", "03") == "RoIPool vs RoIAlign"
    assert book._short_title("Chapter 04 — Losses", "03") == "Chapter 04 — Losses"


@pytest.mark.parametrize("argv,needle", [
    (["--out", "{tmp}/no/such/parent/site"], "its parent folder"),
    (["--out", "{tmp}/a_file"], "exists and is not a folder"),
    (["--out", "{tmp}/site", "--chapters", "99"], "no chapter '99' (chapters: 01, 02, "),
    (["--out", "{tmp}/site", "--chapters", "01", "boxes"], "no chapter 'boxes'"),
    (["--out", "{tmp}/site", "--timeout", "0"], "timeout must be a number of seconds > 0"),
    (["--out", "{tmp}/site", "--chapters-dir", "{tmp}/nowhere"], "chapters folder"),
    (["--out", "{tmp}/site", "--chapters-dir", "{tmp}"], "no chapter notebooks"),
])
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "a_file").write_text("not a folder")
    argv = ["book", "--no-progress"] + [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("mrcnn-ref book: error: book: ") and needle in err, err
    assert not (tmp_path / "site").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_missing_extra_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nbconvert", None)     # `import nbconvert` raises ImportError
    hint = 'needs nbconvert (not installed): pip install -e ".[book]"'
    with pytest.raises(ValueError, match=re.escape(hint)):
        build_book(tmp_path / "site", ["01"])
    assert main(["book", "--out", str(tmp_path / "site"), "--chapters", "01"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ('mrcnn-ref book: error: book: needs nbconvert (not installed): '
                           'pip install -e ".[book]"')
    assert not (tmp_path / "site").exists()
