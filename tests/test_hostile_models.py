"""Damaged or hostile model folders, backbones and checkpoints: each is refused with one stderr line
and exit 2, no traceback, nothing of the folder's code run (no payload marker), no prompt (stdin never
read); push refuses symlinks; control characters from a vocabulary never reach the terminal raw."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from capalign.config import build_config
from capalign.train import checkpoints
from capalign.train.engine import Engine
from capalign.train.pretrain import pretrain
from test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "capalign"


# ---------------------------------------------------------------------------------------------- helpers


class _Stdin(io.StringIO):
    """Answers 'y' to any prompt, and remembers whether anything asked."""

    asked = False

    def read(self, *args):
        _Stdin.asked = True
        return super().read(*args)

    def readline(self, *args):
        _Stdin.asked = True
        return super().readline(*args)


@pytest.fixture
def yes_stdin(monkeypatch):
    _Stdin.asked = False
    monkeypatch.setattr(sys, "stdin", _Stdin("y\ny\ny\n"))
    yield
    assert not _Stdin.asked, "something read stdin (a prompt)"


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    return path


def copy_run(pretrained_run: Path, dest: Path) -> Path:
    """The finished run's own files (not its best-* folders), copied."""
    shutil.copytree(pretrained_run, dest, ignore=shutil.ignore_patterns("best-*"))
    return dest


def one_line(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capalign: error: "), err


def payload(folder: Path, marker: Path) -> None:
    """A module that writes `marker` when imported, and configs pointing transformers at it."""
    (folder / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil: pass\n")


def add_auto_map(path: Path, key: str = "AutoModel") -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["auto_map"] = {key: "payload.Evil"}
    path.write_text(json.dumps(data))


def header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_header(path: Path, head: dict, body: bytes) -> None:
    text = json.dumps(head).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


class Exec:
    """Pickles to "exec(code)" on load: what a hostile checkpoint or pytorch_model.bin holds."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _caption(run: Path, image: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run_cli(["caption", str(image), "--model", str(run), *extra], capsys)


# ---------------------------------------------------------------------------------------------- remote code


def test_every_from_pretrained_call_refuses_remote_code():
    """Each transformers loader call in capalign passes trust_remote_code=False (or **NO_REMOTE_CODE)."""
    own = {"PrefixCaptionModel", "ImageEncoderModel"}  # capalign's own classes: they call the checked loaders
    unsafe = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("from_pretrained", "from_encoder_decoder_pretrained", "from_config")):
                continue
            if isinstance(node.func.value, ast.Name) and node.func.value.id in own:
                continue
            ok = any((k.arg in ("trust_remote_code", "decoder_trust_remote_code") and isinstance(k.value, ast.Constant)
                      and k.value.value is False) or (k.arg is None and isinstance(k.value, ast.Name)
                                                      and k.value.id == "NO_REMOTE_CODE") for k in node.keywords)
            if not ok:
                unsafe.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unsafe, f"loader calls without trust_remote_code=False: {unsafe}"


@pytest.mark.parametrize("config", ["config.json", "tokenizer_config.json", "preprocessor_config.json",
                                    "processor_config.json"])
def test_run_folder_with_auto_map_is_refused_without_prompting(pretrained_run, tmp_path, image, capsys, yes_stdin, config):
    run = copy_run(pretrained_run, tmp_path / "run")
    marker = tmp_path / "marker"
    payload(run, marker)
    add_auto_map(run / config, "AutoTokenizer" if "tokenizer" in config else "AutoModel")
    code, _, err = _caption(run, image, capsys)
    one_line(code, err)
    assert "auto_map" in err and config in err
    assert not marker.exists()


def test_auto_map_nested_in_a_sub_config_is_refused(pretrained_run, tmp_path, image, capsys, yes_stdin):
    run = copy_run(pretrained_run, tmp_path / "run")
    marker = tmp_path / "marker"
    payload(run, marker)
    data = json.loads((run / "config.json").read_text())
    data["decoder"]["auto_map"] = {"AutoModelForCausalLM": "payload.Evil"}
    (run / "config.json").write_text(json.dumps(data))
    one_line(*_caption(run, image, capsys)[::2])
    assert not marker.exists()


def _hostile_backbone(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "evil-backbone"
    folder.mkdir()
    payload(folder, marker)
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "payload.Evil", "AutoModel": "payload.Evil", "AutoModelForCausalLM": "payload.Evil"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["payload.Evil", None]}}))
    return folder


@pytest.mark.parametrize("option", ["--vision", "--decoder", "--text-encoder"])
def test_backbone_with_auto_map_is_refused(in_workspace, tmp_path, capsys, yes_stdin, option):
    marker = tmp_path / "marker"
    folder = _hostile_backbone(tmp_path, marker)
    arch = ["--arch", "contrastive"] if option == "--text-encoder" else ["--arch", "prefix"]
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "1", "--out", str(tmp_path / "out"),
                            option, str(folder), *arch], capsys)
    one_line(code, err)
    assert "auto_map" in err and not marker.exists()


@pytest.mark.parametrize("metric", ["bertscore", "clipscore"])
def test_metric_model_with_auto_map_is_refused(pretrained_run, in_workspace, tmp_path, capsys, yes_stdin, metric):
    marker = tmp_path / "marker"
    folder = _hostile_backbone(tmp_path, marker)
    extra = ["--bertscore-model", str(folder), "--bertscore-layer", "1"] if metric == "bertscore" else \
        ["--clip-model", str(folder)]
    code, _, err = run_cli(["evaluate", "--model", str(pretrained_run), "--metrics", metric, "--limit", "2", *extra],
                           capsys)
    one_line(code, err)
    assert "auto_map" in err and not marker.exists()


def test_auto_map_in_a_subprocess_answering_yes(pretrained_run, tmp_path, image):
    """A real process whose stdin says 'y': still refused, nothing run, and it does not wait for input."""
    run = copy_run(pretrained_run, tmp_path / "run")
    marker = tmp_path / "marker"
    payload(run, marker)
    add_auto_map(run / "config.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "capalign", "caption", str(image), "--model", str(run)], input="y\n",
                          capture_output=True, text=True, env=env, timeout=120)
    one_line(done.returncode, done.stderr)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- damaged folders


def _pickle_weights(run: Path, marker: Path, zipped: bool) -> None:
    (run / "model.safetensors").unlink()
    evil = Exec(f"open({str(marker)!r}, 'w')")
    if zipped:
        torch.save({"w": evil}, run / "pytorch_model.bin")
    else:
        (run / "pytorch_model.bin").write_bytes(pickle.dumps(evil))


def _lie_shape(run: Path, name: str = "model.safetensors", consistent: bool = True) -> None:
    head, body = header(run / name)
    key = next(k for k, v in head.items() if k != "__metadata__" and len(v["shape"]) == 2 and v["shape"][0] != v["shape"][1])
    a, b = head[key]["shape"]
    head[key]["shape"] = [b, a] if consistent else [a, b + 1]
    write_header(run / name, head, body)


def _json_edit(name: str, edit):
    def apply(run: Path, marker: Path) -> None:
        data = json.loads((run / name).read_text())
        edit(data)
        (run / name).write_text(json.dumps(data))
    return apply


def _write(name: str, content: bytes | str):
    def apply(run: Path, marker: Path) -> None:
        (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return apply


def _remove(name: str):
    return lambda run, marker: (run / name).unlink()


def _symlink_out(name: str):
    def apply(run: Path, marker: Path) -> None:
        outside = run.parent / f"outside-{name}"
        shutil.copy(run / name, outside)
        (run / name).unlink()
        (run / name).symlink_to(outside)
    return apply


def _huge_header(run: Path, marker: Path) -> None:
    raw = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + raw[8:])


def _set(key_path: str, value):
    *parents, last = key_path.split(".")

    def edit(data):
        for p in parents:
            data = data[p]
        data[last] = value
    return edit


HOSTILE_FOLDERS = {
    "pickle pytorch_model.bin with code": lambda run, marker: _pickle_weights(run, marker, zipped=True),
    "legacy pickle pytorch_model.bin": lambda run, marker: _pickle_weights(run, marker, zipped=False),
    "safetensors header length 2^40": _huge_header,
    "safetensors header not JSON": lambda run, marker: (run / "model.safetensors").write_bytes(
        (12).to_bytes(8, "little") + b"{not json!!}" + b"\0" * 64),
    "safetensors shape lies (consistent)": lambda run, marker: _lie_shape(run),
    "safetensors shape lies (inconsistent)": lambda run, marker: _lie_shape(run, consistent=False),
    "head safetensors shape lies": lambda run, marker: _lie_shape(run, "contrastive_head.safetensors"),
    "model.safetensors missing": _remove("model.safetensors"),
    "preprocessor_config.json missing": _remove("preprocessor_config.json"),
    "contrastive head weights missing": _remove("contrastive_head.safetensors"),
    "tokenizer.json garbage": _write("tokenizer.json", b"\x89PNG\r\n\x1a\n garbage"),
    "tokenizer.json wrong structure": _write("tokenizer.json", '{"model": {"type": "Nope"}}'),
    "tokenizer.json empty": _write("tokenizer.json", ""),
    "config.json garbage": _write("config.json", "{{{"),
    "config.json a list": _write("config.json", "[1, 2, 3]"),
    "config.json unknown model_type": _json_edit("config.json", _set("model_type", "no-such-model")),
    "config.json Latin-1": _write("config.json", '{"model_type": "caf\xe9"}'.encode("latin-1")),
    "config.json vocab of 10^9 (4 TB of weights asked)": _json_edit("config.json", _set("decoder.vocab_size", 10**9)),
    "config.json 10^9 layers": _json_edit("config.json", _set("decoder.n_layer", 10**9)),
    "config.json hidden size as text": _json_edit("config.json", _set("encoder.hidden_size", "large")),
    "capalign_model.json garbage": _write("capalign_model.json", "\0\0\0"),
    "capalign_model.json unknown arch": _json_edit("capalign_model.json", _set("arch", "quantum")),
    "capalign_model.json frozen not a mapping": _json_edit("capalign_model.json", _set("frozen", "all")),
    "head config asks for 4 TB": _write("contrastive_head.json", json.dumps(
        {"image_dim": 1 << 20, "text_dim": 1 << 20, "projection_dim": 1 << 20})),
    "head config within bounds but not its weights": _write("contrastive_head.json", json.dumps(
        {"image_dim": 60000, "text_dim": 60000, "projection_dim": 60000})),
    "head config wrong types": _write("contrastive_head.json", json.dumps(
        {"image_dim": "32", "text_dim": 32.5, "projection_dim": True})),
    "head config a list": _write("contrastive_head.json", "[]"),
    "symlink to a file outside": _symlink_out("tokenizer.json"),
    "symlink to /etc/passwd": lambda run, marker: ((run / "vocab.txt").symlink_to("/etc/passwd")),
    "symlinked folder outside": lambda run, marker: (run / "text").symlink_to(run.parent),
    "generation max_length 10^12": _json_edit("generation_config.json", _set("max_length", 10**12)),
    "generation max_new_tokens 10^9": _json_edit("generation_config.json", _set("max_new_tokens", 10**9)),
    "generation num_beams 10^9": _json_edit("generation_config.json", _set("num_beams", 10**9)),
    "generation num_beams as text": _json_edit("generation_config.json", _set("num_beams", "3")),
    "generation negative max_length": _json_edit("generation_config.json", _set("max_length", -5)),
    "generation temperature NaN": _write("generation_config.json", '{"temperature": NaN}'),
    "generation do_sample as text": _json_edit("generation_config.json", _set("do_sample", "yes")),
    "generation_config.json a list": _write("generation_config.json", "[]"),
    "capalign.yaml garbage": _write("capalign.yaml", "train: [unclosed\n\0"),
    "sharded index naming ../ files": _write("model.safetensors.index.json", json.dumps(
        {"metadata": {}, "weight_map": {"encoder.x": "../../../etc/passwd"}})),
    "tokenizer_config naming an absolute file": _json_edit("tokenizer_config.json", _set("vocab_file", "/etc/passwd")),
}


@pytest.mark.parametrize("case", list(HOSTILE_FOLDERS))
def test_hostile_run_folder_is_one_line(pretrained_run, tmp_path, image, capsys, yes_stdin, case):
    run = copy_run(pretrained_run, tmp_path / "run")
    marker = tmp_path / "marker"
    HOSTILE_FOLDERS[case](run, marker)
    code, _, err = _caption(run, image, capsys)
    one_line(code, err)
    assert not marker.exists()
    assert str(run) in err


def test_symlink_inside_the_folder_is_allowed(pretrained_run, tmp_path, image, capsys):
    run = copy_run(pretrained_run, tmp_path / "run")
    (run / "tokenizer.json").rename(run / "tokenizer.real.json")
    (run / "tokenizer.json").symlink_to("tokenizer.real.json")
    code, _, err = _caption(run, image, capsys)
    assert code == 0, err


def test_hostile_prefix_mapper_description_is_refused_before_allocating(tmp_path):
    from capalign.errors import InputError
    from capalign.models.io import read_description

    for mapper in ({"image_dim": 1 << 30, "text_dim": 8, "prefix_length": 2, "kind": "mlp", "layers": 1, "heads": 1},
                   {"image_dim": 8, "text_dim": 8, "prefix_length": 2, "kind": "mlp", "layers": 10**9, "heads": 1},
                   {"image_dim": 8, "text_dim": 8, "prefix_length": 2, "kind": "eval", "layers": 1, "heads": 1},
                   "mlp"):
        (tmp_path / "capalign_model.json").write_text(json.dumps({"arch": "prefix", "mapper": mapper}))
        with pytest.raises(InputError, match="capalign_model.json"):
            read_description(tmp_path)


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def interrupted_pretrain(workspace, tmp_path_factory) -> Path:
    """A pretrain run stopped at step 6 of 12 with checkpoints at steps 2, 4 and 6 (keeps only 6 here)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    config = build_config(None, workspace / "tiny.yaml", {"train": {"max_steps": 12, "checkpoint_every": 6,
                                                                     "eval_every": 100, "keep_checkpoints": 1}})
    original = Engine._train_batch

    def interrupt_at_six(self, batch, window):
        if self.state.step == 6:
            raise KeyboardInterrupt
        return original(self, batch, window)

    old = Path.cwd()
    os.chdir(workspace)
    Engine._train_batch = interrupt_at_six
    try:
        with pytest.raises(SystemExit):
            pretrain(config, out)
    finally:
        Engine._train_batch = original
        os.chdir(old)
    return out


def _reseal(step: Path) -> None:
    """Rewrite the manifest, as an attacker who edits a checkpoint would."""
    (step / checkpoints.MANIFEST).unlink()
    checkpoints.seal(step)


def _ckpt_pickle(name: str):
    def apply(step: Path, marker: Path) -> None:
        torch.save({"state": Exec(f"open({str(marker)!r}, 'w')")}, step / name)
    return apply


HOSTILE_CHECKPOINTS = {
    "pickled optimizer state with code": _ckpt_pickle("optimizer.bin"),
    "pickled scheduler state with code": _ckpt_pickle("scheduler.bin"),
    "RNG state with code": _ckpt_pickle("random_states_0.pkl"),
    "optimizer a plain pickle": lambda step, marker: (step / "optimizer.bin").write_bytes(
        pickle.dumps(Exec(f"open({str(marker)!r}, 'w')"))),
    "engine state garbage": lambda step, marker: (step / "engine_state.json").write_text("{{"),
    "engine state unknown keys": lambda step, marker: (step / "engine_state.json").write_text('{"step": 1, "evil": 2}'),
    "engine state wrong types": lambda step, marker: (step / "engine_state.json").write_text('{"step": [1]}'),
    "checkpoint weights shape lies": lambda step, marker: _lie_shape(step),
    "checkpoint weights header 2^40": lambda step, marker: _huge_header(step, marker),
    "optimizer state of another model": lambda step, marker: torch.save({"state": {}, "param_groups": []},
                                                                          step / "optimizer.bin"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoint_with_a_valid_manifest_is_one_line(interrupted_pretrain, in_workspace, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(interrupted_pretrain, run)
    [step] = checkpoints.checkpoints_newest_first(run / "checkpoints")
    marker = tmp_path / "marker"
    HOSTILE_CHECKPOINTS[case](step, marker)
    _reseal(step)
    code, _, err = run_cli(["pretrain", "--config", "tiny.yaml", "--max-steps", "12", "--out", str(run), "--resume"],
                           capsys)
    one_line(code, err)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- push, terminal


def test_push_refuses_symlinks_in_the_run(pretrained_run, tmp_path, capsys, monkeypatch):
    run = copy_run(pretrained_run, tmp_path / "run")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the hub")
    (run / "notes.txt").symlink_to(secret)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    code, _, err = run_cli(["push", str(run), "--repo-id", "someone/run"], capsys)
    one_line(code, err)
    assert "notes.txt" in err and "symlink" in err


def test_control_characters_from_a_vocabulary_are_escaped(pretrained_run, tmp_path, image, capsys):
    """Every word of the vocabulary carries terminal commands; EOS is suppressed so words are generated."""
    run = copy_run(pretrained_run, tmp_path / "run")
    tok = json.loads((run / "tokenizer.json").read_text())
    specials = {t["content"] for t in tok["added_tokens"]}
    tok["model"]["vocab"] = {(w if w in specials else f"{w}\x1b[2J\x1b]0;owned\x07\u202e"): i
                             for w, i in tok["model"]["vocab"].items()}
    (run / "tokenizer.json").write_text(json.dumps(tok))
    gen = json.loads((run / "generation_config.json").read_text())
    gen["suppress_tokens"] = [gen["eos_token_id"]]
    gen["max_new_tokens"] = 4
    (run / "generation_config.json").write_text(json.dumps(gen))
    code, out, err = _caption(run, image, capsys, "--scores")
    assert code == 0, err
    assert "\\x1b[2J" in out  # shown, escaped
    assert "\x1b" not in out + err and "\x07" not in out + err and "\u202e" not in out + err


def test_ui_printable_escapes_control_characters():
    from capalign.cli import ui

    assert ui.printable("a\x1b[2Jb\x07\r\x9b\u202ec\n\t") == "a\\x1b[2Jb\\x07\\x0d\\x9b\\u202ec\n\t"


def test_hugging_face_cache_snapshots_may_link_to_their_blobs(tmp_path):
    """A hub snapshot's files are symlinks into the model's blobs/: allowed; one out of the model's cache is not."""
    from capalign.errors import InputError
    from capalign.models import guard

    model = tmp_path / "models--org--name"
    (model / "blobs").mkdir(parents=True)
    (model / "blobs" / "abc").write_text('{"model_type": "gpt2"}')
    snapshot = model / "snapshots" / "0123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to("../../blobs/abc")
    guard.check_folder(snapshot)
    (tmp_path / "elsewhere.json").write_text("{}")
    (snapshot / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InputError, match="tokenizer.json is a symlink"):
        guard.check_folder(snapshot)


@pytest.fixture(scope="module")
def prefix_run(workspace, tmp_path_factory) -> Path:
    """A finished prefix (ClipCap) run: vision/, decoder/ and mapper.safetensors."""
    out = tmp_path_factory.mktemp("prefix") / "run"
    old = Path.cwd()
    os.chdir(workspace)
    try:
        config = build_config(None, workspace / "tiny.yaml", {"train": {"max_steps": 2}, "model": {"arch": "prefix"}})
        pretrain(config, out)
    finally:
        os.chdir(old)
    return out


def _prefix_auto_map(run: Path, marker: Path) -> None:
    payload(run / "decoder", marker)
    add_auto_map(run / "decoder" / "config.json", "AutoModelForCausalLM")


HOSTILE_PREFIX = {
    "decoder/config.json with auto_map": _prefix_auto_map,
    "vision/ a symlink out of the run": lambda run, marker: (shutil.move(run / "vision", run.parent / "v"),
                                                             (run / "vision").symlink_to(run.parent / "v")),
    "mapper.safetensors shape lies": lambda run, marker: _lie_shape(run, "mapper.safetensors"),
    "mapper.safetensors missing": _remove("mapper.safetensors"),
    "decoder weights missing": lambda run, marker: (run / "decoder" / "model.safetensors").unlink(),
    "decoder config asks for 4 TB": lambda run, marker: _json_edit("config.json", _set("vocab_size", 10**9))(
        run / "decoder", marker),
    "mapper of 10^9 layers": _json_edit("capalign_model.json", _set("mapper.layers", 10**9)),
    "vision/ pickle weights with code": lambda run, marker: _pickle_weights(run / "vision", marker, zipped=True),
}


@pytest.mark.parametrize("case", list(HOSTILE_PREFIX))
def test_hostile_prefix_run_is_one_line(prefix_run, tmp_path, image, capsys, yes_stdin, case):
    run = tmp_path / "run"
    shutil.copytree(prefix_run, run, ignore=shutil.ignore_patterns("best-*"))
    marker = tmp_path / "marker"
    HOSTILE_PREFIX[case](run, marker)
    one_line(*_caption(run, image, capsys)[::2])
    assert not marker.exists()


def test_intact_prefix_run_captions(prefix_run, image, capsys):
    code, _, err = _caption(prefix_run, image, capsys)
    assert code == 0, err
