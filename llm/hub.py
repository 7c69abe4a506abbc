"""Hugging Face Hub: publish checkpoints, load them back by repo id, and deploy the playground as a Space.

    python -m llm.hub push DIR USER/NAME [--private] [--revision BRANCH]    upload a checkpoint + model card
    python -m llm.hub stage DIR DEST [--repo-id USER/NAME]                  write what `push` would upload
    python -m llm.hub download USER/NAME[@REV]                              fetch into the HF cache, print the path
    python -m llm.hub deploy-space USER/SPACE [--checkpoint DIR|USER/NAME]  upload the app (and a checkpoint)

A model repo is one checkpoint directory (OUT/best by default) plus the run's metrics.jsonl, a loss-curve SVG
and a README.md model card: `llm.checkpoint.resolve` finds config.json at its root like in any local checkpoint.
Repo ids are told from local paths here and only here (is_hub_spec); llm.checkpoint knows local directories only.
Everything goes through huggingface_hub (HfApi.upload_folder, snapshot_download), so tokens, the cache,
HF_HUB_OFFLINE and HF_ENDPOINT behave as in every other HF tool.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml  # PyYAML, a dependency of huggingface_hub
from huggingface_hub import HfApi, SpaceCard, constants, get_token, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                    LocalTokenNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.utils import validate_repo_id

from llm.card import LOSS_CURVE, loss_curve_svg, render_card
from llm.checkpoint import (CONFIG, METRICS, MODEL_FILES, CheckpointError, __version__, copy_model_files,
                            load_checkpoint, metrics_dir, read_config_dict, read_data_info, read_meta, read_metrics,
                            resolve)
from llm.cli import ArgumentParser, as_flags
from llm.config import FieldNames
from llm.corpus import hf_offline
from llm.sample import SAMPLE_TEXT_SETTINGS, sample_text

ENV_CHECKPOINT = "SCRATCHGPT_CHECKPOINT"  # the model a Space (or any app.py run) loads when no --checkpoint is given
BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "model"  # the model this repository ships
CARD = "README.md"
SPACE_CHECKPOINT_DIR = "checkpoint"  # where deploy-space puts a bundled checkpoint inside the Space
# the app and what it imports; tests, benchmarks, checkpoints and caches stay out of the Space
SPACE_FILES = ("app.py", "train_cli.py", "requirements.txt", "README.md", "LICENSE", "llm/*.py", "assets/**/*")
_REPO_SPEC = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w.\-/]+))?$")


class HubError(FieldNames, CheckpointError):
    """A Hub operation that cannot go ahead; the message is one line for the user (settings marked as in
    llm.config.SettingError)."""


# -----------------------------------------------------------------------------
# repo ids

def split_revision(spec: str) -> tuple[str, str | None]:
    """'user/name@v2' -> ('user/name', 'v2'); 'user/name' -> ('user/name', None)."""
    m = _REPO_SPEC.match(spec)
    if m:
        return m.group("id"), m.group("rev")
    repo_id, _, rev = spec.partition("@")
    return repo_id, rev or None


def is_repo_id(spec: str | os.PathLike) -> bool:
    """True if `spec` reads as USER/NAME or USER/NAME@REVISION (syntax only: no file or network check).

    A relative path such as 'checkpoints/run' reads as a repo id too, so callers check the local path first.
    """
    if not isinstance(spec, str) or not _REPO_SPEC.match(spec):
        return False
    try:
        validate_repo_id(split_revision(spec)[0])
    except HFValidationError:
        return False
    return True


def check_repo_id(spec: str, kind: str = "model") -> tuple[str, str | None]:
    """Validate USER/NAME[@REV] and split it, or raise HubError saying what a valid id looks like."""
    if not is_repo_id(spec):
        raise HubError(f"{spec!r} is not a valid {kind} repo id: expected USER/NAME (letters, digits, '-', '_', '.'; "
                       f"no '--' or '..'; at most 96 characters)")
    return split_revision(spec)


def check_can_push(repo_id: str) -> str:
    """Fail fast, before a long training run, on what would make the push at its end fail without a network
    call: a malformed id, HF_HUB_OFFLINE=1, no token. Returns the repo id without any @revision."""
    repo_id, _ = check_repo_id(repo_id)
    _refuse_offline(f"`push_to_hub` {repo_id}")
    if get_token() is None:
        raise HubError(f"`push_to_hub` {repo_id}: not logged in to Hugging Face: run `hf auth login` or set HF_TOKEN")
    return repo_id


def _refuse_offline(what: str) -> None:
    if hf_offline():
        raise HubError(f"{what}: HF_HUB_OFFLINE=1 is set, so nothing can be uploaded; unset it to push")


def _cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _foreign(e: BaseException) -> str:
    """huggingface_hub's first line of an error, its backticks made quotes: in a HubError, `name` marks a field."""
    return str(e).splitlines()[0].replace("`", "'") if str(e) else ""


@contextmanager
def _hub_errors(what: str):
    """Turn huggingface_hub's exceptions into one-line HubErrors."""
    try:
        yield
    except (HubError, LocalEntryNotFoundError):  # the latter: download() words it, knowing whether offline
        raise
    except LocalTokenNotFoundError:
        raise HubError(f"{what}: not logged in to Hugging Face: run `hf auth login` or set HF_TOKEN") from None
    except HFValidationError as e:
        raise HubError(f"{what}: {_foreign(e)}") from None
    except GatedRepoError:
        raise HubError(f"{what}: the repo is gated: request access on its page and log in") from None
    except RepositoryNotFoundError:
        raise HubError(f"{what}: repository not found (or private: log in with `hf auth login` or set "
                       f"HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{what}: revision not found") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = " (check that your token has write access)" if status in (401, 403) else ""
        raise HubError(f"{what}: {_foreign(e)}{hint}") from None
    except OSError as e:  # connection errors, disk full, ...
        raise HubError(f"{what}: {type(e).__name__}: {_foreign(e)}") from None


# -----------------------------------------------------------------------------
# loading

def download(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Fetch a model repo (or find it in the HF cache) and return the local snapshot directory.

    `repo_id` may carry '@REVISION'. With HF_HUB_OFFLINE=1 only the cache is used, and a repo that is not in it is
    one clear HubError. The snapshot's files are symlinks into the cache: read them, do not write to them.
    """
    repo_id, rev = check_repo_id(repo_id)
    revision = revision or rev
    shown = repo_id + (f"@{revision}" if revision else "")
    offline = hf_offline()
    cache = str(cache_dir or _cache_dir())
    try:
        with _hub_errors(f"could not download {shown}"):
            path = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                     allow_patterns=[*MODEL_FILES, METRICS, CARD, LOSS_CURVE],
                                     library_name="scratchgpt", library_version=__version__)
    except LocalEntryNotFoundError:
        # raised both when offline by choice and when the Hub cannot be reached and the cache lacks the repo
        if offline:
            raise HubError(f"{shown} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                           f"downloading it: unset HF_HUB_OFFLINE, or download it once while online") from None
        raise HubError(f"could not reach the Hugging Face Hub for {shown}, and it is not in the cache "
                       f"({cache})") from None
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise HubError(f"{shown} is not a scratchgpt checkpoint: it has no {CONFIG}")
    return path


def is_hub_spec(spec: str | os.PathLike) -> bool:
    """True when `spec` names a Hub repo: USER/NAME[@REV] in form, and no local path: neither an existing one nor
    one whose first part is a directory here ('checkpoints/run' reads as a repo id too; with a checkpoints/ here
    it is a path, and a missing one is reported as such)."""
    return (isinstance(spec, str) and not Path(spec).exists() and not Path(spec.split("/")[0]).is_dir()
            and is_repo_id(spec))


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A local path as it is; else a USER/NAME[@REV] downloaded through the HF cache. A failed download says that
    the local path was tried too."""
    if is_hub_spec(spec):
        try:
            return download(spec)
        except HubError as e:
            raise HubError(f"no checkpoint at {spec}: no such local directory, and as a Hub repo id: {e}") from None
    return Path(spec)


def find_checkpoint(cli_value: str | None = None, cwd: str | os.PathLike = ".", bundled: Path = BUNDLED) -> str:
    """The model to open (app.py, python -m llm.generate): --checkpoint, else $SCRATCHGPT_CHECKPOINT (a Space
    variable), else the newest checkpoints/*/best (by mtime) under cwd, else the bundled model. CheckpointError
    (one line) when there is none."""
    if cli_value is not None and not cli_value.strip():
        raise CheckpointError("--checkpoint is empty: give a checkpoint directory or a Hub repo id USER/NAME")
    spec = cli_value or os.environ.get(ENV_CHECKPOINT)
    if spec:
        return spec
    runs = [p for p in Path(cwd).glob("checkpoints/*/best") if p.is_dir()]
    if runs:
        return str(max(runs, key=lambda p: p.stat().st_mtime))
    if (bundled / CONFIG).is_file():
        return str(bundled)
    raise CheckpointError("no model to open: pass --checkpoint DIR, set SCRATCHGPT_CHECKPOINT, or train one with "
                          "`python train_cli.py --corpus FILE` (it writes checkpoints/<name>/best); the bundled "
                          "model assets/model is missing too")


# -----------------------------------------------------------------------------
# model repos

def stage_checkpoint(path: str | os.PathLike, dest: str | os.PathLike, repo_id: str | None = None,
                     sample_tokens: int = 200, license: str = "mit", datasets: list[str] | None = None) -> Path:
    """Write into `dest` exactly what a model repo holds: the checkpoint's files, metrics.jsonl, the loss curve
    and the model card. `path` is OUT, OUT/best or OUT/last. Returns `dest`."""
    dest = Path(dest)
    ckpt = copy_model_files(path, dest)
    run = metrics_dir(ckpt)
    rows = read_metrics(run) if run else []
    if run:
        shutil.copyfile(run / METRICS, dest / METRICS)
    (dest / LOSS_CURVE).write_text(loss_curve_svg(rows), encoding="utf-8")
    sample, settings = None, ""
    if sample_tokens > 0:  # generated from the weights being published (this also proves they load)
        model, tokenizer, _ = load_checkpoint(ckpt)
        sample = sample_text(model, tokenizer, sample_tokens, seed=0)
        settings = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SAMPLE_TEXT_SETTINGS.items())
        settings += f", seed 0, {sample_tokens} tokens at most"
    else:  # fall back on the sample logged at the last evaluation, if any
        sample = next((r["sample"] for r in reversed(rows) if r.get("sample")), None)
        settings = "logged during training" if sample else ""
    card = render_card(read_config_dict(ckpt), read_meta(ckpt), rows, repo_id=repo_id,
                       data=read_data_info(run) if run else {}, sample=sample, sample_settings=settings,
                       license=license, datasets=datasets)
    (dest / CARD).write_text(card, encoding="utf-8")
    return dest


def push_checkpoint(path: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
                    commit_message: str | None = None, token: str | None = None, sample_tokens: int = 200,
                    license: str = "mit", api: HfApi | None = None) -> str:
    """Upload a checkpoint (OUT, OUT/best or OUT/last) with its model card to a model repo; returns the URL of
    the commit. Creates the repo (and the branch `revision`) if needed."""
    repo_id, rev = check_repo_id(repo_id)
    revision = revision or rev
    resolve(path)  # a bad path is reported before any Hub concern
    _refuse_offline(f"could not push to {repo_id}")
    api = api or HfApi(token=token, library_name="scratchgpt", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="scratchgpt-push-") as tmp:
        folder = stage_checkpoint(path, tmp, repo_id=repo_id, sample_tokens=sample_tokens, license=license)
        step = read_meta(folder).get("step", "?")
        with _hub_errors(f"could not push to {repo_id}"):
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            if revision and revision != constants.DEFAULT_REVISION:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, revision=revision,
                                     commit_message=commit_message or f"scratchgpt checkpoint, step {step}")
    return str(getattr(info, "commit_url", None) or f"{constants.ENDPOINT}/{repo_id}")


# -----------------------------------------------------------------------------
# the Space

def read_space_card(readme: str | os.PathLike) -> SpaceCard:
    """Parse README.md as a Space card and check what a Gradio Space needs; HubError naming what is missing."""
    readme = Path(readme)
    if not readme.is_file():
        raise HubError(f"{readme} is missing: a Space needs a README.md with its front matter")
    try:
        card = SpaceCard.load(readme)
    except (ValueError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())  # YAML errors span several lines
        raise HubError(f"{readme}: the Space front matter does not parse ({reason})") from None
    missing = [k for k in ("title", "sdk", "sdk_version", "app_file") if not getattr(card.data, k, None)]
    if missing:
        raise HubError(f"{readme}: the Space front matter lacks {', '.join(missing)}")
    if card.data.sdk != "gradio":
        raise HubError(f"{readme}: sdk is {card.data.sdk!r}, this app needs 'gradio'")
    return card


def space_files(root: str | os.PathLike = ".") -> list[str]:
    """The repository's files a Space needs (relative posix paths, sorted): the app, the llm package,
    requirements.txt and README.md. Caches, tests, benchmarks and checkpoints are left out."""
    root = Path(root)
    files = {p.relative_to(root).as_posix() for pat in SPACE_FILES for p in root.glob(pat) if p.is_file()}
    return sorted(f for f in files if "__pycache__" not in f)


def stage_space(dest: str | os.PathLike, root: str | os.PathLike = ".", checkpoint: str | None = None) -> Path:
    """Write into `dest` what deploy-space uploads: the app files, and a local checkpoint laid out like a run,
    checkpoint/best/ + checkpoint/metrics.jsonl, so that SCRATCHGPT_CHECKPOINT=checkpoint loads it as OUT.

    With `checkpoint` a repo id, the README's `models:` is set to it so the Space links the model."""
    root, dest = Path(root), Path(dest)
    card = read_space_card(root / "README.md")
    files = space_files(root)
    if card.data.app_file not in files:
        raise HubError(f"{root}: app_file {card.data.app_file!r} from README.md is not there")
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest / rel)
    if checkpoint and not is_hub_spec(checkpoint):
        out = dest / SPACE_CHECKPOINT_DIR
        ckpt = copy_model_files(checkpoint, out / "best")
        if (run := metrics_dir(ckpt)) is not None:
            shutil.copyfile(run / METRICS, out / METRICS)
    elif checkpoint:
        repo_id, _ = check_repo_id(checkpoint)
        card.data.models = [repo_id]
        card.save(dest / "README.md")
    return dest


def deploy_space(space_id: str, root: str | os.PathLike = ".", checkpoint: str | None = None,
                 private: bool = False, hardware: str | None = None, token: str | None = None,
                 api: HfApi | None = None) -> str:
    """Create or update a Gradio Space from this repository; returns the Space's URL.

    `checkpoint`: a local checkpoint directory (uploaded into the Space under checkpoint/) or a model repo id
    (loaded by the Space at start-up). Either way the Space variable SCRATCHGPT_CHECKPOINT points the app at it.
    """
    space_id, rev = check_repo_id(space_id, kind="Space")
    if rev:
        raise HubError(f"{space_id}@{rev}: a Space is deployed to its main branch; drop the @{rev}")
    _refuse_offline(f"could not deploy the Space {space_id}")
    local = checkpoint and not is_hub_spec(checkpoint)
    if local and not Path(checkpoint).exists():
        raise HubError(f"`checkpoint` {checkpoint}: neither a local checkpoint directory nor a USER/NAME repo id")
    api = api or HfApi(token=token, library_name="scratchgpt", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="scratchgpt-space-") as tmp:
        folder = stage_space(tmp, root, checkpoint)
        target = SPACE_CHECKPOINT_DIR if local else checkpoint
        with _hub_errors(f"could not deploy the Space {space_id}"):
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            # delete_patterns: app files removed from the repository since the last deploy go from the Space too
            api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                              delete_patterns=list(SPACE_FILES), commit_message="Deploy scratchgpt" + (f" with {checkpoint}" if checkpoint else ""))
            if target:
                api.add_space_variable(space_id, ENV_CHECKPOINT, target,
                                       description="checkpoint the app loads (a path in the Space or a repo id)")
            if hardware:
                api.request_space_hardware(space_id, hardware)
    return f"{constants.ENDPOINT}/spaces/{space_id}"


# -----------------------------------------------------------------------------
# command line

def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m llm.hub", description="Publish scratchgpt checkpoints and Spaces on the "
                                                        "Hugging Face Hub.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    s = sub.add_parser("push", help="upload a checkpoint with its model card")
    s.add_argument("dir", help="checkpoint directory: OUT (= OUT/best), OUT/best or OUT/last")
    s.add_argument("repo_id", metavar="USER/NAME")
    s.add_argument("--private", action="store_true", help="create the repo private")
    s.add_argument("--revision", help="branch to push to (created if needed; default main)")
    s.add_argument("--message", help="commit message")
    s.add_argument("--sample-tokens", type=int, default=200, help="length of the card's sample (0 = none)")
    s.add_argument("--license", default="mit")
    s = sub.add_parser("stage", help="write what `push` would upload into DEST, without uploading")
    s.add_argument("dir")
    s.add_argument("dest")
    s.add_argument("--repo-id", metavar="USER/NAME")
    s.add_argument("--sample-tokens", type=int, default=200)
    s.add_argument("--license", default="mit")
    s = sub.add_parser("download", help="fetch a model repo into the HF cache and print its path")
    s.add_argument("repo_id", metavar="USER/NAME[@REV]")
    s.add_argument("--revision")
    s = sub.add_parser("deploy-space", help="upload this repository's app as a Gradio Space")
    s.add_argument("space_id", metavar="USER/SPACE")
    s.add_argument("--checkpoint", help="a local checkpoint directory to bundle, or a model repo id to load")
    s.add_argument("--root", default=".", help="repository root (default: the current directory)")
    s.add_argument("--private", action="store_true")
    s.add_argument("--hardware", help="request Space hardware, e.g. t4-small (billed by Hugging Face)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "push":
            url = push_checkpoint(args.dir, args.repo_id, private=args.private, revision=args.revision,
                                  commit_message=args.message, sample_tokens=args.sample_tokens, license=args.license)
            print(f"pushed {args.dir} to {url}")
            print(f"load it with: python app.py --checkpoint {args.repo_id}")
        elif args.command == "stage":
            if args.repo_id:
                check_repo_id(args.repo_id)
            dest = stage_checkpoint(args.dir, args.dest, repo_id=args.repo_id, sample_tokens=args.sample_tokens,
                                    license=args.license)
            print(f"wrote {', '.join(sorted(p.name for p in dest.iterdir()))} to {dest}")
        elif args.command == "download":
            print(download(args.repo_id, args.revision))
        elif args.command == "deploy-space":
            url = deploy_space(args.space_id, args.root, args.checkpoint, private=args.private,
                               hardware=args.hardware)
            print(f"deployed to {url}")
    except (ValueError, OSError) as e:  # HubError and CheckpointError are ValueErrors
        print(f"llm.hub: error: {as_flags(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llm.hub: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
