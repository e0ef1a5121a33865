"""Error measures of the export's checks: a matte's boundary band and the errors inside it."""

import numpy as np

from compositor.export.metrics import compare, matte_band


def test_the_band_of_a_step_edge_is_the_columns_within_the_radius_of_the_step():
    matte = np.zeros((20, 20), np.float32)
    matte[:, 10:] = 1.0
    band = matte_band(matte, radius=2)
    # Column c's window spans c-2..c+2: it holds both 0 and 1 for c in 8..11 (worked by hand).
    assert np.array_equal(np.flatnonzero(band.all(axis=0)), [8, 9, 10, 11])
    assert not band[:, :8].any() and not band[:, 12:].any()


def test_a_flat_matte_has_no_band_and_a_soft_ramp_is_all_band():
    assert not matte_band(np.full((16, 16), 0.7, np.float32), radius=1).any()
    ramp = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (16, 1))
    assert matte_band(ramp, radius=1).all()


def test_a_matte_comparison_reports_the_errors_inside_the_band_apart_from_the_whole_frame():
    reference = np.zeros((1, 1, 32, 32), np.float32)
    reference[..., 16:] = 1.0
    candidate = reference.copy()
    candidate[0, 0, 5, 16] += -0.1  # at the edge: in the band
    candidate[0, 0, 5, 0] += 0.3  # far from it: flat background
    comparison = compare(reference, candidate)
    assert np.isclose(comparison.max_abs_error, 0.3)
    assert np.isclose(comparison.band_max_abs_error, 0.1)
    # Default radius at 32 pixels: 1, so the band is columns 15 and 16, 64 pixels, one of them off by 0.1.
    assert np.isclose(comparison.as_dict()["band_psnr_db"], 10 * np.log10(64 / 0.1**2))


def test_an_rgb_comparison_has_no_band_fields():
    image = np.zeros((1, 3, 8, 8), np.float32)
    assert "band_psnr_db" not in compare(image, image + 0.01).as_dict()
