"""What the Review and Overview pages show (issue 25 item 7), with known answers: window/level as centre and width in
grey values, a zoomed view keeping the fit view's contrast, the synthetic banner following the filters, real and
synthetic totals apart, thumbnails naming the lesion key and type, and a colour-blind-safe palette."""

from __future__ import annotations

import numpy as np
import pytest
import streamlit as st
from sqlalchemy import func, select, update

from cadx import io as cadx_io
from cadx.palette import LABEL_COLOURS, METHOD_COLOURS, OKABE_ITO, STATUS_COLOURS
from cadx.workflows import RoiFilters, dataset_stats, display_image, import_demo, open_workspace, review_counts
from cadx.workflows.browse import (
    ROI_GREY_RANGE,
    auto_window,
    centre_width_window,
    roi_display,
    window_centre_width,
)
from db.models import Image, Lesion, Patient, Roi
from tests.apptest_support import open_page, point_app_at


# --------------------------------------------------------------------------------------------- window ---
def test_a_window_in_centre_and_width_grey_values_maps_known_pixels():
    pixels = np.array([[800, 900, 950], [1000, 1050, 1100], [1200, 0, 65535]], dtype=np.uint16)
    window = centre_width_window(1000, 200, value_range=ROI_GREY_RANGE)  # 900 black, 1100 white
    shown = roi_display(pixels, window=window)
    assert shown.tolist() == [[0, 0, 64], [128, 191, 255], [255, 0, 255]]  # (v - 900) * 255 / 200, clipped
    assert window_centre_width(window, value_range=ROI_GREY_RANGE) == pytest.approx((1000, 200))
    # an upload's own presentation range: the same grey values, other fractions
    assert centre_width_window(2048, 1024, value_range=(0, 4095)) == pytest.approx((1536 / 4095, 2560 / 4095))
    with pytest.raises(Exception, match="window width"):
        centre_width_window(1000, 0)


def _mammogram(pixels: np.ndarray) -> cadx_io.Mammogram:
    return cadx_io.Mammogram(pixels=pixels, value_range=(0.0, 4095.0), pixel_spacing_mm=(0.1, 0.1),
                             pixel_spacing_source="test", source_sha256="0" * 64, source_format="dicom",
                             modality="MG", view="CC", laterality="L", photometric="MONOCHROME2", header={},
                             burned_in_annotation=False, patient_key=None)


def test_a_zoomed_view_keeps_the_fit_views_contrast_unless_asked():
    # dark tissue (grey 1000-1100) with one bright corner (4000): the fit view stretches 1000..4000
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 1101, size=(400, 300)).astype(np.float32)
    pixels[:100, :100] = 4000
    image = _mammogram(pixels)
    fit = display_image(image, max_width=300, max_height=400)
    region = (300, 200, 50, 50)  # dark tissue only
    zoomed = display_image(image, max_width=300, max_height=400, region=region)
    scale = zoomed.pixels.shape[0] // 50
    # the same source pixel has the same grey in both views
    for r, c in [(300, 200), (320, 230), (349, 249)]:
        y, x = (r - region[0]) * scale, (c - region[1]) * scale
        assert zoomed.pixels[y, x, 0] == fit.pixels[r, c, 0]
    lo, hi = auto_window(pixels, value_range=(0.0, 4095.0))  # the fit view is the image itself here (scale 1)
    assert lo * 4095 == pytest.approx(np.percentile(pixels, 0.5)) and hi * 4095 == pytest.approx(4000)
    # asked for: the region's own stretch, from black to white
    own = display_image(image, max_width=300, max_height=400, region=region, region_contrast=True)
    assert own.pixels[..., 0].max() == 255 and zoomed.pixels[..., 0].max() < 60


# ------------------------------------------------------------------------------------ real and synthetic ---
@pytest.fixture
def mixed_data_dir(tmp_path, monkeypatch, workspace_cache):
    """Demo data with its first patient's records marked real (as if imported from MIAS): a mixed workspace."""
    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)
    ws = open_workspace(data)
    with ws.sessions() as session, session.begin():
        patient = session.scalars(select(Patient).order_by(Patient.id)).first()
        lesions = select(Lesion.id).where(Lesion.patient_id == patient.id)
        session.execute(update(Patient).where(Patient.id == patient.id).values(is_synthetic=False))
        session.execute(update(Lesion).where(Lesion.patient_id == patient.id).values(is_synthetic=False))
        session.execute(update(Image).where(Image.patient_id == patient.id).values(is_synthetic=False))
        session.execute(update(Roi).where(Roi.lesion_id.in_(lesions)).values(is_synthetic=False))
        n_real = session.scalar(select(func.count(Roi.id)).where(Roi.is_synthetic.is_(False)))
        n_real_lesions = len(session.scalars(lesions).all())
    ws.engine.dispose()
    yield point_app_at(data, monkeypatch), n_real, n_real_lesions
    st.cache_resource.clear()


def test_overview_separates_real_and_synthetic_totals(mixed_data_dir):
    data, n_real, n_real_lesions = mixed_data_dir
    ws = open_workspace(data)
    stats = dataset_stats(ws)
    ws.engine.dispose()
    assert stats["by_origin"]["real"] == {"patients": 1, "lesions": n_real_lesions, "rois": n_real,
                                          "rois_included": n_real, "rois_excluded": 0}
    assert stats["by_origin"]["synthetic"]["rois"] == stats["rois"] - n_real
    assert stats["by_origin"]["synthetic"]["patients"] == stats["patients"] - 1
    at = open_page()
    (table,) = [d.value for d in at.dataframe if "data" in d.value.columns]
    assert table["data"].tolist() == ["real (patient images)", "synthetic (cadx phantoms)"]
    assert table["ROIs"].tolist() == [n_real, stats["rois"] - n_real]
    assert table["lesions"].tolist() == [n_real_lesions, stats["lesions"] - n_real_lesions]


def _banner(at) -> list[str]:
    return [m.value for m in at.markdown if "SYNTHETIC DEMO DATA" in m.value]


def test_the_synthetic_banner_follows_the_data_filter_read_from_the_url(mixed_data_dir):
    data, n_real, _ = mixed_data_dir
    ws = open_workspace(data)
    assert review_counts(ws, RoiFilters(synthetic=False)) == {"rois": n_real, "included": n_real, "excluded": 0,
                                                               "synthetic": 0}
    ws.engine.dispose()
    at = open_page("pages/review.py")
    (banner,) = _banner(at)
    assert "of the" in banner and "matching the filters are synthetic" in banner
    at.selectbox(key="review_f_synthetic").set_value("real only").run()
    assert not at.exception
    assert _banner(at) == []  # only real ROIs shown: no synthetic banner
    assert {m.label: m.value for m in at.metric}["Matching the filters"] == str(n_real)
    assert at.query_params["data"] in ("real only", ["real only"])  # the filter is in the URL ...
    again = open_page(None)  # ... and a fresh session opened on that URL shows the same
    again.query_params["data"] = "real only"
    again.switch_page("pages/review.py").run()
    assert again.selectbox(key="review_f_synthetic").value == "real only" and _banner(again) == []
    at.selectbox(key="review_f_synthetic").set_value("synthetic only").run()
    assert len(_banner(at)) == 1 and "data" in at.query_params


def test_thumbnails_name_the_lesion_key_and_type(mixed_data_dir):
    data, _, _ = mixed_data_dir
    at = open_page("pages/review.py")
    ws = open_workspace(data)
    with ws.sessions() as session:
        first = session.execute(select(Roi.id, Lesion.key, Lesion.label, Lesion.lesion_type, Image.view)
                                .join(Lesion, Roi.lesion_id == Lesion.id).join(Image, Roi.image_id == Image.id)
                                .order_by(Roi.id)).first()
    ws.engine.dispose()
    captions = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("demo\\-L")]  # key escaped
    assert captions and captions[0].startswith(f"{first.key}  \n{first.label} {first.lesion_type}  \n{first.view}")
    assert first.lesion_type == "mass"


# -------------------------------------------------------------------------------------------- palette ---
# Viénot, Brettel & Mollon (1999): what a protanope and a deuteranope see, on linear RGB
_DEFICIENCIES = {"protanopia": np.array([[0.11238, 0.88762, 0], [0.11238, 0.88762, 0], [0.00401, -0.00401, 1]]),
                 "deuteranopia": np.array([[0.29275, 0.70725, 0], [0.29275, 0.70725, 0], [-0.02234, 0.02234, 1]])}


def _lab(hex_colour: str, deficiency: str | None = None) -> np.ndarray:
    srgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    rgb = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    if deficiency:
        rgb = np.clip(_DEFICIENCIES[deficiency] @ rgb, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
    t = xyz / np.array([0.95047, 1.0, 1.08883])  # D65 white
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest(colours: list[str], deficiency: str | None) -> float:
    labs = [_lab(c, deficiency) for c in colours]
    return min(float(np.linalg.norm(a - b)) for i, a in enumerate(labs) for b in labs[i + 1:])


@pytest.mark.parametrize("deficiency", [None, *_DEFICIENCIES])
def test_chart_colours_are_okabe_ito_and_stay_apart_for_colour_blind_eyes(deficiency):
    okabe_ito = set(OKABE_ITO.values())
    for palette in (LABEL_COLOURS, STATUS_COLOURS, METHOD_COLOURS):
        assert set(palette.values()) <= okabe_ito
        assert _closest(list(palette.values()), deficiency) > 20  # CIELAB ΔE: plainly different colours
    # the test can fail: the old t-SNE map's green and red were nearly one colour to a deuteranope
    if deficiency == "deuteranopia":
        assert _closest(["#2ca02c", "#d62728"], deficiency) < 10


def test_the_tsne_map_and_the_other_charts_use_the_palette():
    import ast
    from pathlib import Path

    pages = Path(__file__).resolve().parents[1] / "pages"
    for name in ("analyses.py", "explorer.py", "roc.py"):
        source = (pages / name).read_text()
        assert "cadx.palette" in source, name
        for node in ast.walk(ast.parse(source)):  # no colour written out by hand in a chart's colour map
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in (
                    "#2ca02c", "#d62728", "#1f77b4", "#ff7f0e"):
                pytest.fail(f"{name} still colours with {node.value}")


# ---------------------------------------------------------------------------------------- thumbnails ---
# Issue 25.8: the grid's first render made its thumbnails the slow way (a partition of every ROI pixel for the
# contrast, every pixel mapped before shrinking). The fast path must give the same contrast limits and the same
# thumbnail wherever no window edge cuts through a thumbnail pixel's box.
def test_the_histogram_percentiles_equal_numpys():
    from cadx.workflows.browse import _integer_percentiles

    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 70, size=2))
        high = int(rng.choice([2, 300, 65536]))
        pixels = rng.integers(0, high, size=shape).astype(np.uint16)
        assert _integer_percentiles(pixels, (0.5, 99.5)) == pytest.approx(np.percentile(pixels, (0.5, 99.5)),
                                                                          abs=1e-9)
    assert _integer_percentiles(np.full((4, 4), 7, np.uint16), (0.5, 99.5)) == [7.0, 7.0]


def test_a_thumbnail_of_a_ramp_is_the_mapped_then_shrunk_ramp():
    import io

    from PIL import Image as PILImage

    from cadx.workflows.browse import thumbnail_png

    # a ramp 0..65535 across the columns: its 0.5th and 99.5th percentiles are known, and a 4 x 4 box spans 4
    # adjacent columns, so mapping then shrinking and shrinking then mapping agree except in the two clipped bands
    ramp = np.tile(np.linspace(0, 65535, 512).round().astype(np.uint16), (512, 1))
    lo, hi = np.percentile(ramp, (0.5, 99.5))
    mapped = np.rint(np.clip((ramp.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255))
    expected = mapped.reshape(128, 4, 128, 4).mean(axis=(1, 3))
    got = np.asarray(PILImage.open(io.BytesIO(thumbnail_png(ramp, size=128))))
    assert got.shape == (128, 128) and got.dtype == np.uint8
    assert np.abs(got.astype(float) - expected).max() <= 1.0  # rounding only
    assert got[:, 0].max() == 0 and got[:, -1].min() == 255
    flat = np.full((512, 512), 1234, np.uint16)
    flat[0, 0] = 1300  # mostly flat: stretched min to max, as roi_display does
    shown = np.asarray(PILImage.open(io.BytesIO(thumbnail_png(flat, size=128))))
    assert shown[0, 0] == round(255 / 16) and shown[1:, 1:].max() == 0
    with pytest.raises(Exception, match="is not an unsigned integer type"):
        thumbnail_png(ramp.astype(np.float32), size=128)
