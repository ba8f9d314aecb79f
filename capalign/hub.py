"""Hugging Face Hub access that fails fast offline: hub names, any dataset id, `fetch_model`.

Reachability is probed once (a 3-second HEAD in a daemon thread, so a hanging DNS lookup cannot
stall us); when the hub is unreachable or HF_HUB_OFFLINE is set, datasets and huggingface_hub are
switched to offline mode so only the local cache is consulted and failure takes well under a second.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import datasets.config as dc
import huggingface_hub
import huggingface_hub.constants as hc
import requests
from datasets import load_dataset
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from capalign.errors import CapalignError, ConfigError, InputError, MissingError, OutputError

_TRUE = {"1", "true", "yes", "on"}
PROBE_SECONDS = 3.0
MODEL_IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "*.tflite", "flax_model*",
                "tf_model*", "rust_model*", "coreml/*", "*.mlmodel"]


def offline_requested() -> bool:
    """True when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE is set (read now)."""
    env = any(os.environ.get(v, "").strip().lower() in _TRUE
              for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(hc.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """One HEAD request to the hub endpoint (honours proxies), abandoned after `timeout` seconds."""
    if offline_requested():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    ok: list[bool] = []

    def probe() -> None:
        try:
            requests.head(endpoint, timeout=(timeout, timeout), allow_redirects=False)
            ok.append(True)
        except Exception:  # any failure means "not reachable"; the reason is irrelevant here
            pass

    t = threading.Thread(target=probe, daemon=True, name="capalign-hub-probe")
    t.start()
    t.join(timeout)
    return bool(ok)


@contextlib.contextmanager
def offline_mode():
    """Make datasets and huggingface_hub use only the local cache (no retries) inside the block."""
    saved = (hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, getattr(dc, "HF_DATASETS_OFFLINE", None))
    hc.HF_HUB_OFFLINE = dc.HF_HUB_OFFLINE = True
    dc.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE = saved


def _cache_hint() -> str:
    return hc.HF_HOME


def load_hub_dataset(repo: str, config: str | None, fetch_name: str):
    """load_dataset(repo, config) online, or from the local cache only when offline; any failure
    is a MissingError that says what to run on a connected machine."""
    online = hub_reachable()
    try:
        if online:
            return load_dataset(repo, config)
        with offline_mode():
            return load_dataset(repo, config)
    except CapalignError:
        raise
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        where = "the Hugging Face Hub is unreachable or offline mode is on, and it is not in the local cache" \
            if not online else f"loading failed ({type(e).__name__}: {str(e)[:200]})"
        raise MissingError(
            f"cannot load dataset {repo}{'/' + config if config else ''}: {where}; on a connected machine "
            f"run `capalign fetch {fetch_name} --out DIR` and copy DIR here (or copy its Hugging Face "
            f"cache, {_cache_hint()})."
        ) from None


def fetch_model(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """Return a local folder with the model's files: a local path as is, else the Hugging Face
    snapshot (downloaded when the hub is reachable, else taken from the local cache; no cache and
    no hub is a MissingError within seconds). Only PyTorch/safetensors weights, configs, tokenizers."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists():
        raise InputError(f"{p} is a file; pass a model folder or a Hugging Face model id.")
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise MissingError(f"{name_or_path} is neither an existing folder nor a valid Hugging Face model id; "
                           "check the spelling or the path.") from None
    kw = dict(cache_dir=str(cache_dir) if cache_dir else None, ignore_patterns=MODEL_IGNORE)
    online = hub_reachable()
    try:
        if online:
            return Path(snapshot_download(name_or_path, **kw))
        with offline_mode():
            return Path(snapshot_download(name_or_path, local_files_only=True, **kw))
    except Exception as e:
        why = "the Hugging Face Hub is unreachable or offline mode is on, and it is not in the local cache" \
            if not online else f"download failed ({type(e).__name__}: {str(e)[:200]})"
        raise MissingError(
            f"cannot get model {name_or_path}: {why}; on a connected machine run `capalign fetch --model "
            f"{name_or_path}` and copy its Hugging Face cache ({cache_dir or _cache_hint()}) here, or pass a "
            "local model folder."
        ) from None


PUSH_IGNORE = ["checkpoints/*", "checkpoints/**", "*.partial*", ".*"]


def symlinks_in(folder: Path) -> list[str]:
    """Every symlink below `folder` as "NAME -> TARGET" (upload_folder would upload what they point at)."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path.is_symlink():
                found.append(f"{path.relative_to(folder)} -> {os.readlink(path)}")
    return found


def push_run(run_dir: Path, repo_id: str, write_card, private: bool = False) -> str:
    """Upload a finished run folder (its model card refreshed first by `write_card(run_dir)`,
    checkpoints left out) to the Hub model repo `repo_id` (created if needed); returns the repo URL.
    Offline, unreachable or without a token it fails within seconds with a ConfigError or OutputError; the token is
    never printed. (The card writer is passed in: capalign.model_card imports capalign.runs, which
    resolves Hub ids through this module.)"""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"--repo-id {repo_id} is not a valid Hugging Face repo id (owner/name).") from None
    links = symlinks_in(Path(run_dir))
    if links:
        raise InputError(f"cannot push {run_dir}: it holds {len(links)} symlink(s) ({', '.join(links[:3])}), whose targets "
                         "lie outside the run; replace them with copies of the files or remove them, then push again.")
    if offline_requested():
        raise ConfigError("cannot push: offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE); unset it on a "
                          "machine with Hub access.")
    token = huggingface_hub.get_token()
    if not token:
        raise ConfigError("cannot push: no Hugging Face token; run `hf auth login` or set HF_TOKEN, then push again.")
    endpoint = os.environ.get("HF_ENDPOINT", hc.ENDPOINT)
    if not hub_reachable():
        raise OutputError(f"cannot push: the Hugging Face Hub ({endpoint}) is unreachable from here; push from a "
                          "connected machine (copy the run folder there).")
    write_card(run_dir)
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(run_dir), repo_id=repo_id, repo_type="model", ignore_patterns=PUSH_IGNORE,
                          commit_message=f"Upload capalign run {Path(run_dir).name}")
    except Exception as e:  # HTTP errors (401, 403, 409), connection drops; their text never holds the token
        message = str(e).replace(token, "***").splitlines()[0][:200] if str(e) else type(e).__name__
        raise OutputError(f"push to {repo_id} failed: {message}") from None
    return str(url)
