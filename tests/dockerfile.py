"""A small Dockerfile parser for the tests: stages, instructions, ENV, RUN commands.

No Docker here: ``tests/unit/test_dockerfiles.py`` checks the images' Dockerfiles
with it, and ``tests/integration/test_image_builds.py`` replays their build stages.
Heredocs are not supported.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case), its arguments, its first line."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A build stage: ``FROM <base> [AS <name>]`` and the instructions after it."""

    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        """The stage's instructions with ``keyword``."""
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Variables the stage's ENV instructions set (later ones win)."""
        out: dict[str, str] = {}
        for instruction in self.of("ENV"):
            out.update(parse_env(instruction.args))
        return out


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARG defaults and the stages in order."""

    path: Path
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The stage the image is made of: the last one."""
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        """The stage named ``name`` (``FROM ... AS name``)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path}: no stage named {name!r}")

    def lineage(self, stage: Stage) -> list[Stage]:
        """``stage`` and the earlier stages it is built FROM, nearest first."""
        chain = [stage]
        names = {s.name for s in self.stages if s.name}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def base_image(self, stage: Stage) -> str:
        """The external image ``stage`` starts from, through stage aliases."""
        return self.lineage(stage)[-1].base


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(first line number, line)``: continuations joined, comments and blanks dropped."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):  # Docker drops comments inside continuations
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        yield start, " ".join(part for part in buffer if part)
        buffer = []
    if buffer:
        yield start, " ".join(buffer)


def _substitute(value: str, variables: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def parse(path: Path) -> Dockerfile:
    """Parse ``path`` into global ARG defaults and stages (heredocs are not supported)."""
    text = path.read_text()
    if re.search(r"^\s*(RUN|COPY)\s+.*<<", text, re.M):
        raise ValueError(f"{path}: heredocs are not supported by this parser")
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(text):
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            tokens = [t for t in args.split() if not t.startswith("--platform=")]
            base = _substitute(tokens[0], global_args)
            name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else None
            if len(tokens) not in (1, 3) or (len(tokens) == 3 and name is None):
                raise ValueError(f"{path}:{line}: cannot parse FROM {args}")
            stages.append(Stage(base=base, name=name, line=line))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}:{line}: {keyword} before the first FROM")
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, line))
    if not stages:
        raise ValueError(f"{path}: no FROM")
    return Dockerfile(path=path, args=global_args, stages=stages)


def parse_env(args: str) -> dict[str, str]:
    """``ENV a=1 b="x y"`` (or the legacy ``ENV a 1``) as a dict."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an ENTRYPOINT or CMD in exec form; a shell form fails."""
    try:
        value = json.loads(instruction.args)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise AssertionError(
            f"line {instruction.line}: {instruction.keyword} {instruction.args} is not in exec "
            "form (a JSON array): a shell form runs through /bin/sh, which then gets the signals"
        )
    return value


def shell_commands(instruction: Instruction) -> list[list[str]]:
    """A RUN's commands, split at ``&&``, ``||``, ``;`` and ``|``, each as tokens."""
    commands: list[list[str]] = []
    current: list[str] = []
    lexer = shlex.shlex(instruction.args, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def pip_installs(stage: Stage) -> list[tuple[int, list[str]]]:
    """``(line, requirements)`` of every ``pip install`` in the stage (flags left out)."""
    found = []
    for instruction in stage.of("RUN"):
        for command in shell_commands(instruction):
            names = [Path(t).name for t in command]
            for i, name in enumerate(names[:-1]):
                if re.fullmatch(r"pip3?(\.\d+)?", name) and names[i + 1] == "install":
                    found.append((instruction.line, [t for t in command[i + 2 :] if t[:1] != "-"]))
                elif name.startswith("python") and command[i + 1 : i + 4] == [
                    "-m",
                    "pip",
                    "install",
                ]:
                    found.append((instruction.line, [t for t in command[i + 4 :] if t[:1] != "-"]))
    return found


def uv_syncs(stage: Stage) -> list[tuple[int, list[str]]]:
    """``(line, tokens)`` of every ``uv sync`` in the stage."""
    return [
        (instruction.line, command)
        for instruction in stage.of("RUN")
        for command in shell_commands(instruction)
        if command[:2] == ["uv", "sync"]
    ]


def no_install_packages(command: list[str]) -> frozenset[str]:
    """The packages a ``uv sync`` command leaves out (``--no-install-package <name>``)."""
    return frozenset(
        command[i + 1] for i, token in enumerate(command[:-1]) if token == "--no-install-package"
    )


def venv_of(image: Dockerfile) -> str:
    """Where the build stage's ``uv sync`` puts the venv (``UV_PROJECT_ENVIRONMENT``)."""
    venvs = {
        stage.env()["UV_PROJECT_ENVIRONMENT"]
        for stage in build_stages(image)
        if "UV_PROJECT_ENVIRONMENT" in stage.env()
    }
    assert len(venvs) == 1, (
        f"{image.path}: the build stages set UV_PROJECT_ENVIRONMENT (where uv sync installs) "
        f"to {sorted(venvs) or 'nothing'}; want one venv"
    )
    return venvs.pop()


def build_stages(image: Dockerfile) -> list[Stage]:
    """Stages other than the final one and those it is built FROM."""
    runtime = {id(s) for s in image.lineage(image.final)}
    return [s for s in image.stages if id(s) not in runtime]
