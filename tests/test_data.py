"""Tests for robust_mnv1.data: the three sources, the decoded-array cache and the device loader."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from robust_mnv1.data import DeviceLoader, Split, crop_flip, eval_batches, load_dataset
from robust_mnv1.infra.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "robust_mnv1" / "conf" / "data"
SHARED_ARCHIVE = REPO_ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- CIFAR-10


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar(root: Path, per_batch: int = 3, n_test: int = 4) -> dict[str, np.ndarray]:
    """A tiny dataset in torchvision's on-disk CIFAR-10 format; returns the CHW pixels and labels written."""
    rng = np.random.default_rng(0)
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    written: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows are R plane, G plane, B plane
        labels = rng.integers(0, 10, size=n).tolist()
        with open(batches / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        split = "test" if name == "test_batch" else "train"
        written[f"{split}_x"].append(data.reshape(n, 3, 32, 32))
        written[f"{split}_y"].extend(labels)
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR_CLASSES)}, f)
    return {
        "train_x": np.concatenate(written["train_x"]),
        "test_x": np.concatenate(written["test_x"]),
        "train_y": np.array(written["train_y"]),
        "test_y": np.array(written["test_y"]),
    }


def _trust_written_cifar(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point torchvision's md5 table at the test's files, so its real integrity check passes on them."""
    batches = root / "cifar-10-batches-py"
    cifar = tv_cifar.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[n, _md5(batches / n)] for n, _ in cifar.train_list])
    monkeypatch.setattr(cifar, "test_list", [[n, _md5(batches / n)] for n, _ in cifar.test_list])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": _md5(batches / "batches.meta")})


def _cifar_cfg(root: Path, download: bool = False) -> dict:
    return {"name": "cifar10", "root": str(root), "download": download, "num_classes": 10, "image_size": 32}


def test_cifar10_round_trips_pixels_and_labels_in_chw_order(tmp_path, monkeypatch):
    expected = _write_cifar(tmp_path / "data")
    _trust_written_cifar(monkeypatch, tmp_path / "data")
    ds = load_dataset(_cifar_cfg(tmp_path / "data"), tmp_path / "cache")
    assert (ds.name, ds.label, ds.classes) == ("cifar10", "CIFAR-10", CIFAR_CLASSES)
    assert (ds.num_classes, ds.image_size) == (10, 32)
    for split in ("train", "test"):
        got = getattr(ds, split)
        assert got.x.dtype == torch.uint8 and got.x.is_contiguous()
        np.testing.assert_array_equal(got.x.numpy(), expected[f"{split}_x"])
        np.testing.assert_array_equal(got.y.numpy(), expected[f"{split}_y"])

    # Second load is served from the cache: torchvision is never asked again.
    def no_torchvision(*args, **kwargs):
        raise AssertionError("cache miss: CIFAR10 constructed again")

    monkeypatch.setattr(tv_cifar.CIFAR10, "__init__", no_torchvision)
    again = load_dataset(_cifar_cfg(tmp_path / "data"), tmp_path / "cache")
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)


def test_cifar10_missing_with_download_disabled_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_dataset(_cifar_cfg(tmp_path / "nothing"), tmp_path / "cache")
    message = _one_line_error(excinfo)
    assert str(tmp_path / "nothing" / "cifar-10-batches-py") in message
    assert "data=imagefolder" in message and "data.download=true" in message


def test_cifar10_files_with_wrong_md5_are_rejected(tmp_path):
    # The test-written files do not match the published md5s; the real check must refuse them.
    _write_cifar(tmp_path / "data")
    with pytest.raises(UserError, match="md5") as excinfo:
        load_dataset(_cifar_cfg(tmp_path / "data"), tmp_path / "cache")
    _one_line_error(excinfo)


def test_cifar10_failed_download_is_one_line_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as excinfo:
        load_dataset(_cifar_cfg(tmp_path / "nothing", download=True), tmp_path / "cache")
    message = _one_line_error(excinfo)
    assert "download failed" in message and "URLError" in message and "data=imagefolder" in message


def test_cifar10_root_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError) as excinfo:
        load_dataset({**_cifar_cfg(tmp_path), "root": "~/somewhere"}, tmp_path / "cache")
    assert str(tmp_path / "somewhere" / "cifar-10-batches-py") in str(excinfo.value)


# --------------------------------------------------------------------------- ImageFolder

CLASSES = ("ant", "bee", "cat")  # written in a non-sorted order below to check sorting


def _write_tree(root: Path, per_class: int = 2, size: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PNG tree ``root/{train,test}/<class>/NN.png``; returns the expected CHW pixels and labels per split."""
    rng = np.random.default_rng(1)
    expected = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for name in ("cat", "ant", "bee"):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i:02d}.png")
        for label, name in enumerate(CLASSES):
            for i in range(per_class):
                pixels = np.asarray(Image.open(root / split / name / f"{i:02d}.png"))
                xs.append(pixels.transpose(2, 0, 1))
                ys.append(label)
        expected[split] = (np.stack(xs), np.array(ys))
    return expected


def _tar(tree: Path, archive: Path, wrapper: str | None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=f"{wrapper}/{split}" if wrapper else split)
    return archive


def _folder_cfg(root: Path, **extra) -> dict:
    return {"name": "imagefolder", "root": str(root), "num_classes": 3, "image_size": 8, **extra}


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts PIL ``Image.open`` calls, i.e. images decoded."""
    calls = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def _assert_matches(ds, expected) -> None:
    assert ds.classes == CLASSES
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, split).x.numpy(), expected[split][0])
        np.testing.assert_array_equal(getattr(ds, split).y.numpy(), expected[split][1])


def test_imagefolder_directory_decodes_exact_pixels_and_caches(tmp_path, count_decodes):
    expected = _write_tree(tmp_path / "pets")
    count_decodes.clear()
    ds = load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    _assert_matches(ds, expected)
    assert ds.label == "ImageFolder(pets)" and ds.image_size == 8
    assert len(count_decodes) == 12

    again = load_dataset(_folder_cfg(tmp_path / "pets", label="My pets"), tmp_path / "cache")
    assert len(count_decodes) == 12, "second load decoded images instead of reading the cache"
    _assert_matches(again, expected)
    assert again.label == "My pets"


def test_two_spellings_of_one_data_path_share_the_cache(tmp_path, count_decodes):
    _write_tree(tmp_path / "pets")
    (tmp_path / "checkout").mkdir()
    load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    decoded = len(count_decodes)
    load_dataset(_folder_cfg(tmp_path / "checkout" / ".." / "pets"), tmp_path / "cache")
    assert len(count_decodes) == decoded, "the same folder reached another way was decoded again"
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_imagefolder_cache_invalidated_when_a_file_changes(tmp_path, count_decodes):
    _write_tree(tmp_path / "pets")
    load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    count_decodes.clear()
    changed = tmp_path / "pets" / "test" / "bee" / "01.png"
    new_pixels = np.full((8, 8, 3), 7, dtype=np.uint8)
    Image.fromarray(new_pixels).save(changed)
    os.utime(changed, ns=(10**18, 10**18))  # a distinct mtime even on coarse-clock filesystems
    ds = load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    assert len(count_decodes) == 12
    np.testing.assert_array_equal(ds.test.x[3].numpy(), new_pixels.transpose(2, 0, 1))


@pytest.mark.parametrize("wrapper", [None, "pets-v1"])
def test_imagefolder_archive_extracted_once(tmp_path, monkeypatch, count_decodes, wrapper):
    expected = _write_tree(tmp_path / "tree")
    archive = _tar(tmp_path / "tree", tmp_path / "pets.tar.gz", wrapper)
    count_decodes.clear()
    ds = load_dataset(_folder_cfg(archive), tmp_path / "cache")
    _assert_matches(ds, expected)
    assert ds.label == "ImageFolder(pets)"
    extracted = list((tmp_path / "cache" / "extracted").iterdir())
    assert len(extracted) == 1 and not extracted[0].name.startswith(".")

    # Without the decoded cache, the images are decoded again from the existing extraction.
    for entry in (tmp_path / "cache").glob("*.safetensors"):
        entry.unlink()

    def no_extract(*args, **kwargs):
        raise AssertionError("archive opened again")

    monkeypatch.setattr(tarfile, "open", no_extract)
    _assert_matches(load_dataset(_folder_cfg(archive), tmp_path / "cache"), expected)
    assert len(count_decodes) == 24
    _assert_matches(load_dataset(_folder_cfg(archive), tmp_path / "cache"), expected)
    assert len(count_decodes) == 24


def test_imagefolder_archive_change_reextracts_and_drops_old_copy(tmp_path, count_decodes):
    _write_tree(tmp_path / "tree")
    archive = _tar(tmp_path / "tree", tmp_path / "my-cifar10-jpeg.tgz", None)
    assert load_dataset(_folder_cfg(archive), tmp_path / "cache").label == "CIFAR-10 (JPEG q75)"
    first = list((tmp_path / "cache" / "extracted").iterdir())
    os.utime(archive, ns=(10**18, 10**18))
    count_decodes.clear()
    load_dataset(_folder_cfg(archive), tmp_path / "cache")
    second = list((tmp_path / "cache" / "extracted").iterdir())
    assert len(count_decodes) == 12
    assert len(second) == 1 and second != first


def test_corrupt_cache_file_is_rebuilt_with_warning(tmp_path, count_decodes):
    expected = _write_tree(tmp_path / "pets")
    load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    count_decodes.clear()
    with pytest.warns(RuntimeWarning, match="corrupt dataset cache"):
        ds = load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    _assert_matches(ds, expected)
    assert len(count_decodes) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_matches(load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache"), expected)
    assert len(count_decodes) == 12


def test_cache_with_inconsistent_tensors_is_rebuilt(tmp_path, count_decodes):
    expected = _write_tree(tmp_path / "pets")
    load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    with safe_open(str(entry), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k).clone() for k in ("train_x", "train_y", "test_x", "test_y")}
    tensors["test_y"] = tensors["test_y"][:-1].contiguous()  # one label short
    save_file(tensors, str(entry), metadata=metadata)
    count_decodes.clear()
    with pytest.warns(RuntimeWarning, match="corrupt dataset cache"):
        _assert_matches(load_dataset(_folder_cfg(tmp_path / "pets"), tmp_path / "cache"), expected)
    assert len(count_decodes) == 12


def _tar_with(archive: Path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(payload) if payload else None)
    return archive


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_archive_member_is_rejected(tmp_path, kind):
    if kind == "symlink":
        member = tarfile.TarInfo("train/cat/link.png")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        payload = b""
    else:
        member = tarfile.TarInfo("../evil.png" if kind == "dotdot" else "/tmp/evil.png")
        payload = b"not an image"
        member.size = len(payload)
    (tmp_path / "in").mkdir()
    archive = _tar_with(tmp_path / "in" / "bad.tar.gz", member, payload)
    with pytest.raises(UserError, match=r"refusing|link or special") as excinfo:
        load_dataset(_folder_cfg(archive), tmp_path / "in" / "cache")
    assert member.name in _one_line_error(excinfo)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "in" / "evil.png").exists()
    leftovers = list((tmp_path / "in" / "cache" / "extracted").iterdir())
    assert leftovers == [], "a partial extraction was left behind"


def _write_bad_tree(root: Path, problem: str) -> Path:
    """A tree with exactly one problem; returns the path the error message must name."""
    if problem == "missing_root":
        return root / "absent"
    if problem == "corrupt_archive":
        (root / "bad.tar.gz").write_bytes(b"\x1f\x8b this is not gzip data")
        return root / "bad.tar.gz"
    _write_tree(root / "tree")
    if problem == "no_test_dir":
        for f in (root / "tree" / "test").rglob("*.png"):
            f.unlink()
        for d in sorted((root / "tree" / "test").iterdir()):
            d.rmdir()
        (root / "tree" / "test").rmdir()
        return root / "tree"
    if problem == "empty_class":
        (root / "tree" / "train" / "dog").mkdir()
        (root / "tree" / "test" / "dog").mkdir()
        return root / "tree" / "train" / "dog"
    if problem == "undecodable":
        bad = root / "tree" / "train" / "bee" / "00.png"
        bad.write_bytes(b"\x89PNG garbage")
        return bad
    if problem == "mixed_sizes":
        odd = root / "tree" / "test" / "ant" / "01.png"
        Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(odd)
        return odd
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem", ["missing_root", "corrupt_archive", "no_test_dir", "empty_class", "undecodable", "mixed_sizes"]
)
def test_bad_imagefolder_gives_one_line_error_naming_the_path(tmp_path, problem):
    named = _write_bad_tree(tmp_path, problem)
    root = named if problem in ("missing_root", "corrupt_archive") else tmp_path / "tree"
    with pytest.raises(UserError) as excinfo:
        load_dataset(_folder_cfg(root), tmp_path / "cache")
    assert str(named) in _one_line_error(excinfo)


def test_config_disagreeing_with_data_names_the_right_value(tmp_path):
    _write_tree(tmp_path / "pets")
    with pytest.raises(UserError, match=r"data\.num_classes=3") as excinfo:
        load_dataset(_folder_cfg(tmp_path / "pets", num_classes=10), tmp_path / "cache")
    _one_line_error(excinfo)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(UserError, match="data=cifar10"):
        load_dataset({"name": "mnist"}, tmp_path)


# --------------------------------------------------------------------------- digits and configs


def test_digits_shapes_split_and_pixels(tmp_path):
    from sklearn.datasets import load_digits

    ds = load_dataset(OmegaConf.load(CONF_DIR / "digits.yaml"), tmp_path / "a")
    assert ds.label == "digits (sklearn 8x8→32x32)" and ds.num_classes == 10 and ds.image_size == 32
    assert ds.train.x.shape[1:] == (3, 32, 32) and ds.train.x.dtype == torch.uint8
    assert len(ds.train) + len(ds.test) == 1797 and len(ds.test) == 360
    assert torch.bincount(ds.test.y, minlength=10).min() >= 35  # stratified: ~36 per class
    assert int(ds.train.x.max()) == 255 and int(ds.train.x.min()) == 0

    # Each image is its 8x8 original scaled to 0..255, as 4x4 blocks, on all three channels.
    original = load_digits()
    matches = [
        i
        for i in range(len(original.images))
        if np.array_equal(np.rint(original.images[i] * 255 / 16).astype(np.uint8), ds.test.x[0, 0, ::4, ::4])
    ]
    assert matches and int(original.target[matches[0]]) == int(ds.test.y[0])
    block = ds.test.x[0, 0].reshape(8, 4, 8, 4)
    assert torch.equal(block, block[:, :1, :, :1].expand_as(block))
    assert torch.equal(ds.test.x[:, 0], ds.test.x[:, 2])

    other = load_dataset({"name": "digits"}, tmp_path / "b")
    assert torch.equal(other.test.x, ds.test.x) and torch.equal(other.train.y, ds.train.y)


@pytest.mark.parametrize("name", ["cifar10", "imagefolder", "digits"])
def test_data_configs_have_the_common_keys(name, monkeypatch):
    monkeypatch.delenv("ROBUST_MNV1_DATA", raising=False)
    with initialize_config_dir(config_dir=str(CONF_DIR.parent), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+data={name}"]).data
    assert cfg.name == name and cfg.num_classes == 10 and cfg.image_size == 32
    assert {"root", "label"} <= set(cfg.keys())
    OmegaConf.to_container(cfg, resolve=True)  # interpolations must resolve
    if name == "cifar10":
        assert cfg.root == "~/.cache/robust_mnv1/data" and cfg.download is True
        monkeypatch.setenv("ROBUST_MNV1_DATA", "/data/elsewhere")
        assert cfg.root == "/data/elsewhere"


# --------------------------------------------------------------------------- DeviceLoader


def _split(n: int, size: int = 8) -> Split:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return Split(x, torch.arange(n, dtype=torch.int64))


def _epoch(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_loader_batches_shapes_dtypes_and_range():
    loader = DeviceLoader(
        _split(10), batch_size=4, device="cpu", shuffle=True, augment=True, drop_last=False, seed=0, pad=2
    )
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0

    dropped = DeviceLoader(
        _split(10), batch_size=4, device="cpu", shuffle=True, augment=False, drop_last=True, seed=0
    )
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]


def test_loader_visits_every_sample_once_per_epoch_in_a_new_order():
    loader = DeviceLoader(
        _split(50), batch_size=8, device="cpu", shuffle=True, augment=False, drop_last=False, seed=3
    )
    _, first = _epoch(loader)
    _, second = _epoch(loader)
    assert torch.equal(first.sort().values, torch.arange(50))
    assert torch.equal(second.sort().values, torch.arange(50))
    assert not torch.equal(first, torch.arange(50)) and not torch.equal(first, second)


def test_loader_is_deterministic_per_seed_and_epoch():
    def make(seed: int) -> DeviceLoader:
        return DeviceLoader(
            _split(40), batch_size=16, device="cpu", shuffle=True, augment=True, drop_last=True, seed=seed
        )

    run = make(7)
    epochs = [_epoch(run) for _ in range(3)]
    resumed = make(7)
    resumed.set_epoch(2)
    x2, y2 = _epoch(resumed)
    assert torch.equal(x2, epochs[2][0]) and torch.equal(y2, epochs[2][1])
    assert resumed.epoch == 3
    assert not torch.equal(epochs[0][1], epochs[1][1])
    assert not torch.equal(_epoch(make(8))[1], epochs[0][1])


def test_unaugmented_eval_batches_are_exact_pixels_in_order():
    split = _split(10)
    loader = eval_batches(split, 4, "cpu", memory_format=torch.channels_last)
    x, y = _epoch(loader)
    assert torch.equal(x, split.x.float() / 255) and torch.equal(y, split.y)
    assert next(iter(loader))[0].is_contiguous(memory_format=torch.channels_last)


def test_crop_flip_matches_reflect_padded_crops_and_flips():
    pad, size = 2, 8
    image = torch.arange(3 * size * size, dtype=torch.uint8).reshape(1, 3, size, size)  # all values distinct
    batch = image.expand(200, -1, -1, -1).contiguous()
    out = crop_flip(batch, pad, torch.Generator().manual_seed(0))
    padded = np.pad(image[0].numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    candidates = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop[:, :, ::-1]
    seen = set()
    for sample in out.numpy():
        found = [key for key, crop in candidates.items() if np.array_equal(sample, crop)]
        assert len(found) == 1, "output is not a reflect-padded crop (optionally flipped) of the input"
        seen.add(found[0])
    assert len(seen) > 30  # offsets and flips vary across the batch
    assert {flip for *_, flip in seen} == {False, True}


def test_crop_flip_without_padding_only_flips():
    batch = _split(64).x
    out = crop_flip(batch, 0, torch.Generator().manual_seed(1))
    same = (out == batch).flatten(1).all(1)
    flipped = (out == batch.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all()) and bool(same.any()) and bool(flipped.any())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"pad": 8}, "pad"),
        ({"batch_size": 11, "drop_last": True}, "no batch"),
    ],
)
def test_loader_rejects_bad_arguments(kwargs, match):
    args = {"batch_size": 4, "device": "cpu", "shuffle": True, "augment": True, "drop_last": False, "seed": 0}
    with pytest.raises(UserError, match=match):
        DeviceLoader(_split(10), **{**args, **kwargs})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda_is_deterministic_and_complete():
    def make() -> DeviceLoader:
        return DeviceLoader(
            _split(100, 32), batch_size=32, device="cuda", shuffle=True, augment=True, drop_last=False, seed=5
        )

    x, y = _epoch(make())
    x_again, y_again = _epoch(make())
    assert x.is_cuda and y.is_cuda and y.dtype == torch.int64
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert torch.equal(y.sort().values.cpu(), torch.arange(100))
    plain_x, _ = _epoch(eval_batches(_split(100, 32), 32, "cuda"))
    assert torch.equal(plain_x.cpu(), _split(100, 32).x.float() / 255)


# --------------------------------------------------------------------------- the shared real dataset


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason=f"{SHARED_ARCHIVE} not present")
def test_shared_cifar10_jpeg_archive_loads(tmp_path):
    cfg = OmegaConf.load(CONF_DIR / "imagefolder.yaml")
    cfg.root = str(SHARED_ARCHIVE)
    ds = load_dataset(cfg, tmp_path)
    assert ds.label == "CIFAR-10 (JPEG q75)" and ds.classes == CIFAR_CLASSES
    assert ds.train.x.shape == (50000, 3, 32, 32) and ds.test.x.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(ds.test.y), torch.full((10,), 1000))
    assert torch.equal(load_dataset(cfg, tmp_path).test.x, ds.test.x)
