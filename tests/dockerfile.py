"""A small Dockerfile parser for the tests: stages, instructions, ENV, RUN commands.

``tests/unit/test_dockerfiles.py`` checks the images' Dockerfiles with it, and
``tests/node/test_node_images.py`` reads what the images must then be (ENTRYPOINT, the venv,
what its ``uv sync`` installs) to check the built images against it. Heredocs are not
supported.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hftpipe_devstack import images

BASE_IMAGE = re.compile(
    r"^python:(?P<python>3\.\d+)(?:\.\d+)?-slim(?:-[a-z]+)?(?P<digest>@sha256:[0-9a-f]{64})?$"
)
"""A slim official Python image, pinned by tag (and optionally by digest)."""


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


VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
"""``${NAME}`` or ``$NAME`` as Docker substitutes it (the name is group 1 or 2)."""


def substitute(value: str, variables: dict[str, str]) -> str:
    """``value`` with the ``variables`` it names substituted; unknown ones are left as they are."""

    def repl(match: re.Match[str]) -> str:
        return variables.get(match[1] or match[2], match[0])

    return VARIABLE.sub(repl, value)


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
            base = substitute(tokens[0], global_args)
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


def pip_install_requirements(command: list[str]) -> list[str] | None:
    """The requirements (flags left out) of a ``pip install`` or ``python -m pip install``
    command, or None if ``command`` is neither."""
    names = [Path(t).name for t in command]
    for i, name in enumerate(names[:-1]):
        if re.fullmatch(r"pip3?(\.\d+)?", name) and names[i + 1] == "install":
            return [t for t in command[i + 2 :] if t[:1] != "-"]
        if name.startswith("python") and command[i + 1 : i + 4] == ["-m", "pip", "install"]:
            return [t for t in command[i + 4 :] if t[:1] != "-"]
    return None


def pip_installs(stage: Stage) -> list[tuple[int, list[str]]]:
    """``(line, requirements)`` of every ``pip install`` in the stage (flags left out)."""
    return [
        (instruction.line, requirements)
        for instruction in stage.of("RUN")
        for command in shell_commands(instruction)
        if (requirements := pip_install_requirements(command)) is not None
    ]


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


def venv_source_stage(image: Dockerfile, venv: str) -> Stage:
    """The stage whose venv the final stage copies (``COPY --from=<it> /opt/venv /opt/venv``)."""
    sources = [
        tokens[0].removeprefix("--from=")
        for c in image.final.of("COPY")
        if (tokens := c.args.split())[0].startswith("--from=") and tokens[-2:] == [venv, venv]
    ]
    assert len(sources) == 1, (
        f"{image.path}: want one COPY --from=<build> {venv} {venv} in the final stage, "
        f"found {sources}"
    )
    return image.stage(sources[0])


def base_python(image: Dockerfile) -> str:
    """``3.<minor>``: the Python of the final stage's base image (slim, official)."""
    base = image.base_image(image.final)
    match = BASE_IMAGE.match(base)
    assert match is not None, f"{image.path}: final stage FROM {base}, not python:<X.Y>-slim"
    return match["python"]


def final_entrypoint(image: Dockerfile) -> tuple[int, list[str]]:
    """``(line, argv)`` of the final stage's last ENTRYPOINT, which must be in exec form."""
    entrypoints = image.final.of("ENTRYPOINT")
    assert entrypoints, f"{image.path}: the final stage has no ENTRYPOINT"
    return entrypoints[-1].line, exec_form(entrypoints[-1])


# ------------------------------------------------------- the build context and the project


@dataclass(frozen=True)
class DockerIgnore:
    """The build context's ``.dockerignore``: ``(exception, regex)`` in order."""

    patterns: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def read(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        text = path.read_text() if path.exists() else ""
        return cls(tuple(images.dockerignore_patterns(text, str(path))))

    def excludes(self, relative: str) -> bool:
        """Whether ``relative`` (a path in the context) is left out of it: the last
        pattern that matches it or one of its parent directories decides."""
        return images.dockerignored(self.patterns, relative)


def makefile_uv_version(repo: Path) -> str:
    """The Makefile's ``UV_VERSION``: the uv that writes ``uv.lock``, the one the images install."""
    match = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", (repo / "Makefile").read_text(), re.M)
    assert match, "the Makefile names no UV_VERSION"
    return match[1]


def console_scripts(member: Path) -> dict[str, str]:
    """``[project.scripts]`` of the workspace member in ``member`` (its ``pyproject.toml``)."""
    project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project.get("scripts", {})
    return scripts


def normalize(name: str) -> str:
    """A distribution name as uv.lock spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()
