"""The built-in demo data: synthetic phantoms imported and marked synthetic everywhere, with their ground truth."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from cadx.workflows import dataset_stats, import_demo
from db.models import Image, Lesion, Patient, Roi


def test_demo_is_synthetic_deterministic_and_keeps_truth(workspace):
    report = import_demo(workspace, n_lesions=6, seed=3)
    assert report.committed and report.n_errors == 0
    stats = dataset_stats(workspace)
    assert stats["lesions"] == 6 and 12 <= stats["rois"] <= 18
    assert stats["synthetic_rois"] == stats["rois"] and stats["synthetic_patients"] == stats["patients"]
    with workspace.sessions() as session:
        assert all(session.scalars(select(Patient.is_synthetic)))
        assert all(session.scalars(select(Image.is_synthetic)))
        assert set(session.scalars(select(Image.source_format))) == {"synthetic"}
        lesions = session.scalars(select(Lesion)).all()
        rois = session.scalars(select(Roi)).all()
        assert all(lesion.is_synthetic and lesion.truth["morphology"] for lesion in lesions)
        assert all(lesion.size_mm == lesion.truth["diameter_mm"] for lesion in lesions)
        hashes = sorted(roi.sha256 for roi in rois)
        for roi in rois:
            assert roi.is_synthetic and roi.truth_mask_file
            truth = np.asarray(PILImage.open(workspace.path(roi.truth_mask_file))) > 0
            assert truth.shape == (512, 512)
            # the marked centre lies inside the true outline
            assert truth[254:258, 254:258].any()
            diameter = roi.lesion.truth["diameter_mm"]
            # the true outline's area is of the lesion's size (views differ by projection)
            area_mm2 = truth.sum() * 0.01
            assert 0.4 * np.pi * (diameter / 2) ** 2 < area_mm2 < 2.5 * np.pi * (diameter / 2) ** 2

    again = import_demo(workspace, n_lesions=6, seed=3)
    assert again.n_imported == 0 and again.n_errors == 0
    with workspace.sessions() as session:
        assert sorted(session.scalars(select(Roi.sha256))) == hashes
