"""The README and docs/ cannot rot: every command they show parses with its script's own arguments, every
command that can run offline runs as shown in a sandbox of smoke-sized files (a tiny checkpoint for each name the
docs use, a generated CIFAR-10 folder as ``data/cifar10``), every Python block runs, and every generated table
equals what ``measured/`` gives."""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch

import models
from ifm import channel_groups
from ifm.experiments.planted import copy_channel
from ifm.experiments.tables import documents, refresh

ROOT = Path(__file__).resolve().parents[1]
DOCS = documents(ROOT)

#: why a shown command is only parsed, not run here (first matching pattern)
NOT_RUN = [
    (r"--weights |/data/imagenet|imagenet\.jsonl", "needs ImageNet or downloads weights"),
    (r"^torchrun", "several processes"),
    (r"train_model\.py(?!.*train\.epochs=1\b)", "trains for many epochs"),
    (r"reproduce_cifar10\.py(?!.*--profile smoke)", "trains at full or reduced scale"),
    (r"paper_evidence\.py(?!.*--profile smoke)", "trains at the paper's scale (a GPU command)"),
    (r"reproduce\.py epochs", "reads a long training's run folder (run in test_diagnose)"),
    (r"compare_methods\.py|bench_|table2", "benchmarks and frontiers take minutes"),
    (r"mypackage|densenet|--resume", "names a user's own files or run"),
    (r"reproduce\.py controls", "reads the reproduction folders of the runs before it"),
    (r"bn-mismatch .*merged\.pt", "reads the merged checkpoint the command before it writes (run in test_diagnose)"),
]
#: sample counts shrunk to the sandbox's data (smoke-sized), everything else as shown
SMOKE = [(r"(--eval_samples|--train_samples|--recalibrate_bn|--synthetic_bn|--distill_images) \d+", r"\1 16"),
         (r"--distill \d+", "--distill 4"),
         (r"data\.subset=\d+", "data.subset=40")]
ALIASES = {"ifm": "scripts/self_merge.py", "scripts/demo.sh": "scripts/demo.py"}


def _commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every command of a bash block and every inline ``python ...`` command."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split("  #")[0].strip()
                if line and not line.startswith(("#", "python3 -m venv", "bash scripts/test.sh", "bash scripts/setup")):
                    found.append((path.name, line))
        found += [(path.name, c) for c in re.findall(r"`(python [^`\n]*\.py[^`\n]*)`", text)
                  if not re.search(r"\.\.\.|\$|CKPT|<", c)]  # (placeholders: the text around them explains)
    return found


def _argv(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    if words[0] in ("python", "bash"):
        words = words[1:]
    elif words[0] == "torchrun":
        words = words[next(k for k, w in enumerate(words) if w.endswith(".py")):]
    return ALIASES.get(words[0], words[0]), words[1:]


COMMANDS = _commands()


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}: {c[:70]}" for d, c in COMMANDS])
def test_every_documented_command_parses(doc, command, monkeypatch):
    script, args = _argv(command)
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    with pytest.raises(_Parsed):
        runpy.run_path(str(ROOT / script), run_name="__main__")


def _vgg_with_duplicates(name: str) -> dict:
    sd = models.create_model(name, width=0.125).state_dict()
    gen = torch.Generator().manual_seed(0)
    for group in channel_groups(name, sd):
        for k in range(group.width // 3):
            copy_channel(sd, group, k, group.width - 1 - k, noise=0.01, generator=gen)
    return sd


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder holding every file the docs name, at smoke size."""
    import torchvision
    from tests.conftest import make_image_folder
    box = tmp_path_factory.mktemp("docs")
    make_image_folder(box / "data" / "cifar10", {"train": 8, "test": 4})
    (box / "cfg").symlink_to(ROOT / "cfg")  # (commands are shown run from the repository's root)
    torch.save(_vgg_with_duplicates("VGG16"), box / "ckpt.pt")
    torch.save(_vgg_with_duplicates("VGG11"), box / "vgg11.pt")
    torch.save(models.create_model("ResNet18", width=0.125).state_dict(), box / "resnet18.pt")
    torch.save(torchvision.models.resnet18().state_dict(), box / "r18.pth")
    torch.save(torchvision.models.resnet50().state_dict(), box / "resnet50.pth")
    return box


def _why_not_run(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)


RUNNABLE = [(d, c) for d, c in COMMANDS if _why_not_run(c) is None]


@pytest.mark.slow
@pytest.mark.parametrize("doc,command", RUNNABLE, ids=[f"{d}: {c[:70]}" for d, c in RUNNABLE])
def test_every_offline_command_runs_on_smoke_data(doc, command, sandbox, monkeypatch):
    for pattern, replacement in SMOKE:
        command = re.sub(pattern, replacement, command)
    script, args = _argv(command)
    monkeypatch.chdir(sandbox)
    monkeypatch.setattr("ifm.synthesis.ITERATIONS", 20)  # synthetic images smoke-sized too
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args, *(["--no_progress"] if "self_merge" in script
                                                                     else [])])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert exit_info.value.code in (0, None), command


@pytest.mark.slow
def test_every_python_block_runs(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.setattr("ifm.synthesis.ITERATIONS", 20)  # synthetic images smoke-sized, and the CIFAR VGG narrow:
    blocks = [(path.name, code) for path in DOCS for code in re.findall(r"```python\n(.*?)```", path.read_text(), re.S)]
    assert len(blocks) >= 3
    for name, code in blocks:
        code = re.sub(r"eval_samples=\d+", "eval_samples=16", code)
        code = code.replace('models.create_model("VGG11")', 'models.create_model("VGG11", width=0.25)')
        exec(compile(code, name, "exec"), {})


def test_the_generated_tables_agree_with_measured():
    for path in DOCS:
        text = path.read_text()
        assert refresh(text, ROOT / "measured") == text, f"{path.name}: run python scripts/results_tables.py --write"
    assert sum("<!-- table:" in path.read_text() for path in DOCS) >= 3


def test_the_readme_is_read_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    for page in re.findall(r"\]\((docs/[\w.]+\.md)", "\n".join(lines)):
        assert (ROOT / page).is_file(), page


def test_the_architecture_page_names_every_module_and_the_method_does_not_import_the_harness():
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| layer | modules |"):text.index("## Where to add")]
    named = {name for row in table.splitlines()[2:] if row.startswith("|") for name in re.findall(r"`(?:experiments/)?(\w+)`",
                                                                            row.split("|")[2])}
    method = {p.stem for p in (ROOT / "ifm").glob("*.py")} - {"__init__"}
    harness = {p.stem for p in (ROOT / "ifm" / "experiments").glob("*.py")} - {"__init__"}
    assert method | harness == named
    for path in (ROOT / "ifm").glob("*.py"):
        assert not re.search(r"from \.experiments|import ifm\.experiments|from ifm\.experiments",
                             path.read_text()), path.name
