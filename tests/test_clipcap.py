"""ClipCap checkpoints (`capalign fetch --model FILE.pt --out DIR`): a state dict in the key layout of
ClipCap's train.py is converted, and capalign's greedy captions equal a greedy decode of the same
weights done here, outside capalign, from ClipCap's published math (CLIP's projected image embedding
→ its mapper → GPT-2 fed `inputs_embeds`, argmax until "." or the length limit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, GPT2LMHeadModel

from test_cli import run_cli as _run_cli
from tiny_backbones import build_tiny_backbones

PREFIX, CLIP_TOKENS, LAYERS, HEADS = 4, 3, 2, 8
MAX_TOKENS = min(67, 64 - PREFIX)  # ClipCap's 67-token limit, within the tiny GPT-2's 64 positions


def run_cli(args, capsys):
    """test_cli.run_cli, with what the test itself printed before (loading bars) set aside."""
    capsys.readouterr()
    return _run_cli(args, capsys)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """The tiny backbones, and `tuned`: the tiny GPT-2 with weights far enough from its near-uniform
    initialisation that greedy captions vary with the image and stop at "." at varied lengths."""
    found = build_tiny_backbones(tmp_path_factory.mktemp("clipcap-backbones"))
    gpt = GPT2LMHeadModel.from_pretrained(found["gpt2"])
    tokenizer = AutoTokenizer.from_pretrained(found["gpt2"])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.4)
        gpt.transformer.wte.weight[tokenizer.encode(".")[0]] *= 3
    found["tuned"] = found["gpt2"].parent / "tuned"
    gpt.save_pretrained(found["tuned"])
    tokenizer.save_pretrained(found["tuned"])
    return found


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clipcap-images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return sorted(folder.glob("*.png"))


def _clipcap_state(kind: str, backbones, with_gpt: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random weights under ClipCap's names: `clip_project.*` (its MLP or TransformerMapper) and,
    `with_gpt`, `gpt.*`."""
    g = torch.Generator().manual_seed(seed)
    image_dim, width = 16, 32  # the tiny CLIP's projection_dim, the tiny GPT-2's n_embd

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {}
    if kind == "mlp":
        hidden = width * PREFIX // 2
        state.update({"clip_project.model.0.weight": rand(hidden, image_dim), "clip_project.model.0.bias": rand(hidden),
                      "clip_project.model.2.weight": rand(width * PREFIX, hidden), "clip_project.model.2.bias": rand(width * PREFIX)})
    else:
        state.update({"clip_project.linear.weight": rand(CLIP_TOKENS * width, image_dim),
                      "clip_project.linear.bias": rand(CLIP_TOKENS * width), "clip_project.prefix_const": rand(PREFIX, width, scale=1.0)})
        for i in range(LAYERS):
            base = f"clip_project.transformer.layers.{i}."
            state.update({base + "norm1.weight": 1 + rand(width), base + "norm1.bias": rand(width),
                          base + "attn.to_queries.weight": rand(width, width), base + "attn.to_keys_values.weight": rand(2 * width, width),
                          base + "attn.project.weight": rand(width, width), base + "attn.project.bias": rand(width),
                          base + "norm2.weight": 1 + rand(width), base + "norm2.bias": rand(width),
                          base + "mlp.fc1.weight": rand(2 * width, width), base + "mlp.fc1.bias": rand(2 * width),
                          base + "mlp.fc2.weight": rand(width, 2 * width), base + "mlp.fc2.bias": rand(width)})
    if with_gpt:  # the tuned GPT-2, while --decoder stays the untuned one: the checkpoint's own must be used
        gpt = GPT2LMHeadModel.from_pretrained(backbones["tuned"])
        state.update({"gpt." + k: v.clone() for k, v in gpt.state_dict().items()})
    return state


def _layer_norm(x, state, name):
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"])


def _clipcap_prefix(state, kind: str, embedding: torch.Tensor) -> torch.Tensor:
    """ClipCap's mapper, written from its published description (not through capalign)."""
    n, width = embedding.shape[0], 32
    if kind == "mlp":
        hidden = torch.tanh(embedding @ state["clip_project.model.0.weight"].T + state["clip_project.model.0.bias"])
        return (hidden @ state["clip_project.model.2.weight"].T + state["clip_project.model.2.bias"]).view(n, PREFIX, width)
    x = (embedding @ state["clip_project.linear.weight"].T + state["clip_project.linear.bias"]).view(n, CLIP_TOKENS, width)
    x = torch.cat([x, state["clip_project.prefix_const"].expand(n, -1, -1)], dim=1)
    length, head = x.shape[1], width // HEADS
    for i in range(LAYERS):
        base = f"clip_project.transformer.layers.{i}."
        h = _layer_norm(x, state, base + "norm1")
        q = (h @ state[base + "attn.to_queries.weight"].T).view(n, length, HEADS, head)
        kv = (h @ state[base + "attn.to_keys_values.weight"].T).view(n, length, 2, HEADS, head)
        att = torch.einsum("bnhd,bmhd->bnmh", q, kv[:, :, 0]) * head ** -0.5
        mixed = torch.einsum("bnmh,bmhd->bnhd", att.softmax(dim=2), kv[:, :, 1]).reshape(n, length, width)
        x = x + mixed @ state[base + "attn.project.weight"].T + state[base + "attn.project.bias"]
        h = _layer_norm(x, state, base + "norm2")
        h = torch.relu(h @ state[base + "mlp.fc1.weight"].T + state[base + "mlp.fc1.bias"])
        x = x + h @ state[base + "mlp.fc2.weight"].T + state[base + "mlp.fc2.bias"]
    return x[:, CLIP_TOKENS:]


@torch.no_grad()
def _reference_greedy(state, kind: str, backbones, paths, normalize: bool, decoder: str) -> list[list[int]]:
    """Greedy decode as ClipCap's generate2 does (its top-p filter never removes the argmax), with
    the checkpoint's GPT-2, or `decoder`'s when it has none."""
    clip = CLIPModel.from_pretrained(backbones["clip"]).eval()
    processor = CLIPImageProcessor.from_pretrained(backbones["clip"])
    gpt = GPT2LMHeadModel.from_pretrained(backbones[decoder]).eval()
    if any(k.startswith("gpt.") for k in state):
        gpt.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("gpt.")})
    tokenizer = AutoTokenizer.from_pretrained(backbones["gpt2"])
    stops = {tokenizer.encode(".")[0], tokenizer.eos_token_id}
    out = []
    for path in paths:
        pixels = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
        features = clip.get_image_features(pixel_values=pixels)
        embedding = features if isinstance(features, torch.Tensor) else features.pooler_output
        if normalize:
            embedding = embedding / embedding.norm(2, -1, keepdim=True)
        generated, tokens = _clipcap_prefix(state, kind, embedding), []
        for _ in range(MAX_TOKENS):
            token = int(gpt(inputs_embeds=generated).logits[0, -1].argmax())
            tokens.append(token)
            generated = torch.cat([generated, gpt.transformer.wte(torch.tensor([[token]]))], dim=1)
            if token in stops:
                break
        out.append(tokens)
    return out


def _capalign_greedy(run, paths) -> list[list[int]]:
    from capalign.data.collate import pixel_values
    from capalign.models.io import load_captioner

    captioner, tokenizer, processor = load_captioner(run)
    ids = captioner.eval().generate(pixel_values(processor, [Image.open(p).convert("RGB") for p in paths]),
                                    do_sample=False, num_beams=1)
    stops = {tokenizer.encode(".")[0], tokenizer.eos_token_id}
    trimmed = []
    for row in ids.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        trimmed.append(row[:end])
    return trimmed


def _convert(tmp_path, backbones, state, capsys, *extra, name="clipcap.pt", decoder="gpt2"):
    checkpoint = tmp_path / name
    torch.save(state, checkpoint)
    out = tmp_path / "converted"
    code, stdout, err = run_cli(["fetch", "--model", str(checkpoint), "--out", str(out), "--vision", str(backbones["clip"]),
                                 "--decoder", str(backbones[decoder]), *extra], capsys)
    return code, out, " ".join(stdout.split()), err  # rich wraps long lines


@pytest.mark.parametrize("kind,with_gpt", [("mlp", True), ("transformer", True), ("transformer", False)],
                         ids=["mlp-gpt2-tuned", "transformer-gpt2-saved", "transformer-mapper-only"])
def test_converted_checkpoint_captions_as_clipcap_does(kind, with_gpt, backbones, images, tmp_path, capsys):
    state = _clipcap_state(kind, backbones, with_gpt)
    decoder = "gpt2" if with_gpt else "tuned"
    code, run, stdout, err = _convert(tmp_path, backbones, state, capsys, decoder=decoder)
    assert code == 0, err
    assert f"{kind} mapper" in stdout and ("not normalised" in stdout) == (kind == "mlp")
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "pretrain" and info["converted_from"].endswith("clipcap.pt")
    description = json.loads((run / "capalign_model.json").read_text())
    assert description["mapper"]["kind"] == kind and description["mapper"]["prefix_length"] == PREFIX
    assert description["frozen"] == {"vision": True, "decoder": kind == "transformer", "text": False}
    if kind == "transformer":
        assert description["mapper"]["clip_length"] == CLIP_TOKENS and description["mapper"]["layers"] == LAYERS

    expected = _reference_greedy(state, kind, backbones, images, kind == "transformer", decoder)
    assert _capalign_greedy(run, images) == expected
    assert len({tuple(t) for t in expected}) > 1  # the captions depend on the image
    if with_gpt:  # and on the checkpoint's GPT-2, not --decoder's
        assert expected != _reference_greedy({k: v for k, v in state.items() if k.startswith("clip_project.")}, kind,
                                             backbones, images, kind == "transformer", "gpt2")

    # the same captions through `capalign caption`
    tokenizer = AutoTokenizer.from_pretrained(backbones["gpt2"])
    code, _, err = run_cli(["caption", *map(str, images), "--model", str(run), "--output", str(tmp_path / "caps.jsonl")], capsys)
    assert code == 0, err
    captions = [json.loads(line)["caption"] for line in (tmp_path / "caps.jsonl").read_text().splitlines()]
    assert captions == [tokenizer.decode(t, skip_special_tokens=True).strip() for t in expected]


def test_captions_stop_at_the_first_full_stop_and_normalisation_can_be_overridden(backbones, images, tmp_path, capsys):
    state = _clipcap_state("mlp", backbones, with_gpt=True, seed=3)
    code, run, stdout, err = _convert(tmp_path, backbones, state, capsys, "--normalize-prefix")
    assert code == 0, err
    assert "prefix normalised" in stdout
    expected = _reference_greedy(state, "mlp", backbones, images, True, "gpt2")
    assert _capalign_greedy(run, images) == expected
    dot = AutoTokenizer.from_pretrained(backbones["gpt2"]).encode(".")[0]
    assert any(len(t) < MAX_TOKENS and t[-1] == dot for t in expected)  # ClipCap's stop token ends some captions


def test_converted_run_evaluates(backbones, in_workspace, tmp_path, capsys):
    state = _clipcap_state("transformer", backbones, with_gpt=False)
    code, run, _, err = _convert(tmp_path, backbones, state, capsys)
    assert code == 0, err
    code, _, err = run_cli(["evaluate", "--model", str(run), "--data", "data/shapes", "--split", "test",
                            "--metrics", "bleu,cider", "--limit", "4"], capsys)
    assert code == 0, err
    assert "Traceback" not in err


def _one_line_error(code, err, *words):
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("capalign: error:"), err
    for word in words:
        assert word in lines[0], lines[0]


def test_sizes_that_do_not_match_the_decoder_or_vision_are_refused(backbones, tmp_path, capsys):
    state = _clipcap_state("mlp", backbones, with_gpt=True)
    checkpoint = tmp_path / "clipcap.pt"
    torch.save(state, checkpoint)
    code, _, err = run_cli(["fetch", "--model", str(checkpoint), "--out", str(tmp_path / "a"), "--vision",
                            str(backbones["clip"]), "--decoder", str(backbones["distilgpt2"])], capsys)
    _one_line_error(code, err, "n_layer=2", "n_layer=1")
    assert not (tmp_path / "a").exists()

    wide = dict(state, **{"clip_project.model.0.weight": torch.zeros(64, 24)})  # a 24-wide image embedding
    torch.save(wide, checkpoint)
    code, _, err = run_cli(["fetch", "--model", str(checkpoint), "--out", str(tmp_path / "b"), "--vision",
                            str(backbones["clip"]), "--decoder", str(backbones["gpt2"])], capsys)
    _one_line_error(code, err, "24-wide", "projects to 16")

    code, _, err = run_cli(["fetch", "--model", str(checkpoint), "--out", str(tmp_path / "c"), "--vision",
                            str(backbones["mobilenet"]), "--decoder", str(backbones["gpt2"])], capsys)
    _one_line_error(code, err, "mobilenet_v2", "CLIP")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling it would create the marker file


def test_hostile_broken_and_foreign_files_are_refused(backbones, tmp_path, capsys):
    marker = tmp_path / "pwned"
    good = _clipcap_state("transformer", backbones, with_gpt=False)
    cases = {
        "payload.pt": ({"clip_project.prefix_const": torch.zeros(2, 32), "x": _Payload(marker)}, "weights_only"),
        "unknown.pt": ({"encoder.weight": torch.zeros(2, 2)}, "no clip_project"),
        "tensor.pt": (torch.zeros(3), "not a state dict"),
    }
    for name, (payload, word) in cases.items():
        code, out, _, err = _convert(tmp_path, backbones, payload, capsys, name=name)
        _one_line_error(code, err, name, word)
        assert not out.exists()
    assert not marker.exists()

    torch.save(good, tmp_path / "good.pt")
    raw = (tmp_path / "good.pt").read_bytes()
    for name, content in (("garbage.pt", b"not a checkpoint at all\x00\x01" * 50), ("truncated.pt", raw[: len(raw) // 2]),
                          ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli(["fetch", "--model", str(tmp_path / name), "--out", str(tmp_path / "x"), "--vision",
                                str(backbones["clip"]), "--decoder", str(backbones["gpt2"])], capsys)
        _one_line_error(code, err, name, "not a readable PyTorch checkpoint")
    assert not (tmp_path / "x").exists()


def test_existing_folder_and_missing_out_are_refused(backbones, tmp_path, capsys):
    torch.save(_clipcap_state("mlp", backbones, with_gpt=True), tmp_path / "clipcap.pt")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_bytes(b"mine")
    args = ["fetch", "--model", str(tmp_path / "clipcap.pt"), "--vision", str(backbones["clip"]), "--decoder", str(backbones["gpt2"])]
    code, _, err = run_cli([*args, "--out", str(used)], capsys)
    _one_line_error(code, err, "capalign did not write")
    assert [p.name for p in used.iterdir()] == ["notes.txt"] and (used / "notes.txt").read_bytes() == b"mine"
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err, "needs --out")


def test_interrupted_conversion_leaves_nothing(backbones, tmp_path, monkeypatch):
    import capalign.models.clipcap_run as clipcap_run

    def interrupt(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(clipcap_run, "save_config", interrupt)  # after the model files are written
    torch.save(_clipcap_state("mlp", backbones, with_gpt=True), tmp_path / "clipcap.pt")
    with pytest.raises(KeyboardInterrupt):
        clipcap_run.convert_clipcap(tmp_path / "clipcap.pt", tmp_path / "out", str(backbones["clip"]), str(backbones["gpt2"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clipcap.pt"]  # no run folder, no staging folder
