"""Detect a local source's format from its path and run the matching importer."""

from __future__ import annotations

from pathlib import Path

from capalign.errors import ConfigError, InputError

from . import cc3m, coco, flickr, folder, karpathy, webdataset
from .download import Downloader
from .pipeline import FetchOptions, plan_splits, run_candidates
from .records import load_json
from .fetch_report import FetchReport, SkipLog
from .splits import split_caps
from .sources import import_saved


def _images_dir(images: Path | None, path: Path, what: str) -> Path:
    if images is None:
        raise ConfigError(f"{path} is a {what}; pass --images DIR, the folder holding the images it names.")
    if not images.is_dir():
        raise InputError(f"--images {images} is not a folder; pass the folder holding the images.")
    return images


def import_local(source: str, path: Path, *, images: Path | None, out: Path, log: SkipLog, seed: int,
                 limit: int | None, image_size: int, settings: dict, image_column: str | None,
                 caption_column: str | None, options: FetchOptions = FetchOptions()) -> FetchReport:
    """Import a local file, folder or shard pattern (see import_source for the formats)."""
    run = dict(source=source, out=out, log=log, image_size=image_size, settings=settings, options=options)
    if path.is_dir():
        if folder.is_image_folder(path):
            cands = folder.folder_candidates(path, caption_column, log)
            return run_candidates(fmt="imagefolder", plan=plan_splits(cands, seed, limit), **run)
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return import_saved(path, out=out, log=log, seed=seed, limit=limit, image_size=image_size,
                                settings=settings, image_column=image_column, caption_column=caption_column,
                                options=options)
        if webdataset.is_webdataset(str(path)):
            return run_candidates(fmt="webdataset", plan=webdataset.webdataset_plan(str(path), seed, limit, log),
                                  **run)
        raise InputError(f"{path} has no metadata.jsonl / metadata.csv, no .tar shards and no saved dataset; "
                         "add a metadata file (file_name + caption columns) or pass an annotation file.")
    if not path.exists() and webdataset.is_webdataset(source):
        return run_candidates(fmt="webdataset", plan=webdataset.webdataset_plan(source, seed, limit, log), **run)
    suffix = path.suffix.lower()
    if path.name in ("metadata.jsonl", "metadata.csv"):
        return import_local(source, path.parent, images=images, out=out, log=log, seed=seed, limit=limit,
                            image_size=image_size, settings=settings, image_column=image_column,
                            caption_column=caption_column, options=options)
    if suffix == ".json":
        doc = load_json(path)
        if coco.is_coco(doc):
            cands = coco.coco_candidates(path, doc, _images_dir(images, path, "COCO captions file"), log)
            fmt = "coco"
        elif karpathy.is_karpathy(doc):
            cands = karpathy.karpathy_candidates(path, doc, _images_dir(images, path, "Karpathy split file"), log)
            fmt = "karpathy"
        else:
            keys = list(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
            raise InputError(f"{path} is neither COCO captions json (images + annotations) nor a Karpathy "
                             f"split json (images with sentences); top level has {keys}.")
        del doc
        return run_candidates(fmt=fmt, plan=plan_splits(cands, seed, limit), **run)
    if flickr.is_token_file(path) or flickr.is_captions_csv(path):
        root = images if images is not None else flickr.default_images_dir(path)
        cands = flickr.flickr_candidates(path, _images_dir(root, path, "Flickr caption file"), log)
        return run_candidates(fmt="flickr8k", plan=plan_splits(cands, seed, limit), **run)
    if suffix == ".tar":
        return run_candidates(fmt="webdataset", plan=webdataset.webdataset_plan(source, seed, limit, log), **run)
    if cc3m.is_url_list(path):
        for _ in cc3m.url_list_candidates(path, None, seed, SkipLog()):
            pass  # validate the whole file first, so a malformed line fails before any download
        caps = split_caps(limit)
        plan = {s: (cc3m.url_list_candidates(path, s, seed, log), caps[s]) for s in caps}
        return run_candidates(fmt="url-list", plan=plan, downloader=Downloader(out.parent / f"{out.name}.downloads"),
                              **run)
    raise InputError(
        f"cannot tell the format of {path}: expected a COCO or Karpathy .json, Flickr captions.txt / "
        "*.token.txt, a .tar shard, a caption<TAB>url .tsv, or a folder with metadata.jsonl/.csv."
    )
