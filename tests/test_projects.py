"""Projects on real parts: packing (with real git), requirements installed by real pip, MakerRepo
entry points read with `ast`, and project builds in the real sandbox."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from farm.coordinator.sources import SourceProblem, check_cad_source
from farm.core import project
from farm.core.entry_points import list_entry_points, scan_source, typed_params, validate_params
from farm.core.project import ProjectError, find_root, pack_file, pack_git, project_files
from workers.cad_cache import CadCache, cached_build, cad_cache_key
from workers.cad_env import EnvStore, missing, read_requirements
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadRequest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
MAKERREPO = REPO / "examples" / "makerrepo_project"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def members(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        return sorted(tar.getnames())


IGNORING = {
    "requirements.txt": "",
    ".gitignore": "secret.txt\nout/\n*.log\n!keep.log\n/top_only.py\n",
    "main.py": "from lib import helper\n",
    "lib/__init__.py": "",
    "lib/helper.py": "X = 1\n",
    "lib/top_only.py": "",  # `/top_only.py` is anchored to the root: this one is packed
    "top_only.py": "",
    "secret.txt": "password\n",
    "out/model.stl": "solid\n",
    "debug.log": "",
    "keep.log": "",
    "lib/.gitignore": "*.tmp\n",
    "lib/scratch.tmp": "",
}
PACKED = [
    ".gitignore",
    "keep.log",
    "lib/.gitignore",
    "lib/__init__.py",
    "lib/helper.py",
    "lib/top_only.py",
    "main.py",
    "requirements.txt",
]


def test_gitignored_files_are_not_packed_without_git(tmp_path: Path) -> None:
    root = write(tmp_path / "proj", IGNORING)
    packed = pack_file(root / "main.py", tmp_path)
    assert packed is not None and packed.root == root and packed.entry == "main.py"
    assert members(packed.archive) == PACKED


def test_gitignored_files_are_not_packed_in_a_git_work_tree(tmp_path: Path) -> None:
    root = write(tmp_path / "proj", {**IGNORING, "untracked.py": ""})
    git(root, "init", "-q")
    git(root, "add", "main.py", "lib")
    assert members(pack_file(root / "lib" / "helper.py", tmp_path).archive) == sorted(  # type: ignore[union-attr]
        [*PACKED, "untracked.py"]
    )
    assert not any(".git/" in name for name in project_files(root))


def test_the_nearest_marker_is_the_project_root(tmp_path: Path) -> None:
    write(tmp_path / "outer", {"pyproject.toml": "", "inner/requirements.txt": "", "inner/deep/part.py": ""})
    assert find_root(tmp_path / "outer" / "inner" / "deep" / "part.py") == tmp_path / "outer" / "inner"
    assert find_root(tmp_path / "outer" / "x.py") == tmp_path / "outer"
    assert find_root(write(tmp_path / "lone", {"part.py": ""}) / "part.py") is None


# A script in no project that loads files beside it: an SVG outline and a size from a text file.
LONE = {
    "part.py": """\
        from pathlib import Path

        from build123d import Box, extrude, import_svg, make_face

        here = Path(__file__).parent
        height = float((here / "assets" / "height.txt").read_text())
        outline = make_face(import_svg(here / "assets" / "outline.svg"))
        show_object(extrude(outline, height), name="badge")
    """,
    "assets/height.txt": "3\n",
    "assets/outline.svg": '<svg xmlns="http://www.w3.org/2000/svg" width="20mm" height="10mm" '
    'viewBox="0 0 20 10"><path d="M 0 0 L 20 0 L 20 10 L 0 10 Z"/></svg>\n',
    "notes.tmp": "",
    ".gitignore": "*.tmp\n",
    # An earlier `farm build part.py` wrote these beside it; packed, they would change the cache key.
    "part.stl": "",
    "part.3mf": "",
    "part.png": "",
    "__pycache__/helper.cpython-311.pyc": "",
    "meshes/part.stl": "",  # farm build -o meshes: left out as farm build asks
}


def test_a_script_in_no_project_travels_with_its_folder_and_loads_its_assets(
    runner: CadRunner, tmp_path: Path
) -> None:
    root = write(tmp_path / "lone", LONE)
    packed = pack_file(root / "part.py", tmp_path, leave_out=[root / "meshes"])
    assert packed.root == root and packed.entry == "part.py"
    assert members(packed.archive) == [".gitignore", "assets/height.txt", "assets/outline.svg", "part.py"]
    request = CadRequest(Path(packed.entry), tmp_path / "out", project=packed.archive)
    result = runner.build(request)
    assert result.objects == 1 and [s["name"] for s in result.shown] == ["badge"]
    assert result.volume == pytest.approx(20 * 10 * 3, rel=1e-3)


def test_a_lone_folder_too_large_says_why_it_travels_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(project, "MAX_PROJECT_FILES", 3)
    root = write(tmp_path / "downloads", {"part.py": "", **{f"f{i}.bin": "" for i in range(10)}})
    with pytest.raises(ProjectError) as caught:
        pack_file(root / "part.py", tmp_path)
    message = str(caught.value)
    assert message.startswith(
        f"the folder {root} holds more than 3 files (limit 3): a script outside any project"
    )
    assert "--no-project" in message


def test_a_project_too_large_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project, "MAX_PROJECT_MB", 1)
    root = write(tmp_path / "proj", {"requirements.txt": "", "main.py": ""})
    (root / "scan.bin").write_bytes(b"\0" * (2 << 20))
    with pytest.raises(ProjectError) as caught:
        pack_file(root / "main.py", tmp_path)
    assert "2.0 MB" in str(caught.value) and ".gitignore" in str(caught.value)


def test_packing_is_deterministic(tmp_path: Path) -> None:
    root = write(tmp_path / "proj", IGNORING)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = pack_file(root / "main.py", tmp_path / "a")
    (root / "main.py").touch()  # a new mtime changes nothing
    second = pack_file(root / "main.py", tmp_path / "b")
    assert first and second and first.archive.read_bytes() == second.archive.read_bytes()


WITH_FILE = ("https", "ssh", "git", "file")  # the git_schemes setting that allows file:// URLs


@pytest.fixture
def bare_repo(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A bare repository (reached by a file:// URL) with tag v1 and a later commit on main."""
    work = write(tmp_path / "work", {"part.py": "from build123d import Box\n\nresult = Box(10, 10, 10)\n"})
    git(work, "init", "-q", "-b", "main")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "v1")
    git(work, "tag", "v1")
    v1 = git(work, "rev-parse", "HEAD")
    (work / "part.py").write_text("from build123d import Box\n\nresult = Box(30, 10, 10)\n")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "v2")
    v2 = git(work, "rev-parse", "HEAD")
    bare = tmp_path / "repo.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return f"file://{bare}", {"v1": v1, "v2": v2}


def test_a_git_ref_is_checked_out_and_its_commit_recorded(
    bare_repo: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, commits = bare_repo
    for ref, expected, size in (("v1", "v1", "10"), (None, "v2", "30"), (commits["v1"], "v1", "10")):
        out = tmp_path / f"out-{ref}"
        out.mkdir()
        packed = pack_git(url, ref, "part.py", out, schemes=WITH_FILE)
        assert packed.git_commit == commits[expected] and packed.git_ref == ref
        with tarfile.open(packed.archive) as tar:
            assert f"Box({size}," in tar.extractfile("part.py").read().decode()  # type: ignore[union-attr]
    with pytest.raises(ProjectError, match="no branch, tag or commit 'v9'"):
        pack_git(url, "v9", "part.py", tmp_path, schemes=WITH_FILE)
    with pytest.raises(ProjectError, match=r"nope\.py is not a file.*part\.py"):
        pack_git(url, "v1", "nope.py", tmp_path, schemes=WITH_FILE)


# -- requirements ---------------------------------------------------------------------------------


def archive_of(tmp_path: Path, files: dict[str, str]) -> Path:
    root = write(tmp_path / "proj", {"main.py": "", **files})
    packed = pack_file(root / "main.py", tmp_path)
    assert packed is not None
    return packed.archive


def test_requirements_come_from_requirements_txt_and_pyproject(tmp_path: Path) -> None:
    archive = archive_of(
        tmp_path,
        {
            "requirements.txt": "# parts\nmore-itertools>=10  # a comment\n\nmakerrepo\n",
            "pyproject.toml": '[project]\nname = "x"\ndependencies = ["pydantic>=2", "makerrepo"]\n',
        },
    )
    assert read_requirements(archive) == ["makerrepo", "more-itertools>=10", "pydantic>=2"]
    # What the worker has already is not installed again; a marker that does not apply is skipped.
    assert missing(["makerrepo", "pydantic>=2", "build123d", 'foo; python_version < "3"']) == []
    assert missing(["pydantic<1", "more-itertools>=10"]) == ["pydantic<1", "more-itertools>=10"]


def test_unsupported_requirement_lines_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CadError, match=re.escape("'-e .' is not supported")):
        read_requirements(archive_of(tmp_path / "a", {"requirements.txt": "-e .\n"}))
    with pytest.raises(CadError, match="URLs are not supported"):
        read_requirements(archive_of(tmp_path / "b", {"requirements.txt": "x @ https://example.org/x.whl\n"}))


def test_requirements_install_once_into_a_cached_environment(tmp_path: Path) -> None:
    store = EnvStore(tmp_path / "envs")
    assert store.ensure(["makerrepo", "pydantic>=2"]) == (None, [])  # all provided by the worker
    site, installed = store.ensure(["more-itertools>=10", "pydantic>=2"])
    assert site is not None and (site / "more_itertools" / "__init__.py").is_file()
    assert [name.split("==")[0] for name in installed] == ["more-itertools"]
    assert not (site / "pydantic").exists()  # the worker's pydantic was not installed again
    stamp = (site / "more_itertools" / "__init__.py").stat().st_mtime_ns
    assert store.ensure(["more-itertools>=10"]) == (site, installed)  # same set: the same environment
    assert (site / "more_itertools" / "__init__.py").stat().st_mtime_ns == stamp


def test_a_package_that_cannot_be_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CadError) as caught:
        EnvStore(tmp_path / "envs").ensure(["printfarm-no-such-package-4b1d"])
    assert caught.value.kind == "requirements"
    assert "could not install" in caught.value.message
    assert "printfarm-no-such-package-4b1d" in caught.value.message
    assert not list((tmp_path / "envs").glob("*/printfarm-env.json"))  # nothing half-made is kept


# -- MakerRepo entry points, read without running -----------------------------------------------------

MODEL = """\
    from enum import Enum
    from typing import Literal
    from pydantic import BaseModel, ConfigDict, Field

    class Finish(str, Enum):
        MATTE = "matte"
        GLOSS = "gloss"

    class Base(BaseModel):
        height: float = Field(10, gt=0)

    class Params(Base):
        count: int = Field(3, ge=1, le=8, description="how many")
        label: str | None = Field(None, max_length=5)
        finish: Finish = Finish.MATTE
        mode: Literal["a", "b"] = "a"
        holes: list[float] = Field(default_factory=list)
"""
PART = """\
    from typing import Optional
    from build123d import Align

    def part(
        n: int = 2, size: float | None = None, hole=True, label="x", angle=Align.MIN, width=30,
        depth: Optional[float] = None,
    ):
        pass
"""
CUSTOM = """\
    from build123d import Box
    import mr
    from mr import customizable
    from params import Params

    @mr.artifact
    def plain():
        return Box(1, 1, 1)

    @customizable
    def custom(params: Params):
        return Box(params.count, 1, params.height)

    def helper(size=1):
        return Box(size, size, size)
"""


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"count": "9"}, "parameter 'count': Input should be less than or equal to 8 (got '9')"),
        ({"count": "two"}, "parameter 'count': Input should be a valid integer"),
        ({"height": "-1"}, "parameter 'height': Input should be greater than 0"),  # inherited
        ({"label": "toolong"}, "parameter 'label': String should have at most 5 characters"),
        ({"finish": "satin"}, "parameter 'finish': Input should be 'matte' or 'gloss'"),
        ({"mode": "c"}, "parameter 'mode'"),
        ({"holes": [1, "x"]}, "parameter 'holes.1'"),
        ({"cuont": "3"}, "parameter 'cuont': Extra inputs are not permitted"),
    ],
)
def test_customizable_parameters_are_checked_from_source(
    tmp_path: Path, params: dict[str, object], problem: str
) -> None:
    root = write(tmp_path, {"params.py": MODEL, "main.py": CUSTOM})
    info = scan_source(root / "main.py", lambda p: (root / p).read_text() if (root / p).exists() else None)
    assert [(f.name, f.kind, f.model) for f in info.functions] == [
        ("plain", "artifact", None),
        ("custom", "customizable", "Params"),
        ("helper", "function", None),
    ]
    message = validate_params(info, "custom", params)
    assert message is not None and message.startswith("custom(): ") and problem in message, message
    assert validate_params(info, None, params) == message  # the only customizable is the target
    assert validate_params(info, "custom", {"count": "4", "finish": "gloss", "holes": [1.5]}) is None
    assert validate_params(info, "helper", {"size": "x"}) is None  # plain functions: the build checks


def test_a_customizables_parameters_are_typed_by_its_model_from_source(tmp_path: Path) -> None:
    """Text from --param and JSON from --params make one build: typed as the model types them."""
    root = write(tmp_path, {"params.py": MODEL, "main.py": CUSTOM})
    info = scan_source(root / "main.py", lambda p: (root / p).read_text() if (root / p).exists() else None)
    as_text = typed_params(info, "custom", {"count": "4", "height": "12", "finish": "gloss"})
    as_json = typed_params(info, None, {"count": 4, "height": 12, "finish": "gloss"})
    assert (
        same(as_text) == same(as_json) == same({"count": 4, "height": 12.0, "finish": "gloss"})
    )  # no defaults
    assert typed_params(info, "custom", {"count": "two"}) == {"count": "two"}  # validate_params says why


def same(values: dict[str, object]) -> str:
    """JSON, which tells 40 from 40.0 (== does not): what the cache key is made of."""
    return json.dumps(values, sort_keys=True)


def test_a_plain_functions_parameters_are_typed_from_source(tmp_path: Path) -> None:
    """As the build would type them, so that text from --param and JSON values make one build."""
    write(tmp_path, {"part.py": PART})
    part = tmp_path / "part.py"
    as_text = {
        "n": "3",
        "size": "5",
        "hole": "no",
        "label": "7",
        "angle": "12",
        "width": "40.0",
        "depth": "2",
    }
    as_json = {"n": 3, "size": 5, "hole": False, "label": "7", "angle": "12", "width": 40, "depth": 2}
    expected = {"n": 3, "size": 5.0, "hole": False, "label": "7", "angle": "12", "width": 40, "depth": 2.0}
    assert same(check_cad_source(part, None, "part", as_text)) == same(expected)
    assert same(check_cad_source(part, None, "part", as_json)) == same(expected)
    assert same(check_cad_source(part, None, None, {"n": 3, "size": "5"})) == same({"n": 3, "size": 5.0})
    for wrong, says in [
        ({"n": "3.5"}, "parameter 'n' expects an integer, got '3.5'"),
        ({"size": "nan"}, "parameter 'size' expects a finite number, got 'nan'"),
        ({"width": "1e999"}, "parameter 'width' expects a finite number, got '1e999'"),
        ({"size": 10**400}, "parameter 'size' expects a number, got 1000"),
    ]:
        with pytest.raises(SourceProblem, match=re.escape(says)):
            check_cad_source(part, None, "part", wrong)


def test_parameters_are_typed_for_the_function_the_build_runs(tmp_path: Path) -> None:
    """The last definition of a name; a **kwargs function takes any parameter; a function with a
    positional-only parameter to fill takes none from --param."""
    twice = "def box(width: int = 1):\n    pass\n\ndef box(width: float = 1.0):\n    pass\n"
    open_ended = "def f(n, /, width: int = 1):\n    pass\n\ndef g(**kw):\n    pass\n"
    write(tmp_path, {"twice.py": twice, "open.py": open_ended})
    assert check_cad_source(tmp_path / "twice.py", None, "box", {"width": "40.5"}) == {"width": 40.5}
    assert check_cad_source(tmp_path / "open.py", None, None, {"width": "2.5"}) == {"width": "2.5"}  # g


RAW_INPUT = """\
    import enum
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class Size(enum.IntEnum):
        SMALL = 1
        LARGE = 2

    class P(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        width: float = Field(10, alias="w", gt=0)
        length: float = Field(20, gt=0)
        size: Size = Size.SMALL

        @field_validator("length", mode="before")
        @classmethod
        def millimetres(cls, v):
            return float(str(v).removesuffix("mm"))

    def custom(params: P):
        pass
"""


@pytest.mark.parametrize(
    ("params", "typed"),
    [
        ({"length": "30mm"}, {"length": "30mm"}),  # a before validator's to convert
        ({"w": "5"}, {"w": "5"}),  # an alias, left as given
        ({"width": "5"}, {"width": 5.0}),  # by name too: populate_by_name
        ({"size": "2"}, {"size": 2}),  # an IntEnum takes its value as text
    ],
)
def test_the_model_from_source_accepts_what_the_real_model_accepts(
    tmp_path: Path, params: dict[str, object], typed: dict[str, object]
) -> None:
    write(tmp_path, {"m.py": RAW_INPUT})
    real: dict[str, object] = {}
    exec(compile((tmp_path / "m.py").read_text(), "m.py", "exec", dont_inherit=True), real)  # pydantic only
    real["P"].model_validate(params)  # type: ignore[attr-defined]
    info = scan_source(tmp_path / "m.py")
    assert validate_params(info, "custom", params) is None
    assert same(typed_params(info, "custom", params)) == same(typed)
    for wrong in ({"w": "-1"}, {"size": "3"}, {"length": "long"}):
        with pytest.raises(ValueError):
            real["P"].model_validate(wrong)  # type: ignore[attr-defined]
        if wrong != {"length": "long"}:  # the validator's own error: only the build can say it
            assert validate_params(info, "custom", wrong) is not None, wrong
    fields = {f["name"]: f for f in list_entry_points(tmp_path / "m.py")[0]["params"]}
    assert fields["length"]["annotation"] == "float" and fields["length"]["default"] == 20


UNUSUAL = """\
    import enum
    from typing import Annotated
    from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
    from pydantic.alias_generators import to_camel

    def mm(v):
        return float(str(v).removesuffix("mm"))

    class Size(enum.IntEnum):
        _order_ = "SMALL LARGE"
        SMALL = 1
        LARGE = 2

    class Base(BaseModel):
        width: float = 10

        @field_validator("width", mode="before")
        @classmethod
        def width_mm(cls, v):
            return mm(v)

    class P(Base):
        width: float = 12  # re-declared: the parent's validator still sees it
        depth: Annotated[float, BeforeValidator(mm)] = 5
        height: Annotated[float, Field(alias="h")] = 3
        count: int = Field(1, ge=1)
        size: Size = Size.SMALL

        @field_validator("count", mode="plain")
        @classmethod
        def count_words(cls, v):
            return {"one": 1, "two": 2}.get(v, v)

    class Camel(BaseModel):
        model_config = ConfigDict(alias_generator=to_camel)
        wall_width: float = 3

    class Choices(BaseModel):
        width: float = Field(10, validation_alias=AliasChoices("w", "wid"))

    class ByKeyword(BaseModel, populate_by_name=True):
        width: float = Field(10, alias="w")

    def custom(params: P):
        pass

    def camel(params: Camel):
        pass

    def choices(params: Choices):
        pass

    def by_keyword(params: ByKeyword):
        pass
"""


@pytest.mark.parametrize(
    ("entry", "params", "typed"),
    [
        ("custom", {"width": "5mm"}, {"width": "5mm"}),  # a parent's before validator
        ("custom", {"depth": "5mm"}, {"depth": "5mm"}),  # Annotated[..., BeforeValidator(...)]
        ("custom", {"h": "4"}, {"h": "4"}),  # an alias in Annotated, with a default
        ("custom", {"count": "two"}, {"count": "two"}),  # a plain validator
        ("custom", {"size": "2", "width": 7}, {"size": 2, "width": 7}),  # an IntEnum with _order_
        ("custom", {"width": float("inf")}, {"width": float("inf")}),  # Any: not through JSON
        ("camel", {"wallWidth": "5"}, {"wallWidth": "5"}),  # an alias generator: left to the build
        ("choices", {"wid": "5"}, {"wid": "5"}),  # AliasChoices: left to the build
        ("by_keyword", {"width": "5"}, {"width": 5.0}),  # populate_by_name as a class keyword
    ],
)
def test_unusual_models_from_source_accept_what_the_real_ones_accept(
    tmp_path: Path, entry: str, params: dict[str, object], typed: dict[str, object]
) -> None:
    write(tmp_path, {"u.py": UNUSUAL})
    real: dict[str, Any] = {}
    exec(compile((tmp_path / "u.py").read_text(), "u.py", "exec", dont_inherit=True), real)  # pydantic only
    model = {"custom": "P", "camel": "Camel", "choices": "Choices", "by_keyword": "ByKeyword"}[entry]
    info = scan_source(tmp_path / "u.py")
    real[model].model_validate(params)
    assert validate_params(info, entry, params) is None
    assert typed_params(info, entry, params) == typed
    real[model].model_validate(typed_params(info, entry, params))  # what the build will be given
    listed = {e["name"]: e for e in list_entry_points(tmp_path / "u.py")}  # no crash on any of them
    fields = {f["name"]: f for f in listed["custom"]["params"]}
    assert fields["count"]["constraints"] == {"ge": 1} and fields["size"]["annotation"] == "Size"
    assert fields["width"]["annotation"] == "float" and fields["depth"]["annotation"] == "float"


def test_a_model_validator_before_leaves_every_check_to_the_build(tmp_path: Path) -> None:
    model = """\
        from pydantic import BaseModel, Field, model_validator

        class Q(BaseModel):
            count: int = Field(1, ge=1)

            @model_validator(mode="before")
            @classmethod
            def from_words(cls, data):
                return {"count": {"two": 2}.get(data.get("count"), data.get("count"))}

        def custom(params: Q):
            pass
    """
    write(tmp_path, {"q.py": model})
    info = scan_source(tmp_path / "q.py")
    assert validate_params(info, "custom", {"count": "two"}) is None
    assert typed_params(info, "custom", {"count": "two"}) == {"count": "two"}


def test_a_customizables_alias_or_extra_goes_on_as_given(tmp_path: Path) -> None:
    """The rebuilt model knows no aliases; with extra="ignore" it would drop one the real model knows."""
    model = """\
        from pydantic import BaseModel, ConfigDict, Field

        class P(BaseModel):
            model_config = ConfigDict(extra="ignore")
            width: float = Field(10, alias="w")
            count: int = 1

        def custom(params: P):
            pass
    """
    write(tmp_path, {"m.py": model})
    info = scan_source(tmp_path / "m.py")
    assert same(typed_params(info, "custom", {"w": 30, "count": "2"})) == same({"w": 30, "count": 2})


def test_inspect_lists_artifacts_and_customizables_with_their_fields() -> None:
    root = MAKERREPO

    def read(relative: str) -> str | None:
        return (root / relative).read_text() if (root / relative).is_file() else None

    entries = list_entry_points(root / "main.py", read, "main.py")
    assert [(e["kind"], e["name"]) for e in entries] == [
        ("artifact", "sample_tray"),
        ("customizable", "custom_tray"),
        ("artifact", "lid"),
    ]
    fields = {p["name"]: p for p in entries[1]["params"]}
    assert fields["pockets"]["default"] == 4 and fields["pockets"]["constraints"] == {"ge": 1, "le": 12}
    assert fields["pocket_diameter"]["annotation"] == "float"


# -- project builds in the real sandbox -------------------------------------------------------------


@pytest.fixture
def runner(cad_runner: CadRunner) -> CadRunner:
    return cad_runner  # one warm fork server for the whole session (tests/conftest.py)


PROJECT = {
    "requirements.txt": "more-itertools>=10\n",
    "data/sizes.txt": "12\n",
    "parts/__init__.py": "",
    "parts/shapes.py": """\
        from pathlib import Path
        from build123d import Box
        from more_itertools import first
        from pydantic import BaseModel, Field, field_validator

        class Dims(BaseModel):
            width: float = Field(10, gt=0)

            @field_validator("width")
            @classmethod
            def not_thirteen(cls, value: float) -> float:
                if value == 13:
                    raise ValueError("13 is unlucky")
                return value

        def depth() -> float:
            return first([float(Path("data/sizes.txt").read_text())])  # relative to the project root

        def block(width: float):
            return Box(width, depth(), 2)
    """,
    "cad/main.py": """\
        from mr import customizable
        from parts.shapes import Dims, block

        @customizable
        def plate(dims: Dims):
            return block(dims.width)
    """,
    "cad/viewer.py": """\
        from build123d import Box
        from ocp_vscode import show
        from parts.shapes import depth

        show(Box(depth(), depth(), 1))
    """,
}


def test_a_project_builds_with_local_imports_requirements_and_a_customizable(
    runner: CadRunner, tmp_path: Path
) -> None:
    root = write(tmp_path / "proj", PROJECT)
    cache = CadCache(tmp_path / "cache")
    packed = pack_file(root / "cad" / "main.py", tmp_path)
    assert packed is not None and packed.entry == "cad/main.py"

    def build(params: dict[str, object], entry: str = "cad/main.py", use_cache: bool = True):  # type: ignore[no-untyped-def]
        request = CadRequest(Path(entry), tmp_path / "out", params=params, project=packed.archive)
        return cached_build(runner, cache, request, use_cache=use_cache)

    result, hit = build({"width": "30"})
    assert not hit and result.bbox[1][0] - result.bbox[0][0] == pytest.approx(30)
    assert result.bbox[1][1] - result.bbox[0][1] == pytest.approx(12)  # data/sizes.txt was read
    assert build({"width": "30"})[1]  # the same inputs: a cache hit
    assert not build({"width": "30"}, use_cache=False)[1]
    assert build({}, entry="cad/viewer.py")[0].bbox[1][2] == pytest.approx(0.5)  # show() in a project
    with pytest.raises(CadError) as caught:
        build({"width": "13"})  # a validator only the real model knows, reported by the build
    assert caught.value.kind == "params" and "parameter 'width'" in caught.value.message
    assert "13 is unlucky" in caught.value.message


def test_the_cache_key_covers_every_file_of_the_project(tmp_path: Path) -> None:
    root = write(tmp_path / "proj", PROJECT)

    def key() -> str:
        out = tmp_path / f"pack{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        packed = pack_file(root / "cad" / "main.py", out)
        assert packed is not None
        return cad_cache_key(Path(packed.entry), None, {}, project=packed.archive)

    before = key()
    assert key() == before
    (root / "data" / "sizes.txt").write_text("13\n")  # not Python, not the entry file
    assert key() != before


def test_a_database_from_before_projects_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    from sqlmodel import Session

    from farm.coordinator.db import make_engine
    from farm.coordinator.models import Build

    db = tmp_path / "farm.coordinator.db"
    with sqlite3.connect(db) as conn:  # the build table as the previous version created it
        conn.execute(
            "CREATE TABLE build (id INTEGER PRIMARY KEY, created_at DATETIME NOT NULL, updated_at DATETIME "
            "NOT NULL, source_name VARCHAR NOT NULL, source_sha256 VARCHAR NOT NULL, source_kind VARCHAR "
            "NOT NULL, entry VARCHAR, params_json VARCHAR NOT NULL, material VARCHAR NOT NULL, quality "
            "VARCHAR NOT NULL, stage VARCHAR NOT NULL, error VARCHAR, stl_sha256 VARCHAR, threemf_sha256 "
            "VARCHAR, bbox_json VARCHAR, cad_seconds FLOAT)"
        )
        conn.execute(
            "INSERT INTO build VALUES (1, '2025-01-01', '2025-01-01', 'a.py', 'x', 'cad', NULL, '{}', "
            "'PLA', 'standard', 'READY', NULL, NULL, NULL, NULL, NULL)"
        )
    engine = make_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        old = session.get(Build, 1)
        assert old is not None and old.project is False and old.use_cache is True and old.git_url is None
        session.add(Build(source_name="b.py", source_sha256="y", source_kind="cad", git_url="file:///r"))
        session.commit()
    engine.dispose()
