"""draw_pipeline: the Mask R-CNN pipeline diagram the chapters show."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from mrcnn_ref.visualize import draw_pipeline  # noqa: E402

STAGES = ("image", "backbone", "rpn", "proposals", "roi_op", "box_head", "mask_head", "outputs")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def stage_colours(ax):
    """{stage name: (face colour, edge colour)} of the stage patches of ``ax``."""
    out = {}
    for p in ax.patches:
        if p.get_gid() in STAGES:
            assert p.get_gid() not in out, f"two patches for stage {p.get_gid()}"
            out[p.get_gid()] = (to_rgba(p.get_facecolor()), to_rgba(p.get_edgecolor()))
    return out


def test_returns_the_axes_it_was_given_and_makes_one_otherwise():
    fig, ax = plt.subplots()
    assert draw_pipeline(ax=ax) is ax
    new = draw_pipeline()
    assert new is not ax and new.figure is not fig


def test_draws_every_stage_and_its_label():
    ax = draw_pipeline()
    assert set(stage_colours(ax)) == set(STAGES)
    text = " ".join(t.get_text() for t in ax.texts).replace("\n", " ")
    for label in ("image", "backbone", "FPN", "RPN", "proposals", "RoIAlign", "box head",
                  "mask head", "boxes", "classes", "masks"):
        assert label in text, label
    assert {t.get_gid() for t in ax.texts} >= set(STAGES)
    arrows = [p for p in ax.patches if p.get_gid() not in STAGES]
    assert len(arrows) >= len(STAGES) - 1          # at least a chain through every stage


@pytest.mark.parametrize("highlight", ["rpn", ["box_head", "mask_head"], ("image",), list(STAGES)])
def test_highlight_colours_exactly_the_named_stages(highlight):
    plain = stage_colours(draw_pipeline())
    marked = stage_colours(draw_pipeline(highlight=highlight))
    named = {highlight} if isinstance(highlight, str) else set(highlight)
    changed = {s for s in STAGES if marked[s] != plain[s]}
    assert changed == named
    assert len({marked[s] for s in named}) == 1     # one highlight colour
    assert len({plain[s] for s in STAGES}) == 1     # and one plain colour


def test_no_highlight_is_the_same_as_an_empty_list():
    assert stage_colours(draw_pipeline(highlight=[])) == stage_colours(draw_pipeline())


@pytest.mark.parametrize("bad", ["fpn", ["rpn", "roialign"], "RPN"])
def test_unknown_stage_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError) as e:
        draw_pipeline(highlight=bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("draw_pipeline:")
    assert "backbone" in msg and "roi_op" in msg    # it lists the stages
