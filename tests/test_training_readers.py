"""Dataset readers: tiny real examples of each layout, written with Pillow into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compositor.training.readers import (
    DataError,
    HarmonyTriplet,
    detect_layout,
    find_images,
    load_image,
    read_iharmony4,
    read_matting_set,
    read_photo_groups,
)


def write_image(path: Path, width: int = 12, height: int = 8, mode: str = "RGB") -> Path:
    """Write a small real image (a gradient, so resizing has something to filter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, width * height, dtype=np.float64).reshape(height, width)
    pixels = ramp.astype(np.uint8)
    if mode == "RGB":
        pixels = np.stack([pixels, 255 - pixels, np.full_like(pixels, 90)], axis=-1)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def write_harmony_subset(root: Path, subset: str, train: list[str], test: list[str]) -> Path:
    """Write an iHarmony4 subset whose list files name the given composites, all resolvable."""
    folder = root / subset
    for name in train + test:
        real, mask_id, _ = Path(name).stem.rsplit("_", 2)
        write_image(folder / "composite_images" / name)
        write_image(folder / "masks" / f"{real}_{mask_id}.png", mode="L")
        write_image(folder / "real_images" / f"{real}.jpg")
    (folder / f"{subset}_train.txt").write_text("".join(f"{n}\n" for n in train))
    (folder / f"{subset}_test.txt").write_text("".join(f"{n}\n" for n in test))
    return folder


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# --- find_images ----------------------------------------------------------------------------


def test_find_images_matches_suffixes_case_insensitively_and_skips_other_files(tmp_path):
    write_image(tmp_path / "b.PNG")
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "._a.jpg")  # macOS resource fork: hidden, not an image
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image suffix is not a file

    assert names(find_images(tmp_path)) == ["a.jpg", "b.PNG"]


def test_find_images_names_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        find_images(tmp_path / "nowhere")


# --- photo groups ---------------------------------------------------------------------------


def test_photo_groups_read_one_group_per_subfolder_and_one_per_loose_photo(tmp_path):
    write_image(tmp_path / "wedding" / "IMG_2.jpg")
    write_image(tmp_path / "wedding" / "IMG_1.jpg")
    write_image(tmp_path / "beach" / "DSC_9.png")
    write_image(tmp_path / "loose_b.jpg")
    write_image(tmp_path / "loose_a.jpg")
    (tmp_path / "empty_shoot").mkdir()
    write_image(tmp_path / ".thumbnails" / "t.jpg")

    groups = read_photo_groups(tmp_path)

    assert [names(g) for g in groups] == [
        ["loose_a.jpg"],
        ["loose_b.jpg"],
        ["DSC_9.png"],
        ["IMG_1.jpg", "IMG_2.jpg"],
    ]
    assert groups[2][0] == tmp_path / "beach" / "DSC_9.png"


def test_photo_groups_group_ppr10k_flat_names_by_numeric_prefix(tmp_path):
    for stem in ("10_0", "0_1", "0_0", "2_0", "2_1", "2_10", "2_2"):
        write_image(tmp_path / "source" / f"{stem}.tif")

    groups = read_photo_groups(tmp_path / "source")

    assert [names(g) for g in groups] == [
        ["0_0.tif", "0_1.tif"],
        ["2_0.tif", "2_1.tif", "2_2.tif", "2_10.tif"],
        ["10_0.tif"],
    ]


def test_photo_groups_keep_ppr10k_grouping_inside_a_subfolder(tmp_path):
    write_image(tmp_path / "ppr10k" / "0_0.tif")
    write_image(tmp_path / "ppr10k" / "1_0.tif")
    write_image(tmp_path / "shoot" / "1_0.jpg")
    write_image(tmp_path / "shoot" / "cover.jpg")  # breaks the pattern: the folder is one group

    groups = read_photo_groups(tmp_path)

    assert [names(g) for g in groups] == [["0_0.tif"], ["1_0.tif"], ["1_0.jpg", "cover.jpg"]]


def test_photo_groups_ignore_non_image_files(tmp_path):
    write_image(tmp_path / "shoot" / "a.jpg")
    (tmp_path / "shoot" / "a.xmp").write_text("<sidecar/>")
    (tmp_path / "README.md").write_text("photos")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "licence.txt").write_text("CC-BY")

    assert [names(g) for g in read_photo_groups(tmp_path)] == [["a.jpg"]]


def test_photo_groups_error_names_an_empty_folder(tmp_path):
    folder = tmp_path / "my_photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")

    with pytest.raises(DataError, match=r"my_photos holds no images"):
        read_photo_groups(folder)


# --- matting set ----------------------------------------------------------------------------


def test_matting_pairs_match_stems_across_extensions(tmp_path):
    for stem in ("b", "a"):
        write_image(tmp_path / "image" / f"{stem}.jpg")
        write_image(tmp_path / "alpha" / f"{stem}.png", mode="L")

    pairs = read_matting_set(tmp_path)

    assert pairs == [
        (tmp_path / "image" / "a.jpg", tmp_path / "alpha" / "a.png"),
        (tmp_path / "image" / "b.jpg", tmp_path / "alpha" / "b.png"),
    ]


def test_matting_unmatched_stems_are_reported_by_name_on_both_sides(tmp_path):
    for stem in ("shared", "only_image"):
        write_image(tmp_path / "image" / f"{stem}.jpg")
    for stem in ("shared", "only_alpha"):
        write_image(tmp_path / "alpha" / f"{stem}.png", mode="L")

    with pytest.raises(DataError) as caught:
        read_matting_set(tmp_path)

    message = str(caught.value)
    assert "only_image" in message and "only_alpha" in message
    assert "shared" not in message


def test_matting_report_lists_at_most_five_unmatched_stems(tmp_path):
    write_image(tmp_path / "alpha" / "z.png", mode="L")
    for index in range(7):
        write_image(tmp_path / "image" / f"img{index}.jpg")
    write_image(tmp_path / "image" / "z.jpg")

    with pytest.raises(DataError, match=r"7 image\(s\) without an alpha.*and 2 more") as caught:
        read_matting_set(tmp_path)
    assert "img4" in str(caught.value) and "img5" not in str(caught.value)


def test_matting_missing_or_empty_alpha_folder_is_named(tmp_path):
    write_image(tmp_path / "image" / "a.jpg")
    with pytest.raises(DataError, match=r"alpha folder .*alpha does not exist"):
        read_matting_set(tmp_path)

    (tmp_path / "alpha").mkdir()
    with pytest.raises(DataError, match=r"alpha folder .*alpha holds no images"):
        read_matting_set(tmp_path)


def test_matting_two_files_with_one_stem_are_an_error(tmp_path):
    write_image(tmp_path / "image" / "a.jpg")
    write_image(tmp_path / "alpha" / "a.png", mode="L")
    write_image(tmp_path / "alpha" / "a.jpg", mode="L")

    with pytest.raises(DataError, match=r"same stem: a\.jpg/a\.png"):
        read_matting_set(tmp_path)


# --- iHarmony4 ------------------------------------------------------------------------------


@pytest.fixture
def iharmony4(tmp_path) -> Path:
    root = tmp_path / "iHarmony4"
    write_harmony_subset(root, "HCOCO", train=["c2_1_1.jpg", "c1_3_2.jpg"], test=["c9_1_1.jpg"])
    write_harmony_subset(root, "HAdobe5k", train=["a0001_1_1.jpg"], test=["a0002_2_5.jpg"])
    return root


def test_iharmony4_train_split_reads_subsets_in_sorted_order_and_lines_in_list_order(iharmony4):
    triplets = read_iharmony4(iharmony4, "train")

    assert [t.composite.name for t in triplets] == ["a0001_1_1.jpg", "c2_1_1.jpg", "c1_3_2.jpg"]
    assert all(isinstance(t, HarmonyTriplet) for t in triplets)


def test_iharmony4_test_split_reads_only_the_test_lists(iharmony4):
    triplets = read_iharmony4(iharmony4, split="test")

    assert [t.composite.name for t in triplets] == ["a0002_2_5.jpg", "c9_1_1.jpg"]


def test_iharmony4_resolves_mask_and_real_from_the_composite_name(iharmony4):
    coco = iharmony4 / "HCOCO"
    triplet = read_iharmony4(iharmony4)[2]

    assert triplet == HarmonyTriplet(
        composite=coco / "composite_images" / "c1_3_2.jpg",
        mask=coco / "masks" / "c1_3.png",
        real=coco / "real_images" / "c1.jpg",
    )


def test_iharmony4_skips_blank_lines_and_accepts_ihd_style_prefixed_lines(iharmony4):
    list_file = iharmony4 / "HCOCO" / "HCOCO_train.txt"
    list_file.write_text("\nHCOCO/composite_images/c1_3_2.jpg\n   \nc2_1_1.jpg\n\n")

    triplets = read_iharmony4(iharmony4 / "HCOCO")

    assert [t.composite.name for t in triplets] == ["c1_3_2.jpg", "c2_1_1.jpg"]


def test_iharmony4_reads_a_single_subset_root(iharmony4):
    triplets = read_iharmony4(iharmony4 / "HAdobe5k", "test")

    assert triplets == [
        HarmonyTriplet(
            composite=iharmony4 / "HAdobe5k" / "composite_images" / "a0002_2_5.jpg",
            mask=iharmony4 / "HAdobe5k" / "masks" / "a0002_2.png",
            real=iharmony4 / "HAdobe5k" / "real_images" / "a0002.jpg",
        )
    ]


def test_iharmony4_missing_list_file_is_named(iharmony4):
    (iharmony4 / "HCOCO" / "HCOCO_test.txt").unlink()

    with pytest.raises(DataError, match=r"missing list file .*HCOCO_test\.txt"):
        read_iharmony4(iharmony4, "test")


def test_iharmony4_missing_mask_names_the_composite_and_the_mask(iharmony4):
    (iharmony4 / "HCOCO" / "masks" / "c1_3.png").unlink()

    with pytest.raises(DataError, match=r"c1_3_2\.jpg: missing .*masks.c1_3\.png") as caught:
        read_iharmony4(iharmony4)
    assert "c2_1_1.jpg" not in str(caught.value)


def test_iharmony4_rejects_an_unknown_split_and_a_folder_without_subsets(tmp_path, iharmony4):
    with pytest.raises(ValueError, match="split"):
        read_iharmony4(iharmony4, "val")
    with pytest.raises(DataError, match="not an iHarmony4 folder"):
        read_iharmony4(tmp_path)


# --- detect_layout --------------------------------------------------------------------------


def test_detect_layout_recognises_iharmony4_and_a_single_subset(iharmony4):
    assert detect_layout(iharmony4) == "iharmony4"
    assert detect_layout(iharmony4 / "HCOCO") == "iharmony4"


def test_detect_layout_recognises_a_matting_set(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "alpha").mkdir()

    assert detect_layout(tmp_path) == "matting"


def test_detect_layout_falls_back_to_photos(tmp_path):
    write_image(tmp_path / "shoot" / "a.jpg")
    (tmp_path / "image").mkdir()  # no alpha/ beside it: not a matting set

    assert detect_layout(tmp_path) == "photos"


def test_detect_layout_rejects_a_file(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        detect_layout(write_image(tmp_path / "a.jpg"))


# --- load_image -----------------------------------------------------------------------------


def test_load_image_returns_uint8_rgb_at_full_size_by_default(tmp_path):
    array = load_image(write_image(tmp_path / "a.png", width=12, height=8))

    assert array.shape == (8, 12, 3) and array.dtype == np.uint8
    assert array.flags.writeable


def test_load_image_downscaling_keeps_the_aspect_ratio(tmp_path):
    landscape = load_image(write_image(tmp_path / "wide.jpg", width=12, height=8), short_side=4)
    portrait = load_image(write_image(tmp_path / "tall.png", width=8, height=12), short_side=6)

    assert landscape.shape == (4, 6, 3)
    assert portrait.shape == (9, 6, 3)


def test_load_image_never_upscales(tmp_path):
    array = load_image(write_image(tmp_path / "a.png", width=12, height=8), short_side=100)

    assert array.shape == (8, 12, 3)


def test_load_image_reads_alpha_as_greyscale_with_mode_l(tmp_path):
    path = write_image(tmp_path / "alpha.png", mode="L")

    array = load_image(path, mode="L")

    assert array.shape == (8, 12) and array.dtype == np.uint8
    np.testing.assert_array_equal(array, np.asarray(Image.open(path)))


def test_load_image_rescales_sixteen_bit_alpha_instead_of_clipping(tmp_path):
    path = tmp_path / "alpha16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)

    np.testing.assert_array_equal(load_image(path, mode="L"), [[0, 128, 255]])


def test_load_image_unreadable_file_error_names_the_path(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")

    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        load_image(broken)
    with pytest.raises(DataError, match=r"missing\.png"):
        load_image(tmp_path / "missing.png")
