"""Every promise of the README is checkable: the commands, options and extras it names exist, the test command
it shows is the one CI runs, and the docs' copy of its set-up section is the same text."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from fuse_export.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)


def code_texts(text: str) -> list[str]:
    """Every fenced block's lines and every inline code span (tables included), as separate strings."""
    blocks = [ln for m in FENCE.finditer(text) for ln in m.group(2).splitlines()]
    prose = FENCE.sub("", text)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The app's root options and each command's options, read from the Typer app itself."""
    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="fuse-export")

    def opts(cmd: click.Command) -> set[str]:
        return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")} | {"--help"}

    commands = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None and not cmd.hidden:
            commands[name] = opts(cmd)
    return opts(group), commands


def named_invocations(text: str, commands: set[str]) -> list[tuple[str | None, list[str], str]]:
    """(command or None for the bare program, its --options, the source text) for every `fuse-export ...` in code,
    and for every code span that starts with a command name (`predict --detect-faces`) or is an option alone."""
    found = []
    for code in code_texts(text):
        for m in re.finditer(r"fuse-export(?!\[)((?:\s+[^\s|;&#`]+)*)", code):
            words = m.group(1).split()
            command = words[0] if words and not words[0].startswith("-") else None
            found.append((command, [w.split("=")[0] for w in words if w.startswith("--")], code))
        first = code.split()[0] if code.split() else ""
        if "fuse-export" not in code and (first in commands or first.startswith("--")):
            command = first if first in commands else ""
            found.append((command, [w.split("=")[0] for w in code.split() if w.startswith("--")], code))
    return found


def test_every_command_and_option_the_readme_names_exists() -> None:
    root, commands = cli_options()
    invocations = named_invocations(README, set(commands))
    assert len([c for c, _, _ in invocations if c]) >= 10, "the README's command table was not found"
    everywhere = set().union(*commands.values())
    for command, options, source in invocations:
        if command is None:  # `fuse-export --version`
            assert set(options) <= root, f"README: `{source}` names {options}, the app has {sorted(root)}"
            continue
        if command == "":  # an option on its own: some command must have it
            assert set(options) <= everywhere, f"README: `{source}`: no command has {set(options) - everywhere}"
            continue
        assert command in commands, f"README: `{source}` names the command {command!r}; the app has {sorted(commands)}"
        missing = set(options) - commands[command]
        assert not missing, f"README: `{source}`: `fuse-export {command}` has no {sorted(missing)}"


def test_named_invocations_catch_a_wrong_command_or_option() -> None:
    _, commands = cli_options()
    found = named_invocations("Run `fuse-export serve DIR --no-such-flag` or `predict --detect-faces`.\n\n"
                              "```bash\nfuse-export qickstart --out x\n```\n", set(commands))
    assert ("serve", ["--no-such-flag"], "fuse-export serve DIR --no-such-flag") in found
    assert ("qickstart", ["--out"], "fuse-export qickstart --out x") in found
    assert ("predict", ["--detect-faces"], "predict --detect-faces") in found
    assert "--no-such-flag" not in commands["serve"] and "qickstart" not in commands


def readme_extras(text: str) -> set[str]:
    """`fuse-export[x]`, `".[x,y]"` and the backticked names of the 'Extras:' sentence."""
    names = set()
    for group in re.findall(r"(?:fuse-export|\.)\[([a-z0-9_,\s-]+)\]", text):
        names |= {g.strip() for g in group.split(",") if g.strip()}
    extras = re.search(r"Extras:(.*?)(?:\n\n|$)", text, re.S)
    assert extras, "README: no 'Extras:' list"
    names |= set(re.findall(r"(?:^|[:,]\s*)`([a-z0-9-]+)`", extras.group(1)))
    return names


def test_every_extra_the_readme_names_exists() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
                   ["optional-dependencies"])
    named = readme_extras(README)
    assert {"train", "test", "serve", "openvino"} <= named, named
    assert named <= declared, f"README names extras that pyproject.toml does not declare: {named - declared}"


def readme_test_command(text: str) -> str:
    m = re.search(r"^<!-- ci:test-command -->\n+(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", text, re.S | re.M)
    assert m, "README: no fenced block after <!-- ci:test-command -->"
    lines = [ln.strip() for ln in m.group(2).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_runs_the_readme_test_command() -> None:
    command = readme_test_command(README)
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-test-command"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    parts = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert parts["readme"] == command
    # CI runs the same line in its own fresh venv: only the venv's folder differs.
    assert f"{parts['setup']} && {parts['test']}" == command.replace(".venv-test", ".ci-venv")
    assert parts["test"].startswith("python -m pytest") and "-c constraints/test.txt" in parts["setup"]
    # and .ci/run executes those two parts (not a command of its own).
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'eval "$SETUP"' in ci and 'eval "$TEST"' in ci
    assert not re.search(r"^\s*python -m pytest -q\s*$", ci, re.M), ".ci/run runs a test command of its own"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_refuses_a_readme_without_its_test_command(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(README.replace("<!-- ci:test-command -->", ""), encoding="utf-8")
    proc = subprocess.run(["bash", str(tmp_path / ".ci" / "run"), "--print-test-command"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "ci:test-command" in proc.stderr


def test_the_commands_use_their_own_venvs_and_upgrade_pip() -> None:
    blocks = [m.group(2) for m in FENCE.finditer(README.split("## Two commands", 1)[1].split("\n## ", 1)[0])]
    quick = next(ln for b in blocks for ln in b.splitlines() if "fuse-export quickstart" in ln)
    test = readme_test_command(README)
    for line, venv in ((quick, ".venv"), (test, ".venv-test")):
        steps = line.split(" && ")
        assert steps[:3] == [f"python3 -m venv {venv}", f". {venv}/bin/activate",
                             "python -m pip install --upgrade pip"], line
    assert '-m "not slow"' in README, "README: no quick subset of the tests"


def test_cpu_only_torch_line_matches_the_constraints() -> None:
    m = re.search(r"pip install torch==(\S+) torchvision==(\S+) --index-url https://download\.pytorch\.org/whl/cpu",
                  README)
    assert m, "README: no CPU-only torch install line"
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints" / "test.txt").read_text(), re.M))
    assert (m.group(1), m.group(2)) == (pins["torch"], pins["torchvision"]), \
        "README's CPU-only torch line and constraints/test.txt pin different versions"


def test_docs_home_page_has_the_readme_set_up_section() -> None:
    def section(text: str) -> str:
        return text.split("## Two commands", 1)[1].split("\n## ", 1)[0]

    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert section(index) == section(README), "docs/index.md's 'Two commands' differs from the README's"


def slim_serve_claims(text: str) -> list[str]:
    """Sentences that put `serve` in the slim install (`pip install -e .`) without naming the `serve` extra."""
    bad = []
    for sentence in re.split(r"(?<=[.:;])\s+(?=[A-Z`])|\n\s*\n|\n(?=[^\n]*#)", text):
        slim = "slim" in sentence or re.search(r"pip install -e \.(?:\s|`|$)", sentence)
        if slim and re.search(r"\bserve\b", sentence) and not re.search(r"\[serve\]|`serve` extra", sentence):
            bad.append(" ".join(sentence.split()))
    return bad


def test_slim_install_is_not_said_to_serve() -> None:
    assert slim_serve_claims("`pip install -e .` alone is the slim runtime: enough to `predict` and `serve` models.")
    assert slim_serve_claims("pip install -e .    # slim: predict, load(), serve on ONNX Runtime")
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        claims = slim_serve_claims(page.read_text(encoding="utf-8"))
        assert not claims, f"{page.relative_to(ROOT)}: `serve` needs the serve extra, not the slim install: {claims}"
