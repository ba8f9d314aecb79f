"""Parallel, resumable image downloads for URL-list sources (cc3m, coco from the hub).

requests + urllib3's Retry give retries with back-off and per-request timeouts; a thread pool with a
bounded window keeps results in source order and memory flat. Finished files are cached by URL hash
and definite dead links (HTTP 4xx) are remembered in `failed.jsonl`, so re-running the same fetch
resumes; timeouts and connection errors are tried again on the next run. Once the prepared dataset
is installed the cache is removed (`remove`), unless `fetch --keep-downloads`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from capalign import reporting

from . import fetch_report as R
from .records import Candidate
from .fetch_report import SkipLog


@dataclass
class DownloadOptions:
    """Knobs for URL downloads (module default `OPTIONS`; tests shrink the timeouts)."""

    workers: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 50 * 1024 * 1024
    user_agent: str = "capalign-fetch/1 (+image captioning research)"


OPTIONS = DownloadOptions()


class Downloader:
    """Downloads candidates' URLs into `cache_dir` in parallel; yields (candidate, file) in order."""

    def __init__(self, cache_dir: Path, options: DownloadOptions | None = None) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.opt = options or OPTIONS
        self.failed_path = self.dir / "failed.jsonl"
        self.failed: dict[str, str] = {}
        if self.failed_path.exists():
            for line in self.failed_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.failed[rec["url"]] = rec.get("error", "")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted run
        self._lock = threading.Lock()
        self._local = threading.local()
        self.requests_made = 0

    def remove(self) -> None:
        """Delete the cache folder (the downloads and failed.jsonl); one that cannot be deleted is a
        warning, not an error: the dataset is complete by then."""
        try:
            shutil.rmtree(self.dir)
        except OSError as exc:
            reporting.log.warning(f"warning: could not delete the downloads in {self.dir} ({exc}); "
                                  "delete that folder by hand.")

    def path_for(self, url: str) -> Path:
        return self.dir / (hashlib.sha1(url.encode("utf-8")).hexdigest() + ".img")

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            retry = Retry(total=self.opt.retries, connect=self.opt.retries, read=self.opt.retries,
                          status=self.opt.retries, backoff_factor=self.opt.backoff,
                          status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",),
                          raise_on_status=False)
            adapter = HTTPAdapter(max_retries=retry, pool_maxsize=4)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers["User-Agent"] = self.opt.user_agent
            self._local.session = s
        return s

    def _get(self, url: str) -> tuple[str, str] | Path:
        """Download one URL; returns the cached file, or (reason, detail) on failure."""
        dest = self.path_for(url)
        if dest.exists():
            return dest
        if url in self.failed:
            return R.DEAD_LINK, f"failed in an earlier run: {self.failed[url]}"
        with self._lock:
            self.requests_made += 1
        try:
            with self._session().get(url, timeout=(self.opt.connect_timeout, self.opt.read_timeout),
                                     stream=True) as r:
                if r.status_code != 200:
                    return self._fail(url, R.DEAD_LINK, f"HTTP {r.status_code}", remember=r.status_code < 500)
                chunks, size = [], 0
                for chunk in r.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > self.opt.max_bytes:
                        return self._fail(url, R.TOO_LARGE, f"more than {self.opt.max_bytes} bytes")
                    chunks.append(chunk)
        except requests.RequestException as e:  # network trouble may pass: retried on the next run
            return self._fail(url, R.DEAD_LINK, f"{type(e).__name__}: {e}", remember=False)
        tmp = dest.with_name(dest.name + f".{os.getpid()}.{threading.get_ident()}.part")
        tmp.write_bytes(b"".join(chunks))
        os.replace(tmp, dest)  # atomic: an interrupted run never leaves a half file under the final name
        return dest

    def _fail(self, url: str, reason: str, detail: str, remember: bool = True) -> tuple[str, str]:
        """Report a failure; definite ones (HTTP 4xx, too large) are remembered so a resumed run
        does not ask again, while timeouts, connection errors and 5xx are retried next time."""
        if remember:
            with self._lock:
                self.failed[url] = detail
                with open(self.failed_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"url": url, "reason": reason, "error": detail}) + "\n")
        return reason, detail

    def fetch(self, cands: Iterable[Candidate], log: SkipLog) -> Iterator[tuple[Candidate, Path]]:
        """Yield (candidate, cached file) in input order; failures are logged and left out."""
        window = max(1, 4 * self.opt.workers)
        pending: deque = deque()
        it = iter(cands)
        with ThreadPoolExecutor(self.opt.workers, thread_name_prefix="capalign-dl") as pool:
            try:
                for c in it:
                    pending.append((c, pool.submit(self._get, c.url)))
                    if len(pending) >= window:
                        yield from self._emit(pending.popleft(), log)
                while pending:
                    yield from self._emit(pending.popleft(), log)
            finally:
                for _, fut in pending:
                    fut.cancel()

    @staticmethod
    def _emit(item, log: SkipLog) -> Iterator[tuple[Candidate, Path]]:
        cand, fut = item
        res = fut.result()
        if isinstance(res, Path):
            yield cand, res
        else:
            log.skip(res[0], cand.ref, f"{cand.url}: {res[1]}")
