"""The on-disk layouts ``load_image_dataset`` reads, each turned into a ``DatasetDict`` of ``image`` and ``label``.

Every reader returns splits with an ``image`` column (``datasets.Image()``, decoded lazily from the file path) and a
``label`` column (``ClassLabel``). Class names are never reordered: sorted folder names for an image folder, the
official class list (in official id order) for the reference datasets. Official layouts are found in the folder
given or in the folder their archive unpacks to (e.g. ``CUB_200_2011/``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset, load_from_disk

from ..io import looks_like_path
from .images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "validation", "test")
IMAGE_COLUMNS = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label", "fine_labels", "class", "target", "category")

# Oxford Flowers-102 ships no class names; this is the list published with it (as in jimgoo/caffe-oxford102),
# in label id order 1..102, with its stray punctuation cleaned.
FLOWERS102_CLASSES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
    "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
)  # fmt: skip


class LayoutError(ValueError):
    """A dataset folder whose files do not match the layout they claim (names the file at fault)."""


@dataclass(frozen=True)
class Layout:
    """One on-disk layout: how to recognise it and how to read it."""

    name: str
    description: str
    # The folder holding the layout's files at or directly under ``path``, or None when ``path`` is not this layout.
    find: Callable[[Path], Path | None]
    read: Callable[[Path], DatasetDict]


# ----------------------------------------------------------------------------------------------- shared helpers


def _features(names: Sequence[str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=list(names))})


def _dataset_dict(splits: dict[str, tuple[list[Any], list[int]]], names: Sequence[str]) -> DatasetDict:
    """Build the splits (in train/validation/test order) from ``{split: (images, labels)}``."""
    features = _features(names)
    ordered = sorted(splits, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))
    return DatasetDict(
        {
            split: Dataset.from_dict({"image": splits[split][0], "label": splits[split][1]}, features=features)
            for split in ordered
        }
    )


def _first_existing(candidates: Iterable[Path], is_ok: Callable[[Path], bool]) -> Path | None:
    return next((c for c in candidates if is_ok(c)), None)


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))), key=lambda p: p.name
    )


def _strip_id_prefix(name: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black_footed_Albatross``; ``n02085620-Chihuahua`` -> ``Chihuahua``."""
    return re.sub(r"^(?:\d+\.|n\d{8}-)", "", name)


def _read_pairs(path: Path) -> dict[str, str]:
    """``key value...`` lines of the CUB/NABirds metadata files, in file order."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise LayoutError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        pairs[parts[0]] = parts[1]
    return pairs


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat  # the .mat layouts (Flowers-102, Stanford Cars/Dogs) need scipy, nothing else
    except ImportError as exc:
        raise ImportError(f"Reading {path} needs scipy: pip install scipy") from exc
    try:
        return loadmat(path, squeeze_me=True)
    except Exception as exc:
        raise LayoutError(f"{path}: not a readable MATLAB file ({exc})") from exc


def _mat_field(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise LayoutError(f"{path}: missing variable {key!r} (found {found})")
    return np.atleast_1d(mat[key])


def _check_label_range(labels: Iterable[int], count: int, path: Path) -> None:
    bad = sorted({int(v) for v in labels if not 1 <= int(v) <= count})
    if bad:
        raise LayoutError(f"{path}: label ids {bad[:5]} are outside 1..{count}")


# ------------------------------------------------------------------------------------------------- image folder


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted paths relative to it; hidden files are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(dirpath, filename), folder))
    return sorted(found)


def _imagefolder_splits(root: Path) -> dict[str, Path]:
    subdirs = _visible_dirs(root)
    if not subdirs or not all(d.name.lower() in SPLIT_ALIASES for d in subdirs):
        return {"train": root}
    splits: dict[str, Path] = {}
    for folder in subdirs:
        split = SPLIT_ALIASES[folder.name.lower()]
        if split in splits:
            raise LayoutError(f"{root}: both {splits[split].name}/ and {folder.name}/ are the {split!r} split")
        splits[split] = folder
    return splits


def read_imagefolder(root: Path) -> DatasetDict:
    """``root/<split>/<class>/*`` (split folders named train/val/validation/test) or ``root/<class>/*``."""
    split_dirs = _imagefolder_splits(root)
    files: dict[str, dict[str, list[str]]] = {}
    for split, split_dir in split_dirs.items():
        files[split] = {c.name: _image_files(c) for c in _visible_dirs(split_dir)}
        loose = [f.name for f in split_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            logger.warning(
                "Ignored %d image(s) in %s that are not in a class folder, e.g. %s",
                len(loose),
                split_dir,
                sorted(loose)[0],
            )
    all_classes = sorted({c for per_split in files.values() for c in per_split})
    names = [c for c in all_classes if any(files[s].get(c) for s in files)]
    empty = [c for c in all_classes if c not in names]
    if empty:
        logger.warning("Left out %d class folder(s) of %s with no images: %s", len(empty), root, ", ".join(empty))
    if not names:
        raise LayoutError(f"No images in {root}: expected <root>/<class>/<image> or <root>/<split>/<class>/<image>")
    partial = {c: [s for s in files if not files[s].get(c)] for c in names}
    partial = {c: missing for c, missing in partial.items() if missing}
    if partial and len(files) > 1:
        listing = "; ".join(f"{c} (none in {', '.join(m)})" for c, m in partial.items())
        logger.warning("%d class(es) of %s are missing from some splits: %s", len(partial), root, listing)
    splits = {}
    for split, per_class in files.items():
        images, labels = [], []
        for label, name in enumerate(names):
            base = split_dirs[split] / name
            images += [str(base / rel) for rel in per_class.get(name, [])]
            labels += [label] * len(per_class.get(name, []))
        splits[split] = (images, labels)
    return _dataset_dict(splits, names)


# -------------------------------------------------------------------------------------------- CIFAR-100 python


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data only: numpy arrays and the builtins (dict, list, str, bytes, numbers).

    The CIFAR archives are pickles, and a pickle can run arbitrary code; any global other than numpy's array
    reconstruction helpers is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_pickle_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays and builtins)")


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    import codecs

    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core; pickles name either
    found = {}
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        found[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        found[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    found[("_codecs", "encode")] = codecs.encode  # how Python 3 writes bytes at pickle protocol 2
    return found


def load_array_pickle(path: Path) -> dict[str, Any]:
    """Read a CIFAR-style pickle of arrays with :class:`_ArrayUnpickler`; keys come back as ``str``."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise LayoutError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise LayoutError(f"{path}: not a readable CIFAR pickle ({exc})") from exc
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: expected a dict, got {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _find_cifar100(path: Path) -> Path | None:
    return _first_existing(
        (path, path / "cifar-100-python"), lambda p: all((p / f).is_file() for f in ("meta", "train", "test"))
    )


def read_cifar100(root: Path) -> DatasetDict:
    """``cifar-100-python/{train,test,meta}``: the fine (100-class) labels and ``fine_label_names``."""
    meta = load_array_pickle(root / "meta")
    if "fine_label_names" not in meta:
        raise LayoutError(f"{root / 'meta'}: missing 'fine_label_names' (found {sorted(meta)})")
    names = [_text(n) for n in meta["fine_label_names"]]
    splits = {}
    for split in ("train", "test"):
        path = root / split
        batch = load_array_pickle(path)
        for key in ("data", "fine_labels"):
            if key not in batch:
                raise LayoutError(f"{path}: missing {key!r} (found {sorted(batch)})")
        data, labels = np.asarray(batch["data"]), [int(v) for v in batch["fine_labels"]]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise LayoutError(
                f"{path}: expected 'data' uint8 of shape (N, 3072) with N fine_labels, got {data.dtype} "
                f"{data.shape} and {len(labels)} labels"
            )
        _check_label_range([v + 1 for v in labels], len(names), path)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits[split] = (list(images), labels)
    return _dataset_dict(splits, names)


# ------------------------------------------------------------------------------------------ CUB-200 and NABirds

_ID_LIST_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _find_id_lists(path: Path, *, nabirds: bool) -> Path | None:
    def matches(p: Path) -> bool:
        return all((p / f).is_file() for f in _ID_LIST_FILES) and (p / "hierarchy.txt").is_file() == nabirds

    return _first_existing((path, path / ("nabirds" if nabirds else "CUB_200_2011")), matches)


def _read_id_lists(root: Path, *, nabirds: bool) -> DatasetDict:
    images = _read_pairs(root / "images.txt")
    class_of = _read_pairs(root / "image_class_labels.txt")
    is_train = _read_pairs(root / "train_test_split.txt")
    classes = _read_pairs(root / "classes.txt")
    # CUB numbers its 200 classes 1..200; NABirds' classes.txt is its whole taxonomy, of which the 555 classes that
    # have images are the labels. Either way labels follow the official class id order.
    used = set(class_of.values()) if nabirds else set(classes)
    class_ids = sorted(used, key=int)
    unknown = sorted(used - set(classes), key=int)
    if unknown:
        raise LayoutError(f"{root / 'image_class_labels.txt'}: class ids {unknown[:5]} are not in classes.txt")
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    names = [classes[c] if nabirds else _strip_id_prefix(classes[c]) for c in class_ids]
    splits: dict[str, tuple[list[Any], list[int]]] = {"train": ([], []), "test": ([], [])}
    for image_id, rel in images.items():
        for table, file in ((class_of, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise LayoutError(f"{root / file}: no entry for image id {image_id} ({rel})")
        if class_of[image_id] not in label_of:
            file = root / "image_class_labels.txt"
            raise LayoutError(f"{file}: image {image_id} has unknown class {class_of[image_id]}")
        paths, labels = splits["train" if is_train[image_id].strip() == "1" else "test"]
        paths.append(str(root / "images" / rel))
        labels.append(label_of[class_of[image_id]])
    return _dataset_dict(splits, names)


def read_cub200(root: Path) -> DatasetDict:
    """CUB-200-2011: ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``,
    ``images/``; class names without their ``NNN.`` prefix."""
    return _read_id_lists(root, nabirds=False)


def read_nabirds(root: Path) -> DatasetDict:
    """NABirds: the CUB file family (plus ``hierarchy.txt``) with UUID image ids and its own class ids (555 used)."""
    return _read_id_lists(root, nabirds=True)


# ---------------------------------------------------------------------------------------- Oxford Flowers-102


def _find_flowers102(path: Path) -> Path | None:
    def matches(p: Path) -> bool:
        return (p / "imagelabels.mat").is_file() and (p / "setid.mat").is_file() and (p / "jpg").is_dir()

    return _first_existing((path, path / "flowers-102", path / "flowers102"), matches)


def read_flowers102(root: Path) -> DatasetDict:
    """Oxford Flowers-102: ``jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (labels 1..102), ``setid.mat`` (3 splits)."""
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    labels = _mat_field(_loadmat(labels_path), "labels", labels_path).astype(int)
    _check_label_range(labels, len(FLOWERS102_CLASSES), labels_path)
    setid = _loadmat(setid_path)
    splits = {}
    for split, key in (("train", "trnid"), ("validation", "valid"), ("test", "tstid")):
        ids = _mat_field(setid, key, setid_path).astype(int)
        out_of_range = ids[(ids < 1) | (ids > len(labels))]
        if out_of_range.size:
            raise LayoutError(f"{setid_path}: {key} has image ids {out_of_range[:5].tolist()} outside 1..{len(labels)}")
        ids = np.sort(ids)
        splits[split] = ([str(root / "jpg" / f"image_{i:05d}.jpg") for i in ids], [int(labels[i - 1]) - 1 for i in ids])
    return _dataset_dict(splits, FLOWERS102_CLASSES)


# ------------------------------------------------------------------------------------------------ Stanford Cars

_CARS_ROOTS = ("", "stanford_cars", "stanford-cars", "StanfordCars")


def _cars_file(root: Path, name: str) -> Path | None:
    return _first_existing((root / name, root / "devkit" / name, root / "car_devkit" / "devkit" / name), Path.is_file)


def _find_stanford_cars(path: Path) -> Path | None:
    def matches(p: Path) -> bool:
        return _cars_file(p, "cars_meta.mat") is not None and _cars_file(p, "cars_train_annos.mat") is not None

    return _first_existing((path / r for r in _CARS_ROOTS), matches)


def _cars_split(root: Path, annos_path: Path, folder: str, count: int) -> tuple[list[Any], list[int]]:
    annotations = _mat_field(_loadmat(annos_path), "annotations", annos_path)
    fields = annotations.dtype.names or ()
    if "fname" not in fields or "class" not in fields:
        raise LayoutError(f"{annos_path}: 'annotations' needs fields 'fname' and 'class' (found {fields})")
    labels = [int(v) for v in annotations["class"]]
    _check_label_range(labels, count, annos_path)
    image_dir = _first_existing((root / folder / folder, root / folder), Path.is_dir) or root / folder
    return [str(image_dir / str(f)) for f in annotations["fname"]], [v - 1 for v in labels]


def read_stanford_cars(root: Path) -> DatasetDict:
    """Stanford Cars with its devkit: ``cars_meta.mat``, ``cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``,
    images in ``cars_train/`` and ``cars_test/``. Without the labelled test annotations only train is returned."""
    meta_path = _cars_file(root, "cars_meta.mat")
    names = [str(n) for n in _mat_field(_loadmat(meta_path), "class_names", meta_path)]
    splits = {"train": _cars_split(root, _cars_file(root, "cars_train_annos.mat"), "cars_train", len(names))}
    test_annos = _cars_file(root, "cars_test_annos_withlabels.mat")
    if test_annos is None:
        logger.warning(
            "%s has no cars_test_annos_withlabels.mat (the devkit's test file has no labels): no test split", root
        )
    else:
        splits["test"] = _cars_split(root, test_annos, "cars_test", len(names))
    return _dataset_dict(splits, names)


# ----------------------------------------------------------------------------------------------- Stanford Dogs


def _find_stanford_dogs(path: Path) -> Path | None:
    def matches(p: Path) -> bool:
        return (p / "train_list.mat").is_file() and (p / "test_list.mat").is_file() and (p / "Images").is_dir()

    return _first_existing((path, path / "stanford_dogs", path / "StanfordDogs"), matches)


def read_stanford_dogs(root: Path) -> DatasetDict:
    """Stanford Dogs: ``Images/<wnid>-<breed>/*.jpg`` with ``train_list.mat`` / ``test_list.mat`` (labels 1..120)."""
    lists = {}
    folder_of: dict[int, set[str]] = {}
    for split in ("train", "test"):
        path = root / f"{split}_list.mat"
        mat = _loadmat(path)
        files = [str(f) for f in _mat_field(mat, "file_list", path)]
        labels = [int(v) for v in _mat_field(mat, "labels", path)]
        if len(files) != len(labels):
            raise LayoutError(f"{path}: {len(files)} files but {len(labels)} labels")
        for file, label in zip(files, labels):
            folder_of.setdefault(label, set()).add(file.replace("\\", "/").split("/")[0])
        lists[split] = (files, labels, path)
    count = max(folder_of)
    for _, labels, path in lists.values():
        _check_label_range(labels, count, path)
    ambiguous = {label: folders for label, folders in folder_of.items() if len(folders) > 1}
    if ambiguous or len(folder_of) != count:
        raise LayoutError(f"{root}: labels and breed folders of train_list.mat/test_list.mat disagree: {ambiguous}")
    names = [_strip_id_prefix(next(iter(folder_of[label]))) for label in range(1, count + 1)]
    splits = {
        split: ([str(root / "Images" / f) for f in files], [v - 1 for v in labels])
        for split, (files, labels, _) in lists.items()
    }
    return _dataset_dict(splits, names)


# --------------------------------------------------------------------------------------- FGVC json split files


def _find_fgvc_json(path: Path) -> Path | None:
    return path if (path / "train.json").is_file() and (path / "test.json").is_file() else None


def read_fgvc_json(root: Path) -> DatasetDict:
    """The VPT-style FGVC protocol: ``train.json`` / ``val.json`` / ``test.json`` map image paths to label ids.

    Paths are relative to ``root`` or to its ``images/`` or ``Images/`` folder. Label ids are made contiguous in
    sorted order; class names are the image folders (without id prefixes) when each id has one folder of its own.
    """
    entries: dict[str, dict[str, int]] = {}
    for split, file in (("train", "train.json"), ("validation", "val.json"), ("test", "test.json")):
        path = root / file
        if not path.is_file():
            continue
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LayoutError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise LayoutError(f"{path}: expected a JSON object mapping image paths to integer label ids")
        entries[split] = dict(sorted(mapping.items()))
    first = next((p for m in entries.values() for p in m), None)
    if first is None:
        raise LayoutError(f"{root}: train.json and test.json list no images")
    image_dir = _first_existing((root, root / "images", root / "Images"), lambda d: (d / first).is_file())
    if image_dir is None:
        raise LayoutError(f"{root}: image {first!r} of the split files is not in {root}, images/ or Images/")
    class_ids = sorted({v for m in entries.values() for v in m.values()})
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    folders: dict[int, set[str]] = {}
    for mapping in entries.values():
        for rel, cid in mapping.items():
            parts = rel.replace("\\", "/").split("/")
            folders.setdefault(cid, set()).add(parts[0] if len(parts) > 1 else "")
    folder_names = [next(iter(folders[c])) if len(folders[c]) == 1 else "" for c in class_ids]
    if all(folder_names) and len(set(folder_names)) == len(folder_names):
        names = [_strip_id_prefix(f) for f in folder_names]
    else:
        names = [str(c) for c in class_ids]
    splits = {
        split: ([str(image_dir / rel) for rel in mapping], [label_of[v] for v in mapping.values()])
        for split, mapping in entries.items()
    }
    return _dataset_dict(splits, names)


# ------------------------------------------------------------------------------- Hugging Face datasets and ids


def _find_saved_dataset(path: Path) -> Path | None:
    return path if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() else None


def read_saved_dataset(root: Path) -> DatasetDict:
    """A ``Dataset`` or ``DatasetDict`` written with ``save_to_disk``."""
    return normalize_columns(load_from_disk(str(root)), str(root))


def read_hub_dataset(name: str) -> DatasetDict:
    """A dataset on the Hugging Face Hub (e.g. ``cifar100``), through ``datasets.load_dataset``."""
    return normalize_columns(load_dataset(name), name)


def _pick_column(features: Features, preferred: Sequence[str], kind: type, what: str, source: str) -> str:
    typed = [c for c, f in features.items() if isinstance(f, kind)]
    for candidates in (
        [c for c in preferred if c in typed],
        typed,
        [c for c in preferred if c in features],
        [c for c in features if c.lower() in preferred],
    ):
        if candidates:
            return candidates[0]
    raise LayoutError(
        f"{source}: no {what} column found among {list(features)} (expected a {kind.__name__} feature or one of "
        f"{', '.join(preferred)})"
    )


def normalize_columns(data: Dataset | DatasetDict, source: str) -> DatasetDict:
    """Find the image and label columns of any image classification dataset and keep only them, as ``image``
    (``Image()``) and ``label`` (``ClassLabel``, identical in every split). Split names are normalised
    (``val``/``valid`` -> ``validation``)."""
    if isinstance(data, Dataset):
        data = DatasetDict({"train": data})
    renamed: dict[str, Dataset] = {}
    for split, ds in data.items():
        name = SPLIT_ALIASES.get(split.lower(), split)
        if name in renamed:
            raise LayoutError(f"{source}: splits {split!r} and another both map to {name!r}")
        image = _pick_column(ds.features, IMAGE_COLUMNS, Image, "image", f"{source} [{split}]")
        label = _pick_column(ds.features, LABEL_COLUMNS, ClassLabel, "label", f"{source} [{split}]")
        ds = ds.select_columns([image, label])
        if image != "image" or label != "label":
            ds = ds.rename_columns({k: v for k, v in ((image, "image"), (label, "label")) if k != v})
        if not isinstance(ds.features["image"], Image):
            ds = ds.cast_column("image", Image())
        renamed[name] = ds
    ordered = sorted(renamed, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))
    result = DatasetDict({s: renamed[s] for s in ordered})
    return _unify_labels(result, source)


def _unify_labels(data: DatasetDict, source: str) -> DatasetDict:
    features = {split: ds.features["label"] for split, ds in data.items()}
    typed = [split for split, feature in features.items() if isinstance(feature, ClassLabel)]
    if typed and len(typed) == len(features):
        first = features[typed[0]]
        for split, feature in features.items():
            if feature.names != first.names:
                raise LayoutError(f"{source}: split {split!r} has other class names than split {typed[0]!r}")
        return data
    if typed:
        raise LayoutError(f"{source}: the label column is a ClassLabel in splits {typed} only")
    # Plain labels (ids or names): the classes are their sorted set over all splits.
    values = sorted({v for ds in data.values() for v in ds.unique("label")}, key=lambda v: (isinstance(v, str), v))
    bad = [v for v in values if not isinstance(v, (int, str))]
    if bad:
        raise LayoutError(f"{source}: label column holds {type(bad[0]).__name__} values, not class ids or names")
    index = {v: i for i, v in enumerate(values)}
    target = Features({"image": Image(), "label": ClassLabel(names=[str(v) for v in values])})
    return DatasetDict(
        {
            split: ds.map(lambda b: {"label": [index[v] for v in b["label"]]}, batched=True, features=target)
            for split, ds in data.items()
        }
    )


# ------------------------------------------------------------------------------------------------ the registry

# Checked in this order; the image folder comes last because any folder of folders looks like one.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("saved", "a dataset written with save_to_disk", _find_saved_dataset, read_saved_dataset),
        Layout("cifar100", "CIFAR-100 python pickles", _find_cifar100, read_cifar100),
        Layout("fgvc_json", "FGVC train/val/test.json split files", _find_fgvc_json, read_fgvc_json),
        Layout("nabirds", "NABirds", lambda p: _find_id_lists(p, nabirds=True), read_nabirds),
        Layout("cub200", "CUB-200-2011", lambda p: _find_id_lists(p, nabirds=False), read_cub200),
        Layout("flowers102", "Oxford Flowers-102", _find_flowers102, read_flowers102),
        Layout("stanford_cars", "Stanford Cars devkit", _find_stanford_cars, read_stanford_cars),
        Layout("stanford_dogs", "Stanford Dogs", _find_stanford_dogs, read_stanford_dogs),
        Layout("imagefolder", "<root>/[<split>/]<class>/<image>", lambda p: p, read_imagefolder),
    )
}
FORMATS = ("hub", *LAYOUTS)


def read_source(source: str | os.PathLike, format: str | None = None) -> tuple[DatasetDict, str]:
    """Read ``source`` (a folder in one of :data:`LAYOUTS`, or a Hub dataset id) and return it with its format."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"Unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}.")
    path = Path(source).expanduser()
    if format == "hub" or (format is None and not path.exists()):
        if format is None and looks_like_path(str(source)):
            raise FileNotFoundError(f"Dataset folder {source} does not exist.")
        return read_hub_dataset(str(source)), "hub"
    if not path.is_dir():
        raise NotADirectoryError(f"{source} is not a folder; pass an image folder, a dataset layout or a Hub id.")
    path = path.resolve()
    for name, layout in LAYOUTS.items():
        if format is not None and name != format:
            continue
        root = layout.find(path)
        if root is not None:
            logger.info("Reading %s as %s", root, layout.description)
            return layout.read(root), name
        if format is not None:
            raise LayoutError(f"{path} does not look like {layout.description} (format={format!r}).")
    raise AssertionError("the imagefolder layout matches every folder")
