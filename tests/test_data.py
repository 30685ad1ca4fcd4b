"""Data loading from every source, column detection, validation errors, augmentation and collation."""

import io
import json
import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl import SimCLRConfig
from hf_ssl.cli import make_parser, parse
from hf_ssl.data import (
    AudioDataArguments,
    ImageCollator,
    ImageDataArguments,
    UndecodableImageError,
    data_source,
    find_column,
    find_label_column,
    load_data,
    load_digits_dataset,
    prepare_images,
    to_pil,
    undecoded,
)
from hf_ssl.errors import UsageError
from hf_ssl.models.simclr.transforms import SimCLRTransform


@pytest.fixture
def image_folder(tmp_path):
    """An imagefolder tree with awkward images: grayscale, RGBA, palette, 16-bit, and ones smaller than the crop."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images" / "train"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "cat" / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8), mode="L").save(root / "cat" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), mode="RGBA").save(root / "dog" / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P").save(root / "dog" / "pal.png")
    Image.fromarray(rng.integers(0, 65535, (12, 12), dtype=np.uint16)).save(root / "dog" / "deep.png")
    Image.fromarray(rng.integers(0, 255, (3, 5, 3), dtype=np.uint8)).save(root / "cat" / "tiny.png")
    return tmp_path / "images"


@pytest.fixture
def config():
    return SimCLRConfig(backbone="convnext_atto", small_image_stem=True, image_size=32)


def test_embedded_digits_default_needs_no_download():
    train, test = load_data("digits", "train"), load_data("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 297
    assert find_column(train, "image") == "image" and find_label_column(train) == "label"
    assert train[0]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_data("digits", "validation")
    assert (
        len(load_data("digits", "train[:100]")) == 100 and len(load_data("digits", "test[:10%]")) == 30
    )  # datasets rounds 29.7
    assert load_data("digits", "train[:5]")["label"] == train["label"][:5]
    # with no name, the caller's default (an objective's or task's default_dataset) is loaded; there is no other
    assert load_data(None, "train[:5]", default=("digits", load_digits_dataset))["label"] == train["label"][:5]
    with pytest.raises(UsageError, match="--dataset_name is required"):
        load_data(None, "train")


def test_embedded_digit_scenes_are_generated_the_same_every_time():
    """The harder embedded set: the digits' labels and split, drawn as 32x32 colour scenes from a fixed seed."""
    train, test = load_data("digit-scenes", "train"), load_data("digit-scenes", "test")
    assert len(train) == 1500 and len(test) == 297 and train["label"] == load_data("digits", "train")["label"]
    assert train[0]["image"].size == (32, 32) and train[0]["image"].mode == "RGB"
    assert find_column(train, "image") == "image" and find_label_column(train) == "label"
    head = load_data("digit-scenes", "train[:3]")
    assert all(np.array_equal(np.asarray(head[i]["image"]), np.asarray(train[i]["image"])) for i in range(3))
    colours = np.stack([np.asarray(image).reshape(-1, 3).mean(0) for image in train[:50]["image"]])
    chroma = colours - colours.mean(1, keepdims=True)  # each image's colour, its brightness taken out
    assert chroma.std(0).min() > 0.03 * 255  # scenes vary in colour, not just in brightness
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_data("digit-scenes", "validation")
    assert data_source("digit-scenes") == "the embedded 'digit-scenes' dataset (no download)"


def test_image_folder_with_mixed_modes_and_tiny_images_collates(image_folder, config):
    ds = load_data(str(image_folder), "train")
    assert len(ds) == 6
    column = find_column(ds, "image")
    ds, _ = prepare_images(ds, column)
    batch = ImageCollator(SimCLRTransform(config), column)([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (6, 2, 3, 32, 32)
    assert torch.isfinite(batch["pixel_values"]).all()
    # the two views of one image differ: the augmentation is random per view
    assert not torch.equal(batch["pixel_values"][:, 0], batch["pixel_values"][:, 1])


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "pal.png", "deep.png"])
def test_modes_are_converted(image_folder, name):
    path = next(image_folder.rglob(name))
    image = to_pil(str(path), "RGB")
    assert image.mode == "RGB" and image.size == Image.open(path).size
    assert to_pil(str(path), "L").mode == "L"


def test_sixteen_bit_image_keeps_its_contrast(image_folder):
    image = np.asarray(to_pil(str(next(image_folder.rglob("deep.png"))), "L"))
    assert image.min() == 0 and image.max() == 255


def test_parquet_folder_with_splits(cifar10_dir):
    ds = load_data(str(cifar10_dir), "test[:50]")
    assert len(ds) == 50 and isinstance(ds.features["image"], datasets.Image)
    assert find_label_column(ds) == "label"
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_data(str(cifar10_dir), "validation")


def test_single_parquet_file_and_streaming(cifar10_dir, config):
    ds = load_data(str(cifar10_dir / "test.parquet"), "train[:10]")
    assert len(ds) == 10
    stream = load_data(str(cifar10_dir / "test.parquet"), "train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    column = find_column(stream, "image")
    rows = list(undecoded(stream, column).take(4))
    batch = ImageCollator(SimCLRTransform(config), column)(rows)
    assert batch["pixel_values"].shape == (4, 2, 3, 32, 32)
    assert "local file" in data_source(str(cifar10_dir / "test.parquet"), stream)


def test_csv_of_image_paths(image_folder, tmp_path, config):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    csv = tmp_path / "files.csv"
    csv.write_text("filename,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(paths)))
    ds = load_data(str(csv), "train")
    column = find_column(ds, "image")
    assert column == "filename"
    batch = ImageCollator(SimCLRTransform(config), column)([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (len(paths), 2, 3, 32, 32)


def test_save_to_disk_folder(tmp_path):
    load_data("digits", "test").save_to_disk(str(tmp_path / "saved"))
    assert len(load_data(str(tmp_path / "saved"), "train")) == 297  # a single saved Dataset is any split


def test_json_lines_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"sentence {i}"}) + "\n" for i in range(3)))
    ds = load_data(str(path), "train")
    assert find_column(ds, "text") == "text"
    with pytest.raises(ValueError, match="no image column found among: text \\(string\\)"):
        find_column(ds, "image")


def test_column_errors_name_the_problem(image_folder):
    ds = load_data(str(image_folder), "train")
    with pytest.raises(ValueError, match="column 'photo' not found; the dataset has: image \\(Image\\), label"):
        find_column(ds, "image", "photo")
    with pytest.raises(ValueError, match="column 'label' holds ClassLabel, not image data"):
        find_column(ds, "image", "label")


def test_empty_dataset_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("image,label\n")
    with pytest.raises(ValueError, match="is empty"):
        load_data(str(path), "train")


def _with_broken_rows(ds: datasets.Dataset, rows: list[int]) -> datasets.Dataset:
    ds = undecoded(ds, "image")

    def corrupt(example, index):
        if index in rows:
            example["image"] = {"bytes": b"not an image at all", "path": f"broken_{index}.png"}
        return example

    return ds.map(corrupt, with_indices=True)


def test_undecodable_images_are_named_by_row():
    ds = _with_broken_rows(load_data("digits", "test"), [3, 40])
    with pytest.raises(UndecodableImageError, match=r"2 of 297 images are unusable \(rows \[3, 40\]") as err:
        prepare_images(ds, "image")
    assert "broken_40.png" in str(err.value)


def test_undecodable_images_can_be_skipped_with_a_count(caplog):
    ds = _with_broken_rows(load_data("digits", "test"), [0, 5, 6])
    with caplog.at_level("WARNING"):
        kept, skipped = prepare_images(ds, "image", on_bad_example="skip")
    assert len(kept) == 294 and skipped == 3
    assert "skipping 3 of 297 unusable images (rows [0, 5, 6])" in caplog.text
    everything = _with_broken_rows(load_data("digits", "test[:4]"), [0, 1, 2, 3])
    with pytest.raises(UndecodableImageError, match="none of the 4 images is usable"):
        prepare_images(everything, "image", on_bad_example="skip")


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_streamed_broken_image_is_filtered_before_batching(config, caplog):
    """Skipped before batching, so batches stay full (a collator that dropped rows would make uneven batches)."""
    rows = [{"image": {"bytes": _png(i), "path": f"{i}.png"}} for i in range(6)]
    rows.insert(2, {"image": {"bytes": b"broken", "path": "x.jpg"}})
    stream = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_iterable_dataset()
    filtered, _ = prepare_images(stream, "image", "skip")
    with caplog.at_level("WARNING"):
        batches = list(
            torch.utils.data.DataLoader(
                filtered, batch_size=3, collate_fn=ImageCollator(SimCLRTransform(config), "image")
            )
        )
    assert [b["pixel_values"].shape[0] for b in batches] == [3, 3] and "x.jpg" in caplog.text
    strict, _ = prepare_images(stream, "image", "error")
    with pytest.raises(UndecodableImageError, match="x.jpg.*--on_bad_example skip"):
        list(strict)


def test_on_bad_image_is_a_deprecated_alias_of_on_bad_example(monkeypatch, caplog):
    monkeypatch.setattr(logging.getLogger("hf_ssl"), "propagate", True)  # main() turns it off for its own handler
    with caplog.at_level("WARNING"):
        (args,) = parse(make_parser(ImageDataArguments), ["--on_bad_image", "skip"])
    assert args.on_bad_example == "skip" and args.on_bad_image is None
    assert "--on_bad_image is deprecated: use --on_bad_example skip" in caplog.text
    assert parse(make_parser(ImageDataArguments), [])[0].on_bad_example == "error"
    for arguments in (ImageDataArguments, AudioDataArguments):
        with pytest.raises(UsageError, match="--on_bad_example must be one of 'error', 'skip', got 'drop'"):
            arguments(on_bad_example="drop")


def test_collator_randomness_depends_on_the_batch_position_only(config):
    """Batch k of a run draws the same augmentations whatever came before (what makes resuming exact)."""
    rows = [{"image": Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))}] * 2
    collator = ImageCollator(SimCLRTransform(config), "image")
    collator.set_position(seed=3, rank=0, batches_done=0)
    first, second = collator(rows)["pixel_values"], collator(rows)["pixel_values"]
    assert not torch.equal(first, second)  # each batch draws anew
    torch.manual_seed(123)  # the global generator plays no part ...
    collator.set_position(seed=3, rank=0, batches_done=1)
    before = torch.random.get_rng_state()
    torch.testing.assert_close(collator(rows)["pixel_values"], second)
    assert torch.equal(torch.random.get_rng_state(), before)  # ... and is left as it was
    collator.set_position(seed=3, rank=1, batches_done=1)
    assert not torch.equal(collator(rows)["pixel_values"], second)  # other processes draw differently


# --- several sources in one --dataset_name -----------------------------------------------------------------------


def test_several_sources_are_concatenated_on_their_common_columns(tmp_path, image_folder):
    import soundfile

    from hf_ssl.errors import UsageError

    first, second = tmp_path / "first.jsonl", tmp_path / "second.csv"
    first.write_text("".join(json.dumps({"text": f"one {i}", "id": i}) + "\n" for i in range(3)))
    second.write_text("source,text\nwiki,two 0\nwiki,two 1\n")
    for name in ([str(first), str(second)], f"{first},{second}", f"{first}, {second}"):
        ds = load_data(name, default=None)
        assert ds.column_names == ["text"] and ds["text"] == ["one 0", "one 1", "one 2", "two 0", "two 1"]
    sliced = load_data([str(first), str(second)], "train[:1]", default=None)  # the split is taken from each source
    assert sliced["text"] == ["one 0", "two 0"]
    streamed = load_data(f"{first},{second}", streaming=True, default=None)
    assert [row["text"] for row in streamed] == ["one 0", "one 1", "one 2", "two 0", "two 1"]
    source = data_source(f"{first},{second}")
    assert source == f"2 sources concatenated: local file {first}; local file {second}"
    # an embedded set next to an image folder: their class labels become one ClassLabel, mapped by name
    digits, folder = load_data("digits", "train[:2]"), load_data(str(image_folder), "train[:2]")
    mixed = load_data(["digits", str(image_folder)], "train[:2]")
    assert mixed.column_names == ["image", "label"] and len(mixed) == 4
    assert mixed.features["label"].names == sorted([str(d) for d in range(10)] + ["cat", "dog"])
    expected = [part.features["label"].int2str(i) for part in (digits, folder) for i in part["label"]]
    assert [mixed.features["label"].int2str(i) for i in mixed["label"]] == expected
    assert find_column(mixed, "image") == "image" and to_pil(mixed[3]["image"]).size == to_pil(folder[1]["image"]).size
    # audio columns of different settings (here: sampling rates) become one undecoded Audio column
    wave = io.BytesIO()
    soundfile.write(wave, np.zeros(800, dtype=np.float32), 8000, format="WAV")
    clip = datasets.Dataset.from_dict({"audio": [{"bytes": wave.getvalue(), "path": None}]})
    for rate in (8000, 16000):
        clip.cast_column("audio", datasets.Audio(sampling_rate=rate, decode=False)).save_to_disk(tmp_path / f"{rate}")
    audio = load_data([str(tmp_path / "8000"), str(tmp_path / "16000")], default=None)
    assert audio.features["audio"] == datasets.Audio(decode=False) and len(audio) == 2
    with pytest.raises(UsageError, match=r"the sources share no column \(.*first.jsonl: text, id; .*: image, label\)"):
        load_data([str(first), str(image_folder)], default=None)
    with pytest.raises(UsageError, match="no such file or folder"):
        load_data(f"{first},./missing.csv", default=None)


def test_dataset_name_takes_several_values_a_comma_list_or_a_yaml_list(tmp_path):
    from hf_ssl.cli import DataArguments, make_parser, parse

    parser = make_parser(DataArguments)
    assert parse(parser, ["--dataset_name", "a", "b"])[0].dataset_name == "a,b"
    assert parse(parser, ["--dataset_name", "a,b"])[0].dataset_name == "a,b"
    assert parse(parser, ["--dataset_name", "cifar10"])[0].dataset_name == "cifar10"
    assert parse(parser, [])[0].dataset_name is None
    config = tmp_path / "run.yaml"
    config.write_text("dataset_name:\n  - ../shared/data/audio/fsdd\n  - ../shared/data/audio/asterisk_prompts\n")
    data = parse(parser, ["--config", str(config)])[0]
    assert data.dataset_name == "../shared/data/audio/fsdd,../shared/data/audio/asterisk_prompts"
    assert parse(parser, ["--config", str(config), "--dataset_name", "x"])[0].dataset_name == "x"  # a flag wins
    assert DataArguments(dataset_name=["a", "b"]).dataset_name == "a,b"


def test_a_saved_dataset_takes_split_names_and_slices(tmp_path):
    """A ``save_to_disk`` folder: a saved Dataset is one split, ``train``; a DatasetDict has its own; slices apply
    (they were ignored, so evaluation could fit and score on the same rows)."""
    from hf_ssl.errors import UsageError

    rows = datasets.Dataset.from_dict({"x": list(range(40))})
    rows.save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"train": rows, "test": rows.select(range(5))}).save_to_disk(tmp_path / "two")
    assert load_data(str(tmp_path / "one"), "train[:30]")["x"] == list(range(30))
    assert len(load_data(str(tmp_path / "two"), "test")) == 5
    assert len(load_data(str(tmp_path / "two"), "train[:10%]+test")) == 9
    with pytest.raises(UsageError, match=r"one: bad split 'test'.*its splits: \['train'\]"):
        load_data(str(tmp_path / "one"), "test")
