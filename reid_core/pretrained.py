"""Which weights a model starts from: an open_clip model name, a pretrained tag, or a local file.

Everything that decides or fetches weights lives here, apart from the model itself: the
name and file checks made before any data is read, the lookup of a tag's weights in the
local caches, and, offline, one line naming the fix instead of the Hub client's minute of
retries and a traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import open_clip

from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.shipped_weights import check_fits, effective_pretrained, shipped_file, shipped_tags

# Ship our CPU-sized model as an ordinary open_clip config ('reid-tiny').
open_clip.add_model_config(Path(__file__).parent / "model_configs")


def check_model(cfg: TrainConfig) -> None:
    """Raise `UserError` for an unknown model name or a missing weights file.

    Called before the data is loaded: tokenising captions for an unknown model name
    makes open_clip log a warning, which would put a second line beside the error.
    """
    known = open_clip.list_models()
    if cfg.model not in known and not cfg.model.startswith(("hf-hub:", "local-dir:")):
        import difflib

        close = difflib.get_close_matches(cfg.model, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
        raise UserError(f"unknown model '{cfg.model}'; {hint}")
    pretrained = cfg.pretrained
    if pretrained is not None and ("/" in pretrained or Path(pretrained).suffix) and not Path(pretrained).is_file():
        raise UserError(f"pretrained weights file '{pretrained}' does not exist; pass an existing file or an open_clip tag")


def resolve_pretrained(cfg: TrainConfig) -> tuple[Optional[str], bool]:
    """``(weights file, quick_gelu)`` for ``cfg.pretrained``: None for random init, the file itself, a file
    shipped in the package ('auto' for reid-tiny: 'synthetic'), or the cached download of an open_clip
    tag (fetched now if online).

    Offline without the weights this is one `UserError` naming the fix (a local file) within
    seconds, instead of the Hub client's minute of retries and a traceback.
    """
    pretrained = effective_pretrained(cfg.model, cfg.pretrained)  # 'auto': the model's shipped weights or None
    if pretrained is None:
        return None, False
    shipped = shipped_file(cfg.model, pretrained)
    if shipped is not None:  # package data, loaded as any weights file is
        check_fits(cfg.model, pretrained, shipped, cfg.image_size)
        return shipped, False
    tag = open_clip.get_pretrained_cfg(cfg.model, pretrained)
    if not tag:
        if Path(pretrained).expanduser().is_file():
            return str(Path(pretrained).expanduser()), False
        tags = shipped_tags(cfg.model) + open_clip.list_pretrained_tags_by_model(cfg.model)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise UserError(
            f"pretrained '{pretrained}' is neither a weights file nor a tag of model '{cfg.model}' ({known}); "
            "pass an existing file or one of the tags"
        )
    cached = _cached_weights(tag)
    if cached is not None:
        return cached, bool(tag.get("quick_gelu", False))
    source, host = _download_source(tag)
    fix = f"download {source} where there is internet and pass the file with --pretrained PATH"
    if _env_true("HF_HUB_OFFLINE") or not _reachable(host):
        raise UserError(f"weights '{pretrained}' of model '{cfg.model}' are not in the local cache and {host} cannot be reached (offline); {fix}")
    try:
        return open_clip.download_pretrained(tag), bool(tag.get("quick_gelu", False))
    except Exception as err:  # the Hub client's and urllib's many error types: all mean "no weights"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot download weights '{pretrained}' of model '{cfg.model}': {first}; {fix}") from None


def _cached_weights(tag: dict) -> Optional[str]:
    """The local copy of a tag's weights, looked up without the network."""
    if tag.get("file"):
        return tag["file"]
    if tag.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

        repo, filename = os.path.split(tag["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        for name in [*_get_safe_alternatives(filename), filename]:  # open_clip prefers .safetensors too
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
        return None
    url_file = Path("~/.cache/clip").expanduser() / os.path.basename(tag.get("url", ""))
    return str(url_file) if tag.get("url") and url_file.is_file() else None


def _download_source(tag: dict) -> tuple[str, Optional[str]]:
    """Where a tag's weights come from (a URL a user can fetch by hand) and the host serving them."""
    if tag.get("hf_hub"):
        from open_clip.pretrained import HF_WEIGHTS_NAME

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        repo, filename = os.path.split(tag["hf_hub"])
        return f"{endpoint}/{repo}/resolve/main/{filename or HF_WEIGHTS_NAME}", urlparse(endpoint).hostname
    return tag.get("url", ""), urlparse(tag.get("url", "")).hostname


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(host: Optional[str], timeout: float = 3.0) -> bool:
    if not host:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
